//! The replica transport over mTLS. Against a stub implementation of the gRPC service:
//! who may connect and call, how failures map onto openraft's errors, connection reuse,
//! and snapshot streaming. Against real openraft replicas on the redb stores: election,
//! replication, write and read forwarding, not-leader errors, and a learner catching up
//! by a streamed snapshot. Certificates come from throwaway CAs made with rcgen.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use federator_proto::raft as pb;
use federator_proto::raft::raft_service_server::RaftService;
use federator_raft::convert::{FromProto, IntoProto};
use federator_raft::log_store::{LogStore, open_database};
use federator_raft::metrics::ConsensusMetrics;
use federator_raft::network::{
    Network, PeerClient, PeerPolicy, RaftTransportService, TransportOptions, serve, serve_service,
};
use federator_raft::state_machine::StateMachineStore;
use federator_raft::tls;
use federator_raft::types::typ::VoteRequest;
use federator_raft::types::{
    Command, LogId, Membership, Node, NodeId, Raft, Snapshot, SnapshotMeta, StoredMembership, Vote,
};
use federator_raft::{RestoreError, StateMachine};
use openraft::error::{RPCError, ReplicationClosed, StreamingError};
use openraft::network::RPCOption;
use openraft::{CommittedLeaderId, RaftNetwork, RaftNetworkFactory, SnapshotPolicy};
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
use tonic::{Code, Request, Response, Status, Streaming};

// === test PKI ===

/// A certificate authority that issues leaf certificates.
struct TestCa {
    /// The CA certificate, to trust.
    cert: CertificateDer<'static>,
    /// Signs leaves.
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate with its private key.
struct Leaf {
    /// The certificate.
    cert: CertificateDer<'static>,
    /// Its key, PKCS#8 DER.
    key: Vec<u8>,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-sign CA").der().clone();
        Self { cert, issuer: Issuer::new(params, key) }
    }

    /// A leaf for 127.0.0.1 usable as server and client certificate.
    fn leaf(&self, name: &str) -> Leaf {
        let key = KeyPair::generate().expect("generate leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf").der().clone();
        Leaf { cert, key: key.serialize_der() }
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).expect("add CA to roots");
        Arc::new(roots)
    }
}

impl Leaf {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server that presents `leaf` and requires client certificates issued by `ca`.
fn server_tls(ca: &TestCa, leaf: &Leaf) -> Arc<rustls::ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(ca.roots(), provider())
        .build()
        .expect("client verifier");
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![leaf.cert.clone()], leaf.key())
        .expect("server certificate");
    Arc::new(config)
}

/// A client that trusts `ca` for servers and presents `identity`, if any.
fn client_tls(ca: &TestCa, identity: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(ca.roots());
    let config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(vec![leaf.cert.clone()], leaf.key())
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

// === stub service ===

/// What the stub service saw.
#[derive(Default)]
struct Seen {
    /// Remote address of every request, in order.
    remote_addrs: Vec<SocketAddr>,
    /// Every received snapshot stream: each chunk's (has vote, has meta, data).
    snapshot_streams: Vec<Vec<(bool, bool, Vec<u8>)>>,
}

/// Answers every RPC trivially and records what it saw.
#[derive(Clone, Default)]
struct StubRaft {
    /// Shared with the test.
    seen: Arc<Mutex<Seen>>,
}

impl StubRaft {
    fn record<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let info = tls::connect_info(request).ok_or_else(|| Status::internal("no TLS info"))?;
        if info.peer_certificate.is_none() {
            return Err(Status::internal("no peer certificate in the request extensions"));
        }
        let addr = info.remote_addr.ok_or_else(|| Status::internal("no remote address"))?;
        self.seen.lock().expect("seen lock").remote_addrs.push(addr);
        Ok(())
    }

    fn requests(&self) -> usize {
        self.seen.lock().expect("seen lock").remote_addrs.len()
    }

    fn connections(&self) -> usize {
        let seen = self.seen.lock().expect("seen lock");
        let mut addrs = seen.remote_addrs.clone();
        addrs.sort();
        addrs.dedup();
        addrs.len()
    }
}

