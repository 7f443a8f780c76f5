//! The application's state machine: the [`StateMachine`] trait it implements, with the
//! errors it answers with, and ([`StateMachineStore`]) the openraft storage that applies
//! committed entries to it and builds, installs and keeps its snapshots.
//!
//! Its parts: `store` (the state in memory, apply, snapshot build and install, as openraft
//! storage) and `snapshot_store` (the current snapshot on disk: its metadata and checksum
//! in redb, its data in a file).

mod snapshot_store;
mod store;

pub use store::StateMachineStore;

/// A deterministic replicated state machine supplied by the application.
///
/// Every replica applies the same committed commands in the same order; `apply` must
/// therefore depend only on the state and the command (take time from the command,
/// never from the clock). `Default` is the empty state an installed snapshot is decoded
/// into before it replaces the running one.
pub trait StateMachine: Default + Send + Sync + 'static {
    /// Applies one committed command at `log_index` and returns the response for the
    /// client that proposed it. An invalid command is answered with an error response;
    /// it must never panic.
    fn apply(&mut self, log_index: u64, command: &[u8]) -> Vec<u8>;

    /// Whether this build can apply `command` at all. A command it cannot — one a newer
    /// build proposed, whose kind or fields this build does not know — must never be
    /// skipped (answered with an error and nothing changed): the replicas that understand
    /// it change their state, so skipping it would leave this replica's state different
    /// from theirs at the same index. The replica stops applying instead: its raft core
    /// fail-stops with this error, at this entry, every time it is restarted, until it
    /// runs a build that knows the command. The default understands everything.
    ///
    /// # Errors
    /// Why the command cannot be applied, for the operator.
    fn check_applicable(&self, command: &[u8]) -> Result<(), NotApplicable> {
        let _ = command;
        Ok(())
    }

    /// The highest command-format version this build applies (see
    /// [`StateMachine::required_version`]); the default, 0, gates nothing.
    fn supported_version() -> u32 {
        0
    }

    /// The command-format version a replica must support to apply `command`: 0 for a
    /// command every build that may share a group with this one applies. A command that
    /// needs more is proposed only once every voter reports supporting it (the cluster
    /// version, as etcd keeps one): during a rolling upgrade a feature that needs a new
    /// kind of command waits, refused with [`ReplicaError::VersionGate`], until the last
    /// voter runs a build that knows it, instead of stopping the replicas that do not
    /// ([`StateMachine::check_applicable`]).
    ///
    /// [`ReplicaError::VersionGate`]: crate::ReplicaError::VersionGate
    fn required_version(command: &[u8]) -> u32 {
        let _ = command;
        0
    }

    /// Canonical encoding of the whole state, used for snapshots and the digest.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the whole state with a decoded snapshot.
    ///
    /// # Errors
    /// The snapshot does not decode; the error says why.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError>;

    /// Whether applying `command` costs about what reading its bytes does, as most
    /// commands do. Entries of such commands, 64 KiB in all at most, are applied on the
    /// raft task itself when no reader holds the state, instead of being handed to the
    /// blocking pool and back: two thread wake-ups less on every write's path, on every
    /// replica. A command that does far more than its size says (decoding a whole state,
    /// say) must answer `false`; so does the default.
    fn cheap_to_apply(command: &[u8]) -> bool {
        let _ = command;
        false
    }

    /// SHA-256 of the canonical encoding: equal states have equal digests.
    fn digest(&self) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(self.snapshot()).into()
    }
}

/// Why a state machine cannot restore a snapshot ([`StateMachine::restore`]): the
/// application's own error (or message), shown as it is.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct RestoreError(Box<dyn std::error::Error + Send + Sync>);

impl RestoreError {
    /// The application's reason: an error of its own, or a message (`&str`, `String`).
    pub fn new(reason: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(reason.into())
    }
}

/// Why a state machine cannot apply a committed command ([`StateMachine::check_applicable`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotApplicable(pub String);
