//! The Workload API client and the agent's bundle source against a real gRPC server on a
//! Unix socket: the chaos harness's stand-in for SPIRE's agent
//! (`federator_chaos::workload_api`), which refuses requests without the security header
//! like SPIRE and pushes rotations to open streams. In process: no `federator` binary.
//!
//! The tests that need no server are unit tests: the addresses and a missing server in
//! `core/src/identity/workload_api/tests.rs`, the bundle source's bad settings in
//! `federator/src/agent/sources/bundle/tests.rs`.

use std::sync::Arc;
use std::time::Duration;

use federator::agent::sources::bundle::{BundleSourceConfig, BundleState, watch_bundle};
use federator::identity::workload_api::WorkloadApiAddress;
use federator::identity::{CertifiedIdentity, FederationCa, peer_spiffe_id};
use federator_chaos::workload_api::{
    self as server, WorkloadApiServer, with_federated_bundle, x509_svid, x509_svid_response,
};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

const TD: &str = "a.example";
const AGENT: &str = "spiffe://a.example/federator/agent";
const HOUR: Duration = Duration::from_secs(3600);
/// Bound of every wait for something the server pushed or a reconnection.
const WAIT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(20);

fn ca(td: &str) -> FederationCa {
    FederationCa::generate(td, &format!("{td} CA"), HOUR).expect("CA")
}

/// An SVID entry for `id` issued by `issuer`, with `bundle` as its trust domain's bundle.
fn svid(
    issuer: &FederationCa,
    id: &str,
    bundle: &[&FederationCa],
) -> federator_proto::spiffe_workload::X509svid {
    let leaf = issuer.issue(id, &[], &[], HOUR).expect("leaf");
    let pems: Vec<&str> = bundle.iter().map(|ca| ca.cert_pem()).collect();
    x509_svid(id, &leaf.cert_pem, &leaf.key_pem, &pems).expect("svid")
}

fn der(ca: &FederationCa) -> Vec<u8> {
    rustls_pki_types::CertificateDer::from_pem_slice(ca.cert_pem().as_bytes())
        .expect("CA PEM")
        .to_vec()
}

fn bundle_source(server: &WorkloadApiServer) -> watch::Receiver<BundleState> {
    watch_bundle(
        BundleSourceConfig::WorkloadApi { socket: Some(server.address()) },
        TD.into(),
        POLL,
    )
}

async fn wait_state(
    rx: &mut watch::Receiver<BundleState>,
    what: &str,
    mut until: impl FnMut(&BundleState) -> bool,
) -> BundleState {
    let waited = tokio::time::timeout(WAIT, rx.wait_for(|s| until(s)))
        .await
        .map(|state| state.expect("the source runs").clone());
    match waited {
        Ok(state) => state,
        Err(_) => panic!("timed out waiting for {what}; last: {:?}", *rx.borrow()),
    }
}

fn authorities(state: &BundleState) -> Vec<Vec<u8>> {
    state
        .bundle
        .as_ref()
        .map(|b| b.x509_authorities.iter().map(|a| a.der.clone()).collect())
        .unwrap_or_default()
}

fn unix_now() -> u64 {
    u64::try_from(federator::clock::unix_now()).expect("a clock after 1970")
}

// === the test server ===

/// A Workload API server giving one SVID `id` issued by `authority`, with that
/// authority as its bundle.
async fn serve_one(authority: &FederationCa, id: &str) -> WorkloadApiServer {
    WorkloadApiServer::start_with(x509_svid_response(vec![svid(authority, id, &[authority])]))
        .await
        .expect("server")
}

