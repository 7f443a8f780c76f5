//! Tests of the files sink (and fixtures the etcd sink's tests share).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt as _;
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

use super::*;
use crate::bundle::{ValidationPolicy, parse_spiffe_bundle};
use crate::service::{
    Condition, EndpointPort, ImportEndpoint, ImportedCluster, Protocol, ServiceKey, ServicePort,
};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A valid bundle of `td` (one fresh P-256 CA) with `sequence`.
pub(crate) fn bundle(td: &str, sequence: u64) -> TrustBundle {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, td);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names =
        vec![SanType::URI(format!("spiffe://{td}").try_into().expect("valid URI"))];
    params.not_before = time::OffsetDateTime::from_unix_timestamp(now() - 86_400).expect("time");
    params.not_after =
        time::OffsetDateTime::from_unix_timestamp(now() + 365 * 86_400).expect("time");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let pem = params.self_signed(&key).expect("signing").pem();
    crate::bundle::parse_pem_bundle(
        td,
        pem.as_bytes(),
        sequence,
        Some(300),
        &ValidationPolicy::at(now()),
    )
    .expect("valid bundle")
}

/// An import of `namespace/name` from cluster `b`, with a conflict and an endpoint port.
pub(crate) fn import(namespace: &str, name: &str, revision: u64) -> ServiceImport {
    let key = ServiceKey::new(namespace, name);
    ServiceImport {
        hostname: key.hostname(),
        key,
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Tcp,
            app_protocol: "http".into(),
        }],
        identities: vec![format!("spiffe://b.example/ns/{namespace}/sa/{name}")],
        clusters: vec![ImportedCluster {
            cluster: "b".into(),
            trust_domain: "b.example".into(),
            live: true,
            via_gateway: false,
            identities: vec![format!("spiffe://b.example/ns/{namespace}/sa/{name}")],
            endpoints: vec![ImportEndpoint {
                address: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
                ports: vec![EndpointPort { name: "http".into(), port: 8080 }],
                zone: "z1".into(),
                region: "r1".into(),
                weight: 3,
                ready: true,
                priority: 1,
            }],
        }],
        conditions: vec![Condition {
            kind: "Conflict".into(),
            clusters: vec!["c".into()],
            message: "ports differ".into(),
        }],
        revision,
    }
}

