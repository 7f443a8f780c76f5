//! Generated protobuf and gRPC code for Federator.
//!
//! One module per API: [`raft`] (replica transport), [`admin`] (operator API) and
//! [`federation`] (agent API). Conversions to and from domain types live with the
//! domain types, not here.

/// Replica-to-replica transport (`federator.raft.v1`).
pub mod raft {
    #![allow(warnings, clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("federator.raft.v1");
}

/// Operator API (`federator.admin.v1`).
pub mod admin {
    #![allow(warnings, clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("federator.admin.v1");
}

/// Agent-facing federation API (`federator.federation.v1`).
pub mod federation {
    #![allow(warnings, clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("federator.federation.v1");
}
