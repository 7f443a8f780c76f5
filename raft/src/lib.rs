//! Consensus plumbing for Federator.
//!
//! This crate runs one replica of a Raft group on [openraft] 0.9 (`storage-v2`): a durable
//! log and vote store on [redb], state-machine snapshots, an mTLS gRPC transport between
//! replicas, online membership changes, write forwarding, linearizable reads, and leader
//! calls (opaque requests served by the leader's in-memory logic, outside the log).
//!
//! It is generic over the application's state machine ([`StateMachine`]): commands and
//! responses are opaque bytes here, so nothing in this crate knows what the federation
//! stores.
//!
//! | module | job |
//! |---|---|
//! | [`types`] | the openraft type configuration and error aliases |
//! | [`log_store`] | durable log, vote and committed index on redb |
//! | [`state_machine`] | the application trait, apply, snapshot build/install/persist |
//! | `snapshot_files` | snapshot data as files beside the database, made current by it, checked against the SHA-256 it stores |
//! | [`convert`] | openraft types ⇄ protobuf messages, one file per type family |
//! | [`network`] | gRPC client (pooled, timeouts, backoff) and server of the replica transport |
//! | [`tls`] | mTLS connection plumbing for the transport |
//! | [`replica`] | one replica: open, serve, write, read, membership, leader calls |
//! | `proposer` | batching: writes that wait together share one log entry |
//! | `leader` | who leads as one replica sees it, the leader's read index, a leader change |
//! | [`leader_call`] | the application's handler of leader calls and the slot it is installed in |
//! | [`metrics`] | Prometheus metrics of the consensus layer |
//! | [`timeline`] | where a write's time goes: each log entry's steps through the write path |
//! | [`disk_check`] | how fast a disk makes a log append durable (`federator check --disk`, `bench raft`) |

mod causes;
pub mod convert;
pub mod disk_check;
pub mod failpoints;
mod leader;
pub mod leader_call;
pub mod log_store;
pub mod metrics;
pub mod network;
pub(crate) mod proposer;
pub mod replica;
mod snapshot_files;
pub mod state_machine;
mod tasks;
pub mod timeline;
pub mod tls;
pub mod types;

pub use leader_call::{AlreadyInstalled, LeaderHandler, LeaderHandlerSlot};
pub use replica::{
    CatchUpError, ClusterVersion, Consistency, DEFAULT_ELECTION_TIMEOUT, DEFAULT_HEARTBEAT,
    ForwardFailure, MembershipRefusal, NoAnswer, QueuedWrite, RaftFailure, Replica, ReplicaConfig,
    ReplicaError, StopReason, StorageFailure, Timing, VoterVersion, VotersBehind, WriteOutcome,
};
pub use state_machine::{NotApplicable, RestoreError, StateMachine};
pub use types::{Command, CommandResponse, NodeId, TypeConfig};
