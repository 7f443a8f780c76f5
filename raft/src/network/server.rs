//! The receiving side of the replica transport: [`RaftTransportService`] hands peers'
//! RPCs to openraft (and leader calls to the application's [`LeaderHandler`]), and
//! [`serve`] runs it over mTLS.

use std::fmt;
use std::future::Future;
use std::io::Cursor;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use federator_proto::raft as pb;
use federator_proto::raft::raft_service_server::{RaftService, RaftServiceServer};
use futures::{Stream, StreamExt as _};
use openraft::ServerState;
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use rustls_pki_types::CertificateDer;
use serde_bytes::ByteBuf;
use tokio::net::TcpListener;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};

use super::{LEADER_ADDR_METADATA, LEADER_ID_METADATA, MAX_MESSAGE_BYTES, TransportError};
use crate::convert::{ConvertError, FromProto, IntoProto};
use crate::leader::leader_read_index;
use crate::leader_call::{self, LeaderHandler, LeaderHandlerSlot};
use crate::snapshot_files::{Checksum, Receiving, SnapshotFiles};
use crate::timeline::{Timeline, span};
use crate::tls;
use crate::types::typ::{AppendEntriesRequest, VoteRequest};
use crate::types::{Command, Node, NodeId, Raft, Snapshot, SnapshotMeta, Vote};

/// Decides whether a peer, by the end-entity certificate it presented, may call the
/// transport. Runs after the TLS layer verified the certificate.
pub type PeerPolicy = Arc<dyn Fn(&CertificateDer<'_>) -> bool + Send + Sync>;

/// Default limit on the size of a received snapshot.
pub const DEFAULT_MAX_SNAPSHOT_BYTES: usize = 1024 * 1024 * 1024;

/// The gRPC service of the replica transport, backed by this replica's openraft handle.
///
/// The [`PeerPolicy`] is enforced by the server [`RaftTransportService::into_server`]
/// builds (and so by [`serve`]).
#[derive(Clone)]
pub struct RaftTransportService {
    /// This replica's raft.
    raft: Raft,
    /// Which verified peers may call; `None`: all.
    peer_policy: Option<PeerPolicy>,
    /// Largest snapshot accepted from a peer.
    max_snapshot_bytes: usize,
    /// Where a received snapshot is written as it streams in (none: the state machine
    /// writes it once received).
    snapshot_files: Option<SnapshotFiles>,
    /// The application's handler of leader calls, once installed.
    leader_handler: LeaderHandlerSlot,
    /// Where forwarded writes are proposed.
    forwarded: Arc<dyn ForwardedWrites>,
    /// The command-format version this replica's state machine applies (`NodeInfo`).
    supported_version: u32,
    /// Where served AppendEntries are timed (see [`crate::timeline`]).
    timeline: Timeline,
}

/// Where the transport proposes the writes a follower forwarded to this replica: the
/// replica's proposal queue, which batches them with its own writes
/// ([`RaftTransportService::with_forwarded_writes`]), or raft itself, one entry per call.
pub(crate) trait ForwardedWrites: Send + Sync + 'static {
    /// Proposes `commands` together in one entry of this replica (never forwarding them
    /// again) and answers the follower that forwarded them.
    fn propose(
        &self,
        commands: Vec<Vec<u8>>,
    ) -> Pin<Box<dyn Future<Output = Result<pb::ForwardWriteResponse, Status>> + Send + '_>>;
}

/// Forwarded writes proposed straight to raft, one entry per call.
struct DirectWrites(Raft);

impl ForwardedWrites for DirectWrites {
    fn propose(
        &self,
        commands: Vec<Vec<u8>>,
    ) -> Pin<Box<dyn Future<Output = Result<pb::ForwardWriteResponse, Status>> + Send + '_>> {
        Box::pin(async move {
            let entry = Command(commands.into_iter().map(ByteBuf::from).collect());
            match self.0.client_write(entry).await {
                Ok(written) => Ok(pb::ForwardWriteResponse {
                    log_id: Some(written.log_id.into_proto()),
                    responses: written.data.0.into_iter().map(ByteBuf::into_vec).collect(),
                }),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                    Err(not_leader(&forward))
                }
                Err(RaftError::APIError(error)) => {
                    Err(Status::internal(format!("write failed: {error}")))
                }
                Err(RaftError::Fatal(fatal)) => Err(stopped(&fatal)),
            }
        })
    }
}