#[tonic::async_trait]
impl RaftService for StubRaft {
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        self.record(&request)?;
        Ok(Response::new(pb::AppendEntriesResponse {
            result: Some(pb::append_entries_response::Result::Success(pb::Blank {})),
        }))
    }

    async fn vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        self.record(&request)?;
        let request = request.into_inner();
        Ok(Response::new(pb::VoteResponse {
            vote: request.vote,
            vote_granted: true,
            last_log_id: request.last_log_id,
        }))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        self.record(&request)?;
        let mut stream = request.into_inner();
        let mut chunks = Vec::new();
        let mut vote = None;
        while let Some(chunk) = stream.message().await? {
            if vote.is_none() {
                vote = chunk.vote;
            }
            chunks.push((chunk.vote.is_some(), chunk.meta.is_some(), chunk.data));
        }
        self.seen.lock().expect("seen lock").snapshot_streams.push(chunks);
        Ok(Response::new(pb::SnapshotResponse { vote }))
    }

    async fn forward_write(
        &self,
        request: Request<pb::ForwardWriteRequest>,
    ) -> Result<Response<pb::ForwardWriteResponse>, Status> {
        self.record(&request)?;
        let responses = request
            .into_inner()
            .commands
            .into_iter()
            .map(|mut command| {
                command.reverse();
                command
            })
            .collect();
        Ok(Response::new(pb::ForwardWriteResponse {
            log_id: Some(log_id(9).into_proto()),
            responses,
        }))
    }

    async fn read_index(
        &self,
        request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        self.record(&request)?;
        // The index to wait for is above the read log id's (a leader restored in its old
        // term): the client waits for the higher.
        Ok(Response::new(pb::ReadIndexResponse {
            read_log_id: Some(log_id(7).into_proto()),
            read_index: 9,
        }))
    }

    async fn leader_call(
        &self,
        request: Request<pb::LeaderCallRequest>,
    ) -> Result<Response<pb::LeaderCallResponse>, Status> {
        self.record(&request)?;
        let mut response = b"stub:".to_vec();
        response.extend(request.into_inner().request);
        Ok(Response::new(pb::LeaderCallResponse { response }))
    }

    async fn node_info(
        &self,
        request: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoResponse>, Status> {
        self.record(&request)?;
        // As a build from before the cluster-version gate answers.
        Err(Status::unimplemented("NodeInfo"))
    }

    async fn timeout_now(
        &self,
        request: Request<pb::TimeoutNowRequest>,
    ) -> Result<Response<pb::TimeoutNowResponse>, Status> {
        self.record(&request)?;
        Err(Status::unimplemented("the stub does not campaign"))
    }
}

// === harness ===

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(3, 1), index)
}

/// CA1 (trusted by the server), CA2 (not), the server's and clients' certificates.
struct Pki {
    ca1: TestCa,
    ca2: TestCa,
    server: Leaf,
    /// Issued by CA1 and allowed by the peer policy.
    member: Leaf,
    /// Issued by CA1 but refused by the peer policy.
    outsider: Leaf,
    /// Issued by CA2.
    stranger: Leaf,
}

impl Pki {
    fn new() -> Self {
        let ca1 = TestCa::new("federation CA1");
        let ca2 = TestCa::new("other CA2");
        let server = ca1.leaf("replica-1");
        let member = ca1.leaf("replica-2");
        let outsider = ca1.leaf("outsider");
        let stranger = ca2.leaf("replica-2");
        Self { ca1, ca2, server, member, outsider, stranger }
    }

    /// A policy that admits only the server's and the member's certificates.
    fn policy(&self) -> PeerPolicy {
        let allowed = [self.server.cert.clone(), self.member.cert.clone()];
        Arc::new(move |cert: &CertificateDer<'_>| {
            allowed.iter().any(|a| a.as_ref() == cert.as_ref())
        })
    }
}

/// A running stub server.
struct Server {
    addr: SocketAddr,
    stub: StubRaft,
    /// Stops the server when dropped.
    _shutdown: oneshot::Sender<()>,
}

async fn start_server(pki: &Pki) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let stub = StubRaft::default();
    let (shutdown, stop) = oneshot::channel::<()>();
    let config = server_tls(&pki.ca1, &pki.server);
    tokio::spawn(serve_service(listener, config, stub.clone(), Some(pki.policy()), async move {
        let _ = stop.await;
    }));
    Server { addr, stub, _shutdown: shutdown }
}

