//! The sending side of the replica transport: openraft's [`RaftNetworkFactory`] and
//! [`RaftNetwork`], and write/read/leader-call forwarding to the leader.
//!
//! Every peer address gets one lazily connected tonic [`Channel`], cached in the
//! [`Network`] and shared by all its clones and by every [`PeerClient`] it makes, so
//! heartbeats, replication, snapshots, forwarded writes and leader calls to one peer share
//! one HTTP/2 connection.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use federator_proto::raft as pb;
use federator_proto::raft::raft_service_client::RaftServiceClient;
use openraft::AnyError;
use openraft::error::{
    Fatal, NetworkError, PayloadTooLarge, RPCError, RaftError, ReplicationClosed, StreamingError,
    Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes};
use openraft::raft::{InstallSnapshotRequest, InstallSnapshotResponse};
use openraft::{OptionalSend, RaftNetwork, RaftNetworkFactory};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

#[cfg(test)]
pub(crate) use self::snapshot::snapshot_chunks;
use super::MAX_MESSAGE_BYTES;
use crate::convert::{FromProto, IntoProto};
use crate::log_store::LogDurability;
use crate::metrics::ConsensusMetrics;
use crate::timeline::{Step, Timeline, span};
use crate::tls::TlsConnector;
use crate::types::typ::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use crate::types::{LogId, Node, NodeId, Snapshot, TypeConfig, Vote};

mod snapshot;

/// First delay of the backoff after a peer was unreachable.
const BACKOFF_INITIAL: Duration = Duration::from_millis(50);

/// Longest delay of the backoff after a peer was unreachable.
const BACKOFF_MAX: Duration = Duration::from_millis(1000);

/// HTTP/2 ping interval on peer connections, to notice a dead peer on an idle connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Time a peer gets to answer an HTTP/2 ping before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Timeouts and sizes of the sending side of the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportOptions {
    /// Limit on establishing a connection (TCP and TLS handshake).
    pub connect_timeout: Duration,
    /// Limit on one RPC; openraft's own per-RPC deadline applies too, whichever is shorter.
    /// For a snapshot it bounds each stalled chunk and the wait for the final answer.
    pub rpc_timeout: Duration,
    /// Size of the data in each snapshot chunk.
    pub snapshot_chunk_bytes: usize,
    /// Peer addresses reached through another address (a local proxy, a NAT): a peer
    /// advertised at a key is dialled at its value.
    pub dial_overrides: std::collections::BTreeMap<String, String>,
}

/// openraft's network factory over the mTLS gRPC transport. Cheap to clone: clones share
/// the connection pool.
#[derive(Clone)]
pub struct Network {
    /// State shared by clones and by the peer clients.
    shared: Arc<Shared>,
}

/// What a [`Network`] and its [`PeerClient`]s share.
struct Shared {
    /// Makes the TLS connections of every channel.
    connector: TlsConnector,
    /// Timeouts and sizes.
    options: TransportOptions,
    /// Where forwarded writes and leader calls are counted.
    metrics: ConsensusMetrics,
    /// One channel per peer address.
    channels: Mutex<HashMap<String, Channel>>,
    /// A term this replica leads but may not replicate in any more (0: none), see
    /// [`Network::fence`].
    fenced_term: Arc<AtomicU64>,
    /// Whether this replica proposes nothing more (a stopping leader handing over), see
    /// [`Network::close_proposals`].
    proposals_closed: std::sync::atomic::AtomicBool,
    /// How far this replica's log is durable, when followers must not hear of a commit
    /// beyond it ([`Network::commit_only_durable`]).
    log_durability: std::sync::OnceLock<LogDurability>,
}

