//! Where the agent writes what it applied: per-trust-domain bundle files and an imports
//! file ([`files`]), etcd keys ([`etcd`]), and an Envoy SDS/EDS server ([`xds`]).

pub mod etcd;
pub mod files;
pub mod xds;
