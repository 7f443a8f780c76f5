//! Federator: a Raft-replicated service that federates SPIFFE trust bundles and
//! service endpoints between the clusters of a multi-cluster service mesh.
//!
//! | module | job |
//! |---|---|
//! | [`state`] | the replicated federation state and its commands |
//! | [`identity`] | the federation's CA, certificates, SPIFFE IDs and rustls configs |
//! | [`config`] | replica settings: file, environment, flags |
//! | [`server`] | one replica: consensus, API servers, health, metrics |
//! | [`cli`] | the `federator` command line |

pub mod cli;
pub mod config;
pub mod identity;
pub mod server;
pub mod state;
