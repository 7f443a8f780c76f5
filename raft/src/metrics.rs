//! Prometheus metrics of the consensus layer.
//!
//! Gauges are refreshed from openraft's metrics watch by [`crate::replica`]; the latency
//! histograms are observed where the work happens (log append in [`crate::log_store`],
//! apply in [`crate::state_machine`]).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::timeline::Timeline;

/// Metrics of one replica's consensus layer. Cheap to clone: every field is shared.
#[derive(Clone, Debug)]
pub struct ConsensusMetrics {
    /// Current term.
    pub term: Gauge,
    /// Times the known leader changed (including to "none").
    pub leader_changes: Counter,
    /// 1 while this replica is the leader.
    pub is_leader: Gauge,
    /// Index of the last log entry known committed.
    pub commit_index: Gauge,
    /// Index of the last entry applied to the state machine.
    pub applied_index: Gauge,
    /// Index of the last entry in the log.
    pub last_log_index: Gauge,
    /// Index covered by the current snapshot.
    pub snapshot_index: Gauge,
    /// Seconds to make a batch of entries durable (one redb transaction).
    pub append_seconds: Histogram,
    /// Entries per durable append.
    pub append_batch_entries: Histogram,
    /// Seconds of a checkpoint: the durable redb commit after which the log's redo file
    /// is written from its start.
    pub log_checkpoint_seconds: Histogram,
    /// Appends written on raft core's own thread rather than handed to the log writer
    /// thread (a follower's, when the writer was idle).
    pub log_appends_inline: Counter,
    /// 1 while the log's appends are made durable by its redo file; 0 when the replica
    /// found no room for the file at start and makes every append a durable database
    /// commit (slower) until a restart finds room.
    pub log_redo_file: Gauge,
    /// Commands per proposed log entry (writes batched into one entry).
    pub proposal_commands: Histogram,
    /// Seconds to apply one batch of committed entries to the state machine.
    pub apply_seconds: Histogram,
    /// Batches applied on the raft task itself (small, cheap commands with the state
    /// free at once); the other batches went through the blocking pool.
    pub applies_inline: Counter,
    /// Snapshots built by this replica.
    pub snapshots_built: Counter,
    /// Snapshots installed from a leader.
    pub snapshots_installed: Counter,
    /// Seconds to build and store a snapshot (encoding the state, writing its file).
    pub snapshot_build_seconds: Histogram,
    /// Seconds to install a received snapshot (restoring the state while writing its file).
    pub snapshot_install_seconds: Histogram,
    /// Writes this replica forwarded to the leader.
    pub forwarded_writes: Counter,
    /// Leader calls this replica forwarded to the leader.
    pub forwarded_leader_calls: Counter,
    /// Times this replica, leading, heard no quorum for two election timeouts and
    /// stepped down (check-quorum).
    pub quorum_step_downs: Counter,
    /// Times this replica, leading, stepped down because its log writer had made no
    /// append durable for two election timeouts (a hung disk).
    pub stalled_log_step_downs: Counter,
    /// Forwarded writes and leader calls abandoned because another leader became known
    /// while they waited on the old one (each retried there).
    pub forwards_rerouted: Counter,
    /// When each recent log entry passed each step of the write path.
    pub timeline: Timeline,
}

impl Default for ConsensusMetrics {
    fn default() -> Self {
        Self {
            term: Gauge::default(),
            leader_changes: Counter::default(),
            is_leader: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            last_log_index: Gauge::default(),
            snapshot_index: Gauge::default(),
            append_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            append_batch_entries: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            log_checkpoint_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            log_appends_inline: Counter::default(),
            log_redo_file: Gauge::default(),
            proposal_commands: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            apply_seconds: Histogram::new(exponential_buckets(0.000_005, 2.0, 20)),
            applies_inline: Counter::default(),
            snapshots_built: Counter::default(),
            snapshots_installed: Counter::default(),
            snapshot_build_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            snapshot_install_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            forwarded_writes: Counter::default(),
            forwarded_leader_calls: Counter::default(),
            quorum_step_downs: Counter::default(),
            stalled_log_step_downs: Counter::default(),
            forwards_rerouted: Counter::default(),
            timeline: Timeline::default(),
        }
    }
}

impl ConsensusMetrics {
    /// Registers every metric under the `raft_` prefix of `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("raft");
        r.register("term", "Current Raft term", self.term.clone());
        r.register("leader_changes", "Times the known leader changed", self.leader_changes.clone());
        r.register("is_leader", "1 while this replica leads", self.is_leader.clone());
        r.register("commit_index", "Last committed log index", self.commit_index.clone());
        r.register("applied_index", "Last applied log index", self.applied_index.clone());
        r.register("last_log_index", "Last log index", self.last_log_index.clone());
        r.register(
            "snapshot_index",
            "Log index covered by the snapshot",
            self.snapshot_index.clone(),
        );
        r.register(
            "append_duration_seconds",
            "Time to make a batch of log entries durable",
            self.append_seconds.clone(),
        );
        r.register(
            "append_batch_entries",
            "Log entries per durable append",
            self.append_batch_entries.clone(),
        );
        r.register(
            "log_checkpoint_duration_seconds",
            "Time of a durable database commit after which the log's redo file is written \
             from its start",
            self.log_checkpoint_seconds.clone(),
        );
        r.register(
            "log_appends_inline",
            "Log appends written on raft core's own thread instead of the log writer thread",
            self.log_appends_inline.clone(),
        );
        r.register(
            "log_redo_file",
            "1 while log appends are made durable by the log's redo file; 0: every append is a \
             durable database commit (no room for the file at start)",
            self.log_redo_file.clone(),
        );
        r.register(
            "proposal_commands",
            "Client commands per proposed log entry",
            self.proposal_commands.clone(),
        );
        r.register(
            "apply_duration_seconds",
            "Time to apply a batch of committed entries",
            self.apply_seconds.clone(),
        );
        r.register(
            "applies_inline",
            "Batches of committed entries applied on the raft task, not the blocking pool",
            self.applies_inline.clone(),
        );
        r.register("snapshots_built", "Snapshots built", self.snapshots_built.clone());
        r.register(
            "snapshots_installed",
            "Snapshots installed from a leader",
            self.snapshots_installed.clone(),
        );
        r.register(
            "snapshot_build_duration_seconds",
            "Seconds to build and store a snapshot",
            self.snapshot_build_seconds.clone(),
        );
        r.register(
            "snapshot_install_duration_seconds",
            "Seconds to install a snapshot received from a leader",
            self.snapshot_install_seconds.clone(),
        );
        r.register(
            "forwarded_writes",
            "Writes forwarded to the leader",
            self.forwarded_writes.clone(),
        );
        r.register(
            "forwarded_leader_calls",
            "Leader calls forwarded to the leader",
            self.forwarded_leader_calls.clone(),
        );
        r.register(
            "quorum_step_downs",
            "Times this replica stepped down as leader after hearing no quorum (check-quorum)",
            self.quorum_step_downs.clone(),
        );
        r.register(
            "stalled_log_step_downs",
            "Times this replica stepped down as leader because its log writer made no append durable for two election timeouts",
            self.stalled_log_step_downs.clone(),
        );
        r.register(
            "forwards_rerouted",
            "Forwarded writes and leader calls re-routed to a new leader before their timeout",
            self.forwards_rerouted.clone(),
        );
        self.timeline.register(r);
    }
}
