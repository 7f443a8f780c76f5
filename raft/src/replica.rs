//! One replica of the group: opens its durable storage, runs openraft, serves the
//! replica transport, and offers the application writes (forwarded to the leader when
//! this replica does not lead), linearizable or stale reads, membership changes, and
//! leader calls (served by the leader's [`LeaderHandler`], forwarded like writes).
//!
//! Its parts: `config` (settings and timing profiles), `error` ([`ReplicaError`]), `write`,
//! `read`, `call` (leader calls), `membership`, `versions` (the cluster version), `stop`
//! (shutdown with a leadership hand-over) and `background` (check-quorum, metrics). This
//! file holds the [`Replica`] itself: opening it, serving its transport, what it exposes
//! (id, raft handle, metrics, state) and snapshots on demand.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::leader_call::{LeaderHandler, LeaderHandlerSlot};
use crate::log_store::{LogDurability, LogStore, open_database};
use crate::metrics::ConsensusMetrics;
use crate::network::client::Network;
use crate::network::server::{PeerPolicy, RaftTransportService};
use crate::proposer::Proposer;
use crate::state_machine::{StateMachine, StateMachineStore};
use crate::tasks::{Live, Tasks};
use crate::types::{NodeId, Raft, RaftMetrics};

mod background;
mod call;
mod config;
mod error;
mod membership;
mod read;
mod stop;
mod versions;
mod write;

use background::CHECK_QUORUM_TIMEOUTS;
pub use config::{DEFAULT_ELECTION_TIMEOUT, DEFAULT_HEARTBEAT, ReplicaConfig, Timing};
pub use error::{
    CatchUpError, ForwardFailure, MembershipRefusal, NoAnswer, RaftFailure, ReplicaError,
    StopReason, StorageFailure, VoterVersion, VotersBehind,
};
pub use read::Consistency;
pub use versions::ClusterVersion;
pub use write::{QueuedWrite, WriteOutcome};

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
    /// The background tasks (check-quorum, metrics), stopped at shutdown and aborted
    /// when the last clone is dropped.
    tasks: Arc<Tasks>,
    /// Counts this replica's tasks still running (the background ones, the proposal loop
    /// and its batches).
    live: Live,
    /// How far its log is durable, and whether the log writer stalls.
    log_durability: LogDurability,
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
            tasks: Arc::clone(&self.tasks),
            live: self.live.clone(),
            log_durability: self.log_durability.clone(),
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
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StorageFailure::CreateDir {
            path: config.data_dir.clone(),
            source,
        })?;
        // The log and snapshots are the whole replicated state: only the owner reads them.
        restrict(&config.data_dir, 0o700)?;
        let db_path = config.data_dir.join("raft.redb");
        let db = open_database(&db_path).map_err(StorageFailure::from)?;
        restrict(&db_path, 0o600)?;
        // The leader's own appends are reported flushed at once, so that it replicates
        // them while its disk writes them; the state machine and the transport act on a
        // commit only as far as the log is durable (see `LogStore`).
        let redo_file = config.data_dir.join("raft.wal");
        let log = LogStore::with_redo_file(db.clone(), &redo_file, metrics.clone())
            .map_err(StorageFailure::from)?
            .flush_own_appends_at_once(config.id);
        let snapshots = config.data_dir.join("snapshots");
        let state = StateMachineStore::open(db, &snapshots, state_machine, metrics.clone())
            .map_err(StorageFailure::from)?;
        state.apply_only_durable(log.durability());
        restrict(&snapshots, 0o700)?;
        let network = Network::new(client_tls, config.transport.clone(), metrics.clone());
        network.commit_only_durable(log.durability());
        let log_durability = log.durability();
        let raft = Raft::new(config.id, raft_config, network.clone(), log, state.clone())
            .await
            .map_err(|fatal| RaftFailure::Start(Box::new(fatal)))?;
        let live = Live::default();
        let proposer = Proposer::start(
            raft.clone(),
            config.id,
            Some(network.clone()),
            metrics.clone(),
            live.clone(),
        );
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
            tasks: Arc::new(Tasks::new(live.clone())),
            live,
            log_durability: log_durability.clone(),
        };
        replica.spawn_metrics_refresher();
        replica.spawn_check_quorum(
            config.election_timeout_max * CHECK_QUORUM_TIMEOUTS,
            log_durability,
        );
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

    /// How far this replica's log is durable, and how long its log writer has had entries
    /// waiting without writing any ([`LogDurability::stalled_for`]: a disk that hangs).
    #[must_use]
    pub fn log_durability(&self) -> &LogDurability {
        &self.log_durability
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
            .with_forwarded_writes(Arc::new(self.proposer.clone()))
            .with_timeline(self.metrics.timeline.clone())
            .with_snapshot_files(self.state.snapshot_files());
        if let Some(policy) = peer_policy {
            service = service.with_peer_policy(policy);
        }
        crate::network::server::serve(listener, server_tls, service, shutdown)
            .await
            .map_err(|e| RaftFailure::TransportServer(e).into())
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

    /// Builds a snapshot now and, with `purge`, purges the log it covers. Returns the
    /// index the snapshot covers.
    ///
    /// # Errors
    /// The raft core stopped, or no snapshot appeared in time.
    pub async fn snapshot_now(&self, purge: bool) -> Result<u64, ReplicaError> {
        let applied = self.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        self.raft.trigger().snapshot().await?;
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
            self.raft.trigger().purge_log(index).await?;
        }
        Ok(index)
    }

    /// How many of the tasks this replica spawned beside openraft's (check-quorum, the
    /// metrics refresher, the proposal loop and the batches it has in flight) still run:
    /// none once [`Replica::shutdown`] has returned.
    #[must_use]
    pub fn running_tasks(&self) -> usize {
        self.live.count()
    }

    /// Whether this replica's raft core stopped (shut down, or fail-stopped on a storage
    /// error), with openraft's reason.
    #[must_use]
    pub fn stopped(&self) -> Option<String> {
        self.raft.metrics().borrow().running_state.as_ref().err().map(ToString::to_string)
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
}

/// Sets `path`'s permission bits to `mode`.
fn restrict(path: &std::path::Path, mode: u32) -> Result<(), ReplicaError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        StorageFailure::Restrict { path: path.to_path_buf(), mode, source }.into()
    })
}
