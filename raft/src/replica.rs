//! One replica of the group: opens its durable storage, runs openraft, serves the
//! replica transport, and offers the application writes (forwarded to the leader when
//! this replica does not lead), linearizable or stale reads, membership changes, and
//! leader calls (served by the leader's [`LeaderHandler`], forwarded like writes).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use openraft::{ChangeMembers, ServerState, SnapshotPolicy};
use serde_bytes::ByteBuf;
use tokio::sync::watch;
use tonic::Code;

use crate::leader::{KnownLeader, known_leader, leader_moved_from, leader_read_index};
use crate::leader_call::{self, LeaderHandler, LeaderHandlerSlot};
use crate::log_store::{LogStore, open_database};
use crate::metrics::ConsensusMetrics;
use crate::network::client::{Network, TransportOptions};
use crate::network::server::{PeerPolicy, RaftTransportService};
use crate::proposer::{Pending, ProposeError, Proposer};
use crate::state_machine::{StateMachine, StateMachineStore};
use crate::types::{Command, Node, NodeId, Raft, RaftMetrics};

mod versions;
pub use versions::{ClusterVersion, NoAnswer, VoterVersion};

/// Time a new replica has to acknowledge its first replication message.
const CATCH_UP_FIRST_CONTACT: Duration = Duration::from_secs(10);
/// Time one write attempt has to commit.
const WRITE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a forwarded write waits to be applied on the replica that forwarded it.
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a membership change has to commit.
const MEMBERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a new replica has to catch up with the leader's log.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest of each of the two waits of a stopping leader's hand-over (a voter catching up,
/// the successor being elected).
const HAND_OVER_STEP: Duration = Duration::from_secs(2);
/// A leader that heard from no quorum for this many upper election timeouts steps down.
const CHECK_QUORUM_TIMEOUTS: u32 = 2;

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Confirmed with the leader and a quorum, and served once this replica has applied
    /// everything committed before the read started.
    #[default]
    Linearizable,
    /// Whatever this replica has applied, without asking anyone.
    Stale,
}

/// Default leader heartbeat period: the [`Timing::Lan`] profile's. openraft 0.9 also
/// uses it as the deadline of every AppendEntries call (three quarters of it, for the call
/// itself) and ticks its timers every one and a half of it.
///
/// Sized for replicas on one network (loopback, a LAN, one cloud region): with it and
/// [`DEFAULT_ELECTION_TIMEOUT`] a 10-minute soak at 1,000 writers on 2 cores sees no
/// election (`federator-chaos bench soak`). Round trips of tens of ms need
/// [`Timing::Wan`].
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(25);
/// Default election timeout range (the [`Timing::Lan`] profile's). A follower campaigns
/// after hearing nothing from the leader for the upper bound (the leader's lease) plus its
/// own random timeout in the range: 240–320 ms with these values, plus up to one timer
/// tick.
pub const DEFAULT_ELECTION_TIMEOUT: (Duration, Duration) =
    (Duration::from_millis(80), Duration::from_millis(160));

/// A raft timing profile: heartbeat and election timeout for a kind of network.
///
/// openraft 0.9 bounds every AppendEntries call by the heartbeat period (the call itself
/// by three quarters of it), so the heartbeat must exceed the slowest round trip between
/// replicas or nothing commits; a follower campaigns after the leader's lease (the upper
/// election timeout) plus its own random timeout, so a leader that crashed is replaced
/// after 2–3 upper timeouts (a leader that stops cleanly or loses its quorum steps down
/// first, see [`Replica::shutdown`] and check-quorum).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Timing {
    /// Replicas on one network (loopback, a LAN, one cloud zone): round trips under
    /// 10 ms. Heartbeat 25 ms, election timeout 80–160 ms: a crashed leader is replaced in
    /// 240–320 ms.
    Lan,
    /// Replicas across zones or regions: round trips up to ~150 ms (calls time out at
    /// 187 ms). Heartbeat 250 ms, election timeout 1–2 s: a crashed leader is replaced in
    /// 3–4 s.
    #[default]
    Wan,
}

impl Timing {
    /// The heartbeat period.
    #[must_use]
    pub const fn heartbeat(self) -> Duration {
        match self {
            Self::Lan => DEFAULT_HEARTBEAT,
            Self::Wan => Duration::from_millis(250),
        }
    }

    /// The election timeout range.
    #[must_use]
    pub const fn election_timeout(self) -> (Duration, Duration) {
        match self {
            Self::Lan => DEFAULT_ELECTION_TIMEOUT,
            Self::Wan => (Duration::from_millis(1_000), Duration::from_millis(2_000)),
        }
    }

    /// The profile's name in configuration files.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Lan => "lan",
            Self::Wan => "wan",
        }
    }

    /// The profile called `name` (`lan` or `wan`).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Lan, Self::Wan].into_iter().find(|t| t.name() == name)
    }
}

/// Settings of one replica.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// This replica's id, unique in the group.
    pub id: NodeId,
    /// Address other replicas reach this replica's transport at (`host:port`).
    pub raft_addr: String,
    /// Directory of the durable log, vote and snapshots.
    pub data_dir: PathBuf,
    /// Leader heartbeat period.
    pub heartbeat_interval: Duration,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min: Duration,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many entries were applied since the last one, plus a
    /// share of it that depends on the replica's id (see [`Self::snapshot_interval`]).
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot, so slow followers need no snapshot.
    pub keep_entries_after_snapshot: u64,
    /// Entries per AppendEntries message at most.
    pub max_entries_per_append: u64,
    /// Transport timeouts and chunk size.
    pub transport: TransportOptions,
    /// How many times a write is retried when the leader changes under it.
    pub write_retries: u32,
}

