//! Generated protobuf and gRPC code for Federator.
//!
//! One module per API: [`raft`] (replica transport), [`admin`] (operator API) and
//! [`federation`] (agent API), and [`spiffe_workload`], the SPIFFE Workload API (for the
//! test server that stands in for SPIRE; the agent's client is the `spiffe` crate's).
//! Conversions to and from domain types live with the
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

/// The SPIFFE Workload API (`SpiffeWorkloadAPI`, no package), client and server.
pub mod spiffe_workload {
    #![allow(warnings, clippy::all, clippy::pedantic, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}