/// openraft's client of one peer replica, made by [`Network::new_client`].
pub struct PeerClient {
    /// The peer's replica id.
    target: NodeId,
    /// The peer's transport address.
    addr: String,
    /// The gRPC client on the pooled channel, or why there is none (a bad address).
    client: Result<RaftServiceClient<Channel>, ClientError>,
    /// Timeouts and sizes.
    options: TransportOptions,
    /// The network's fenced term (see [`Network::fence`]).
    fenced_term: Arc<AtomicU64>,
    /// How far this replica's log is durable (see [`Network::commit_only_durable`]).
    log_durability: Option<LogDurability>,
    /// Where entries sent and acknowledged are marked (see [`crate::timeline`]).
    timeline: Timeline,
}

/// Why an RPC to a peer failed, before it is mapped onto openraft's error types.
#[derive(Clone, Debug, thiserror::Error)]
enum ClientError {
    /// This replica leads `term` without a quorum and sends nothing more in it.
    #[error("leading term {term} without hearing a quorum (check-quorum): not replicating")]
    Fenced {
        /// The fenced term.
        term: u64,
    },
    /// The peer's address does not make a URI.
    #[error("transport address {addr:?} of replica is invalid: {reason}")]
    InvalidAddress {
        /// The address as configured.
        addr: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The peer (or the connection to it) answered with a gRPC error.
    #[error("{rpc} to replica {target} at {addr} failed: {code:?}: {message}")]
    Status {
        /// The RPC.
        rpc: RPCTypes,
        /// The peer's replica id.
        target: NodeId,
        /// The peer's address.
        addr: String,
        /// gRPC status code.
        code: Code,
        /// gRPC status message.
        message: String,
    },
    /// The peer answered with a message that does not convert.
    #[error("{rpc} to replica {target} at {addr}: malformed response: {reason}")]
    MalformedResponse {
        /// The RPC.
        rpc: RPCTypes,
        /// The peer's replica id.
        target: NodeId,
        /// The peer's address.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// openraft asked for the chunk-by-chunk snapshot RPC, which this transport replaces.
    #[error(
        "chunked install_snapshot is not used by this transport; full_snapshot streams snapshots"
    )]
    ChunkedSnapshotUnsupported,
}

/// How an RPC failed, in the terms openraft distinguishes.
enum Failure {
    /// No answer within the deadline.
    Timeout(Duration),
    /// Could not reach the peer: openraft should back off.
    Unreachable(ClientError),
    /// Failed on the way: openraft may retry at once.
    Network(ClientError),
    /// The AppendEntries message would exceed the transport's message limit; this many
    /// leading entries fit (at least one).
    TooLarge(u64),
}

/// Largest AppendEntries message sent with more than one entry. openraft 0.9 gives
/// every AppendEntries the heartbeat interval (tens of milliseconds) to be sent, made
/// durable and answered, catch-up included: a larger message would time out again and
/// again and a lagging follower would never catch up. A single larger entry is still
/// sent alone (the transport takes up to [`MAX_MESSAGE_BYTES`]).
const APPEND_BUDGET_BYTES: usize = 1024 * 1024;

/// The index a leader's `ReadIndex` answer says to wait for: its `read_index`, or the read
/// log id's index from a leader that does not set it (0), whichever is higher.
fn read_index_of(response: pb::ReadIndexResponse) -> Result<Option<u64>, Status> {
    let read_log_id: Option<LogId> = FromProto::from_proto(response.read_log_id).map_err(|e| {
        Status::internal(format!("leader answered ReadIndex with a malformed log id: {e}"))
    })?;
    let read_index = Some(response.read_index).filter(|index| *index > 0);
    Ok(read_log_id.map(|id| id.index).max(read_index))
}

/// The committed log id to tell a follower in `rpc` when this replica's log is durable
/// through index `durable_through`: the leader's committed one when its log holds it
/// durably; else the newest one at or under `durable_through` among those `rpc` carries
/// (its previous log id and its entries' ids — each is in the leader's log, under its
/// committed index, so committed too), or none. Telling a follower less than it knows
/// changes nothing: it never moves its committed index back, and it hears the rest with
/// the next AppendEntries or heartbeat.
fn committed_to_tell(rpc: &AppendEntriesRequest, durable_through: u64) -> Option<LogId> {
    match rpc.leader_commit {
        Some(committed) if committed.index > durable_through => rpc
            .prev_log_id
            .into_iter()
            .chain(rpc.entries.iter().map(|entry| entry.log_id))
            .filter(|log_id| log_id.index <= durable_through)
            .max_by_key(|log_id| log_id.index),
        committed => committed,
    }
}