/// A tonic interceptor that refuses requests whose peer certificate fails a
/// [`PeerPolicy`] with `PermissionDenied`. Without a policy it lets everything through.
#[derive(Clone, Default)]
pub struct PeerAuthorization {
    /// The policy; `None`: no restriction.
    policy: Option<PeerPolicy>,
}

/// The gRPC server of a [`RaftService`] with its [`PeerAuthorization`].
pub type AuthorizedRaftServer<S> = InterceptedService<RaftServiceServer<S>, PeerAuthorization>;

/// Serves `service` on `listener` with mTLS (`server_tls`) until `shutdown` resolves,
/// enforcing the service's peer policy.
///
/// # Errors
/// The server failed.
pub async fn serve(
    listener: TcpListener,
    server_tls: Arc<rustls::ServerConfig>,
    service: RaftTransportService,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), TransportError> {
    let policy = service.peer_policy.clone();
    serve_service(listener, server_tls, service, policy, shutdown).await
}

/// Serves any implementation of the transport's gRPC service on `listener` with mTLS
/// (`server_tls`) and `policy` until `shutdown` resolves. [`serve`] is this with
/// [`RaftTransportService`]; other implementations are for tests and tools.
///
/// # Errors
/// The server failed.
pub async fn serve_service<S: RaftService>(
    listener: TcpListener,
    server_tls: Arc<rustls::ServerConfig>,
    service: S,
    policy: Option<PeerPolicy>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), TransportError> {
    let local_addr = listener.local_addr().ok();
    tracing::info!(?local_addr, "serving the replica transport");
    Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(5)))
        .add_service(authorized_server(service, policy))
        .serve_with_incoming_shutdown(tls::incoming(listener, server_tls), shutdown)
        .await
        .map_err(TransportError::Serve)
}

/// `service` as a gRPC server with raised message limits, behind `policy`.
fn authorized_server<S: RaftService>(
    service: S,
    policy: Option<PeerPolicy>,
) -> AuthorizedRaftServer<S> {
    let server = RaftServiceServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    InterceptedService::new(server, PeerAuthorization { policy })
}

// === impl RaftTransportService ===

impl RaftTransportService {
    /// A service handing RPCs to `raft`, open to every peer the TLS layer accepts, taking
    /// snapshots up to [`DEFAULT_MAX_SNAPSHOT_BYTES`], answering leader calls with
    /// `Unimplemented` until given a slot with a handler
    /// ([`RaftTransportService::with_leader_handler`]), proposing forwarded writes one
    /// entry per call.
    pub fn new(raft: Raft) -> Self {
        Self {
            forwarded: Arc::new(DirectWrites(raft.clone())),
            raft,
            peer_policy: None,
            max_snapshot_bytes: DEFAULT_MAX_SNAPSHOT_BYTES,
            leader_handler: LeaderHandlerSlot::new(),
            snapshot_files: None,
            supported_version: 0,
            timeline: Timeline::default(),
        }
    }

    /// Answers `NodeInfo` with `version` as what this replica's build applies.
    #[must_use]
    pub(crate) fn with_supported_version(mut self, version: u32) -> Self {
        self.supported_version = version;
        self
    }

    /// Proposes forwarded writes through `writes` (the replica's proposal queue: in the
    /// same entries as its own writes).
    #[must_use]
    pub(crate) fn with_forwarded_writes(mut self, writes: Arc<dyn ForwardedWrites>) -> Self {
        self.forwarded = writes;
        self
    }

    /// Times the AppendEntries it serves into `timeline` (the replica's metrics').
    #[must_use]
    pub(crate) fn with_timeline(mut self, timeline: Timeline) -> Self {
        self.timeline = timeline;
        self
    }

    /// Writes a received snapshot into `files` as it streams in, so the state machine's
    /// install finds its file mostly on disk.
    #[must_use]
    pub(crate) fn with_snapshot_files(mut self, files: SnapshotFiles) -> Self {
        self.snapshot_files = Some(files);
        self
    }

