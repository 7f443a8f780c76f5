//! Helpers shared by the end-to-end tests. The process harness itself lives in the chaos
//! crate (`federator_chaos::cluster`), which the chaos suite and the benchmarks share.

pub use federator_chaos::cluster::*;
pub use federator_chaos::{member, watcher};