fn network(client_tls: Arc<rustls::ClientConfig>, metrics: &ConsensusMetrics) -> Network {
    let options = TransportOptions {
        connect_timeout: Duration::from_secs(2),
        rpc_timeout: Duration::from_secs(5),
        snapshot_chunk_bytes: 1000,
        ..TransportOptions::default()
    };
    Network::new(client_tls, options, metrics.clone())
}

async fn peer(network: &mut Network, target: NodeId, addr: SocketAddr) -> PeerClient {
    network.new_client(target, &Node::new(addr.to_string())).await
}

fn vote_request() -> VoteRequest {
    VoteRequest { vote: Vote::new(4, 2), last_log_id: Some(log_id(5)) }
}

fn rpc_option() -> RPCOption {
    RPCOption::new(Duration::from_secs(5))
}

// === tests ===

#[tokio::test]
async fn member_with_ca1_certificate_is_served_over_one_connection() {
    let pki = Pki::new();
    let server = start_server(&pki).await;
    let metrics = ConsensusMetrics::default();
    let mut network = network(client_tls(&pki.ca1, Some(&pki.member)), &metrics);
    let mut client = peer(&mut network, 1, server.addr).await;

    let first = client.vote(vote_request(), rpc_option()).await.expect("first vote");
    assert!(first.vote_granted);
    assert_eq!(first.vote, Vote::new(4, 2));
    assert_eq!(first.last_log_id, Some(log_id(5)));
    client.vote(vote_request(), rpc_option()).await.expect("second vote");

    // A second client of the same factory, and the forwarding calls, share the channel.
    let mut again = peer(&mut network, 1, server.addr).await;
    again.vote(vote_request(), rpc_option()).await.expect("vote from another client");
    let addr = server.addr.to_string();
    assert_eq!(network.read_index(&addr).await.expect("read index"), Some(9));
    let (written_at, responses) = network
        .forward_write(&addr, vec![b"abc".to_vec(), b"de".to_vec()])
        .await
        .expect("forward write");
    assert_eq!((written_at, responses), (log_id(9), vec![b"cba".to_vec(), b"ed".to_vec()]));
    assert_eq!(metrics.forwarded_writes.get(), 2);
    let answered = network.leader_call(&addr, b"ping".to_vec()).await.expect("leader call");
    assert_eq!(answered, b"stub:ping");
    assert_eq!(metrics.forwarded_leader_calls.get(), 1);

    assert_eq!(server.stub.requests(), 6);
    assert_eq!(server.stub.connections(), 1, "every call must reuse the one connection");
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let pki = Pki::new();
    let server = start_server(&pki).await;
    let mut network = network(client_tls(&pki.ca1, None), &ConsensusMetrics::default());
    let mut client = peer(&mut network, 1, server.addr).await;

    let error = client.vote(vote_request(), rpc_option()).await.expect_err("no client certificate");
    assert!(matches!(error, RPCError::Unreachable(_)), "refusal should back off: {error}");
    let status = network.read_index(&server.addr.to_string()).await.expect_err("refused");
    assert_ne!(status.code(), Code::Ok);
    assert_eq!(server.stub.requests(), 0);
}

#[tokio::test]
async fn client_with_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let server = start_server(&pki).await;
    // The client trusts the server; the server does not trust the client's CA2.
    let mut network =
        network(client_tls(&pki.ca1, Some(&pki.stranger)), &ConsensusMetrics::default());
    let mut client = peer(&mut network, 1, server.addr).await;

    let error = client.vote(vote_request(), rpc_option()).await.expect_err("CA2 certificate");
    assert!(matches!(error, RPCError::Unreachable(_)), "refusal should back off: {error}");
    let status = network.read_index(&server.addr.to_string()).await.expect_err("refused");
    assert_ne!(status.code(), Code::Ok);
    assert_eq!(server.stub.requests(), 0);
}

#[tokio::test]
async fn client_passing_ca1_but_failing_the_peer_policy_gets_permission_denied() {
    let pki = Pki::new();
    let server = start_server(&pki).await;
    let mut network =
        network(client_tls(&pki.ca1, Some(&pki.outsider)), &ConsensusMetrics::default());

    let status = network.read_index(&server.addr.to_string()).await.expect_err("outsider");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let mut client = peer(&mut network, 1, server.addr).await;
    let error = client.vote(vote_request(), rpc_option()).await.expect_err("outsider vote");
    assert!(matches!(error, RPCError::Unreachable(_)), "refusal should back off: {error}");
    assert_eq!(server.stub.requests(), 0);
}

