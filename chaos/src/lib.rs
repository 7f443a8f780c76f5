//! Fault-injection harness and benchmarks for Federator.
//!
//! Everything here runs real processes on loopback: [`cluster`] starts and stops
//! federator replicas; the benchmarks reuse it with faults off.

pub mod cluster;