    /// Restricts callers to peers whose certificate passes `policy`.
    #[must_use]
    pub fn with_peer_policy(mut self, policy: PeerPolicy) -> Self {
        self.peer_policy = Some(policy);
        self
    }

    /// Refuses snapshots larger than `max_snapshot_bytes`.
    #[must_use]
    pub fn with_max_snapshot_bytes(mut self, max_snapshot_bytes: usize) -> Self {
        self.max_snapshot_bytes = max_snapshot_bytes;
        self
    }

    /// Serves leader calls with the handler installed in `slot` (now or later), while this
    /// replica leads. [`Replica::serve_transport`](crate::Replica::serve_transport) passes
    /// the replica's own slot.
    #[must_use]
    pub fn with_leader_handler(mut self, slot: LeaderHandlerSlot) -> Self {
        self.leader_handler = slot;
        self
    }

    /// Refuses, naming the leader if known, unless this replica is the leader by its own
    /// metrics.
    fn ensure_leader(&self) -> Result<(), Status> {
        let forward = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            if metrics.state == ServerState::Leader && metrics.current_leader == Some(metrics.id) {
                return Ok(());
            }
            let leader_id = metrics.current_leader.filter(|id| *id != metrics.id);
            let leader_node = leader_id
                .and_then(|id| metrics.membership_config.membership().get_node(&id).cloned());
            ForwardToLeader { leader_id, leader_node }
        };
        Err(not_leader(&forward))
    }

    /// The installed leader handler, or `Unimplemented`.
    fn leader_handler(&self) -> Result<Arc<dyn LeaderHandler>, Status> {
        self.leader_handler
            .get()
            .ok_or_else(|| Status::unimplemented("this replica has no leader handler installed"))
    }

    /// This service as a gRPC server with raised message limits, behind its peer policy;
    /// for mounting on a tonic router of one's own.
    pub fn into_server(self) -> AuthorizedRaftServer<Self> {
        let policy = self.peer_policy.clone();
        authorized_server(self, policy)
    }
}

impl fmt::Debug for RaftTransportService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaftTransportService")
            .field("peer_policy", &self.peer_policy.is_some())
            .field("max_snapshot_bytes", &self.max_snapshot_bytes)
            .field("leader_handler", &self.leader_handler.is_installed())
            .finish_non_exhaustive()
    }
}

