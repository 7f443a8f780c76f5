//! The openraft type configuration of a Federator replica group, and error aliases.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Replica id: a positive integer chosen by the operator, unique within the group.
pub type NodeId = u64;

/// What other replicas know of a replica: its transport address.
pub type Node = openraft::BasicNode;

/// The payload of a normal log entry: one or more application commands, each opaque
/// bytes the application's state machine decodes. Writes proposed together share one
/// entry (see [`crate::proposer`]) and are applied in order at its index.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command(pub Vec<ByteBuf>);

/// What the application's state machine answered for each command of an entry, in order.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse(pub Vec<ByteBuf>);

impl Command {
    /// An entry payload of the single command `bytes`.
    #[must_use]
    pub fn single(bytes: Vec<u8>) -> Self {
        Self(vec![ByteBuf::from(bytes)])
    }

    /// The commands, in the order they are applied.
    pub fn commands(&self) -> impl ExactSizeIterator<Item = &[u8]> {
        self.0.iter().map(|c| c.as_slice())
    }

    /// Bytes of all commands together.
    #[must_use]
    pub fn len_bytes(&self) -> usize {
        self.0.iter().map(|c| c.len()).sum()
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Command({} commands, {} bytes)", self.0.len(), self.len_bytes())
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} commands of {} bytes", self.0.len(), self.len_bytes())
    }
}

impl fmt::Debug for CommandResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes: usize = self.0.iter().map(|r| r.len()).sum();
        write!(f, "CommandResponse({} responses, {bytes} bytes)", self.0.len())
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
    fn a_command_batch_encodes_as_a_sequence_of_byte_strings() {
        // The log store's format 2 depends on this layout (format 1 held one byte string).
        #[derive(Serialize)]
        struct Layout(Vec<ByteBuf>);
        let commands =
            vec![ByteBuf::from(vec![1, 2, 3]), ByteBuf::from((0..=255).collect::<Vec<u8>>())];
        let encoded = postcard::to_stdvec(&Command(commands.clone())).expect("encodes");
        assert_eq!(encoded, postcard::to_stdvec(&Layout(commands.clone())).expect("encodes"));
        assert_eq!(&encoded[..5], &[2, 3, 1, 2, 3]);
        let back: Command = postcard::from_bytes(&encoded).expect("decodes");
        assert_eq!(back.commands().collect::<Vec<_>>(), [&[1, 2, 3][..], &commands[1][..]]);
        assert_eq!(back.len_bytes(), 259);
    }
}