impl ReplicaConfig {
    /// Defaults for a replica with the given id, address and data directory.
    #[must_use]
    pub fn new(id: NodeId, raft_addr: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            id,
            raft_addr: raft_addr.into(),
            data_dir: data_dir.into(),
            heartbeat_interval: DEFAULT_HEARTBEAT,
            election_timeout_min: DEFAULT_ELECTION_TIMEOUT.0,
            election_timeout_max: DEFAULT_ELECTION_TIMEOUT.1,
            snapshot_after_entries: 20_000,
            keep_entries_after_snapshot: 1_000,
            max_entries_per_append: 512,
            transport: TransportOptions::default(),
            write_retries: 5,
        }
    }

    /// Entries applied between two snapshots of this replica: `snapshot_after_entries`
    /// plus (id mod 8) sixteenths of it. Replicas of one group thereby snapshot at
    /// different indexes: building and storing a snapshot costs a replica CPU and disk
    /// for a moment, and if every replica paid it at the same index the whole quorum
    /// would stall at once (under full load, long enough for an election).
    #[must_use]
    pub fn snapshot_interval(&self) -> u64 {
        let base = self.snapshot_after_entries.max(1);
        base.saturating_add(base / 16 * (self.id % 8))
    }

    fn openraft_config(&self) -> Result<openraft::Config, ReplicaError> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = openraft::Config {
            cluster_name: "federator".to_string(),
            heartbeat_interval: millis(self.heartbeat_interval),
            election_timeout_min: millis(self.election_timeout_min),
            election_timeout_max: millis(self.election_timeout_max),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_interval()),
            max_in_snapshot_log_to_keep: self.keep_entries_after_snapshot,
            max_payload_entries: self.max_entries_per_append,
            install_snapshot_timeout: millis(self.transport.rpc_timeout).max(1_000) * 10,
            ..openraft::Config::default()
        };
        config.validate().map_err(|e| ReplicaError::Config(e.to_string()))
    }
}

/// What a committed write returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Log index the command was committed at.
    pub index: u64,
    /// The state machine's response.
    pub response: Vec<u8>,
}

/// A write queued by [`Replica::queue_here`].
#[must_use = "a queued write's outcome is known only once it is awaited"]
pub struct QueuedWrite {
    pending: Pending,
    this: NodeId,
}

impl QueuedWrite {
    /// Waits until the write is committed and applied here (or refused).
    ///
    /// # Errors
    /// This replica does not lead (or stopped leading), raft refused the write, or it did
    /// not commit in time; the outcome is then unknown.
    pub async fn outcome(self) -> Result<WriteOutcome, ReplicaError> {
        let proposed = tokio::time::timeout(WRITE_ATTEMPT_TIMEOUT, self.pending.outcome())
            .await
            .map_err(|_| ReplicaError::Timeout(WRITE_ATTEMPT_TIMEOUT, "the write to commit"))?
            .map_err(|e| queued_write_error(self.this, e))?;
        Ok(WriteOutcome {
            index: proposed.log_id.index,
            response: proposed.responses.into_iter().next().unwrap_or_default(),
        })
    }
}

fn queued_write_error(this: NodeId, error: ProposeError) -> ReplicaError {
    match error {
        ProposeError::ForwardToLeader(forward) => not_leader(this, forward),
        ProposeError::Forward { leader_id, leader_addr, message, .. } => {
            ReplicaError::Forward { leader_id, leader_addr, message }
        }
        ProposeError::Refused(e) => ReplicaError::Raft(e),
        ProposeError::Stopped(e) => ReplicaError::Stopped(e),
    }
}

/// Raft's "not the leader" as a replica error: the leader when it is known, else none.
fn not_leader(this: NodeId, forward: ForwardToLeader<NodeId, Node>) -> ReplicaError {
    match (forward.leader_id, forward.leader_node) {
        (Some(leader_id), Some(node)) => {
            ReplicaError::NotLeader { this, leader_id, leader_addr: node.addr }
        }
        _ => ReplicaError::NoLeader,
    }
}

/// Why a stopping leader did not hand over (its followers then elect after its lease).
#[derive(Debug, thiserror::Error)]
enum HandOverError {
    /// No voter held the leader's whole log in time.
    #[error("no voter caught up: {0}")]
    NoVoterCaughtUp(String),
    /// It lost the lead while waiting.
    #[error("no longer leads")]
    NoLongerLeads,
    /// The chosen voter has no address in the membership.
    #[error("replica {0} has no address")]
    NoAddress(NodeId),
    /// The chosen voter refused to campaign.
    #[error("replica {0} refused to campaign: {1}")]
    Refused(NodeId, String),
    /// It campaigned, and no new leader was heard of in time.
    #[error("replica {0} campaigned, no successor known: {1}")]
    NoSuccessor(NodeId, String),
}

/// Why a new replica did not catch up with the leader's log
/// ([`Replica::add_member`]); the message continues "replica ID at ADDR …".
#[derive(Debug, thiserror::Error)]
enum CatchUpError {
    /// It acknowledged no replication message.
    #[error("did not answer within {within:?}")]
    NoAnswer {
        /// How long the leader waited for the first acknowledgement.
        within: Duration,
    },
    /// It answered, and did not reach the leader's index in time.
    #[error("did not catch up to index {index} within {within:?}")]
    Behind {
        /// The index it had to reach.
        index: u64,
        /// How long the leader waited.
        within: Duration,
    },
}

