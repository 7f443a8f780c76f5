//! What `federator agent status` shows: the agent writes it to its state directory every
//! second, so that the command works without any port or socket.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::view::SourceProblem;

/// The agent's status, as written to `status.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Agent process id.
    pub pid: u32,
    /// When this status was written (unix milliseconds).
    pub written_at_ms: i64,
    /// The cluster, once joined.
    pub cluster: String,
    /// Its trust domain.
    pub trust_domain: String,
    /// The replica it talks to, if connected.
    pub connected_replica: Option<String>,
    /// Since when (unix milliseconds).
    pub connected_since_ms: Option<i64>,
    /// Why the last connection ended or failed.
    pub last_error: Option<String>,
    /// Connections made since start.
    pub connections: u64,
    /// Times the agent left a replica it was connected to (an unresponsive one, a
    /// failed session, a stream the replica ended) for the next one.
    #[serde(default)]
    pub failovers: u64,
    /// The last of those moves.
    #[serde(default)]
    pub last_failover: Option<FailoverStatus>,
    /// Revision of the applied view.
    pub applied_revision: u64,
    /// Highest revision received from the federation (the applied one lags it while a
    /// batch is being applied).
    pub received_revision: u64,
    /// The member lease.
    pub lease: Option<LeaseStatus>,
    /// Per sink: health and what it applied.
    pub sinks: BTreeMap<String, SinkStatus>,
    /// The own bundle source.
    pub bundle: BundleSourceStatus,
    /// Export sources.
    pub exports: ExportSourceStatus,
    /// Federated bundles held: trust domain → sequence.
    pub bundles: BTreeMap<String, u64>,
    /// Imports held.
    pub imports: usize,
    /// Full resyncs the federation asked for.
    pub resyncs: u64,
    /// The last change whose propagation was measured.
    #[serde(default)]
    pub last_propagation: Option<PropagationStatus>,
}

/// One measured propagation: from the replica applying a change to every sink holding it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PropagationStatus {
    /// `bundle` or `import`.
    pub kind: String,
    /// The trust domain the change came from.
    pub source_trust_domain: String,
    /// How long it took, in milliseconds.
    pub millis: i64,
    /// When every sink held it (unix milliseconds).
    pub at_ms: i64,
}

/// The agent left a replica it was connected to, for the next one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverStatus {
    /// The replica left.
    pub from: String,
    /// Why: the deadline it missed, or how the session ended.
    pub reason: String,
    /// When (unix milliseconds).
    pub at_ms: i64,
    /// The replica connected next, once connected.
    pub to: Option<String>,
    /// When (unix milliseconds), once connected.
    pub connected_at_ms: Option<i64>,
}

/// The member lease.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    /// Lease id.
    pub id: u64,
    /// TTL in seconds.
    pub ttl_seconds: u32,
    /// Last answered keep-alive (unix milliseconds).
    pub last_keepalive_ms: Option<i64>,
    /// Keep-alives that failed since the last answered one.
    pub failed_keepalives: u64,
}

/// One sink.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkStatus {
    /// Whether the last apply succeeded.
    pub healthy: bool,
    /// Revision of the view it holds.
    pub applied_revision: u64,
    /// The last error, if the last apply failed.
    pub error: Option<String>,
    /// What it holds back of the view, with why (objects its destination refuses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SourceProblem>,
}

/// The own bundle source.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleSourceStatus {
    /// Sequence of the bundle the source gives.
    pub sequence: Option<u64>,
    /// Sequence published to the federation.
    pub published_sequence: Option<u64>,
    /// Whether the federation holds the authorities of the bundle the source gives (a
    /// restarted agent numbers the same certificates anew: `sequence` then differs from
    /// `published_sequence` though nothing is left to publish). `None` in the status of
    /// an older agent: compare the sequences.
    #[serde(default)]
    pub published_current: Option<bool>,
    /// The sequence of this cluster's bundle as the federation holds it (what the other
    /// members receive), from the watch; `None` until the watch delivered it.
    #[serde(default)]
    pub federation_sequence: Option<u64>,
    /// Whether the bundle the federation holds has the source's authorities (`None`:
    /// not known yet, or a view older than the last publication).
    #[serde(default)]
    pub federation_current: Option<bool>,
    /// A problem with the source, if any.
    pub problem: Option<SourceProblem>,
}

/// The export sources.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSourceStatus {
    /// Valid exports the sources give.
    pub exports: usize,
    /// Exports published to the federation.
    pub published: usize,
    /// Documents skipped, with why.
    pub problems: Vec<SourceProblem>,
}

/// The status of an agent that holds no lease is stale after this long (the default
/// lease TTL).
pub const DEFAULT_STALE_MS: i64 = 10_000;

impl AgentStatus {
    /// How old the status may be before it says nothing: the lease's TTL (a running
    /// agent writes it every second; one older than the TTL cannot vouch for the lease).
    #[must_use]
    pub fn stale_after_ms(&self) -> i64 {
        self.lease.as_ref().map_or(DEFAULT_STALE_MS, |l| i64::from(l.ttl_seconds.max(1)) * 1000)
    }

    /// Whether the status is older than [`AgentStatus::stale_after_ms`] at `now_ms`.
    #[must_use]
    pub fn is_too_old(&self, now_ms: i64) -> bool {
        self.is_stale(now_ms, self.stale_after_ms())
    }

    /// Whether the lease is live as far as this status tells at `now_ms`: held, its
    /// last keep-alive answered within its TTL, none failed since, and the status itself
    /// not stale.
    #[must_use]
    pub fn lease_is_live(&self, now_ms: i64) -> bool {
        let Some(lease) = &self.lease else { return false };
        let ttl_ms = i64::from(lease.ttl_seconds) * 1000;
        !self.is_too_old(now_ms)
            && lease.failed_keepalives == 0
            && lease.last_keepalive_ms.is_some_and(|at| now_ms - at <= ttl_ms)
    }

    /// Whether the federation holds the own bundle the source gives.
    #[must_use]
    pub fn own_bundle_published(&self) -> bool {
        let b = &self.bundle;
        b.problem.is_none()
            && b.published_current.unwrap_or(b.sequence == b.published_sequence)
            && b.federation_current != Some(false)
    }

    /// Whether the status is older than `max_age_ms` at `now_ms` (the agent is not
    /// running, or is stuck).
    #[must_use]
    pub fn is_stale(&self, now_ms: i64, max_age_ms: i64) -> bool {
        now_ms - self.written_at_ms > max_age_ms
    }
}
