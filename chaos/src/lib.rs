//! Fault-injection harness and benchmarks for Federator.
//!
//! Everything here runs real processes on loopback: [`cluster`] starts and stops
//! federator replicas, [`etcd`] etcd members; [`bench`] reuses both with faults off.
//! Requests to HTTP endpoints go through [`http`], waits for a condition through [`wait`].

pub mod agent;
pub mod bench;
pub mod check;
pub mod cluster;
pub mod disk;
pub mod envoy;
pub mod etcd;
pub mod http;
pub mod kube_apiserver;
pub mod member;
pub mod mesh;
pub mod promtool;
pub mod proxy;
pub mod run;
pub mod spiffe;
pub mod spire;
pub mod wait;
pub mod watcher;
pub mod workload_api;
