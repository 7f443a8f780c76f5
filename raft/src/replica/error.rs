//! What can go wrong in a replica's operations ([`ReplicaError`]), the typed causes its
//! variants carry, and the errors it makes of openraft's and the transport's answers.

use std::fmt;
use std::path::PathBuf;

use std::time::Duration;

use openraft::error::{
    CheckIsLeaderError, ClientWriteError, Fatal, ForwardToLeader, InitializeError,
};

pub use crate::causes::{ForwardFailure, StopReason};
use crate::leader_call::HandlerError;
use crate::network::TransportError;
use crate::types::{Node, NodeId, StorageError};

/// Errors of replica operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// The raft settings are inconsistent.
    #[error("invalid raft settings: {0}")]
    Config(#[source] Box<openraft::ConfigError>),
    /// The durable store could not be opened or read.
    #[error("storage: {0}")]
    Storage(#[from] StorageFailure),
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
    #[error("forwarding to leader {leader_id} at {leader_addr} failed: {source}")]
    Forward {
        /// Leader id.
        leader_id: NodeId,
        /// Leader address.
        leader_addr: String,
        /// What failed.
        source: ForwardFailure,
    },
    /// The membership change was refused.
    #[error("membership change refused: {0}")]
    Membership(#[from] MembershipRefusal),
    /// Timed out waiting for the group.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    /// The replica is shutting down or its raft core stopped.
    #[error("the replica is shutting down: {0}")]
    Stopped(#[from] StopReason),
    /// Any other raft error.
    #[error("raft: {0}")]
    Raft(#[from] RaftFailure),
    /// A leader call reached the leader, but it has no [`LeaderHandler`] installed (or,
    /// when forwarded, runs a version without leader calls).
    ///
    /// [`LeaderHandler`]: crate::LeaderHandler
    #[error(
        "replica {replica} leads but has no leader handler installed; the application must \
         install one on every replica with `set_leader_handler`"
    )]
    NoLeaderHandler {
        /// The leader that could not handle the call.
        replica: NodeId,
    },
    /// [`Replica::set_leader_handler`] was called when a handler was installed already.
    ///
    /// [`Replica::set_leader_handler`]: crate::Replica::set_leader_handler
    #[error("a leader handler is already installed on this replica")]
    LeaderHandlerAlreadySet,
    /// This replica leads, and its [`LeaderHandler`] failed (panicked) on the call.
    ///
    /// [`LeaderHandler`]: crate::LeaderHandler
    #[error("leader call failed: {0}")]
    LeaderHandler(#[from] HandlerError),
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
        #[source]
        reason: openraft::metrics::WaitError,
    },
    /// The command needs a command-format version some voter's build does not apply
    /// ([`StateMachine::required_version`]); it was not proposed.
    ///
    /// [`StateMachine::required_version`]: crate::StateMachine::required_version
    #[error(
        "this command needs every voter to apply command-format version {required}, and \
         {behind}: upgrade those replicas first (`federator status` shows each one's \
         version)"
    )]
    VersionGate {
        /// The version the command needs.
        required: u32,
        /// The voters behind, and what each answered.
        behind: VotersBehind,
    },
}

/// Why the durable store could not be opened ([`ReplicaError::Storage`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageFailure {
    /// The data directory could not be created.
    #[error("create {}: {source}", path.display())]
    CreateDir {
        /// The data directory.
        path: PathBuf,
        /// The file system's error.
        source: std::io::Error,
    },
    /// A file's or directory's permissions could not be restricted to the owner.
    #[error("restrict {} to mode {mode:o}: {source}", path.display())]
    Restrict {
        /// The file or directory.
        path: PathBuf,
        /// The permission bits it was to get.
        mode: u32,
        /// The file system's error.
        source: std::io::Error,
    },
    /// The database, the log or the state machine's snapshot could not be opened or read.
    #[error(transparent)]
    Open(Box<StorageError>),
}

impl From<StorageError> for StorageFailure {
    fn from(error: StorageError) -> Self {
        Self::Open(Box::new(error))
    }
}

/// Why a membership change was refused ([`ReplicaError::Membership`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipRefusal {
    /// Raft refused to initialize the group.
    #[error(transparent)]
    Initialize(Box<InitializeError<NodeId, Node>>),
    /// Raft refused the change.
    #[error(transparent)]
    Change(Box<ClientWriteError<NodeId, Node>>),
    /// The replica to add did not catch up as a learner.
    #[error(
        "replica {id} at {addr} {source}; check that it runs, that the leader can reach it, \
         and that it holds a certificate of the federation's CA{}",
        removed_note(*.removed)
    )]
    NotCaughtUp {
        /// The replica.
        id: NodeId,
        /// Its transport address.
        addr: String,
        /// How it fell short.
        source: CatchUpError,
        /// Whether it was removed again (it was not a member before).
        removed: bool,
    },
    /// The replica to remove is not a member.
    #[error("replica {id} is not a member")]
    NotAMember {
        /// The replica.
        id: NodeId,
    },
}

fn removed_note(removed: bool) -> &'static str {
    if removed { " (it was removed again)" } else { "" }
}