#[tokio::test]
async fn the_server_refuses_a_request_without_the_security_header() {
    use federator_proto::spiffe_workload::X509svidRequest;
    use federator_proto::spiffe_workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

    let authority = ca(TD);
    let server = serve_one(&authority, AGENT).await;
    let socket = server.socket_path().to_path_buf();
    let channel = tonic::transport::Endpoint::from_static("http://workload-api.socket")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("channel");
    let mut raw = SpiffeWorkloadApiClient::new(channel);
    let refused = raw.fetch_x509svid(X509svidRequest {}).await.expect_err("no header");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(server.refused(), 1);

    let mut request = tonic::Request::new(X509svidRequest {});
    request.metadata_mut().insert(server::SECURITY_HEADER, "true".parse().expect("value"));
    let mut stream = raw.fetch_x509svid(request).await.expect("with the header").into_inner();
    let message = stream.message().await.expect("a message").expect("not the end");
    assert_eq!(message.svids[0].spiffe_id, AGENT);
}

// === the bundle source ===

#[tokio::test]
async fn the_bundle_follows_rotations_and_outlives_the_server() {
    let old = ca(TD);
    let mut server = serve_one(&old, AGENT).await;
    let before = unix_now();
    let mut rx = bundle_source(&server);
    let initial = rx.borrow().clone();
    assert_eq!(initial.bundle, None);
    assert_eq!(initial.problem.as_ref().map(|p| p.message.as_str()), Some("not read yet"));

    // The first bundle: numbered from the clock, like a PEM file's.
    let first = wait_state(&mut rx, "the first bundle", |s| s.bundle.is_some()).await;
    assert_eq!(first.problem, None);
    assert_eq!(authorities(&first), vec![der(&old)]);
    let first_sequence = first.bundle.as_ref().expect("bundle").sequence;
    assert!((before..=unix_now()).contains(&first_sequence), "{first_sequence}");

    // A rotation adds a CA: a new sequence, new authorities.
    let new = ca(TD);
    server.push(x509_svid_response(vec![svid(&old, AGENT, &[&old, &new])]));
    let rotated = wait_state(&mut rx, "the rotated bundle", |s| authorities(s).len() == 2).await;
    let rotated_bundle = rotated.bundle.clone().expect("bundle");
    assert_eq!(authorities(&rotated), vec![der(&old), der(&new)]);
    assert!(rotated_bundle.sequence > first_sequence);
    assert_eq!(rotated.problem, None);

    // A message with the same authorities (another trust domain's bundle changed): no
    // new bundle.
    let other = ca("b.example");
    let same = with_federated_bundle(
        x509_svid_response(vec![svid(&old, AGENT, &[&old, &new])]),
        "b.example",
        &[other.cert_pem()],
    )
    .expect("federated");
    let opened = server.streams_opened();
    server.push(same);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.borrow().bundle.as_ref(), Some(&rotated_bundle));
    assert_eq!(server.streams_opened(), opened, "still the same stream");

    // The server goes away: the bundle stays, with a problem.
    server.stop().await;
    let gone = wait_state(&mut rx, "a problem", |s| s.problem.is_some()).await;
    assert_eq!(gone.bundle.as_ref(), Some(&rotated_bundle));
    let problem = gone.problem.expect("problem");
    assert_eq!(problem.location, server.address());
    assert!(problem.message.contains("Workload API"), "{problem:?}");

    // It comes back: the client reconnects, same bundle, same sequence (no rotation).
    server.restart().expect("restart");
    let back = wait_state(&mut rx, "the reconnection", |s| s.problem.is_none()).await;
    assert_eq!(back.bundle.as_ref(), Some(&rotated_bundle));
    assert!(server.streams_opened() > opened);

    // And follows the next rotation (the old CA removed).
    server.push(x509_svid_response(vec![svid(&new, AGENT, &[&new])]));
    let after = wait_state(&mut rx, "the CA removed", |s| authorities(s).len() == 1).await;
    assert_eq!(authorities(&after), vec![der(&new)]);
    assert!(after.bundle.expect("bundle").sequence > rotated_bundle.sequence);

    // A restarted agent numbers anew from the clock, but reads the same authorities:
    // their digest, which the runtime compares, is unchanged, so it publishes nothing.
    let mut restarted = bundle_source(&server);
    let again = wait_state(&mut restarted, "a second source", |s| s.bundle.is_some()).await;
    assert_eq!(authorities(&again), vec![der(&new)]);
}

