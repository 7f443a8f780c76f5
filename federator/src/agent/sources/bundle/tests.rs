//! Tests of the own-bundle source: configuration, sequencing, validation, and following a
//! file and an etcd key.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

use super::*;
use crate::agent::etcd_auth::EtcdAuth;
use crate::agent::sources::etcd_exports::test_etcd::{TestEtcd, available, wait_for};

const TD: &str = "a.example";
const POLL: Duration = Duration::from_millis(20);
const DAY: i64 = 86_400;

/// A CA certificate of `td` valid from `not_before` for a year, PEM.
fn ca_valid_from(td: &str, not_before: i64) -> String {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, td);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names =
        vec![SanType::URI(format!("spiffe://{td}").try_into().expect("valid URI"))];
    params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).expect("time");
    params.not_after =
        time::OffsetDateTime::from_unix_timestamp(not_before + 365 * DAY).expect("time");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    params.self_signed(&key).expect("signing").pem()
}

fn ca() -> String {
    ca_valid_from(TD, unix_now() - DAY)
}

/// A SPIFFE bundle document of `pem` with `sequence`.
fn spiffe(pem: &str, sequence: u64) -> String {
    let mut bundle =
        parse_pem_bundle(TD, pem.as_bytes(), sequence, None, &ValidationPolicy::at(unix_now()))
            .expect("valid CA");
    bundle.sequence = sequence;
    bundle.to_spiffe_json()
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn file_config(path: &Path, format: BundleFileFormat) -> BundleSourceConfig {
    BundleSourceConfig::File { path: path.to_path_buf(), format }
}

// === configuration ===

#[test]
fn the_config_reads_from_toml() {
    let file: BundleSourceConfig =
        toml::from_str("kind = \"file\"\npath = \"/run/b.pem\"\nformat = \"pem\"").expect("file");
    assert_eq!(file, file_config(Path::new("/run/b.pem"), BundleFileFormat::Pem));
    let file: BundleSourceConfig =
        toml::from_str("kind = \"file\"\npath = \"b.json\"\nformat = \"spiffe\"").expect("file");
    assert_eq!(file, file_config(Path::new("b.json"), BundleFileFormat::Spiffe));
    let etcd: BundleSourceConfig =
        toml::from_str("kind = \"etcd\"\nendpoints = [\"127.0.0.1:2379\"]\nkey = \"/spire/b\"")
            .expect("etcd");
    assert_eq!(
        etcd,
        BundleSourceConfig::Etcd {
            endpoints: vec!["127.0.0.1:2379".into()],
            key: "/spire/b".into(),
            auth: EtcdAuth::default(),
        }
    );
}

#[test]
fn a_bad_config_is_refused() {
    for bad in [
        "kind = \"file\"\npath = \"b.pem\"\nformat = \"der\"",
        "kind = \"file\"\npath = \"b.pem\"",
        "kind = \"file\"\npath = \"b.pem\"\nformat = \"pem\"\nextra = 1",
        "kind = \"etcd\"\nendpoints = [\"127.0.0.1:2379\"]",
        "kind = \"etcd\"\nendpoints = []\nkey = \"k\"\npath = \"b.pem\"",
        "kind = \"http\"\nurl = \"http://127.0.0.1/\"",
        "path = \"b.pem\"\nformat = \"pem\"",
    ] {
        assert!(toml::from_str::<BundleSourceConfig>(bad).is_err(), "accepted: {bad}");
    }
}

// === the reader ===

#[test]
fn pem_sequences_start_at_the_clock_and_always_grow() {
    let mut sequence = PemSequence::default();
    assert_eq!(sequence.next(1_000), 1_000);
    assert_eq!(sequence.next(1_000), 1_001);
    assert_eq!(sequence.next(900), 1_002, "a clock going back does not");
    assert_eq!(sequence.next(5_000), 5_000);
}

#[test]
fn a_pem_bundle_is_numbered_per_change_of_its_certificates() {
    let now = unix_now();
    let mut reader = BundleReader::new(TD.into(), "b.pem".into());
    let first = ca();
    reader.update(Ok(first.clone().into_bytes()), BundleFileFormat::Pem, now);
    let bundle = reader.state.bundle.clone().expect("a bundle");
    assert_eq!(bundle.sequence, u64::try_from(now).expect("positive"));
    assert_eq!(reader.state.problem, None);

    // Same certificates, other text: no new bundle.
    reader.update(Ok(format!("# comment\n{first}\n").into_bytes()), BundleFileFormat::Pem, now);
    assert_eq!(reader.state.bundle.as_ref(), Some(&bundle));

    // Another CA added: the next number.
    let both = format!("{first}{}", ca());
    reader.update(Ok(both.into_bytes()), BundleFileFormat::Pem, now);
    let next = reader.state.bundle.clone().expect("a bundle");
    assert_eq!(next.sequence, bundle.sequence + 1);
    assert_eq!(next.x509_authorities.len(), 2);
}

#[test]
fn an_invalid_content_keeps_the_last_bundle_and_is_a_problem() {
    let now = unix_now();
    let mut reader = BundleReader::new(TD.into(), "b.pem".into());
    reader.update(Ok(ca().into_bytes()), BundleFileFormat::Pem, now);
    let good = reader.state.bundle.clone().expect("a bundle");

    for (content, expected) in [
        (Ok(b"not pem".to_vec()), "invalid bundle: "),
        (Ok(ca_valid_from(TD, now - 2 * 365 * DAY).into_bytes()), "has expired"),
        (Ok(ca_valid_from(TD, now + DAY).into_bytes()), "is not yet valid"),
        (Err(Unreadable::from(std::io::Error::other("gone"))), "cannot be read: gone"),
    ] {
        reader.update(content, BundleFileFormat::Pem, now);
        assert_eq!(reader.state.bundle.as_ref(), Some(&good));
        let problem = reader.state.problem.clone().expect("a problem");
        assert_eq!(problem.location, "b.pem");
        assert!(problem.message.contains(expected), "{expected:?} not in {problem:?}");
    }
}

#[test]
fn an_invalid_content_is_validated_again_later() {
    let now = unix_now();
    let mut reader = BundleReader::new(TD.into(), "b.pem".into());
    let early = ca_valid_from(TD, now + 3_600).into_bytes();
    reader.update(Ok(early.clone()), BundleFileFormat::Pem, now);
    assert!(reader.state.bundle.is_none() && reader.state.problem.is_some());
    // An hour later the same bytes are a valid bundle.
    reader.update(Ok(early), BundleFileFormat::Pem, now + 3_601);
    assert!(reader.state.bundle.is_some());
    assert_eq!(reader.state.problem, None);
}

#[test]
fn a_spiffe_bundle_keeps_its_sequence_and_must_grow() {
    let now = unix_now();
    let mut reader = BundleReader::new(TD.into(), "b.json".into());
    let pem = ca();
    reader.update(Ok(spiffe(&pem, 7).into_bytes()), BundleFileFormat::Spiffe, now);
    assert_eq!(reader.state.bundle.as_ref().map(|b| b.sequence), Some(7));

    // The same document again is no change; an equal sequence with other keys is a replay.
    reader.update(Ok(spiffe(&pem, 7).into_bytes()), BundleFileFormat::Spiffe, now);
    assert_eq!(reader.state.problem, None);
    reader.update(Ok(spiffe(&ca(), 7).into_bytes()), BundleFileFormat::Spiffe, now);
    let problem = reader.state.problem.clone().expect("a problem");
    assert!(problem.message.contains("spiffe_sequence 7 is not greater"), "{problem:?}");
    assert_eq!(reader.state.bundle.as_ref().map(|b| b.sequence), Some(7));

    reader.update(Ok(spiffe(&ca(), 8).into_bytes()), BundleFileFormat::Spiffe, now);
    assert_eq!(reader.state.bundle.as_ref().map(|b| b.sequence), Some(8));
    assert_eq!(reader.state.problem, None);

    reader.update(Ok(b"{\"keys\": []}".to_vec()), BundleFileFormat::Spiffe, now);
    let problem = reader.state.problem.clone().expect("a problem");
    assert!(problem.message.contains("keys: must hold at least one key"), "{problem:?}");
}

#[test]
fn a_bundle_of_another_trust_domain_is_refused() {
    let mut reader = BundleReader::new(TD.into(), "b.pem".into());
    reader.update(
        Ok(ca_valid_from("b.example", unix_now() - DAY).into_bytes()),
        BundleFileFormat::Pem,
        unix_now(),
    );
    assert!(reader.state.bundle.is_none());
    let problem = reader.state.problem.expect("a problem");
    assert!(problem.message.contains("names another trust domain than a.example"), "{problem:?}");
}

// === following a file ===

#[tokio::test]
async fn a_pem_file_is_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bundle.pem");
    let first = ca();
    write(&path, &first);
    let mut rx = watch_bundle(file_config(&path, BundleFileFormat::Pem), TD.into(), POLL);
    let start = rx.borrow_and_update().clone();
    let sequence = start.bundle.as_ref().expect("read at start").sequence;
    assert!(sequence >= u64::try_from(unix_now() - 5).expect("positive"));

    write(&path, &format!("{first}{}", ca()));
    let next = wait_for(&mut rx, 10, "two CAs", |s| {
        s.bundle.as_ref().is_some_and(|b| b.x509_authorities.len() == 2)
    })
    .await;
    assert_eq!(next.bundle.as_ref().map(|b| b.sequence), Some(sequence + 1));

    write(&path, "garbage");
    let broken = wait_for(&mut rx, 10, "a problem", |s| s.problem.is_some()).await;
    assert_eq!(broken.bundle, next.bundle, "the last good bundle stays");
    assert_eq!(
        broken.problem.as_ref().map(|p| p.location.clone()),
        Some(path.display().to_string())
    );

    std::fs::remove_file(&path).expect("remove");
    wait_for(&mut rx, 10, "unreadable", |s| {
        s.problem.as_ref().is_some_and(|p| p.message.starts_with("cannot be read"))
    })
    .await;
}

