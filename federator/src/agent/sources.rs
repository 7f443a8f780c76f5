//! Where the agent reads its own cluster's bundle ([`bundle`]) and exports: export
//! documents ([`export_doc`]) under an etcd prefix ([`etcd_exports`]) or in a static file
//! ([`file_exports`]). The SPIFFE Workload API ([`crate::identity::workload_api`]) can
//! give both the bundle and the agent's own SVID.

pub mod bundle;
pub mod etcd_exports;
pub mod export_doc;
pub mod file_exports;
