//! Federator's domain: what the replica (`federator::server`), the agent
//! (`federator::agent`) and the command line (`federator::cli`) build on. It knows none
//! of them — the compiler enforces that: they live in the `federator` crate, which
//! depends on this one and re-exports its modules under the same names.
//!
//! | module | job |
//! |---|---|
//! | [`state`] | the replicated federation state and its commands |
//! | [`service`] | exported services and the imports built from them (KEP-1645) |
//! | [`bundle`] | SPIFFE trust bundles: strict parsing, validation, canonical form |
//! | [`identity`] | the federation's CA, certificates, SPIFFE IDs and rustls configs |
//! | [`token`] | join tokens: the single-use secret and how to reach the federation |
//! | [`clock`] | wall-clock time: unix seconds and milliseconds, RFC 3339 text |
//! | [`settings`] | what replica and agent settings share: the error naming the setting |
//! | [`snapshot_file`] | the backup file `federator snapshot save` writes |

pub mod bundle;
pub mod clock;
pub mod identity;
pub mod service;
pub mod settings;
pub mod snapshot_file;
pub mod state;
pub mod token;