#[tonic::async_trait]
impl RaftService for RaftTransportService {
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let arrived = Instant::now();
        let rpc = AppendEntriesRequest::from_proto(request.into_inner())?;
        let carried = span(&rpc.entries, |e| e.log_id.index);
        let response = self.raft.append_entries(rpc).await.map_err(|e| stopped(&e))?;
        if matches!(response, openraft::raft::AppendEntriesResponse::Success) {
            self.timeline.follower_answered(carried, arrived);
        }
        Ok(Response::new(response.into_proto()))
    }

    async fn vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        let rpc = VoteRequest::from_proto(request.into_inner())?;
        let response = self.raft.vote(rpc).await.map_err(|e| stopped(&e))?;
        Ok(Response::new(response.into_proto()))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let remote_addr = tls::connect_info(&request).and_then(|info| info.remote_addr);
        let mut chunks = request.into_inner();
        let (vote, meta, first) = receive_header(&mut chunks).await?;
        // Refuse a stale leader before it sends the whole snapshot, as openraft's own
        // chunked transport does; the answer carries our vote, which demotes it.
        let my_vote = self.raft.metrics().borrow().vote;
        if vote < my_vote {
            tracing::info!(%vote, %my_vote, ?remote_addr, "refusing a snapshot from a stale leader");
            return Ok(Response::new(pb::SnapshotResponse { vote: Some(my_vote.into_proto()) }));
        }
        let receiving = self.snapshot_files.as_ref().and_then(|files| {
            files
                .receive(&meta.snapshot_id)
                .inspect_err(
                    |error| tracing::warn!(%error, "cannot write a snapshot as it streams in"),
                )
                .ok()
        });
        // A snapshot that is refused here (corrupt, too large, broken off) drops
        // `receiving`, whose writer removes its file.
        let received = receive_data(
            &meta.snapshot_id,
            first,
            &mut chunks,
            self.max_snapshot_bytes,
            receiving.as_ref(),
        )
        .await
        .inspect_err(|status| {
            if status.code() == tonic::Code::DataLoss {
                tracing::warn!(%vote, ?remote_addr, error = status.message(), "refusing a corrupt snapshot; the leader sends it again");
            }
        })?;
        let Received { data, checked } = received;
        if let Some(receiving) = receiving {
            receiving.finish().await;
        }
        tracing::info!(
            %vote,
            snapshot_id = %meta.snapshot_id,
            bytes = data.len(),
            checked,
            ?remote_addr,
            "received a snapshot"
        );
        let id = meta.snapshot_id.clone();
        let snapshot = Snapshot { meta, snapshot: Box::new(Cursor::new(data)) };
        let response = self.raft.install_full_snapshot(vote, snapshot).await;
        if let Some(files) = self.snapshot_files.clone() {
            // What the install did not take (it was refused, or failed) goes; awaited
            // here, so no task outlives the request.
            let _ = tokio::task::spawn_blocking(move || files.discard_received(&id)).await;
        }
        Ok(Response::new(response.map_err(|e| stopped(&e))?.into_proto()))
    }

    async fn forward_write(
        &self,
        request: Request<pb::ForwardWriteRequest>,
    ) -> Result<Response<pb::ForwardWriteResponse>, Status> {
        let commands = request.into_inner().commands;
        if commands.is_empty() {
            return Err(Status::invalid_argument("ForwardWriteRequest.commands is empty"));
        }
        self.forwarded.propose(commands).await.map(Response::new)
    }

    async fn read_index(
        &self,
        _request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        match leader_read_index(&self.raft).await {
            Ok((read_log_id, read_index)) => Ok(Response::new(pb::ReadIndexResponse {
                read_log_id: read_log_id.into_proto(),
                read_index: read_index.unwrap_or(0),
            })),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                Err(not_leader(&forward))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(error))) => {
                Err(Status::unavailable(format!("leadership not confirmed: {error}")))
            }
            Err(RaftError::Fatal(fatal)) => Err(stopped(&fatal)),
        }
    }

    async fn leader_call(
        &self,
        request: Request<pb::LeaderCallRequest>,
    ) -> Result<Response<pb::LeaderCallResponse>, Status> {
        self.ensure_leader()?;
        let handler = self.leader_handler()?;
        let response = leader_call::run(&handler, request.into_inner().request)
            .await
            .map_err(|error| Status::internal(error.to_string()))?;
        Ok(Response::new(pb::LeaderCallResponse { response }))
    }

    async fn node_info(
        &self,
        _request: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoResponse>, Status> {
        Ok(Response::new(pb::NodeInfoResponse { supported_version: self.supported_version }))
    }

    async fn timeout_now(
        &self,
        request: Request<pb::TimeoutNowRequest>,
    ) -> Result<Response<pb::TimeoutNowResponse>, Status> {
        let pb::TimeoutNowRequest { leader_id, term } = request.into_inner();
        {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            // Only the leader this replica follows, in its term, may make it campaign: a
            // stray or late request must not disturb a healthy group.
            if m.state != ServerState::Follower
                || m.current_leader != Some(leader_id)
                || m.current_term != term
            {
                return Err(Status::failed_precondition(format!(
                    "replica {} does not follow replica {leader_id} in term {term} (it is {:?} \
                     in term {}, leader {:?})",
                    m.id, m.state, m.current_term, m.current_leader
                )));
            }
        }
        tracing::info!(leader_id, term, "the stopping leader hands over: campaigning now");
        self.raft.trigger().elect().await.map_err(|e| stopped(&e))?;
        Ok(Response::new(pb::TimeoutNowResponse {}))
    }
}

// === impl PeerAuthorization ===

impl PeerAuthorization {
    /// An interceptor enforcing `policy` (`None`: no restriction).
    pub fn new(policy: Option<PeerPolicy>) -> Self {
        Self { policy }
    }
}