#[tokio::test]
async fn client_that_does_not_trust_the_server_is_unreachable() {
    let pki = Pki::new();
    let server = start_server(&pki).await;
    // Only CA2 trusted: the server's CA1 certificate fails the client's handshake.
    let mut network =
        network(client_tls(&pki.ca2, Some(&pki.member)), &ConsensusMetrics::default());
    let mut client = peer(&mut network, 1, server.addr).await;

    let error = client.vote(vote_request(), rpc_option()).await.expect_err("untrusted server");
    assert!(matches!(error, RPCError::Unreachable(_)), "{error}");
    assert_eq!(server.stub.requests(), 0);
}

#[tokio::test]
async fn closed_port_is_unreachable() {
    let pki = Pki::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    let mut network =
        network(client_tls(&pki.ca1, Some(&pki.member)), &ConsensusMetrics::default());
    let mut client = peer(&mut network, 1, addr).await;

    let error = client.vote(vote_request(), rpc_option()).await.expect_err("nothing listens");
    assert!(matches!(error, RPCError::Unreachable(_)), "{error}");
}

#[tokio::test]
async fn stalled_handshake_does_not_hold_up_other_connections() {
    let pki = Pki::new();
    let server = start_server(&pki).await;
    // A peer that connects and never says a word.
    let _silent = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(50)).await;

    let mut network =
        network(client_tls(&pki.ca1, Some(&pki.member)), &ConsensusMetrics::default());
    let mut client = peer(&mut network, 1, server.addr).await;
    let answered =
        tokio::time::timeout(Duration::from_secs(3), client.vote(vote_request(), rpc_option()))
            .await
            .expect("a silent peer must not block the accept loop");
    answered.expect("vote");
}

fn snapshot(bytes: usize) -> Snapshot {
    let membership = Membership::new(
        vec![[1, 2].into()],
        BTreeMap::from([(1, Node::new("127.0.0.1:1")), (2, Node::new("127.0.0.1:2"))]),
    );
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(40)),
        last_membership: StoredMembership::new(Some(log_id(2)), membership),
        snapshot_id: "3-1-40".to_string(),
    };
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    Snapshot { meta, snapshot: Box::new(std::io::Cursor::new(data)) }
}

#[tokio::test]
async fn full_snapshot_streams_chunks_with_the_header_first() {
    let pki = Pki::new();
    let server = start_server(&pki).await;
    let mut network =
        network(client_tls(&pki.ca1, Some(&pki.member)), &ConsensusMetrics::default());
    let mut client = peer(&mut network, 1, server.addr).await;

    let vote = Vote::new_committed(3, 1);
    let sent = snapshot(3500);
    let expected_meta = sent.meta.clone();
    let expected_data = sent.snapshot.get_ref().clone();
    let response = client
        .full_snapshot(vote, sent, std::future::pending(), rpc_option())
        .await
        .expect("snapshot sent");
    assert_eq!(response.vote, vote);

    let seen = server.stub.seen.lock().expect("seen lock");
    let [chunks] = seen.snapshot_streams.as_slice() else {
        panic!("expected one snapshot stream, saw {}", seen.snapshot_streams.len());
    };
    let sizes: Vec<usize> = chunks.iter().map(|(_, _, data)| data.len()).collect();
    assert_eq!(sizes, [1000, 1000, 1000, 500]);
    let headers: Vec<(bool, bool)> = chunks.iter().map(|(v, m, _)| (*v, *m)).collect();
    assert_eq!(headers, [(true, true), (false, false), (false, false), (false, false)]);
    let data: Vec<u8> = chunks.iter().flat_map(|(_, _, data)| data.clone()).collect();
    assert_eq!(data, expected_data);
    // The meta survives the trip (checked through the conversion the server uses).
    let meta_back = SnapshotMeta::from_proto(expected_meta.clone().into_proto()).expect("meta");
    assert_eq!(meta_back, expected_meta);
}

#[tokio::test]
async fn empty_snapshot_is_one_header_chunk() {
    let pki = Pki::new();
    let server = start_server(&pki).await;
    let mut network =
        network(client_tls(&pki.ca1, Some(&pki.member)), &ConsensusMetrics::default());
    let mut client = peer(&mut network, 1, server.addr).await;

    client
        .full_snapshot(Vote::new_committed(3, 1), snapshot(0), std::future::pending(), rpc_option())
        .await
        .expect("snapshot sent");
    let seen = server.stub.seen.lock().expect("seen lock");
    assert_eq!(seen.snapshot_streams, vec![vec![(true, true, vec![])]]);
}

