//! Where the agent reads its own cluster's bundle ([`bundle`]) and exports: export
//! documents ([`export_doc`]) under an etcd prefix ([`etcd_exports`]) or in a static file
//! ([`file_exports`]).

pub mod bundle;
pub mod etcd_exports;
pub mod export_doc;
pub mod file_exports;