impl fmt::Debug for PeerAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerAuthorization").field("policy", &self.policy.is_some()).finish()
    }
}

impl Interceptor for PeerAuthorization {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(policy) = &self.policy else {
            return Ok(request);
        };
        let info = tls::connect_info(&request);
        let remote_addr = info.and_then(|info| info.remote_addr);
        match info.and_then(|info| info.peer_certificate.as_ref()) {
            Some(certificate) if policy(certificate.der()) => Ok(request),
            Some(_) => {
                tracing::warn!(
                    ?remote_addr,
                    "peer certificate refused by the transport's peer policy"
                );
                Err(Status::permission_denied(
                    "peer certificate is not allowed to call the replica transport",
                ))
            }
            None => {
                tracing::warn!(?remote_addr, "transport request without a peer certificate");
                Err(Status::permission_denied(
                    "the replica transport requires a client certificate",
                ))
            }
        }
    }
}

// === snapshot reception ===

/// Reads the first chunk of a snapshot stream, which must carry the vote and the meta.
/// Returns them with the first chunk, whose data (and, if it is the only one, data
/// SHA-256) [`receive_data`] takes.
async fn receive_header<S>(
    chunks: &mut S,
) -> Result<(Vote, SnapshotMeta, pb::SnapshotChunk), Status>
where
    S: Stream<Item = Result<pb::SnapshotChunk, Status>> + Unpin,
{
    let mut first = chunks.next().await.ok_or_else(|| {
        Status::invalid_argument("snapshot stream ended before its first chunk")
    })??;
    let vote = first
        .vote
        .take()
        .ok_or(ConvertError::Missing { message: "SnapshotChunk", field: "vote" })?;
    let meta = first
        .meta
        .take()
        .ok_or(ConvertError::Missing { message: "SnapshotChunk", field: "meta" })?;
    Ok((Vote::from_proto(vote)?, SnapshotMeta::from_proto(meta)?, first))
}

/// A snapshot's data, received whole.
#[derive(Debug)]
struct Received {
    /// The data of all chunks, in order.
    data: Vec<u8>,
    /// Whether the sender declared the data's SHA-256 (and it matched); senders that
    /// predate it do not.
    checked: bool,
}

/// Assembles the data of `first` and the remaining chunks of snapshot `snapshot_id`,
/// refusing more than `max_bytes` in all; hands every chunk, the first one too, to
/// `receiving` when given. The data is hashed as it arrives and checked against the
/// SHA-256 the sender declares in its last chunk.
///
/// # Errors
/// The stream failed, the snapshot is too large, or its data does not hash to what the
/// sender declared (`DataLoss`, naming both hashes).
async fn receive_data<S>(
    snapshot_id: &str,
    first: pb::SnapshotChunk,
    chunks: &mut S,
    max_bytes: usize,
    receiving: Option<&Receiving>,
) -> Result<Received, Status>
where
    S: Stream<Item = Result<pb::SnapshotChunk, Status>> + Unpin,
{
    use sha2::Digest as _;
    let too_large =
        || Status::resource_exhausted(format!("snapshot exceeds the limit of {max_bytes} bytes"));
    let mut data = Vec::new();
    let mut hasher = sha2::Sha256::new();
    let mut declared = Vec::new();
    let mut next = Some(Ok(first));
    while let Some(chunk) = next {
        let chunk = chunk?;
        if data.len().saturating_add(chunk.data.len()) > max_bytes {
            return Err(too_large());
        }
        hasher.update(&chunk.data);
        data.extend_from_slice(&chunk.data);
        if !chunk.data_sha256.is_empty() {
            declared = chunk.data_sha256;
        }
        if let Some(receiving) = receiving {
            receiving.push(chunk.data).await;
        }
        next = chunks.next().await;
    }
    if declared.is_empty() {
        return Ok(Received { data, checked: false });
    }
    let declared: [u8; 32] = declared.as_slice().try_into().map_err(|_| {
        Status::invalid_argument(format!(
            "SnapshotChunk.data_sha256 must be 32 bytes, is {}",
            declared.len()
        ))
    })?;
    let found = Checksum { len: data.len() as u64, sha256: hasher.finalize().into() };
    if found.sha256 != declared {
        let expected = Checksum { sha256: declared, ..found };
        return Err(Status::data_loss(format!(
            "snapshot {snapshot_id} is corrupt: the sender declared {expected}, the data \
             received is {found}; it is not installed"
        )));
    }
    Ok(Received { data, checked: true })
}

