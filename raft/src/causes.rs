//! Typed causes that both the proposal queue ([`crate::proposer`]) and the replica's
//! operations ([`crate::replica::ReplicaError`]) report: why a forwarded call got no answer
//! from the leader, and why raft stopped taking writes. They sit below both, so neither
//! imports the other for them.

use std::sync::Arc;

use openraft::error::Fatal;

use crate::types::{LogId, NodeId};

/// Why a forwarded call or read got no answer from the leader ([`crate::replica::ReplicaError::Forward`]).
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardFailure {
    /// The transport call failed (unreachable, timed out, refused): the gRPC status,
    /// shown by its message.
    #[error("{}", .0.message())]
    Status(#[source] Box<tonic::Status>),
    /// Another replica became leader while a call or read waited at the old one; it is
    /// re-routed to the new leader.
    #[error("replica {moved} became leader while the call waited; re-routed")]
    Rerouted {
        /// The new leader.
        moved: NodeId,
    },
    /// Another replica became leader while a write waited at the old one: its outcome is
    /// unknown.
    #[error(
        "replica {moved} became leader while the write waited at the old leader; its \
         outcome is unknown (it may still commit): retry it"
    )]
    LeaderMoved {
        /// The new leader.
        moved: NodeId,
    },
}

impl From<tonic::Status> for ForwardFailure {
    fn from(status: tonic::Status) -> Self {
        Self::Status(Box::new(status))
    }
}

/// Why the replica, its raft core or its proposal queue stopped
/// ([`crate::replica::ReplicaError::Stopped`]).
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StopReason {
    /// The raft core stopped (shut down, or fail-stopped on a storage error).
    #[error(transparent)]
    Fatal(Box<Fatal<NodeId>>),
    /// The raft core's task ended with an error when it was shut down.
    #[error(transparent)]
    Shutdown(Arc<tokio::task::JoinError>),
    /// The replica's proposal queue stopped.
    #[error("the replica's proposal queue stopped")]
    QueueClosed,
    /// Raft core dropped a proposal without answering it.
    #[error("raft core dropped the proposal; its outcome is unknown")]
    ProposalDropped,
    /// A committed entry answered a different number of responses than it has commands.
    #[error("entry {log_id} answered {answered} responses for {expected} commands")]
    ResponseCount {
        /// The entry.
        log_id: LogId,
        /// Responses it answered.
        answered: usize,
        /// Commands it holds.
        expected: usize,
    },
}

impl From<Fatal<NodeId>> for StopReason {
    fn from(fatal: Fatal<NodeId>) -> Self {
        Self::Fatal(Box::new(fatal))
    }
}