#[tokio::test]
async fn a_socket_without_a_server_is_a_problem_until_one_serves_it() {
    let authority = ca(TD);
    let mut server = serve_one(&authority, AGENT).await;
    server.stop().await;
    let mut rx = bundle_source(&server);
    let down = wait_state(&mut rx, "a connection problem", |s| {
        s.problem.as_ref().is_some_and(|p| p.message.contains("cannot connect"))
    })
    .await;
    assert_eq!(down.bundle, None);

    server.restart().expect("restart");
    let up = wait_state(&mut rx, "the bundle", |s| s.bundle.is_some()).await;
    assert_eq!(up.problem, None);
    assert_eq!(authorities(&up), vec![der(&authority)]);
}

#[tokio::test]
async fn fetch_x509_svid_gives_the_bundle_where_fetch_x509_bundles_is_missing() {
    let authority = ca(TD);
    let server = serve_one(&authority, AGENT).await;
    server.set_bundles_unimplemented(true);
    let mut rx = bundle_source(&server);
    let state = wait_state(&mut rx, "the bundle", |s| s.bundle.is_some()).await;
    assert_eq!(authorities(&state), vec![der(&authority)]);
}

#[tokio::test]
async fn no_bundle_of_the_trust_domain_is_a_problem() {
    let other = ca("b.example");
    let server = serve_one(&other, "spiffe://b.example/workload").await;
    let mut rx = bundle_source(&server);
    let state = wait_state(&mut rx, "the problem", |s| {
        s.problem.as_ref().is_some_and(|p| p.message != "not read yet")
    })
    .await;
    assert_eq!(state.bundle, None);
    let message = state.problem.expect("problem").message;
    assert!(
        message.contains("no bundle of trust domain a.example (it gives those of: b.example)"),
        "{message}"
    );
}

// === the SVID source ===

/// Completes a TLS handshake, in memory, in which `identity` is the client certificate and
/// the server requires one chaining to `ca`; returns the SPIFFE ID the server saw.
async fn client_identity_seen_by_a_server(
    identity: Arc<CertifiedIdentity>,
    ca: &FederationCa,
) -> Option<String> {
    use rustls::pki_types::ServerName;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(der(ca))).expect("root");
    let roots = Arc::new(roots);
    let server_leaf =
        ca.issue("spiffe://a.example/server", &[], &["server.test".into()], HOUR).expect("leaf");
    let server_chain =
        vec![CertificateDer::from_pem_slice(server_leaf.cert_pem.as_bytes()).expect("server cert")];
    let server_key = PrivateKeyDer::from_pem_slice(server_leaf.key_pem.as_bytes()).expect("key");
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(server_chain, server_key)
        .expect("server config");
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_cert_resolver(identity);
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let name = ServerName::try_from("server.test").expect("name");
    let (client, server) =
        tokio::join!(connector.connect(name, client_io), acceptor.accept(server_io));
    client.expect("client handshake");
    let server = server.expect("server handshake");
    let leaf = server.get_ref().1.peer_certificates()?.first()?.clone();
    peer_spiffe_id(&leaf)
}

fn leaf_id(identity: &CertifiedIdentity) -> Option<String> {
    peer_spiffe_id(identity.current().end_entity_cert().ok()?)
}