/// A view of cluster `a` with the bundles of `tds` and the imports `imports`.
pub(crate) fn view(bundles: &[&TrustBundle], imports: &[ServiceImport]) -> AgentView {
    AgentView {
        revision: 10,
        cluster: "a".into(),
        trust_domain: "a.example".into(),
        own_bundle: Some(bundle("a.example", 1)),
        bundles: bundles.iter().map(|b| (b.trust_domain.clone(), (*b).clone())).collect(),
        imports: imports.iter().map(|i| (i.key.clone(), i.clone())).collect(),
        held_own_bundle: None,
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = walk(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).expect("under dir").display().to_string())
        .collect();
    names.sort();
    names
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// (inode, mtime) of a file: a rewrite by rename changes the inode.
fn identity(path: &Path) -> (u64, i64, i64) {
    let meta = std::fs::metadata(path).expect("metadata");
    (meta.ino(), meta.mtime(), meta.mtime_nsec())
}

#[tokio::test]
async fn a_view_is_written_as_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = FileSink::new(dir.path().join("out"));
    assert_eq!(sink.name(), "files");
    let b = bundle("b.example", 5);
    let c = bundle("c.example", 7);
    let view = view(&[&b, &c], &[import("shop", "cart", 3), import("shop", "pay", 4)]);
    sink.apply(&view).await.expect("apply");

    let out = sink.dir();
    assert_eq!(
        listing(out),
        [
            "bundles.json",
            "bundles/b.example.json",
            "bundles/b.example.pem",
            "bundles/c.example.json",
            "bundles/c.example.pem",
            "imports.json",
        ],
        "the own bundle (a.example) is not written"
    );
    assert_eq!(read(&out.join("bundles/b.example.pem")), b.to_pem());
    let jwks = read(&out.join("bundles/c.example.json"));
    let policy = ValidationPolicy::at(now());
    assert_eq!(parse_spiffe_bundle("c.example", jwks.as_bytes(), &policy).expect("valid"), c);

    let set: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&read(&out.join("bundles.json"))).expect("bundle set");
    assert_eq!(set.keys().collect::<Vec<_>>(), ["b.example", "c.example"]);
    let b_jwks = serde_json::to_vec(&set["b.example"]).expect("JSON");
    assert_eq!(parse_spiffe_bundle("b.example", &b_jwks, &policy).expect("valid"), b);

    let imports: Vec<ImportDocument> =
        serde_json::from_str(&read(&out.join("imports.json"))).expect("imports");
    assert_eq!(imports.len(), 2);
    assert_eq!(imports[0], ImportDocument::from(&import("shop", "cart", 3)));
    let json: serde_json::Value =
        serde_json::from_str(&read(&out.join("imports.json"))).expect("JSON");
    assert_eq!(
        json[0],
        serde_json::json!({
            "namespace": "shop", "name": "cart", "hostname": "cart.shop.svc.clusterset.local",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "appProtocol": "http"}],
            "identities": ["spiffe://b.example/ns/shop/sa/cart"],
            "clusters": [{"cluster": "b", "trustDomain": "b.example", "live": true,
                          "viaGateway": false,
                          "identities": ["spiffe://b.example/ns/shop/sa/cart"],
                          "endpoints": [{"address": "127.0.0.2",
                                         "ports": [{"name": "http", "port": 8080}],
                                         "zone": "z1", "region": "r1", "weight": 3,
                                         "ready": true, "priority": 1}]}],
            "conditions": [{"type": "Conflict", "clusters": ["c"], "message": "ports differ"}],
            "revision": 3
        })
    );
    let mode = std::fs::metadata(out.join("imports.json")).expect("metadata").mode();
    assert_eq!(mode & 0o777, 0o644, "readable by the mesh");
}

#[tokio::test]
async fn unchanged_files_are_not_rewritten_and_departed_domains_are_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = FileSink::new(dir.path().to_path_buf());
    let b = bundle("b.example", 5);
    let c = bundle("c.example", 7);
    sink.apply(&view(&[&b, &c], &[import("shop", "cart", 3)])).await.expect("apply");
    let before: Vec<_> = ["bundles/b.example.pem", "bundles/c.example.json", "imports.json"]
        .iter()
        .map(|f| identity(&dir.path().join(f)))
        .collect();
    std::fs::write(dir.path().join("bundles/README"), "not ours").expect("write");

    // The same view (another revision, another own bundle): nothing is rewritten.
    sink.apply(&view(&[&b, &c], &[import("shop", "cart", 3)])).await.expect("apply");
    let after: Vec<_> = ["bundles/b.example.pem", "bundles/c.example.json", "imports.json"]
        .iter()
        .map(|f| identity(&dir.path().join(f)))
        .collect();
    assert_eq!(before, after);

    // c leaves, b rotates, cart changes: only those files change.
    let b2 = bundle("b.example", 6);
    sink.apply(&view(&[&b2], &[import("shop", "cart", 4)])).await.expect("apply");
    assert_eq!(
        listing(dir.path()),
        [
            "bundles.json",
            "bundles/README",
            "bundles/b.example.json",
            "bundles/b.example.pem",
            "imports.json"
        ]
    );
    assert_ne!(identity(&dir.path().join("bundles/b.example.pem")), before[0]);
    assert_eq!(read(&dir.path().join("bundles/b.example.pem")), b2.to_pem());
    assert!(read(&dir.path().join("imports.json")).contains("\"revision\": 4"));

    // Nothing left: empty set and list.
    sink.apply(&view(&[], &[])).await.expect("apply");
    assert_eq!(listing(dir.path()), ["bundles.json", "bundles/README", "imports.json"]);
    assert_eq!(read(&dir.path().join("bundles.json")), "{}\n");
    assert_eq!(read(&dir.path().join("imports.json")), "[]\n");
    assert!(
        !listing(dir.path()).iter().any(|p| p.contains(".federator-")),
        "no temporary file is left behind"
    );
}

