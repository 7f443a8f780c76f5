//! The replica transport: openraft's RPCs as gRPC over mTLS.
//!
//! [`client`] is the sending side ([`Network`], openraft's network factory, with one
//! pooled connection per peer, per-RPC timeouts, backoff and write forwarding);
//! [`server`] is the receiving side ([`RaftTransportService`] and [`serve`]). Messages are
//! converted by [`crate::convert`]; connections are made by [`crate::tls`].

pub mod client;
pub mod server;

pub use client::{Network, PeerClient, TransportOptions};
pub use server::{PeerAuthorization, PeerPolicy, RaftTransportService, serve, serve_service};

/// Largest gRPC message either side encodes or decodes. Snapshot chunks are far smaller;
/// this bounds a large `AppendEntries` batch.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// gRPC metadata key carrying the leader's id on a not-leader error.
pub const LEADER_ID_METADATA: &str = "x-leader-id";

/// gRPC metadata key carrying the leader's transport address on a not-leader error.
pub const LEADER_ADDR_METADATA: &str = "x-leader-addr";

/// The transport server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// tonic's server stopped with an error.
    #[error("replica transport server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
}