/// Waits until `identity`'s leaf is `id`.
async fn wait_leaf(identity: &CertifiedIdentity, id: &str) {
    let waited = tokio::time::timeout(WAIT, async {
        while leaf_id(identity).as_deref() != Some(id) {
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "still {:?}, not {id}", leaf_id(identity));
}

async fn from_server(server: &WorkloadApiServer, td: Option<&str>) -> Arc<CertifiedIdentity> {
    let address = WorkloadApiAddress::parse(&server.address()).expect("address");
    Arc::new(
        CertifiedIdentity::from_workload_api(address, td.map(str::to_string), WAIT)
            .await
            .expect("an SVID"),
    )
}

#[tokio::test]
async fn the_svid_serves_rustls_and_follows_pushed_rotations() {
    let authority = ca(TD);
    let mut server = serve_one(&authority, AGENT).await;
    let identity = from_server(&server, Some(TD)).await;
    assert_eq!(leaf_id(&identity).as_deref(), Some(AGENT));
    assert!(identity.current().keys_match().is_ok());
    assert_eq!(
        client_identity_seen_by_a_server(identity.clone(), &authority).await.as_deref(),
        Some(AGENT)
    );

    // A pushed SVID replaces it: a new `Arc` (the runtime reconnects on that).
    let first = identity.current();
    let rotated_id = "spiffe://a.example/federator/agent-rotated";
    server.push(x509_svid_response(vec![svid(&authority, rotated_id, &[&authority])]));
    wait_leaf(&identity, rotated_id).await;
    assert!(!Arc::ptr_eq(&first, &identity.current()));
    assert_eq!(
        client_identity_seen_by_a_server(identity.clone(), &authority).await.as_deref(),
        Some(rotated_id)
    );

    // The same SVID again (a bundle changed): the same `Arc`.
    let current = identity.current();
    let mut same = server.current().expect("a response");
    same =
        with_federated_bundle(same, "b.example", &[ca("b.example").cert_pem()]).expect("federated");
    server.push(same);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(Arc::ptr_eq(&current, &identity.current()));

    // The server goes away: the SVID stays; it comes back with a new one: taken.
    server.stop().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(Arc::ptr_eq(&current, &identity.current()));
    let third = "spiffe://a.example/federator/agent-third";
    server.push(x509_svid_response(vec![svid(&authority, third, &[&authority])]));
    server.restart().expect("restart");
    wait_leaf(&identity, third).await;
}

#[tokio::test]
async fn the_svid_of_the_agent_s_trust_domain_is_preferred() {
    let own = ca(TD);
    let other = ca("b.example");
    let other_id = "spiffe://b.example/workload";
    let server = WorkloadApiServer::start_with(x509_svid_response(vec![
        svid(&other, other_id, &[&other]),
        svid(&own, AGENT, &[&own]),
    ]))
    .await
    .expect("server");
    let preferred = from_server(&server, Some(TD)).await;
    assert_eq!(leaf_id(&preferred).as_deref(), Some(AGENT));
    let first = from_server(&server, None).await;
    assert_eq!(leaf_id(&first).as_deref(), Some(other_id), "no trust domain: the first");
    let unknown = from_server(&server, Some("c.example")).await;
    assert_eq!(leaf_id(&unknown).as_deref(), Some(other_id), "none of it: the first");
}

#[tokio::test]
async fn the_first_svid_is_awaited_within_a_bound() {
    let authority = ca(TD);
    let server = WorkloadApiServer::start().await.expect("server");
    let address = WorkloadApiAddress::parse(&server.address()).expect("address");

    // Nothing within the bound: an error naming the setting and the socket.
    let error = CertifiedIdentity::from_workload_api(
        address.clone(),
        Some(TD.into()),
        Duration::from_millis(300),
    )
    .await
    .expect_err("no SVID yet");
    let message = error.to_string();
    assert!(message.starts_with("svid.workload_api: "), "{message}");
    assert!(message.contains(&server.address()), "{message}");
    assert!(message.contains("no usable X.509-SVID within 300ms"), "{message}");

    // The SVID comes a moment after the start: awaited.
    let push = svid(&authority, AGENT, &[&authority]);
    let identity = {
        let waiting = CertifiedIdentity::from_workload_api(address, Some(TD.into()), WAIT);
        let pushing = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            server.push(x509_svid_response(vec![push]));
        };
        tokio::join!(waiting, pushing).0.expect("the SVID")
    };
    assert_eq!(leaf_id(&identity).as_deref(), Some(AGENT));
}