#[tokio::test]
async fn temporaries_left_by_a_killed_agent_are_removed_at_start_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = FileSink::new(dir.path().to_path_buf());
    assert_eq!(sink.remove_leftover_temporaries().expect("nothing written yet"), 0);
    let b = bundle("b.example", 1);
    sink.apply(&view(&[&b], &[import("shop", "cart", 3)])).await.expect("apply");
    let written = listing(dir.path());
    // What SIGKILLs between a temporary file's creation and its rename leave behind, in
    // both directories the sink writes; and an operator's file that only looks alike.
    for leftover in [".federator-Q7wErT.tmp", "bundles/.federator-0a1b2c.tmp"] {
        std::fs::write(dir.path().join(leftover), b"half a bundle").expect("leftover");
    }
    std::fs::write(dir.path().join("bundles/.federator-notours.tmp"), b"x").expect("look-alike");
    assert_eq!(sink.remove_leftover_temporaries().expect("remove"), 2);
    let mut expected = written;
    expected.push("bundles/.federator-notours.tmp".into());
    expected.sort();
    assert_eq!(listing(dir.path()), expected);
}

#[tokio::test]
async fn a_trust_domain_that_cannot_name_a_file_is_reported_and_the_others_are_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = FileSink::new(dir.path().to_path_buf());
    for bad in ["..", ".", ".hidden", "a/b", "UPPER"] {
        let mut view = view(&[], &[]);
        let mut b = bundle("b.example", 1);
        b.trust_domain = bad.into();
        view.bundles.insert(bad.into(), b);
        view.bundles.insert("c.example".into(), bundle("c.example", 1));
        let err = sink.apply(&view).await.expect_err(bad);
        assert_eq!(err.sink, "files");
        assert!(err.message.contains("cannot name a file"), "{err}");
        assert_eq!(err.trust_domains, [bad.to_string()], "only the bad one is unwritten");
        assert!(dir.path().join("bundles/c.example.pem").exists(), "{bad}: the others are");
        assert!(dir.path().join("imports.json").exists());
    }
}

#[tokio::test]
async fn a_trust_domain_whose_files_cannot_be_written_does_not_hold_up_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = FileSink::new(dir.path().to_path_buf());
    // Something that is not a file where b's bundle goes.
    std::fs::create_dir_all(dir.path().join("bundles/b.example.pem/x")).expect("dir");
    let mut view = view(&[], &[]);
    view.bundles.insert("b.example".into(), bundle("b.example", 1));
    view.bundles.insert("c.example".into(), bundle("c.example", 1));
    let err = sink.apply(&view).await.expect_err("b cannot be written");
    assert_eq!(err.trust_domains, ["b.example".to_string()]);
    assert!(err.message.contains("b.example.pem"), "{err}");
    assert!(dir.path().join("bundles/c.example.pem").is_file());
    assert!(dir.path().join("bundles/c.example.json").is_file());
    let set = read(&dir.path().join("bundles.json"));
    assert!(set.contains("c.example") && set.contains("b.example"), "{set}");
}

#[tokio::test]
async fn an_unwritable_directory_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("file");
    std::fs::write(&file, "x").expect("write");
    let sink = FileSink::new(file.join("out"));
    let err = sink.apply(&view(&[], &[])).await.expect_err("not a directory");
    assert_eq!(err.sink, "files");
    assert!(err.message.contains("out/bundles"), "{err}");
}

#[test]
fn import_json_is_one_import_document() {
    let import = import("shop", "cart", 3);
    let parsed: ImportDocument = serde_json::from_str(&import_json(&import)).expect("JSON");
    assert_eq!(parsed, ImportDocument::from(&import));
    assert!(!import_json(&import).contains('\n'));
}