// === errors ===

/// The status of a request this replica cannot serve because its raft core stopped.
pub(crate) fn stopped(error: &impl fmt::Display) -> Status {
    Status::unavailable(format!("raft core stopped: {error}"))
}

/// The status of a request only the leader serves, naming the leader if known, with
/// `x-leader-id` / `x-leader-addr` metadata.
pub(crate) fn not_leader(forward: &ForwardToLeader<NodeId, Node>) -> Status {
    let message = match (forward.leader_id, &forward.leader_node) {
        (Some(id), Some(node)) => {
            format!("not the leader; the leader is replica {id} at {}", node.addr)
        }
        (Some(id), None) => format!("not the leader; the leader is replica {id}"),
        (None, _) => "not the leader; no leader is known".to_string(),
    };
    let mut status = Status::failed_precondition(message);
    if let Some(id) = forward.leader_id {
        status.metadata_mut().insert(LEADER_ID_METADATA, MetadataValue::from(id));
    }
    if let Some(node) = &forward.leader_node
        && let Ok(addr) = MetadataValue::try_from(node.addr.as_str())
    {
        status.metadata_mut().insert(LEADER_ADDR_METADATA, addr);
    }
    status
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::types::{Membership, StoredMembership};

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: None,
            last_membership: StoredMembership::new(
                None,
                Membership::new(vec![[1].into()], BTreeMap::from([(1, Node::new("a:1"))])),
            ),
            snapshot_id: "s-1".to_string(),
        }
    }

    fn chunk(header: bool, data: &[u8]) -> Result<pb::SnapshotChunk, Status> {
        Ok(pb::SnapshotChunk {
            vote: header.then(|| Vote::new_committed(2, 1).into_proto()),
            meta: header.then(|| meta().into_proto()),
            data: data.to_vec(),
            data_sha256: Vec::new(),
        })
    }

    async fn receive(
        chunks: Vec<Result<pb::SnapshotChunk, Status>>,
        max_bytes: usize,
    ) -> Result<(Vote, SnapshotMeta, Vec<u8>), Status> {
        receive_checked(chunks, max_bytes, None)
            .await
            .map(|(vote, meta, received)| (vote, meta, received.data))
    }

    async fn receive_checked(
        chunks: Vec<Result<pb::SnapshotChunk, Status>>,
        max_bytes: usize,
        receiving: Option<&Receiving>,
    ) -> Result<(Vote, SnapshotMeta, Received), Status> {
        let mut chunks = futures::stream::iter(chunks);
        let (vote, meta, first) = receive_header(&mut chunks).await?;
        let received =
            receive_data(&meta.snapshot_id, first, &mut chunks, max_bytes, receiving).await?;
        Ok((vote, meta, received))
    }

    /// The chunks a sender of this version streams for `data`, 3 bytes each.
    fn sent(data: &[u8]) -> Vec<Result<pb::SnapshotChunk, Status>> {
        let vote = Vote::new_committed(2, 1).into_proto();
        crate::network::client::snapshot_chunks(vote, meta().into_proto(), data, 3)
            .map(Ok)
            .collect()
    }

    #[tokio::test]
    async fn a_snapshot_that_hashes_to_what_the_sender_declared_is_taken_checked() {
        let (_, meta, received) =
            receive_checked(sent(b"balance=1000"), 100, None).await.expect("intact");
        assert_eq!(meta, self::meta());
        assert_eq!(received.data, b"balance=1000");
        assert!(received.checked);
        let (_, _, received) = receive_checked(sent(b""), 100, None).await.expect("empty");
        assert!(received.data.is_empty() && received.checked);
        // A sender that predates the hash: taken, unchecked.
        let (_, _, received) =
            receive_checked(vec![chunk(true, b"ab"), chunk(false, b"c")], 5, None)
                .await
                .expect("legacy sender");
        assert_eq!((received.data.as_slice(), received.checked), (&b"abc"[..], false));
    }

    #[tokio::test]
    async fn a_snapshot_changed_in_transit_is_refused_and_its_file_removed() {
        use sha2::Digest as _;
        let dir = tempfile::TempDir::new().expect("temp dir");
        let files = SnapshotFiles::open(dir.path()).expect("open");
        for position in 0..12 {
            let mut chunks = sent(b"balance=1000");
            let chunk = chunks[position / 3].as_mut().expect("a chunk");
            chunk.data[position % 3] ^= 0x01;
            let receiving = files.receive("s-1").expect("receive");
            let status = receive_checked(chunks, 100, Some(&receiving))
                .await
                .expect_err("a flipped byte is refused");
            drop(receiving);
            assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
            let declared =
                Checksum { len: 12, sha256: sha2::Sha256::digest(b"balance=1000").into() };
            assert!(status.message().contains("snapshot s-1 is corrupt"), "{}", status.message());
            let declared = declared.to_string();
            let declared_hash = declared.rsplit(' ').next().expect("a hash");
            assert!(status.message().contains(declared_hash), "{}", status.message());
        }
        // The refused receptions' writers remove their files.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left = std::fs::read_dir(dir.path()).expect("read dir").count();
            if left == 0 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{left} received files left");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(!files.take_received("s-1", &Checksum::of(b"balance=1000")).expect("none"));

        let mut chunks = sent(b"balance=1000");
        chunks.last_mut().expect("a chunk").as_mut().expect("a chunk").data_sha256 = vec![1; 31];
        let status = receive(chunks, 100).await.expect_err("a hash of the wrong size");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "SnapshotChunk.data_sha256 must be 32 bytes, is 31");
    }

    #[tokio::test]
    async fn snapshot_chunks_are_assembled_in_order() {
        let chunks =
            vec![chunk(true, b"ab"), chunk(false, b"cd"), chunk(false, b""), chunk(false, b"e")];
        let (vote, meta, data) = receive(chunks, 5).await.expect("within the limit");
        assert_eq!(vote, Vote::new_committed(2, 1));
        assert_eq!(meta, self::meta());
        assert_eq!(data, b"abcde");
    }

    #[tokio::test]
    async fn snapshot_over_the_limit_is_refused() {
        let chunks = vec![chunk(true, b"ab"), chunk(false, b"cd"), chunk(false, b"ef")];
        let status = receive(chunks, 5).await.expect_err("6 bytes exceed 5");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        let status =
            receive(vec![chunk(true, b"abcdef")], 5).await.expect_err("first chunk too big");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn snapshot_stream_without_header_is_refused() {
        let status = receive(vec![], 5).await.expect_err("no chunk");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let status = receive(vec![chunk(false, b"ab")], 5).await.expect_err("no header");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "SnapshotChunk.vote is missing");
    }

    #[tokio::test]
    async fn snapshot_stream_error_is_passed_on() {
        let chunks = vec![chunk(true, b"ab"), Err(Status::cancelled("peer went away"))];
        let status = receive(chunks, 5).await.expect_err("stream failed");
        assert_eq!(status.code(), tonic::Code::Cancelled);
    }

    #[test]
    fn not_leader_names_the_leader_in_message_and_metadata() {
        let status = not_leader(&ForwardToLeader::new(3, Node::new("127.0.0.13:7000")));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("replica 3 at 127.0.0.13:7000"), "{}", status.message());
        let metadata = status.metadata();
        assert_eq!(metadata.get(LEADER_ID_METADATA).and_then(|v| v.to_str().ok()), Some("3"));
        assert_eq!(
            metadata.get(LEADER_ADDR_METADATA).and_then(|v| v.to_str().ok()),
            Some("127.0.0.13:7000")
        );

        let status = not_leader(&ForwardToLeader::empty());
        assert_eq!(status.message(), "not the leader; no leader is known");
        assert!(status.metadata().get(LEADER_ID_METADATA).is_none());
    }
}
