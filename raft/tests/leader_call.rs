//! Leader calls on real replicas ([`federator_raft::Replica`]) over the mTLS transport: a
//! call made on a follower is answered by the leader's handler, a call made on the leader
//! is handled there, a replica that does not lead refuses forwarded calls naming the
//! leader, and a group without handlers fails calls with a clear error. Certificates come
//! from a throwaway CA made with rcgen.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use federator_raft::metrics::ConsensusMetrics;
use federator_raft::network::{Network, TransportOptions};
use federator_raft::types::NodeId;
use federator_raft::{LeaderHandler, Replica, ReplicaConfig, ReplicaError, StateMachine};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::Code;

// === test PKI ===

/// One CA and one leaf (for 127.0.0.1, server and client use) that every replica shares.
struct Pki {
    /// The CA certificate, trusted by everyone.
    ca: CertificateDer<'static>,
    /// The leaf certificate.
    cert: CertificateDer<'static>,
    /// The leaf's key, PKCS#8 DER.
    key: Vec<u8>,
}

impl Pki {
    fn new() -> Self {
        let ca_key = KeyPair::generate().expect("generate CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "leader call CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).expect("self-sign CA").der().clone();
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().expect("generate leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, "replica");
        params.subject_alt_names = vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).expect("sign leaf").der().clone();
        Self { ca, cert, key: key.serialize_der() }
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).expect("add CA to roots");
        Arc::new(roots)
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }

    fn server_tls(&self) -> Arc<rustls::ServerConfig> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots(), Self::provider())
            .build()
            .expect("client verifier");
        let config = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key())
            .expect("server certificate");
        Arc::new(config)
    }

    fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        let config = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(self.roots())
            .with_client_auth_cert(vec![self.cert.clone()], self.key())
            .expect("client certificate");
        Arc::new(config)
    }
}

// === application ===

/// A state machine with nothing in it: leader calls do not touch the log.
#[derive(Default)]
struct Nothing;

impl StateMachine for Nothing {
    fn apply(&mut self, _log_index: u64, _command: &[u8]) -> Vec<u8> {
        Vec::new()
    }

    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }

    fn restore(&mut self, _snapshot: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// Answers `<node id>:<request>`, so the caller sees which replica handled the call.
struct Echo(NodeId);

impl LeaderHandler for Echo {
    fn handle(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + 'static>> {
        let mut response = format!("{}:", self.0).into_bytes();
        Box::pin(async move {
            response.extend(request);
            response
        })
    }
}

// === harness ===

/// A running replica serving its transport.
struct Running {
    replica: Replica<Nothing>,
    /// Stops the transport server when dropped.
    _shutdown: oneshot::Sender<()>,
    /// Holds the database.
    _dir: TempDir,
}

async fn start(pki: &Pki, id: NodeId) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let dir = TempDir::new().expect("temp dir");
    let mut config = ReplicaConfig::new(id, addr, dir.path());
    config.heartbeat_interval = Duration::from_millis(100);
    config.election_timeout_min = Duration::from_millis(400);
    config.election_timeout_max = Duration::from_millis(800);
    config.write_retries = 3;
    let replica = Replica::open(config, Nothing, pki.client_tls(), ConsensusMetrics::default())
        .await
        .expect("open replica");
    let (shutdown, stop) = oneshot::channel::<()>();
    let serving = replica.clone();
    let server_tls = pki.server_tls();
    tokio::spawn(async move {
        serving
            .serve_transport(listener, server_tls, None, async move {
                let _ = stop.await;
            })
            .await
    });
    Running { replica, _shutdown: shutdown, _dir: dir }
}

/// Starts replicas `ids`, initializes the group on the first, and waits until every
/// replica knows the same leader. Returns the replicas and the leader's id.
async fn start_group(pki: &Pki, ids: &[NodeId]) -> (Vec<Running>, NodeId) {
    let mut group = Vec::new();
    for id in ids {
        group.push(start(pki, *id).await);
    }
    let members: BTreeMap<NodeId, String> =
        group.iter().map(|r| (r.replica.id(), r.replica.raft_addr().to_string())).collect();
    group[0].replica.initialize(members).await.expect("initialize");
    let leader = group[0]
        .replica
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.current_leader.is_some(), "a leader is elected")
        .await
        .expect("leader elected")
        .current_leader
        .expect("leader known");
    for running in &group {
        running
            .replica
            .raft()
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.current_leader == Some(leader), "the leader is known everywhere")
            .await
            .expect("leader known everywhere");
    }
    (group, leader)
}

