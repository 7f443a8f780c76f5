//! What can go wrong in a replica's operations ([`ReplicaError`]), and the errors it
//! makes of openraft's and the transport's answers.

use std::time::Duration;

use openraft::error::ForwardToLeader;

use crate::types::{Node, NodeId};

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
        behind: String,
    },
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
    ReplicaError::Forward {
        leader_id,
        leader_addr,
        message: format!("replica {moved} became leader while the call waited; re-routed"),
    }
}