/// Errors of replica operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// The raft settings are inconsistent.
    #[error("invalid raft settings: {0}")]
    Config(String),
    /// The durable store could not be opened or read.
    #[error("storage: {0}")]
    Storage(String),
    /// No leader is known right now (election in progress, or no quorum).
    #[error("no leader is known; the group may be electing or without quorum")]
    NoLeader,
    /// The operation must run on the leader, and this replica is not it.
    #[error("replica {this} is not the leader; the leader is {leader_id} at {leader_addr}")]
    NotLeader {
        /// This replica.
        this: NodeId,
        /// The leader this replica knows.
        leader_id: NodeId,
        /// The leader's transport address.
        leader_addr: String,
    },
    /// The group has not been initialized yet.
    #[error("the replica group is not initialized; run `federator raft init` on one replica")]
    NotInitialized,
    /// Forwarding to the leader failed.
    #[error("forwarding to leader {leader_id} at {leader_addr} failed: {message}")]
    Forward {
        /// Leader id.
        leader_id: NodeId,
        /// Leader address.
        leader_addr: String,
        /// Transport error.
        message: String,
    },
    /// The membership change was refused.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// Timed out waiting for the group.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    /// The replica is shutting down or its raft core stopped.
    #[error("the replica is shutting down: {0}")]
    Stopped(String),
    /// Any other raft error.
    #[error("raft: {0}")]
    Raft(String),
    /// A leader call reached the leader, but it has no [`LeaderHandler`] installed (or,
    /// when forwarded, runs a version without leader calls).
    #[error(
        "replica {replica} leads but has no leader handler installed; the application must \
         install one on every replica with `set_leader_handler`"
    )]
    NoLeaderHandler {
        /// The leader that could not handle the call.
        replica: NodeId,
    },
    /// [`Replica::set_leader_handler`] was called when a handler was installed already.
    #[error("a leader handler is already installed on this replica")]
    LeaderHandlerAlreadySet,
    /// This replica leads, and its [`LeaderHandler`] failed (panicked) on the call.
    #[error("leader call failed: {0}")]
    LeaderHandler(String),
    /// A write forwarded through this replica committed, but this replica did not apply
    /// it in time: it lags or stopped. The write took effect; read it elsewhere.
    #[error(
        "the write committed at log index {index}, but this replica has not applied it \
         ({reason}); it took effect — read it through another replica"
    )]
    NotAppliedHere {
        /// The committed entry.
        index: u64,
        /// Why waiting for it ended.
        reason: String,
    },
    /// The command needs a command-format version some voter's build does not apply
    /// ([`StateMachine::required_version`]); it was not proposed.
    #[error(
        "this command needs every voter to apply command-format version {required}, and \
         {behind}: upgrade those replicas first (`federator status` shows each one's \
         version)"
    )]
    VersionGate {
        /// The version the command needs.
        required: u32,
        /// The voters behind, and what each answered.
        behind: String,
    },
}

/// The error of a forwarded call abandoned because `moved` became leader while it waited
/// on `leader_id` (retried at the new leader; its outcome at the old one is unknown).
pub(crate) fn rerouted(leader_id: NodeId, leader_addr: String, moved: NodeId) -> ReplicaError {
    ReplicaError::Forward {
        leader_id,
        leader_addr,
        message: format!("replica {moved} became leader while the call waited; re-routed"),
    }
}

/// One running replica of the group.
pub struct Replica<S: StateMachine> {
    id: NodeId,
    raft_addr: String,
    raft: Raft,
    state: StateMachineStore<S>,
    network: Network,
    metrics: ConsensusMetrics,
    write_retries: u32,
    leader_handler: LeaderHandlerSlot,
    proposer: Proposer,
    /// The upper election timeout (the leader's lease): bounds the hand-over on shutdown.
    election_timeout_max: Duration,
}

impl<S: StateMachine> Clone for Replica<S> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            raft_addr: self.raft_addr.clone(),
            raft: self.raft.clone(),
            state: self.state.clone(),
            network: self.network.clone(),
            metrics: self.metrics.clone(),
            write_retries: self.write_retries,
            leader_handler: self.leader_handler.clone(),
            proposer: self.proposer.clone(),
            election_timeout_max: self.election_timeout_max,
        }
    }
}

// === impl Replica ===

