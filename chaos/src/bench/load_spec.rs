//! What one load phase is ([`LoadSpec`]), apart from the load generator that runs it
//! ([`super::load`]) and the progress display that draws a bar over it
//! ([`super::progress`]): both use it, and the display does not depend on the generator.

use std::time::Duration;

/// One load phase.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Concurrent clients.
    pub clients: usize,
    /// Unmeasured time at the start.
    pub warmup: Duration,
    /// Measured window after the warm-up.
    pub duration: Duration,
    /// Bytes per value.
    pub value_size: usize,
    /// Key prefix; client `c` writes `PREFIX/cC/0`, `PREFIX/cC/1`, …
    pub prefix: String,
    /// Distinct keys per client: `None` writes a new key every time; `Some(k)` cycles
    /// through `PREFIX/cC/0` … `PREFIX/cC/{k-1}`, overwriting, so a long run keeps the
    /// stored state bounded.
    pub keys_per_client: Option<u64>,
    /// What each call does.
    pub operation: Operation,
}

/// What a load phase's clients call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Operation {
    /// Replicated, durable writes ([`super::target::KvConn::put`]).
    #[default]
    Put,
    /// Reads the member answers from its own state, without consensus
    /// ([`super::target::KvConn::local_read`]): the floor of one call through the
    /// store's client API and transport.
    LocalRead,
    /// A local read after the client has been idle for [`IDLE_BEFORE_CALL`], as a
    /// single-client write's answer comes after about that long: what waking the client,
    /// the connection and the server after a pause adds to one call.
    IdleLocalRead,
}

/// How long an [`Operation::IdleLocalRead`] client waits before each call (not measured).
pub const IDLE_BEFORE_CALL: std::time::Duration = std::time::Duration::from_millis(2);
