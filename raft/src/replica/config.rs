//! A replica's settings: the timing profiles, and what openraft is configured with.

use std::path::PathBuf;
use std::time::Duration;

use openraft::SnapshotPolicy;

use super::error::ReplicaError;
use crate::network::client::TransportOptions;
use crate::types::NodeId;

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
///
/// [`Replica::shutdown`]: crate::Replica::shutdown
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

    pub(super) fn openraft_config(&self) -> Result<openraft::Config, ReplicaError> {
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
        config.validate().map_err(|e| ReplicaError::Config(Box::new(e)))
    }
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