impl<S: StateMachine> Replica<S> {
    /// Opens the replica's storage under `config.data_dir` (recovering log, vote and the
    /// last snapshot), and starts its raft core. The transport is served separately by
    /// [`Replica::serve_transport`].
    ///
    /// # Errors
    /// Invalid settings, or storage that cannot be opened.
    pub async fn open(
        config: ReplicaConfig,
        state_machine: S,
        client_tls: Arc<rustls::ClientConfig>,
        metrics: ConsensusMetrics,
    ) -> Result<Self, ReplicaError> {
        let raft_config = Arc::new(config.openraft_config()?);
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            ReplicaError::Storage(format!("create {}: {e}", config.data_dir.display()))
        })?;
        // The log and snapshots are the whole replicated state: only the owner reads them.
        restrict(&config.data_dir, 0o700)?;
        let db_path = config.data_dir.join("raft.redb");
        let db = open_database(&db_path).map_err(|e| ReplicaError::Storage(e.to_string()))?;
        restrict(&db_path, 0o600)?;
        let log = LogStore::new(db.clone(), metrics.clone())
            .map_err(|e| ReplicaError::Storage(e.to_string()))?;
        let snapshots = config.data_dir.join("snapshots");
        let state = StateMachineStore::open(db, &snapshots, state_machine, metrics.clone())
            .map_err(|e| ReplicaError::Storage(e.to_string()))?;
        restrict(&snapshots, 0o700)?;
        let network = Network::new(client_tls, config.transport.clone(), metrics.clone());
        let raft = Raft::new(config.id, raft_config, network.clone(), log, state.clone())
            .await
            .map_err(|e| ReplicaError::Raft(e.to_string()))?;
        let proposer =
            Proposer::start(raft.clone(), config.id, Some(network.clone()), metrics.clone());
        let replica = Self {
            id: config.id,
            raft_addr: config.raft_addr,
            raft,
            state,
            network,
            metrics,
            write_retries: config.write_retries,
            leader_handler: LeaderHandlerSlot::new(),
            proposer,
            election_timeout_max: config.election_timeout_max,
        };
        replica.spawn_metrics_refresher();
        replica.spawn_check_quorum(config.election_timeout_max * CHECK_QUORUM_TIMEOUTS);
        Ok(replica)
    }

    /// This replica's id.
    #[must_use]
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This replica's transport address.
    #[must_use]
    pub fn raft_addr(&self) -> &str {
        &self.raft_addr
    }

    /// The openraft handle, for status and tests.
    #[must_use]
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The consensus metrics of this replica.
    #[must_use]
    pub fn consensus_metrics(&self) -> &ConsensusMetrics {
        &self.metrics
    }

    /// A watch of openraft's metrics (role, term, indexes, membership, replication).
    #[must_use]
    pub fn metrics(&self) -> watch::Receiver<RaftMetrics> {
        self.raft.metrics()
    }

    /// The applied state, without any freshness guarantee.
    #[must_use]
    pub fn state(&self) -> &StateMachineStore<S> {
        &self.state
    }

    /// Serves the replica transport on `listener` with mTLS until `shutdown` resolves.
    /// Peers must present a certificate `server_tls` accepts; `peer_policy`, when given,
    /// further restricts which certificates may send raft RPCs. Leader calls are served
    /// with this replica's [`LeaderHandler`], whether it is installed before or after.
    ///
    /// # Errors
    /// The server failed.
    pub async fn serve_transport(
        &self,
        listener: tokio::net::TcpListener,
        server_tls: Arc<rustls::ServerConfig>,
        peer_policy: Option<PeerPolicy>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ReplicaError> {
        let mut service = RaftTransportService::new(self.raft.clone())
            .with_supported_version(S::supported_version())
            .with_leader_handler(self.leader_handler.clone())
            .with_proposer(self.proposer.clone())
            .with_snapshot_files(self.state.snapshot_files());
        if let Some(policy) = peer_policy {
            service = service.with_peer_policy(policy);
        }
        crate::network::server::serve(listener, server_tls, service, shutdown)
            .await
            .map_err(|e| ReplicaError::Raft(format!("transport server: {e}")))
    }

    /// Installs the application's handler of leader calls: while this replica leads, it
    /// answers [`Replica::call_leader`] made here or on any other replica. Install it on
    /// every replica, since any may become the leader; it may be installed before or after
    /// [`Replica::serve_transport`]. Only the first call installs a handler.
    ///
    /// # Errors
    /// [`ReplicaError::LeaderHandlerAlreadySet`] when a handler is installed already; that
    /// one stays and `handler` is dropped.
    pub fn set_leader_handler(&self, handler: Arc<dyn LeaderHandler>) -> Result<(), ReplicaError> {
        self.leader_handler.install(handler).map_err(|_| ReplicaError::LeaderHandlerAlreadySet)
    }

    /// The slot of this replica's leader handler, for serving leader calls from a
    /// [`RaftTransportService`] of one's own
    /// ([`RaftTransportService::with_leader_handler`]).
    #[must_use]
    pub fn leader_handler_slot(&self) -> &LeaderHandlerSlot {
        &self.leader_handler
    }

    /// Has the leader's [`LeaderHandler`] handle `request` and returns its response,
    /// without going through the log: runs the handler here if this replica leads (by its
    /// own metrics), else forwards the call to the leader it knows, retrying like
    /// [`Replica::write`] when no leader is known or the leader changes.
    ///
    /// A local call is not bounded in time; each forwarded attempt is bounded by the
    /// transport's RPC timeout. "Leads" is this replica's own view: a deposed leader that
    /// has not noticed yet may still handle a call, and a call may be handled more than
    /// once (a forwarded attempt that timed out may have run), so handlers must tolerate
    /// both.
    ///
    /// # Errors
    /// [`ReplicaError::NoLeaderHandler`] when the leader has no handler installed (this
    /// replica's own, when it leads, is checked at once; a forwarded call is retried first);
    /// [`ReplicaError::LeaderHandler`] when this replica leads and its handler panicked;
    /// [`ReplicaError::NoLeader`] or [`ReplicaError::Forward`] when no leader could be
    /// reached within the retries.
    #[tracing::instrument(level = "debug", skip_all, fields(replica = self.id, bytes = request.len()))]
    pub async fn call_leader(&self, request: Vec<u8>) -> Result<Vec<u8>, ReplicaError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self.known_leader() {
                KnownLeader::This => {
                    let handler = self
                        .leader_handler
                        .get()
                        .ok_or(ReplicaError::NoLeaderHandler { replica: self.id })?;
                    return leader_call::run(&handler, request)
                        .await
                        .map_err(|error| ReplicaError::LeaderHandler(error.to_string()));
                }
                KnownLeader::Other { leader_id, leader_addr } => {
                    let call = self.network.leader_call(&leader_addr, request.clone());
                    tokio::select! {
                        result = call => match result {
                            Ok(response) => return Ok(response),
                            Err(status) if status.code() == Code::Unimplemented => {
                                ReplicaError::NoLeaderHandler { replica: leader_id }
                            }
                            Err(status) => ReplicaError::Forward {
                                leader_id,
                                leader_addr,
                                message: status.message().to_string(),
                            },
                        },
                        moved = leader_moved_from(&self.raft, leader_id) => {
                            self.metrics.forwards_rerouted.inc();
                            rerouted(leader_id, leader_addr, moved)
                        }
                    }
                }
                KnownLeader::Unknown => ReplicaError::NoLeader,
            };
            if attempt > self.write_retries {
                return Err(error);
            }
            tracing::debug!(%error, attempt, "leader call not accepted yet, retrying");
            self.wait_for_leader(Duration::from_millis(50 * u64::from(attempt))).await;
        }
    }

    /// The leader as this replica's metrics know it.
    fn known_leader(&self) -> KnownLeader {
        known_leader(&self.raft, self.id)
    }

    /// Initializes a new group with `members` (id → transport address) as its voters;
    /// an empty map means this replica alone.
    ///
    /// # Errors
    /// The group is already initialized, or this replica is not among the members.
    pub async fn initialize(&self, members: BTreeMap<NodeId, String>) -> Result<(), ReplicaError> {
        let members: BTreeMap<NodeId, Node> = if members.is_empty() {
            BTreeMap::from([(self.id, Node::new(self.raft_addr.clone()))])
        } else {
            members.into_iter().map(|(id, addr)| (id, Node::new(addr))).collect()
        };
        self.raft.initialize(members).await.map_err(|e| match e {
            RaftError::APIError(e) => ReplicaError::Membership(e.to_string()),
            RaftError::Fatal(e) => ReplicaError::Stopped(e.to_string()),
        })
    }

    /// Whether this replica has a log (was initialized or joined a group).
    ///
    /// # Errors
    /// The raft core stopped.
    pub async fn is_initialized(&self) -> Result<bool, ReplicaError> {
        self.raft.is_initialized().await.map_err(|e| ReplicaError::Stopped(e.to_string()))
    }

    /// Proposes `command`, on this replica if it leads or forwarded to the leader, and
    /// waits until it is committed and applied. Retries while no leader took it (none
    /// known, the one called does not lead or cannot be reached); never once a leader may
    /// have proposed it: a write forwarded to a leader that hangs, or that is replaced
    /// while the write waits there, fails at once with its outcome unknown, and the caller
    /// retries (proposing it again here could apply it twice).
    ///
    /// # Errors
    /// No leader took it within the retries, or one may have and did not answer; the
    /// outcome of the command is then unknown (it may still commit).
    #[tracing::instrument(level = "debug", skip_all, fields(replica = self.id, bytes = command.len()))]
    pub async fn write(&self, command: Vec<u8>) -> Result<WriteOutcome, ReplicaError> {
        self.check_cluster_version(&command).await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let proposed =
                tokio::time::timeout(WRITE_ATTEMPT_TIMEOUT, self.proposer.propose(command.clone()));
            let Ok(proposed) = proposed.await else {
                // Not committed in time (no quorum, or this replica leads a group it was
                // removed from): the outcome is unknown; let the caller decide.
                return Err(ReplicaError::Timeout(WRITE_ATTEMPT_TIMEOUT, "the write to commit"));
            };
            let error = match proposed {
                Ok(proposed) => {
                    if proposed.forwarded {
                        // Read your writes: once acknowledged here, the write is visible
                        // in this replica's state too — or the call fails.
                        self.wait_applied(proposed.log_id.index).await?;
                    }
                    return Ok(WriteOutcome {
                        index: proposed.log_id.index,
                        response: proposed.responses.into_iter().next().unwrap_or_default(),
                    });
                }
                // Not proposed anywhere (this replica's core, or the replica it forwarded
                // to, does not lead): retry once the leader is known again.
                Err(ProposeError::ForwardToLeader(_)) => ReplicaError::NoLeader,
                // Sent to the leader, no answer: proposing it again could apply it
                // twice (a second write of the same value between two others breaks a
                // register), so the caller learns the outcome is unknown and decides.
                Err(ProposeError::Forward { leader_id, leader_addr, message, maybe_proposed }) => {
                    let error = ReplicaError::Forward { leader_id, leader_addr, message };
                    if maybe_proposed {
                        return Err(error);
                    }
                    error
                }
                Err(ProposeError::Refused(e)) => return Err(ReplicaError::Raft(e)),
                Err(ProposeError::Stopped(e)) => return Err(ReplicaError::Stopped(e)),
            };
            if attempt > self.write_retries {
                return Err(error);
            }
            tracing::debug!(%error, attempt, "write not accepted yet, retrying");
            self.wait_for_leader(Duration::from_millis(50 * u64::from(attempt))).await;
        }
    }

    /// Proposes `command` on this replica only — never forwarded, never batched, never
    /// retried — and waits until it is committed and applied. For writes only the
    /// current leader may make (a deposed leader's write must fail rather than reach its
    /// successor).
    ///
    /// # Errors
    /// This replica does not lead, raft refused the write, or it did not commit within
    /// `timeout` (its outcome is then unknown).
    pub async fn propose_here(
        &self,
        command: Vec<u8>,
        timeout: Duration,
    ) -> Result<WriteOutcome, ReplicaError> {
        self.check_cluster_version(&command).await?;
        if self.network.proposals_closed() {
            // Stopping and handing over: see `hand_over`.
            return Err(ReplicaError::NoLeader);
        }
        let written =
            tokio::time::timeout(timeout, self.raft.client_write(Command::single(command)))
                .await
                .map_err(|_| ReplicaError::Timeout(timeout, "the write to commit"))?;
        match written {
            Ok(written) => Ok(WriteOutcome {
                index: written.log_id.index,
                response: written
                    .data
                    .0
                    .into_iter()
                    .next()
                    .map(ByteBuf::into_vec)
                    .unwrap_or_default(),
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(not_leader(self.id, forward))
            }
            Err(RaftError::APIError(e)) => Err(ReplicaError::Raft(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(ReplicaError::Stopped(e.to_string())),
        }
    }

    /// Queues `command` to be proposed on this replica only — never forwarded, never
    /// retried — and returns as soon as it is queued, with the write to await. Commands
    /// queued one after the other are committed in that order while this replica leads,
    /// so a caller can keep several in flight (a large upload in chunks) and still rely
    /// on their order. When leadership moves, the queued writes fail (`NotLeader`,
    /// `NoLeader`); some of them may have committed all the same.
    ///
    /// # Errors
    /// The replica is shutting down.
    pub async fn queue_here(&self, command: Vec<u8>) -> Result<QueuedWrite, ReplicaError> {
        self.check_cluster_version(&command).await?;
        let pending = self
            .proposer
            .enqueue_here(command)
            .await
            .map_err(|e| queued_write_error(self.id, e))?;
        Ok(QueuedWrite { pending, this: self.id })
    }

    /// Runs `read` on the state at the requested consistency and returns its result with
    /// the applied index it was served at.
    ///
    /// # Errors
    /// A linearizable read could not be confirmed with the leader, or this replica's raft
    /// core stopped (then no read is served, not even a stale one).
    pub async fn read<R>(
        &self,
        consistency: Consistency,
        read: impl FnOnce(&S) -> R,
    ) -> Result<(R, u64), ReplicaError> {
        // A replica whose core stopped (a storage error) no longer applies anything: its
        // state would answer stale reads forever. It refuses them instead.
        if let Err(fatal) = &self.raft.metrics().borrow().running_state {
            return Err(ReplicaError::Stopped(fatal.to_string()));
        }
        if consistency == Consistency::Linearizable {
            let read_index = self.read_index().await?;
            if let Some(index) = read_index {
                self.raft
                    .wait(Some(Duration::from_secs(10)))
                    .applied_index_at_least(Some(index), "linearizable read")
                    .await
                    .map_err(|_| {
                        ReplicaError::Timeout(Duration::from_secs(10), "apply to reach read index")
                    })?;
            }
        }
        Ok(self.state.read_with_applied(read))
    }

    /// The log index a linearizable read must wait for, confirmed by the leader with a
    /// quorum (asked over the transport when this replica does not lead).
    ///
    /// # Errors
    /// No leader could confirm within the retries.
    pub async fn read_index(&self) -> Result<Option<u64>, ReplicaError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match leader_read_index(&self.raft).await {
                Ok((_, read_index)) => return Ok(read_index),
                Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                    forward,
                ))) => match (forward.leader_id, forward.leader_node) {
                    (Some(leader_id), Some(node)) if leader_id != self.id => {
                        tokio::select! {
                            result = self.network.read_index(&node.addr) => match result {
                                Ok(index) => return Ok(index),
                                Err(status) => ReplicaError::Forward {
                                    leader_id,
                                    leader_addr: node.addr,
                                    message: status.message().to_string(),
                                },
                            },
                            moved = leader_moved_from(&self.raft, leader_id) => {
                                self.metrics.forwards_rerouted.inc();
                                rerouted(leader_id, node.addr, moved)
                            }
                        }
                    }
                    _ => ReplicaError::NoLeader,
                },
                Err(RaftError::APIError(e)) => ReplicaError::Raft(e.to_string()),
                Err(RaftError::Fatal(e)) => return Err(ReplicaError::Stopped(e.to_string())),
            };
            if attempt > self.write_retries {
                return Err(error);
            }
            self.wait_for_leader(Duration::from_millis(50 * u64::from(attempt))).await;
        }
    }

    /// Waits (bounded) until this replica has applied `index`, so that a write
    /// acknowledged through it is visible in its own state (read your writes).
    ///
    /// # Errors
    /// [`ReplicaError::NotAppliedHere`] when it did not apply the entry in time (it lags
    /// far behind, or its core stopped): the write is committed, but answering "written"
    /// would let the next stale read here miss it.
    async fn wait_applied(&self, index: u64) -> Result<(), ReplicaError> {
        self.raft
            .wait(Some(READ_YOUR_WRITES_TIMEOUT))
            .applied_index_at_least(Some(index), "a forwarded write to apply here")
            .await
            .map(|_| ())
            .map_err(|error| ReplicaError::NotAppliedHere { index, reason: error.to_string() })
    }

    /// Waits up to `timeout` for any leader to be known.
    async fn wait_for_leader(&self, timeout: Duration) {
        let mut metrics = self.raft.metrics();
        let _ = tokio::time::timeout(timeout, async {
            loop {
                if metrics.borrow_and_update().current_leader.is_some() {
                    // Give a just-elected leader a moment to commit its first entry.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    return;
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Adds replica `id` at transport address `addr`: first as a learner that receives
    /// the log (or a snapshot), then — unless `learner_only` — promotes it to voter once
    /// it has caught up. Must run on the leader.
    ///
    /// # Errors
    /// This replica does not lead, or the change was refused.
    pub async fn add_member(
        &self,
        id: NodeId,
        addr: String,
        learner_only: bool,
    ) -> Result<u64, ReplicaError> {
        self.ensure_leader()?;
        let already_member =
            self.raft.metrics().borrow().membership_config.membership().get_node(&id).is_some();
        let response = self
            .raft
            .add_learner(id, Node::new(addr.clone()), false)
            .await
            .map_err(|e| self.membership_error(e))?;
        if let Err(error) = self.wait_for_catch_up(id, response.log_id.index).await {
            if !already_member {
                // Do not leave an unreachable learner behind for the leader to chase.
                let _ = self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id]))).await;
            }
            return Err(ReplicaError::Membership(format!(
                "replica {id} at {addr} {error}; check that it runs, that the leader can reach \
                 it, and that it holds a certificate of the federation's CA{}",
                if already_member { "" } else { " (it was removed again)" }
            )));
        }
        if learner_only {
            return Ok(response.log_id.index);
        }
        self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await
    }

    /// Commits one membership change, bounded in time: a change that cannot reach a
    /// quorum (or a leader that steps down mid-change) is reported, never waited on
    /// forever. Returns the log index of the change.
    async fn change(&self, change: ChangeMembers<NodeId, Node>) -> Result<u64, ReplicaError> {
        match tokio::time::timeout(
            MEMBERSHIP_CHANGE_TIMEOUT,
            self.raft.change_membership(change, false),
        )
        .await
        {
            Ok(Ok(response)) => Ok(response.log_id.index),
            Ok(Err(error)) => Err(self.membership_error(error)),
            Err(_) => Err(ReplicaError::Timeout(
                MEMBERSHIP_CHANGE_TIMEOUT,
                "the membership change to commit",
            )),
        }
    }

    /// Waits until learner `id` has replicated up to `index`: fails if it shows no
    /// progress at all within [`CATCH_UP_FIRST_CONTACT`], or has not caught up within
    /// [`CATCH_UP_TIMEOUT`].
    async fn wait_for_catch_up(&self, id: NodeId, index: u64) -> Result<(), CatchUpError> {
        let matched = |m: &RaftMetrics| {
            m.replication.as_ref().and_then(|r| r.get(&id).copied()).flatten().map(|l| l.index)
        };
        self.raft
            .wait(Some(CATCH_UP_FIRST_CONTACT))
            .metrics(|m| matched(m).is_some(), "learner's first acknowledgement")
            .await
            .map_err(|_| CatchUpError::NoAnswer { within: CATCH_UP_FIRST_CONTACT })?;
        self.raft
            .wait(Some(CATCH_UP_TIMEOUT))
            .metrics(|m| matched(m).is_some_and(|i| i >= index), "learner to catch up")
            .await
            .map_err(|_| CatchUpError::Behind { index, within: CATCH_UP_TIMEOUT })?;
        Ok(())
    }

    /// Removes replica `id` from the group (as voter and learner). Must run on the leader.
    ///
    /// # Errors
    /// This replica does not lead, the id is unknown, or the change was refused.
    pub async fn remove_member(&self, id: NodeId) -> Result<u64, ReplicaError> {
        self.ensure_leader()?;
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let is_voter = membership.membership().voter_ids().any(|v| v == id);
        let is_learner = membership.membership().learner_ids().any(|v| v == id);
        if !is_voter && !is_learner {
            return Err(ReplicaError::Membership(format!("replica {id} is not a member")));
        }
        let mut index = 0;
        if is_voter {
            index = self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id]))).await?;
        }
        let still_node =
            self.raft.metrics().borrow().membership_config.membership().get_node(&id).is_some();
        if still_node {
            index = self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id]))).await?;
        }
        Ok(index)
    }

    fn ensure_leader(&self) -> Result<(), ReplicaError> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state == ServerState::Leader {
            return Ok(());
        }
        match metrics.current_leader {
            Some(leader_id) => {
                let leader_addr = metrics
                    .membership_config
                    .membership()
                    .get_node(&leader_id)
                    .map(|n| n.addr.clone())
                    .unwrap_or_default();
                Err(ReplicaError::NotLeader { this: self.id, leader_id, leader_addr })
            }
            None => Err(ReplicaError::NoLeader),
        }
    }

    fn membership_error(
        &self,
        error: RaftError<NodeId, openraft::error::ClientWriteError<NodeId, Node>>,
    ) -> ReplicaError {
        match error {
            RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
                not_leader(self.id, forward)
            }
            RaftError::APIError(e) => ReplicaError::Membership(e.to_string()),
            RaftError::Fatal(e) => ReplicaError::Stopped(e.to_string()),
        }
    }

    /// Builds a snapshot now and, with `purge`, purges the log it covers. Returns the
    /// index the snapshot covers.
    ///
    /// # Errors
    /// The raft core stopped, or no snapshot appeared in time.
    pub async fn snapshot_now(&self, purge: bool) -> Result<u64, ReplicaError> {
        let applied = self.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        self.raft.trigger().snapshot().await.map_err(|e| ReplicaError::Stopped(e.to_string()))?;
        let metrics = self
            .raft
            .wait(Some(Duration::from_secs(60)))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "snapshot to cover the applied index",
            )
            .await
            .map_err(|_| ReplicaError::Timeout(Duration::from_secs(60), "snapshot"))?;
        let index = metrics.snapshot.map_or(0, |s| s.index);
        if purge {
            self.raft
                .trigger()
                .purge_log(index)
                .await
                .map_err(|e| ReplicaError::Stopped(e.to_string()))?;
        }
        Ok(index)
    }

    /// Stops the raft core. A leader first hands over ([`Self::hand_over`]): a voter
    /// whose log is as long as its own campaigns at once and wins with this replica's vote,
    /// so a three-voter group has a new leader within a round trip or two instead of
    /// after the lease (the upper election timeout) plus a random timeout. Where that
    /// does not work (no voter caught up in time, more than three voters: the others still
    /// hold the lease and refuse their votes, a peer of an older build) the followers
    /// elect after the lease as before.
    ///
    /// # Errors
    /// The core task failed.
    pub async fn shutdown(&self) -> Result<(), ReplicaError> {
        match self.hand_over().await {
            Ok(Some(successor)) => {
                tracing::info!(replica = self.id, successor, "leadership handed over");
            }
            Ok(None) => {}
            Err(reason) => {
                tracing::info!(
                    replica = self.id,
                    %reason,
                    "leadership not handed over; the others elect after the lease"
                );
            }
        }
        self.raft.shutdown().await.map_err(|e| ReplicaError::Stopped(e.to_string()))
    }

    /// Leadership hand-over by a stopping leader (openraft 0.9 has no leadership
    /// transfer): stops proposing, so its log stops growing; waits (up to one upper
    /// election timeout, at most 2 s) for a voter whose replicated log reaches this
    /// leader's last entry; asks it to campaign now ([`Network::timeout_now`]); and waits
    /// (as long again) until a new leader is known. The candidate's vote request, for a
    /// higher term with a log as long as ours, is granted by this replica — a leader's own
    /// vote is refreshed only when it changes, so past its first lease after election it
    /// does not refuse, and once it has seen the candidate's term its vote is no longer a
    /// committed one that a lease protects — and with three voters the two votes are a
    /// quorum. The other followers refuse until the lease runs out, so with five or more
    /// voters this is no faster than the lease. Returns the successor asked, or `None`
    /// when this replica does not lead.
    ///
    /// # Errors
    /// Why the hand-over did not happen (the caller stops the core anyway).
    async fn hand_over(&self) -> Result<Option<NodeId>, HandOverError> {
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader || m.running_state.is_err() {
            return Ok(None);
        }
        let term = m.current_term;
        let voters: BTreeSet<NodeId> =
            m.membership_config.membership().voter_ids().filter(|v| *v != self.id).collect();
        if voters.is_empty() {
            return Ok(None);
        }
        // Nothing more is proposed here: the log stops growing, so a voter can hold all
        // of it (its vote request is refused by a longer log).
        self.network.close_proposals();
        let caught_up = |m: &RaftMetrics| {
            let last = m.last_log_index?;
            let replication = m.replication.as_ref()?;
            voters.iter().copied().find(|v| {
                replication.get(v).copied().flatten().is_some_and(|matched| matched.index >= last)
            })
        };
        // Each wait at most one upper election timeout, and at most HAND_OVER_STEP: the
        // whole hand-over stays well inside a supervisor's stop timeout.
        let within = self.election_timeout_max.min(HAND_OVER_STEP);
        let m = self
            .raft
            .wait(Some(within))
            .metrics(|m| caught_up(m).is_some(), "a voter to hold the leader's whole log")
            .await
            .map_err(|e| HandOverError::NoVoterCaughtUp(e.to_string()))?;
        if m.state != ServerState::Leader || m.current_term != term {
            return Err(HandOverError::NoLongerLeads);
        }
        let successor =
            caught_up(&m).ok_or_else(|| HandOverError::NoVoterCaughtUp("none".into()))?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&successor)
            .map(|n| n.addr.clone())
            .ok_or(HandOverError::NoAddress(successor))?;
        self.network
            .timeout_now(&addr, self.id, term)
            .await
            .map_err(|status| HandOverError::Refused(successor, status.to_string()))?;
        // Not only until this replica steps down — it may do so on seeing the candidate's
        // term in a replication answer, before the vote request arrives — but until it
        // hears from a new leader: its core must still be running to grant the vote.
        let id = self.id;
        self.raft
            .wait(Some(within))
            .metrics(
                |m| m.current_term > term && m.current_leader.is_some_and(|l| l != id),
                "a successor to lead",
            )
            .await
            .map_err(|e| HandOverError::NoSuccessor(successor, e.to_string()))?;
        Ok(Some(successor))
    }

    /// Whether this replica's raft core stopped (shut down, or fail-stopped on a storage
    /// error), with openraft's reason.
    #[must_use]
    pub fn stopped(&self) -> Option<String> {
        self.raft.metrics().borrow().running_state.as_ref().err().map(ToString::to_string)
    }

    /// Check-quorum: a leader that has not heard from a quorum for `limit` fences its
    /// term ([`Network::fence`]: it sends no AppendEntries, heartbeats included, and
    /// proposes nothing more), so a leader that reaches its followers but hears none of
    /// them — a deaf or half-partitioned leader — does not hold the group without
    /// committing anything: the followers' leases run out and they elect one of
    /// themselves. The fence lifts once this replica no longer leads that term (the new
    /// leader's messages reached it). openraft 0.9 has no check-quorum of its own and
    /// ignores an election triggered on a leader.
    fn spawn_check_quorum(&self, limit: Duration) {
        let raft = self.raft.clone();
        let network = self.network.clone();
        let metrics = self.metrics.clone();
        let id = self.id;
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval((limit / 4).max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let m = raft.metrics().borrow().clone();
                if m.running_state.is_err() {
                    return;
                }
                let leading = m.state == ServerState::Leader;
                if let Some(term) = network.fenced() {
                    if !leading || m.current_term != term {
                        tracing::info!(
                            replica = id,
                            term,
                            "no longer leads the fenced term; fence lifted"
                        );
                        network.unfence();
                    }
                    continue;
                }
                let voters = m.membership_config.membership().voter_ids().count();
                if let Some(ms) = m.millis_since_quorum_ack
                    && leading
                    && voters > 1
                    && ms > limit_ms
                {
                    tracing::warn!(
                        replica = id,
                        term = m.current_term,
                        silent_ms = ms,
                        "leading without hearing a quorum; stepping down (check-quorum)"
                    );
                    metrics.quorum_step_downs.inc();
                    network.fence(m.current_term);
                }
            }
        });
    }

    /// Keeps the Prometheus gauges in step with openraft's metrics.
    fn spawn_metrics_refresher(&self) {
        let mut watch = self.raft.metrics();
        let metrics = self.metrics.clone();
        let id = self.id;
        tokio::spawn(async move {
            let mut last_leader: Option<Option<NodeId>> = None;
            loop {
                let m = watch.borrow_and_update().clone();
                let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                metrics.term.set(gauge(m.current_term));
                metrics.is_leader.set(i64::from(m.state == ServerState::Leader));
                metrics.last_log_index.set(gauge(m.last_log_index.unwrap_or(0)));
                metrics.applied_index.set(gauge(m.last_applied.map_or(0, |l| l.index)));
                metrics.snapshot_index.set(gauge(m.snapshot.map_or(0, |l| l.index)));
                // A follower's commit index is not in openraft's metrics; applied trails it
                // by at most one apply batch, so it stands in for it here.
                metrics.commit_index.set(gauge(m.last_applied.map_or(0, |l| l.index)));
                if last_leader.is_some_and(|l| l != m.current_leader) {
                    metrics.leader_changes.inc();
                    tracing::info!(replica = id, leader = ?m.current_leader, term = m.current_term, "leader changed");
                }
                last_leader = Some(m.current_leader);
                if watch.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Sets `path`'s permission bits to `mode`.
fn restrict(path: &std::path::Path, mode: u32) -> Result<(), ReplicaError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        ReplicaError::Storage(format!("restrict {} to mode {mode:o}: {e}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_of_one_group_snapshot_at_different_intervals() {
        let interval = |id| {
            let mut config = ReplicaConfig::new(id, "127.0.0.1:1", "/tmp/unused");
            config.snapshot_after_entries = 20_000;
            config.snapshot_interval()
        };
        assert_eq!([interval(1), interval(2), interval(3)], [21_250, 22_500, 23_750]);
        assert_eq!(interval(8), 20_000, "the spread repeats every 8 ids");
        let mut tiny = ReplicaConfig::new(3, "127.0.0.1:1", "/tmp/unused");
        tiny.snapshot_after_entries = 0;
        assert_eq!(tiny.snapshot_interval(), 1, "never zero");
    }
}