#[tokio::test]
async fn cancelled_snapshot_reports_closed() {
    let pki = Pki::new();
    let server = start_server(&pki).await;
    let mut network =
        network(client_tls(&pki.ca1, Some(&pki.member)), &ConsensusMetrics::default());
    let mut client = peer(&mut network, 1, server.addr).await;

    let cancel = async { ReplicationClosed::new("replication stopped") };
    let error = client
        .full_snapshot(Vote::new_committed(3, 1), snapshot(3500), cancel, rpc_option())
        .await
        .expect_err("cancelled");
    assert!(matches!(error, StreamingError::Closed(_)), "{error}");
}

// === real replicas ===

/// A key-value map whose commands are `key=value` bytes; answers the previous value.
#[derive(Default)]
struct KvState {
    /// The map.
    entries: BTreeMap<String, String>,
}

impl StateMachine for KvState {
    fn apply(&mut self, _log_index: u64, command: &[u8]) -> Vec<u8> {
        let Some((key, value)) = std::str::from_utf8(command).ok().and_then(|c| c.split_once('='))
        else {
            return b"error: command is not key=value".to_vec();
        };
        self.entries.insert(key.to_owned(), value.to_owned()).unwrap_or_default().into_bytes()
    }

    fn snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(&self.entries).unwrap_or_default()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        self.entries = postcard::from_bytes(snapshot).map_err(RestoreError::new)?;
        Ok(())
    }
}

/// One openraft replica on redb, serving the transport with mTLS and the peer policy.
struct Replica {
    id: NodeId,
    addr: String,
    raft: Raft,
    network: Network,
    state: StateMachineStore<KvState>,
    metrics: ConsensusMetrics,
    /// Stops the transport server when dropped.
    _shutdown: oneshot::Sender<()>,
    /// Holds the database.
    _dir: TempDir,
}

/// Replicas 1..=n, each with its own CA1 certificate, all admitted by the policy.
struct Group {
    pki: Pki,
    identities: BTreeMap<NodeId, Leaf>,
}

impl Group {
    fn new(ids: &[NodeId]) -> Self {
        let pki = Pki::new();
        let identities =
            ids.iter().map(|id| (*id, pki.ca1.leaf(&format!("replica-{id}")))).collect();
        Self { pki, identities }
    }

    fn policy(&self) -> PeerPolicy {
        let allowed: Vec<CertificateDer<'static>> =
            self.identities.values().map(|leaf| leaf.cert.clone()).collect();
        Arc::new(move |cert: &CertificateDer<'_>| {
            allowed.iter().any(|a| a.as_ref() == cert.as_ref())
        })
    }

    async fn start(&self, id: NodeId) -> Replica {
        let identity = &self.identities[&id];
        let config = openraft::Config {
            cluster_name: "transport-test".to_string(),
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            install_snapshot_timeout: 2000,
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: 0,
            purge_batch_size: 1,
            ..Default::default()
        }
        .validate()
        .expect("raft config");

        let dir = TempDir::new().expect("temp dir");
        let db = open_database(&dir.path().join("raft.redb")).expect("open database");
        let metrics = ConsensusMetrics::default();
        let log = LogStore::new(db.clone(), metrics.clone()).expect("log store");
        let state = StateMachineStore::open(
            db,
            &dir.path().join("snapshots"),
            KvState::default(),
            metrics.clone(),
        )
        .expect("state");
        let options = TransportOptions {
            connect_timeout: Duration::from_secs(1),
            rpc_timeout: Duration::from_secs(2),
            // Small, so a snapshot takes several chunks.
            snapshot_chunk_bytes: 64,
            ..TransportOptions::default()
        };
        let network =
            Network::new(client_tls(&self.pki.ca1, Some(identity)), options, metrics.clone());
        let raft = Raft::new(id, Arc::new(config), network.clone(), log, state.clone())
            .await
            .expect("start raft");

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let service = RaftTransportService::new(raft.clone()).with_peer_policy(self.policy());
        let (shutdown, stop) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, server_tls(&self.pki.ca1, identity), service, async move {
            let _ = stop.await;
        }));
        Replica { id, addr, raft, network, state, metrics, _shutdown: shutdown, _dir: dir }
    }
}

