//! Federator: a Raft-replicated service that federates SPIFFE trust bundles and
//! service endpoints between the clusters of a multi-cluster service mesh.
//!
//! | module | job |
//! |---|---|
//! | [`agent`] | the cluster agent: sources, sinks, static stability |
//! | [`state`] | the replicated federation state and its commands |
//! | [`service`] | exported services and the imports built from them (KEP-1645) |
//! | [`bundle`] | SPIFFE trust bundles: strict parsing, validation, canonical form |
//! | [`identity`] | the federation's CA, certificates, SPIFFE IDs and rustls configs |
//! | [`token`] | join tokens: the single-use secret and how to reach the federation |
//! | [`config`] | replica settings: file, environment, flags |
//! | [`snapshot_file`] | the backup file `federator snapshot save` writes |
//! | [`server`] | one replica: consensus, API servers, health, metrics |
//! | [`cli`] | the `federator` command line |

pub mod agent;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod identity;
pub mod server;
pub mod service;
pub mod snapshot_file;
pub mod state;
pub mod token;