#[tokio::test]
async fn a_missing_spiffe_file_is_a_problem_until_it_appears() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bundle.json");
    let (mut rx, task) = spawn_watch(file_config(&path, BundleFileFormat::Spiffe), TD.into(), POLL);
    {
        let start = rx.borrow_and_update();
        assert!(start.bundle.is_none());
        assert!(start.problem.as_ref().is_some_and(|p| p.message.starts_with("cannot be read")));
    }
    write(&path, &spiffe(&ca(), 42));
    let state = wait_for(&mut rx, 10, "a bundle", |s| s.bundle.is_some()).await;
    assert_eq!(state.bundle.map(|b| b.sequence), Some(42));
    assert_eq!(state.problem, None);

    drop(rx);
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("ends").expect("no panic");
}

// === following an etcd key ===

#[tokio::test]
async fn an_etcd_key_is_followed() {
    if !available() {
        return;
    }
    let mut etcd = TestEtcd::start().await;
    let mut client = etcd.client().await;
    let key = "/spire/bundle";
    let config = BundleSourceConfig::Etcd {
        endpoints: vec![etcd.url()],
        key: key.into(),
        auth: EtcdAuth::default(),
    };
    let mut rx = watch_bundle(config, TD.into(), POLL);
    assert_eq!(
        rx.borrow_and_update().problem.as_ref().map(|p| p.location.as_str()),
        Some(key),
        "not read yet"
    );
    wait_for(&mut rx, 10, "no key", |s| {
        s.problem.as_ref().is_some_and(|p| p.message == "the key does not exist")
    })
    .await;

    let pem = ca();
    client.put(key, pem.clone(), None).await.expect("put");
    let state = wait_for(&mut rx, 10, "a PEM bundle", |s| s.bundle.is_some()).await;
    let pem_sequence = state.bundle.as_ref().map(|b| b.sequence).expect("bundle");
    assert!(pem_sequence >= u64::try_from(unix_now() - 5).expect("positive"));

    // Other keys under the same prefix are not the bundle.
    client.put(format!("{key}-old"), "x", None).await.expect("put");
    client.put(key, spiffe(&ca(), pem_sequence + 10), None).await.expect("put");
    let state = wait_for(&mut rx, 10, "a SPIFFE bundle", |s| {
        s.bundle.as_ref().is_some_and(|b| b.sequence == pem_sequence + 10)
    })
    .await;
    assert_eq!(state.problem, None);

    client.put(key, "-----BEGIN CERTIFICATE-----\nxx", None).await.expect("put");
    let broken = wait_for(&mut rx, 10, "invalid", |s| s.problem.is_some()).await;
    assert_eq!(broken.bundle, state.bundle);

    client.delete(key, None).await.expect("delete");
    wait_for(&mut rx, 10, "deleted", |s| {
        s.problem.as_ref().is_some_and(|p| p.message == "the key was deleted")
    })
    .await;

    client.put(key, spiffe(&ca(), pem_sequence + 11), None).await.expect("put");
    wait_for(&mut rx, 10, "back", |s| s.problem.is_none()).await;

    etcd.kill();
    let down = wait_for(&mut rx, 30, "an outage", |s| s.problem.is_some()).await;
    assert!(
        down.problem.as_ref().is_some_and(|p| p.message.contains("cannot be read")),
        "{down:?}"
    );
    assert_eq!(down.bundle.as_ref().map(|b| b.sequence), Some(pem_sequence + 11), "kept");
    etcd.restart().await;
    let back = wait_for(&mut rx, 60, "recovery", |s| s.problem.is_none()).await;
    assert_eq!(back.bundle.as_ref().map(|b| b.sequence), Some(pem_sequence + 11));
}

// === the Workload API (no server: those with one are in tests/tests/workload_api.rs) ===

#[tokio::test]
async fn a_bad_socket_setting_is_a_lasting_problem() {
    let mut rx = watch_bundle(
        BundleSourceConfig::WorkloadApi { socket: Some("http://127.0.0.1:1".into()) },
        TD.into(),
        POLL,
    );
    let state = rx.borrow_and_update().clone();
    let problem = state.problem.expect("problem");
    assert!(problem.message.starts_with("bundle.socket: unsupported scheme"), "{problem:?}");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), rx.changed()).await.is_err(),
        "nothing else happens"
    );
}

#[tokio::test]
async fn a_tcp_address_is_dialled_on_loopback() {
    // Bind and drop a listener: a loopback port with (very likely) no one behind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let mut rx = watch_bundle(
        BundleSourceConfig::WorkloadApi { socket: Some(format!("tcp://127.0.0.1:{port}")) },
        TD.into(),
        POLL,
    );
    let state = wait_for(&mut rx, 15, "a connection problem", |s| {
        s.problem.as_ref().is_some_and(|p| p.message.contains("cannot connect"))
    })
    .await;
    assert_eq!(state.problem.expect("problem").location, format!("tcp://127.0.0.1:{port}"));
}