impl Replica {
    async fn wait_for_leader(&self) -> NodeId {
        let metrics = self
            .raft
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .expect("leader elected");
        metrics.current_leader.expect("leader known")
    }

    async fn wait_applied(&self, index: u64) {
        self.raft
            .wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(index), "entry applied")
            .await
            .expect("entry applied");
    }

    fn entries(&self) -> BTreeMap<String, String> {
        self.state.read(|kv| kv.entries.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_elect_replicate_and_forward_over_mtls() {
    let group = Group::new(&[1, 2, 3]);
    let mut replicas = Vec::new();
    for id in [1, 2, 3] {
        replicas.push(group.start(id).await);
    }
    let members: BTreeMap<NodeId, Node> =
        replicas.iter().map(|r| (r.id, Node::new(r.addr.clone()))).collect();
    replicas[0].raft.initialize(members).await.expect("initialize");

    let leader_id = replicas[0].wait_for_leader().await;
    let leader = replicas.iter().find(|r| r.id == leader_id).expect("leader is a replica");
    let followers: Vec<&Replica> = replicas.iter().filter(|r| r.id != leader_id).collect();
    let follower = followers[0];

    // A follower forwards writes to the leader over the transport, in one entry.
    let (written_at, previous) = follower
        .network
        .forward_write(&leader.addr, vec![b"colour=red".to_vec(), b"colour=blue".to_vec()])
        .await
        .expect("forwarded write");
    assert_eq!(previous, [&b""[..], b"red"]);
    assert_eq!(follower.metrics.forwarded_writes.get(), 2);

    // The leader confirms a read index covering the write.
    let read_at = follower.network.read_index(&leader.addr).await.expect("read index");
    assert!(read_at.is_some_and(|index| index >= written_at.index), "{read_at:?} < {written_at}");

    // Replicated to everyone.
    for replica in &replicas {
        replica.wait_applied(written_at.index).await;
        assert_eq!(replica.entries().get("colour").map(String::as_str), Some("blue"));
    }

    // A follower refuses leader-only requests, naming the leader.
    let other = followers[1];
    let status = follower
        .network
        .forward_write(&other.addr, vec![b"colour=red".to_vec()])
        .await
        .expect_err("not the leader");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        status.metadata().get("x-leader-id").and_then(|v| v.to_str().ok()),
        Some(leader_id.to_string().as_str())
    );
    assert_eq!(
        status.metadata().get("x-leader-addr").and_then(|v| v.to_str().ok()),
        Some(leader.addr.as_str())
    );
    let status = follower.network.read_index(&other.addr).await.expect_err("not the leader");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    // A forward of nothing is refused, naming the field.
    let status =
        follower.network.forward_write(&leader.addr, Vec::new()).await.expect_err("nothing");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("ForwardWriteRequest.commands"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_learner_catches_up_by_streamed_snapshot() {
    let group = Group::new(&[1, 2]);
    let leader = group.start(1).await;
    leader
        .raft
        .initialize(BTreeMap::from([(1, Node::new(leader.addr.clone()))]))
        .await
        .expect("initialize");
    leader.wait_for_leader().await;

    let mut last = 0;
    for i in 0..30 {
        let written = leader
            .raft
            .client_write(Command::single(format!("key-{i}=value-{i}").into_bytes()))
            .await
            .expect("write");
        last = written.log_id.index;
    }
    // Snapshot everything and drop the log behind it: a new replica can only catch up
    // from the snapshot.
    leader.raft.trigger().snapshot().await.expect("trigger snapshot");
    leader
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.snapshot.is_some_and(|s| s.index >= last), "snapshot built")
        .await
        .expect("snapshot built");
    leader.raft.trigger().purge_log(last).await.expect("purge log");
    leader
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.purged.is_some_and(|p| p.index >= last), "log purged")
        .await
        .expect("log purged");

    let learner = group.start(2).await;
    leader.raft.add_learner(2, Node::new(learner.addr.clone()), true).await.expect("add learner");
    learner.wait_applied(last).await;

    assert_eq!(learner.metrics.snapshots_installed.get(), 1, "caught up by snapshot");
    assert_eq!(learner.entries(), leader.entries());
    assert_eq!(learner.entries().len(), 30);
}