/// A transport client of the group's PKI, as another replica would have.
fn network(pki: &Pki) -> Network {
    let options = TransportOptions { rpc_timeout: Duration::from_secs(5), ..Default::default() };
    Network::new(pki.client_tls(), options, ConsensusMetrics::default())
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_calls_are_answered_by_the_leaders_handler() {
    let pki = Pki::new();
    let (group, leader_id) = start_group(&pki, &[1, 2, 3]).await;
    // Handlers go in after the transport is served: the service sees them all the same.
    for running in &group {
        let id = running.replica.id();
        running.replica.set_leader_handler(Arc::new(Echo(id))).expect("install handler");
    }
    let leader = group.iter().find(|r| r.replica.id() == leader_id).expect("leader runs");
    let followers: Vec<&Running> = group.iter().filter(|r| r.replica.id() != leader_id).collect();

    // On the leader: handled locally, nothing forwarded.
    let answered = leader.replica.call_leader(b"on-leader".to_vec()).await.expect("leader call");
    assert_eq!(answered, format!("{leader_id}:on-leader").into_bytes());
    assert_eq!(leader.replica.consensus_metrics().forwarded_leader_calls.get(), 0);

    // On a follower: forwarded to and answered by the leader's handler.
    for follower in &followers {
        let id = follower.replica.id();
        let answered = follower
            .replica
            .call_leader(format!("from-{id}").into_bytes())
            .await
            .expect("forwarded leader call");
        assert_eq!(
            String::from_utf8(answered).expect("utf-8"),
            format!("{leader_id}:from-{id}"),
            "follower {id}'s call must be answered by leader {leader_id}"
        );
        assert_eq!(follower.replica.consensus_metrics().forwarded_leader_calls.get(), 1);
    }

    // A follower's transport refuses a leader call, naming the leader, although it has a
    // handler.
    let status = network(&pki)
        .leader_call(followers[0].replica.raft_addr(), b"misrouted".to_vec())
        .await
        .expect_err("a follower does not serve leader calls");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        status.metadata().get("x-leader-id").and_then(|v| v.to_str().ok()),
        Some(leader_id.to_string().as_str())
    );
    assert_eq!(
        status.metadata().get("x-leader-addr").and_then(|v| v.to_str().ok()),
        Some(leader.replica.raft_addr())
    );

    // The handler is installed once.
    let error =
        leader.replica.set_leader_handler(Arc::new(Echo(99))).expect_err("second handler refused");
    assert!(matches!(error, ReplicaError::LeaderHandlerAlreadySet), "{error}");
    let answered = leader.replica.call_leader(b"again".to_vec()).await.expect("leader call");
    assert_eq!(answered, format!("{leader_id}:again").into_bytes(), "the first handler stays");

    for running in &group {
        running.replica.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_calls_without_a_handler_fail_clearly() {
    let pki = Pki::new();
    let (group, leader_id) = start_group(&pki, &[1, 2]).await;
    let leader = group.iter().find(|r| r.replica.id() == leader_id).expect("leader runs");
    let follower = group.iter().find(|r| r.replica.id() != leader_id).expect("follower runs");
    // Only the follower has a handler: it does not lead, so it does not help.
    let follower_id = follower.replica.id();
    follower.replica.set_leader_handler(Arc::new(Echo(follower_id))).expect("install handler");

    let error = leader.replica.call_leader(b"x".to_vec()).await.expect_err("no handler here");
    assert!(
        matches!(error, ReplicaError::NoLeaderHandler { replica } if replica == leader_id),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains("no leader handler installed"), "{message}");

    let error = follower.replica.call_leader(b"x".to_vec()).await.expect_err("none on leader");
    assert!(
        matches!(error, ReplicaError::NoLeaderHandler { replica } if replica == leader_id),
        "{error}"
    );

    // On the wire: the leader answers Unimplemented.
    let status = network(&pki)
        .leader_call(leader.replica.raft_addr(), b"x".to_vec())
        .await
        .expect_err("no handler on the leader");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert!(status.message().contains("no leader handler installed"), "{status:?}");

    for running in &group {
        running.replica.shutdown().await.expect("shutdown");
    }
}