/// `None` when `request` fits in `budget` bytes; otherwise how many of its leading
/// entries do (at least one: a single entry larger than the budget is still tried, and
/// refused by the peer, rather than never sent).
fn entries_within(request: &pb::AppendEntriesRequest, budget: usize) -> Option<u64> {
    use prost::Message as _;
    if request.encoded_len() <= budget || request.entries.len() <= 1 {
        return None;
    }
    let mut used = 64;
    let fit = request
        .entries
        .iter()
        .take_while(|entry| {
            // Field tag, length prefix and the entry.
            used += entry.encoded_len() + 8;
            used <= budget
        })
        .count();
    Some(u64::try_from(fit.max(1)).unwrap_or(u64::MAX))
}

// === impl TransportOptions ===

impl Default for TransportOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            rpc_timeout: Duration::from_secs(2),
            snapshot_chunk_bytes: 1024 * 1024,
            dial_overrides: std::collections::BTreeMap::new(),
        }
    }
}

// === impl Network ===

impl Network {
    /// A network that dials peers with `client_tls` (ALPN `h2` is added) and counts
    /// forwarded writes and leader calls in `metrics`.
    pub fn new(
        client_tls: Arc<rustls::ClientConfig>,
        options: TransportOptions,
        metrics: ConsensusMetrics,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                connector: TlsConnector::new(client_tls),
                options,
                metrics,
                channels: Mutex::new(HashMap::new()),
                fenced_term: Arc::new(AtomicU64::new(0)),
                proposals_closed: std::sync::atomic::AtomicBool::new(false),
                log_durability: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Stops every AppendEntries (heartbeats included) of a leader of `term` before it is
    /// sent: the check-quorum of a leader that hears no quorum. Its followers then hear
    /// nothing, their leases run out and they elect one of themselves, whose messages
    /// depose this leader once they reach it. openraft 0.9 ignores an election triggered on
    /// a leader and has no step-down, so silence is how a leader steps down. Vote requests
    /// are not fenced.
    pub fn fence(&self, term: u64) {
        self.shared.fenced_term.store(term, Ordering::Relaxed);
    }

    /// From now on tells a follower no committed index beyond what this replica's log
    /// holds durably: a leader's log store may report its own appends flushed before they
    /// are (see [`crate::log_store::LogStore`]), and a follower that applied an entry the
    /// leader then lost in a crash would disagree with the rest for good. Only the first
    /// call counts, and only for clients made after it: call it before raft starts.
    pub fn commit_only_durable(&self, durability: LogDurability) {
        let _ = self.shared.log_durability.set(durability);
    }

    /// Lifts [`Network::fence`] (this replica no longer leads the fenced term).
    pub fn unfence(&self) {
        self.shared.fenced_term.store(0, Ordering::Relaxed);
    }

    /// The fenced term, if any.
    #[must_use]
    pub fn fenced(&self) -> Option<u64> {
        Some(self.shared.fenced_term.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// Makes this replica propose nothing more (writers are told no leader is known and
    /// retry elsewhere) while replication goes on: a stopping leader's log stops growing,
    /// so a follower can hold all of it and win the vote of a hand-over.
    pub fn close_proposals(&self) {
        self.shared.proposals_closed.store(true, Ordering::Relaxed);
    }

    /// Whether [`Network::close_proposals`] was called.
    #[must_use]
    pub fn proposals_closed(&self) -> bool {
        self.shared.proposals_closed.load(Ordering::Relaxed)
    }

    /// The options this network was made with.
    pub fn options(&self) -> &TransportOptions {
        &self.shared.options
    }

    /// Forwards client writes to the leader at `leader_addr`, which proposes them in one
    /// entry, and returns the log id they were committed at and the state machine's
    /// response to each, in order.
    ///
    /// # Errors
    /// The gRPC status of the failure; `FailedPrecondition` with `x-leader-id` /
    /// `x-leader-addr` metadata when that replica is not the leader (any more).
    pub async fn forward_write(
        &self,
        leader_addr: &str,
        commands: Vec<Vec<u8>>,
    ) -> Result<(LogId, Vec<Vec<u8>>), Status> {
        self.shared.metrics.forwarded_writes.inc_by(commands.len() as u64);
        let mut client =
            self.client(leader_addr).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let sent = commands.len();
        let request = self.unary_request(pb::ForwardWriteRequest { commands });
        let response =
            bounded(self.shared.options.rpc_timeout, client.forward_write(request)).await?;
        let response = response.into_inner();
        let log_id = response
            .log_id
            .ok_or_else(|| {
                Status::internal("leader answered ForwardWrite without ForwardWriteResponse.log_id")
            })
            .and_then(|id| {
                LogId::from_proto(id).map_err(|e| {
                    Status::internal(format!(
                        "leader answered ForwardWrite with a malformed log id: {e}"
                    ))
                })
            })?;
        if response.responses.len() != sent {
            return Err(Status::internal(format!(
                "leader answered ForwardWrite with {} responses for {sent} commands",
                response.responses.len()
            )));
        }
        Ok((log_id, response.responses))
    }

    /// Asks the leader at `leader_addr` for the log id a linearizable read must wait for,
    /// confirmed by the leader with a quorum (`None`: the log is empty).
    ///
    /// # Errors
    /// The gRPC status of the failure; `FailedPrecondition` with `x-leader-id` /
    /// `x-leader-addr` metadata when that replica is not the leader (any more).
    pub async fn read_index(&self, leader_addr: &str) -> Result<Option<u64>, Status> {
        let mut client =
            self.client(leader_addr).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let request = self.unary_request(pb::ReadIndexRequest {});
        let response = bounded(self.shared.options.rpc_timeout, client.read_index(request)).await?;
        read_index_of(response.into_inner())
    }

    /// Sends a leader call to the leader at `leader_addr` and returns its handler's
    /// response.
    ///
    /// # Errors
    /// The gRPC status of the failure; `FailedPrecondition` with `x-leader-id` /
    /// `x-leader-addr` metadata when that replica is not the leader (any more),
    /// `Unimplemented` when it has no leader handler installed.
    pub async fn leader_call(
        &self,
        leader_addr: &str,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, Status> {
        self.shared.metrics.forwarded_leader_calls.inc();
        let mut client =
            self.client(leader_addr).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let request = self.unary_request(pb::LeaderCallRequest { request });
        let response =
            bounded(self.shared.options.rpc_timeout, client.leader_call(request)).await?;
        Ok(response.into_inner().response)
    }

    /// Asks the replica at `addr` which command-format version its build applies
    /// ([`StateMachine::supported_version`](crate::StateMachine::supported_version)); a
    /// build from before the question existed answers `Unimplemented`, read as 0.
    ///
    /// # Errors
    /// The gRPC status of any other failure (unreachable, timed out, refused).
    pub async fn supported_version(&self, addr: &str) -> Result<u32, Status> {
        let mut client = self.client(addr).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let request = self.unary_request(pb::NodeInfoRequest {});
        match bounded(self.shared.options.rpc_timeout, client.node_info(request)).await {
            Ok(response) => Ok(response.into_inner().supported_version),
            Err(status) if status.code() == Code::Unimplemented => Ok(0),
            Err(status) => Err(status),
        }
    }

    /// Asks the replica at `addr` to campaign at once (leadership hand-over by this
    /// replica, `leader_id`, leading `term`).
    ///
    /// # Errors
    /// The gRPC status of the failure: `FailedPrecondition` when that replica does not
    /// follow this one in `term`, `Unimplemented` from a build without hand-over.
    pub async fn timeout_now(
        &self,
        addr: &str,
        leader_id: NodeId,
        term: u64,
    ) -> Result<(), Status> {
        let mut client = self.client(addr).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let request = self.unary_request(pb::TimeoutNowRequest { leader_id, term });
        bounded(self.shared.options.rpc_timeout, client.timeout_now(request)).await?;
        Ok(())
    }

    /// A request carrying the RPC timeout as its gRPC deadline.
    fn unary_request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.shared.options.rpc_timeout);
        request
    }

    /// A gRPC client on the pooled channel of `addr`.
    fn client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, ClientError> {
        let channel = self.channel(addr)?;
        Ok(RaftServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// The pooled channel of `addr`, created (unconnected) on first use.
    fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut channels = self.shared.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let dial = self.shared.options.dial_overrides.get(addr).map_or(addr, String::as_str);
        let uri = if dial.contains("://") { dial.to_string() } else { format!("https://{dial}") };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| ClientError::InvalidAddress {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?
            .connect_timeout(self.shared.options.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_with_connector_lazy(self.shared.connector.clone());
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peers = self.shared.channels.lock().map(|c| c.len()).unwrap_or_default();
        f.debug_struct("Network")
            .field("options", &self.shared.options)
            .field("peers", &peers)
            .finish_non_exhaustive()
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        let client = self.client(&node.addr);
        if let Err(error) = &client {
            tracing::warn!(%error, target, "cannot make a transport client for replica");
        }
        PeerClient {
            target,
            addr: node.addr.clone(),
            client,
            options: self.shared.options.clone(),
            fenced_term: Arc::clone(&self.shared.fenced_term),
            log_durability: self.shared.log_durability.get().cloned(),
            timeline: self.shared.metrics.timeline.clone(),
        }
    }
}

// === impl PeerClient ===

impl PeerClient {
    /// The peer's replica id.
    pub fn target(&self) -> NodeId {
        self.target
    }

    /// The peer's transport address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The deadline of one unary RPC: openraft's soft TTL or the RPC timeout, whichever
    /// is shorter, so the call gives up cleanly before openraft drops it.
    fn deadline(&self, option: &RPCOption) -> Duration {
        option.soft_ttl().min(self.options.rpc_timeout)
    }

    /// A clone of the gRPC client, or an unreachable failure for a bad address.
    fn grpc(&self) -> Result<RaftServiceClient<Channel>, Failure> {
        self.client.clone().map_err(Failure::Unreachable)
    }

    /// Classifies a gRPC status of `rpc`.
    fn failure(&self, rpc: RPCTypes, status: &Status) -> Failure {
        let error = ClientError::Status {
            rpc,
            target: self.target,
            addr: self.addr.clone(),
            code: status.code(),
            message: status.message().to_string(),
        };
        match status.code() {
            // Connection refused, TLS handshake failed, peer shutting down, or the peer
            // refused our identity: retrying at once would not help.
            Code::Unavailable | Code::PermissionDenied | Code::Unauthenticated => {
                Failure::Unreachable(error)
            }
            Code::DeadlineExceeded => Failure::Timeout(self.options.rpc_timeout),
            // The connection broke, e.g. because the server refused our certificate: with
            // TLS 1.3 it does so after our side of the handshake completed, so the refusal
            // surfaces as an IO error of the first request. Reconnecting at once would
            // likely fail the same way.
            _ if connection_failed(status) => Failure::Unreachable(error),
            _ => Failure::Network(error),
        }
    }

    /// A failure for a response that does not convert.
    fn malformed(&self, rpc: RPCTypes, error: &crate::convert::ConvertError) -> Failure {
        Failure::Network(ClientError::MalformedResponse {
            rpc,
            target: self.target,
            addr: self.addr.clone(),
            reason: error.to_string(),
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let sender = rpc.vote.leader_id.node_id;
        let deadline = self.deadline(&option);
        let term = rpc.vote.leader_id.term;
        let mut rpc = rpc;
        if let Some(durability) = &self.log_durability {
            rpc.leader_commit = committed_to_tell(&rpc, durability.durable_through());
        }
        let result = async {
            if term > 0 && self.fenced_term.load(Ordering::Relaxed) == term {
                return Err(Failure::Unreachable(ClientError::Fenced { term }));
            }
            let mut client = self.grpc()?;
            let carried = span(&rpc.entries, |e| e.log_id.index);
            let proto = rpc.into_proto();
            if let Some(fit) = entries_within(&proto, APPEND_BUDGET_BYTES) {
                return Err(Failure::TooLarge(fit));
            }
            self.timeline.mark(Step::Sent, carried.clone());
            let mut request = Request::new(proto);
            request.set_timeout(deadline);
            let response = match tokio::time::timeout(deadline, client.append_entries(request))
                .await
            {
                Err(_) => return Err(Failure::Timeout(deadline)),
                Ok(answered) => answered.map_err(|s| self.failure(RPCTypes::AppendEntries, &s))?,
            };
            let response = AppendEntriesResponse::from_proto(response.into_inner())
                .map_err(|e| self.malformed(RPCTypes::AppendEntries, &e))?;
            if matches!(response, AppendEntriesResponse::Success) {
                self.timeline.mark(Step::Acked, carried);
            }
            Ok(response)
        }
        .await;
        result.map_err(|f| f.into_rpc_error(RPCTypes::AppendEntries, sender, self.target))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest,
        option: RPCOption,
    ) -> Result<VoteResponse, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let sender = rpc.vote.leader_id.node_id;
        let deadline = self.deadline(&option);
        let result = async {
            let mut client = self.grpc()?;
            let mut request = Request::new(rpc.into_proto());
            request.set_timeout(deadline);
            let response = match tokio::time::timeout(deadline, client.vote(request)).await {
                Err(_) => return Err(Failure::Timeout(deadline)),
                Ok(answered) => answered.map_err(|s| self.failure(RPCTypes::Vote, &s))?,
            };
            VoteResponse::from_proto(response.into_inner())
                .map_err(|e| self.malformed(RPCTypes::Vote, &e))
        }
        .await;
        result.map_err(|f| f.into_rpc_error(RPCTypes::Vote, sender, self.target))
    }

    /// Not used: [`RaftNetwork::full_snapshot`] is overridden to stream whole snapshots,
    /// so openraft never sends chunks through this method.
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, openraft::error::InstallSnapshotError>>,
    > {
        Err(RPCError::Network(NetworkError::new(&ClientError::ChunkedSnapshotUnsupported)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let sender = vote.leader_id.node_id;
        // openraft's TTL here is meant for one chunk; a whole stream may take longer, so
        // it bounds each stalled chunk and the final answer instead of the whole call.
        let stall_timeout = option.hard_ttl().max(self.options.rpc_timeout);
        tokio::select! {
            biased;
            closed = cancel => Err(StreamingError::Closed(closed)),
            sent = self.stream_snapshot(vote, snapshot, stall_timeout) => {
                sent.map_err(|f| f.into_streaming_error(sender, self.target))
            }
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(backoff_delays())
    }
}

// === impl Failure ===

impl Failure {
    /// The openraft error of a unary RPC.
    fn into_rpc_error<E: std::error::Error>(
        self,
        action: RPCTypes,
        sender: NodeId,
        target: NodeId,
    ) -> RPCError<NodeId, Node, E> {
        match self {
            Failure::Timeout(timeout) => {
                RPCError::Timeout(Timeout { action, id: sender, target, timeout })
            }
            Failure::Unreachable(error) => RPCError::Unreachable(Unreachable::new(&error)),
            Failure::Network(error) => RPCError::Network(NetworkError::new(&error)),
            Failure::TooLarge(entries) => {
                RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(entries))
            }
        }
    }

    /// The openraft error of a snapshot stream.
    fn into_streaming_error(
        self,
        sender: NodeId,
        target: NodeId,
    ) -> StreamingError<TypeConfig, Fatal<NodeId>> {
        match self {
            Failure::Timeout(timeout) => StreamingError::Timeout(Timeout {
                action: RPCTypes::InstallSnapshot,
                id: sender,
                target,
                timeout,
            }),
            Failure::Unreachable(error) => StreamingError::Unreachable(Unreachable::new(&error)),
            Failure::Network(error) => StreamingError::Network(NetworkError::new(&error)),
            Failure::TooLarge(_) => StreamingError::Network(NetworkError::new(&AnyError::error(
                "snapshot chunk exceeds the transport's message limit",
            ))),
        }
    }
}

/// Whether `status` was caused by the connection failing underneath the call: an IO or
/// TLS error in its sources (a TLS alert refusing our certificate, a reset, an EOF).
fn connection_failed(status: &Status) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = next {
        if error.is::<std::io::Error>() || error.is::<rustls::Error>() {
            return true;
        }
        next = error.source();
    }
    false
}

/// Runs a unary call with a client-side deadline (the server sees it as `grpc-timeout`).
async fn bounded<T>(
    deadline: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<tonic::Response<T>, Status> {
    tokio::time::timeout(deadline, call).await.unwrap_or_else(|_| {
        Err(Status::deadline_exceeded(format!("no answer within {deadline:?}")))
    })
}

/// Delays between attempts to reach an unreachable peer: exponential from
/// [`BACKOFF_INITIAL`] to [`BACKOFF_MAX`], each jittered.
fn backoff_delays() -> impl Iterator<Item = Duration> + Send + 'static {
    std::iter::successors(Some(BACKOFF_INITIAL), |delay| Some((*delay * 2).min(BACKOFF_MAX)))
        .map(jitter)
}

/// Spreads `delay` over `[delay/2, delay]` so peers do not retry in lockstep.
fn jitter(delay: Duration) -> Duration {
    let half = delay / 2;
    half + half.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_jitter_up_to_the_cap() {
        let delays: Vec<Duration> = backoff_delays().take(12).collect();
        let bases = [50, 100, 200, 400, 800, 1000, 1000, 1000, 1000, 1000, 1000, 1000];
        for (delay, base) in delays.iter().zip(bases) {
            let base = Duration::from_millis(base);
            assert!(
                *delay >= base / 2 && *delay <= base,
                "{delay:?} outside [{:?}, {base:?}]",
                base / 2
            );
        }
    }

    #[test]
    fn snapshot_chunks_carry_the_header_first_and_the_data_hash_last() {
        use sha2::Digest as _;
        let vote = Vote::new_committed(4, 2).into_proto();
        let meta = pb::SnapshotMeta { snapshot_id: "4-9-1".into(), ..Default::default() };
        for (len, chunk_bytes, count) in [(0, 4, 1), (3, 4, 1), (8, 4, 2), (9, 4, 3), (5, 0, 5)] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let chunks: Vec<pb::SnapshotChunk> =
                snapshot_chunks(vote, meta.clone(), &data, chunk_bytes).collect();
            assert_eq!(chunks.len(), count, "{len} bytes in chunks of {chunk_bytes}");
            assert_eq!(chunks[0].vote, Some(vote));
            assert_eq!(chunks[0].meta.as_ref(), Some(&meta));
            assert!(chunks[1..].iter().all(|c| c.vote.is_none() && c.meta.is_none()));
            let sent: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
            assert_eq!(sent, data);
            let (last, rest) = chunks.split_last().expect("one chunk at least");
            assert_eq!(last.data_sha256, sha2::Sha256::digest(&data).to_vec());
            assert!(rest.iter().all(|c| c.data_sha256.is_empty()), "the hash comes last");
        }
    }

    #[test]
    fn followers_hear_of_no_commit_beyond_the_leaders_durable_log() {
        let id = |index| LogId::new(openraft::CommittedLeaderId::new(3, 1), index);
        let entry = |index| crate::types::Entry {
            log_id: id(index),
            payload: openraft::EntryPayload::Blank,
        };
        let request =
            |prev: Option<u64>, entries: &[u64], committed: Option<u64>| AppendEntriesRequest {
                vote: Vote::new_committed(3, 1),
                prev_log_id: prev.map(id),
                entries: entries.iter().map(|i| entry(*i)).collect(),
                leader_commit: committed.map(id),
            };
        // (prev, entries, committed, durable through) → committed told.
        type Case = (Option<u64>, &'static [u64], Option<u64>, u64, Option<u64>);
        let cases: [Case; 8] = [
            // Durable through the commit: told as it is.
            (Some(9), &[10], Some(9), 9, Some(9)),
            (Some(9), &[], Some(9), u64::MAX, Some(9)),
            (None, &[], None, 0, None),
            // The commit runs ahead of the leader's disk: the newest carried id under it.
            (Some(9), &[10, 11], Some(11), 10, Some(10)),
            (Some(9), &[10, 11], Some(11), 9, Some(9)),
            (Some(9), &[], Some(10), 9, Some(9)),
            // Nothing carried is durable: no commit at all.
            (Some(9), &[10], Some(10), 8, None),
            (None, &[1, 2], Some(2), 0, None),
        ];
        for (prev, entries, committed, durable, told) in cases {
            let rpc = request(prev, entries, committed);
            assert_eq!(
                committed_to_tell(&rpc, durable).map(|c| c.index),
                told,
                "prev {prev:?}, entries {entries:?}, committed {committed:?}, durable {durable}"
            );
        }
    }

    #[test]
    fn default_options_are_the_documented_ones() {
        let options = TransportOptions::default();
        assert_eq!(options.connect_timeout, Duration::from_secs(1));
        assert_eq!(options.rpc_timeout, Duration::from_secs(2));
        assert_eq!(options.snapshot_chunk_bytes, 1 << 20);
    }

    #[test]
    fn a_read_waits_for_the_higher_of_the_read_index_and_the_read_log_id() {
        let log_id =
            |index| Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), index).into_proto());
        let answer = |read_log_id, read_index| pb::ReadIndexResponse { read_log_id, read_index };
        assert_eq!(read_index_of(answer(log_id(7), 9)).expect("valid"), Some(9));
        assert_eq!(read_index_of(answer(log_id(7), 5)).expect("valid"), Some(7));
        // A leader that does not set read_index: its read log id.
        assert_eq!(read_index_of(answer(log_id(7), 0)).expect("valid"), Some(7));
        assert_eq!(read_index_of(answer(None, 0)).expect("valid"), None);
        assert_eq!(read_index_of(answer(None, 4)).expect("valid"), Some(4));
    }

    #[test]
    fn an_append_over_the_budget_names_how_many_entries_fit() {
        let entry = |bytes: usize| pb::Entry {
            log_id: None,
            payload: Some(pb::entry::Payload::Command(vec![7; bytes])),
        };
        let request = |sizes: &[usize]| pb::AppendEntriesRequest {
            entries: sizes.iter().map(|&n| entry(n)).collect(),
            ..Default::default()
        };
        assert_eq!(entries_within(&request(&[100, 100]), 1000), None);
        assert_eq!(entries_within(&request(&[400, 400, 400]), 1000), Some(2));
        // One entry over the budget is still sent (the peer refuses it); two are split.
        assert_eq!(entries_within(&request(&[5000]), 1000), None);
        assert_eq!(entries_within(&request(&[5000, 10]), 1000), Some(1));
    }
}
