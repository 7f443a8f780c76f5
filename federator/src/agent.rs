//! The cluster agent: what a member cluster runs. It joins the federation once, then
//! publishes its cluster's bundle and exports, keeps its member lease alive, and writes
//! every other member's bundles and its imports into the places the mesh reads from
//! (files, etcd keys, Envoy SDS/EDS) — and keeps serving them from disk while no replica
//! is reachable.

pub mod config;
mod deadlines;
pub mod etcd_auth;
pub mod held;
pub mod kubernetes;
mod lease;
pub mod metrics;
pub mod runtime;
pub mod sinks;
pub mod sources;
pub mod status;
pub mod store;
pub mod view;

pub use config::AgentConfig;
pub use runtime::{RunError, run};
pub use status::AgentStatus;
pub use view::{AgentView, ExportSet, Sink, SinkError, SinkFuture, SourceProblem};