impl From<Fatal<NodeId>> for ReplicaError {
    fn from(fatal: Fatal<NodeId>) -> Self {
        Self::Stopped(fatal.into())
    }
}

/// Any other failure of raft ([`ReplicaError::Raft`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftFailure {
    /// The raft core did not start.
    #[error(transparent)]
    Start(Box<Fatal<NodeId>>),
    /// The transport server failed.
    #[error("transport server: {0}")]
    TransportServer(#[source] TransportError),
    /// The leader could not confirm a read index.
    #[error(transparent)]
    ReadIndex(Box<CheckIsLeaderError<NodeId, Node>>),
    /// Raft refused a write.
    #[error(transparent)]
    Write(Box<ClientWriteError<NodeId, Node>>),
}

/// One voter's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoterVersion {
    /// The voter.
    pub id: NodeId,
    /// What its build applies, or why it did not say.
    pub supported: Result<u32, NoAnswer>,
}

/// Why a voter did not say which version it applies.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoAnswer {
    /// The call failed (unreachable, timed out, refused): the gRPC status's message.
    #[error("{0}")]
    Call(String),
    /// The membership names the voter without an address.
    #[error("its address is not in the membership")]
    NoAddress,
}

/// Why a new replica did not catch up with the leader's log
/// ([`Replica::add_member`]); the message continues "replica ID at ADDR …".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatchUpError {
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

/// The voters behind a command's version ([`ReplicaError::VersionGate`]), shown as each
/// one's answer, separated by "; ".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VotersBehind(pub Vec<VoterVersion>);

impl fmt::Display for VotersBehind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, voter) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{voter}")?;
        }
        Ok(())
    }
}

/// Raft's "not the leader" as a replica error: the leader when it is known, else none.
pub(super) fn not_leader(this: NodeId, forward: ForwardToLeader<NodeId, Node>) -> ReplicaError {
    match (forward.leader_id, forward.leader_node) {
        (Some(leader_id), Some(node)) => {
            ReplicaError::NotLeader { this, leader_id, leader_addr: node.addr }
        }
        _ => ReplicaError::NoLeader,
    }
}

/// The error of a forwarded call abandoned because `moved` became leader while it waited
/// on `leader_id` (retried at the new leader; its outcome at the old one is unknown).
pub(super) fn rerouted(leader_id: NodeId, leader_addr: String, moved: NodeId) -> ReplicaError {
    ReplicaError::Forward { leader_id, leader_addr, source: ForwardFailure::Rerouted { moved } }
}

/// A failed transport call to leader `leader_id` as a replica error.
pub(super) fn forward_failed(
    leader_id: NodeId,
    leader_addr: String,
    status: tonic::Status,
) -> ReplicaError {
    ReplicaError::Forward { leader_id, leader_addr, source: status.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed causes print the texts the string causes printed before.
    #[test]
    fn texts_stay_as_they_were() {
        let status = tonic::Status::unavailable("TCP connect to 127.0.0.2:7000 failed");
        assert_eq!(
            forward_failed(2, "127.0.0.2:7000".into(), status).to_string(),
            "forwarding to leader 2 at 127.0.0.2:7000 failed: TCP connect to 127.0.0.2:7000 failed"
        );
        assert_eq!(
            rerouted(2, "a:1".into(), 3).to_string(),
            "forwarding to leader 2 at a:1 failed: replica 3 became leader while the call \
             waited; re-routed"
        );
        let not_caught_up = MembershipRefusal::NotCaughtUp {
            id: 4,
            addr: "b:2".into(),
            source: CatchUpError::NoAnswer { within: Duration::from_secs(10) },
            removed: true,
        };
        assert_eq!(
            ReplicaError::from(not_caught_up).to_string(),
            "membership change refused: replica 4 at b:2 did not answer within 10s; check that \
             it runs, that the leader can reach it, and that it holds a certificate of the \
             federation's CA (it was removed again)"
        );
        assert_eq!(
            ReplicaError::from(MembershipRefusal::NotAMember { id: 9 }).to_string(),
            "membership change refused: replica 9 is not a member"
        );
        assert_eq!(
            ReplicaError::from(StopReason::QueueClosed).to_string(),
            "the replica is shutting down: the replica's proposal queue stopped"
        );
        let behind = VotersBehind(vec![
            VoterVersion { id: 1, supported: Ok(1) },
            VoterVersion { id: 2, supported: Err(super::super::NoAnswer::NoAddress) },
        ]);
        assert_eq!(
            ReplicaError::VersionGate { required: 2, behind }.to_string(),
            "this command needs every voter to apply command-format version 2, and replica 1 \
             applies version 1; replica 2 did not say which version it applies (its address is \
             not in the membership): upgrade those replicas first (`federator status` shows \
             each one's version)"
        );
        let restrict = StorageFailure::Restrict {
            path: "/data".into(),
            mode: 0o700,
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert_eq!(
            ReplicaError::from(restrict).to_string(),
            "storage: restrict /data to mode 700: permission denied"
        );
    }
}
