//! How the replica's API servers answer failures: the replica's errors and the state
//! machine's refusals as gRPC statuses (a follower's answer names the leader in
//! metadata, a replayed bundle sequence is marked for the agent), shared by the admin
//! and the federation API.

use federator_raft::ReplicaError;
use tonic::Status;

use crate::state::CommandError;

/// Maps a replica error to the gRPC status an operator should see.
pub fn replica_status(error: ReplicaError) -> Status {
    match error {
        ReplicaError::NotLeader { leader_id, ref leader_addr, .. } => {
            let mut status = Status::failed_precondition(error.to_string());
            if let Ok(v) = leader_id.to_string().parse() {
                status.metadata_mut().insert("x-leader-id", v);
            }
            if let Ok(v) = leader_addr.parse() {
                status.metadata_mut().insert("x-leader-addr", v);
            }
            status
        }
        ReplicaError::NoLeader
        | ReplicaError::Forward { .. }
        | ReplicaError::Stopped(_)
        | ReplicaError::NotAppliedHere { .. } => Status::unavailable(error.to_string()),
        ReplicaError::NotInitialized | ReplicaError::VersionGate { .. } => {
            Status::failed_precondition(error.to_string())
        }
        ReplicaError::Timeout(..) => Status::deadline_exceeded(error.to_string()),
        ReplicaError::Membership(_) | ReplicaError::Config(_) => {
            Status::failed_precondition(error.to_string())
        }
        _ => Status::internal(error.to_string()),
    }
}

/// Maps a state-machine refusal to the gRPC status the caller sees.
pub fn command_status(error: CommandError) -> Status {
    let message = error.to_string();
    match error {
        CommandError::Bundle(ref bundle) if crate::bundle::is_sequence_replay(bundle) => {
            let mut status = Status::invalid_argument(message);
            if let Ok(kind) = crate::bundle::REFUSAL_SEQUENCE_REPLAY.parse() {
                status.metadata_mut().insert(crate::bundle::REFUSAL_METADATA_KEY, kind);
            }
            status
        }
        CommandError::Invalid { .. } | CommandError::Bundle(_) => Status::invalid_argument(message),
        CommandError::PermissionDenied(_) | CommandError::Token(_) => {
            Status::permission_denied(message)
        }
        CommandError::NotFound(_) => Status::not_found(message),
        CommandError::AlreadyExists(_) => Status::already_exists(message),
        _ => Status::internal(message),
    }
}
