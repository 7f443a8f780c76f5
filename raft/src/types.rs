//! The openraft type configuration of a Federator replica group, and error aliases.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// Replica id: a positive integer chosen by the operator, unique within the group.
pub type NodeId = u64;

/// What other replicas know of a replica: its transport address.
pub type Node = openraft::BasicNode;

/// An application command: opaque bytes the application's state machine decodes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// What the application's state machine answered for a command.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Command({} bytes)", self.0.len())
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "command of {} bytes", self.0.len())
    }
}

impl fmt::Debug for CommandResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommandResponse({} bytes)", self.0.len())
    }
}

openraft::declare_raft_types!(
    /// Type configuration of the replica group.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The openraft handle of this group.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;
/// A vote.
pub type Vote = openraft::Vote<NodeId>;
/// Cluster membership.
pub type Membership = openraft::Membership<NodeId, Node>;
/// Membership with the log id that carried it.
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
/// A snapshot with its data.
pub type Snapshot = openraft::Snapshot<TypeConfig>;
/// Storage error of this group.
pub type StorageError = openraft::StorageError<NodeId>;
/// Storage IO error of this group.
pub type StorageIOError = openraft::StorageIOError<NodeId>;
/// Log state of this group.
pub type LogState = openraft::LogState<TypeConfig>;
/// Raft metrics of this group.
pub type RaftMetrics = openraft::RaftMetrics<NodeId, Node>;

/// Error aliases, in the style of openraft's examples.
pub mod typ {
    use super::{Node, NodeId, TypeConfig};

    /// Errors a raft API call can return, parameterised by the API's own error.
    pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
    /// An RPC error of the transport.
    pub type RpcError<E = openraft::error::Infallible> =
        openraft::error::RPCError<NodeId, Node, RaftError<E>>;
    /// Error of a client write.
    pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, Node>;
    /// Error of a leadership check.
    pub type CheckIsLeaderError = openraft::error::CheckIsLeaderError<NodeId, Node>;
    /// Error of initialisation.
    pub type InitializeError = openraft::error::InitializeError<NodeId, Node>;
    /// Error of a snapshot stream.
    pub type StreamingError<E> = openraft::error::StreamingError<TypeConfig, E>;
    /// A fatal error of raft core.
    pub type Fatal = openraft::error::Fatal<NodeId>;
    /// Response of a client write.
    pub type ClientWriteResponse = openraft::raft::ClientWriteResponse<TypeConfig>;
    /// AppendEntries request.
    pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
    /// AppendEntries response.
    pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<NodeId>;
    /// Vote request.
    pub type VoteRequest = openraft::raft::VoteRequest<NodeId>;
    /// Vote response.
    pub type VoteResponse = openraft::raft::VoteResponse<NodeId>;
    /// Snapshot install response.
    pub type SnapshotResponse = openraft::raft::SnapshotResponse<NodeId>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_encode_as_before_their_bytes_were_serialized_in_one_piece() {
        // Logs written when `Command` held a plain `Vec<u8>` (a sequence of u8) must read
        // the same: postcard encodes bytes and a u8 sequence alike.
        #[derive(Serialize)]
        struct Before(Vec<u8>);
        let bytes: Vec<u8> = (0..=255).chain(0..44).collect();
        let now = postcard::to_stdvec(&Command(bytes.clone())).expect("encodes");
        assert_eq!(now, postcard::to_stdvec(&Before(bytes.clone())).expect("encodes"));
        let back: Command = postcard::from_bytes(&now).expect("decodes");
        assert_eq!(back.0, bytes);
    }
}
