//! The closed-loop load generator: N clients, each writing distinct keys one after the
//! other (the next put starts when the previous one is acknowledged), for a warm-up and
//! then a measured window. Throughput counts acknowledgements inside the window;
//! latencies are those of the puts acknowledged inside it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::Either;

pub use super::load_spec::{IDLE_BEFORE_CALL, LoadSpec, Operation};
use super::progress::Progress;
use super::steps::StepMeans;
use super::target::{self, KvConn, KvTarget, PutError};

/// Connections per member. Clients share them round-robin (gRPC multiplexes), so 256
/// clients use 12 connections on a 3-member group, and one client uses one connection.
pub const CONNECTIONS_PER_MEMBER: usize = 4;
/// Deadline of one put; a put that misses it counts as an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed put, so a failing store is not hammered in a tight loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// What the clients saw in the measured window.
#[derive(Clone, Debug, Default)]
pub struct LoadRun {
    /// Puts acknowledged inside the window.
    pub ops: u64,
    /// Puts that failed or timed out inside the window.
    pub errors: u64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// Length of the measured window.
    pub window: Duration,
    /// Latency of every acknowledged put, sorted ascending.
    pub latencies: Vec<Duration>,
}

impl LoadRun {
    /// Acknowledged puts per second over the window.
    #[must_use]
    pub fn throughput(&self) -> f64 {
        if self.window.is_zero() { 0.0 } else { self.ops as f64 / self.window.as_secs_f64() }
    }

    /// The mean latency.
    #[must_use]
    pub fn mean(&self) -> Option<Duration> {
        let n = u32::try_from(self.latencies.len()).ok().filter(|n| *n > 0)?;
        Some(self.latencies.iter().sum::<Duration>() / n)
    }

    /// The `q` quantile (0 < q ≤ 1) of latency, by nearest rank.
    #[must_use]
    pub fn percentile(&self, q: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let rank = (q * self.latencies.len() as f64).ceil() as usize;
        self.latencies.get(rank.clamp(1, self.latencies.len()) - 1).copied()
    }

    fn merge(&mut self, other: Self) {
        self.ops += other.ops;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies.extend(other.latencies);
    }
}

/// Figures of one load phase against one system.
#[derive(Clone, Debug)]
pub struct PhaseFigures {
    /// Concurrent clients.
    pub clients: usize,
    /// Connections the clients shared.
    pub connections: usize,
    /// What the clients saw.
    pub run: LoadRun,
    /// Raft term increase over the phase (warm-up included): elections under load.
    pub elections: u64,
    /// Increase of the store's own leader-change counter summed over members, when it
    /// has one (Federator: `federator_raft_leader_changes_total`; etcd:
    /// `etcd_server_leader_changes_seen_total`).
    pub leader_changes: Option<u64>,
    /// Where the store's writes spent their time over the phase (warm-up included), for
    /// stores that export it.
    pub steps: Option<StepMeans>,
}

impl PhaseFigures {
    /// One line for the progress log.
    #[must_use]
    pub fn summary(&self) -> String {
        let ms = |d: Option<Duration>| {
            d.map_or_else(|| "-".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
        };
        let first_error =
            self.run.first_error.as_ref().map(|e| format!(" (first: {e})")).unwrap_or_default();
        format!(
            "{:>3} clients: {:>8.0} ops/s, p50 {}, p99 {}, {} errors{first_error}, {} elections",
            self.clients,
            self.run.throughput(),
            ms(self.run.percentile(0.50)),
            ms(self.run.percentile(0.99)),
            self.run.errors,
            self.elections,
        )
    }
}

/// Runs one load phase against `target`: connections spread over the members with the
/// leader's first (so a single client talks to the leader), the election counters read
/// before and after.
///
/// # Errors
/// The group is not healthy, or a member cannot be connected to or probed.
pub async fn phase<T: KvTarget>(
    target: &mut T,
    spec: &LoadSpec,
    progress: &Progress,
) -> anyhow::Result<PhaseFigures> {
    let leader = super::healthy_leader(target).await?;
    let members = leader_first(target.ids(), leader);
    let connections = spec.clients.min(members.len() * CONNECTIONS_PER_MEMBER).max(1);
    let conns = target::pool(target, &members, connections).await?;
    let term_before = target.term().await?;
    let changes_before = target.leader_changes().await;
    let steps_before = target.step_totals().await;

    let acked = Arc::new(AtomicU64::new(0));
    let bar = progress.load_bar(target.name(), spec);
    let ticker = progress_ticker(&bar, &acked, spec.warmup + spec.duration);
    let run = closed_loop(&conns, spec, &acked).await;
    ticker.abort();
    bar.finish_and_clear();

    let term_after = target.term().await?;
    let changes_after = target.leader_changes().await;
    let steps = match (steps_before, target.step_totals().await) {
        (Some(before), Some(after)) => Some(after.since(&before)).filter(|m| !m.is_empty()),
        _ => None,
    };
    Ok(PhaseFigures {
        clients: spec.clients,
        connections,
        run,
        elections: term_after.saturating_sub(term_before),
        leader_changes: changes_before.zip(changes_after).map(|(b, a)| a.saturating_sub(b)),
        steps,
    })
}

/// Moves `bar` through a load phase of length `total` every 250 ms, showing the rate of
/// acknowledgements counted in `acked`. Abort the task when the phase ends.
pub fn progress_ticker(
    bar: &indicatif::ProgressBar,
    acked: &Arc<AtomicU64>,
    total: Duration,
) -> tokio::task::JoinHandle<()> {
    let bar = bar.clone();
    let acked = acked.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let mut last = (started, 0);
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = Instant::now();
            let count = acked.load(Ordering::Relaxed);
            let rate = (count - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            last = (now, count);
            bar.set_position(now.duration_since(started).min(total).as_millis() as u64);
            bar.set_message(format!("{rate:>8.0} ops/s"));
        }
    })
}

/// `ids` with `leader` moved to the front.
#[must_use]
pub fn leader_first(mut ids: Vec<u64>, leader: u64) -> Vec<u64> {
    ids.sort_by_key(|id| (*id != leader, *id));
    ids
}

/// Runs `spec.clients` clients over `conns` (client `c` uses `conns[c % len]`) and
/// returns what they saw in the measured window. `acked` counts every acknowledgement
/// (warm-up included) as it happens, for progress display.
///
/// # Panics
/// `conns` is empty.
pub async fn closed_loop<C: KvConn>(
    conns: &[C],
    spec: &LoadSpec,
    acked: &Arc<AtomicU64>,
) -> LoadRun {
    assert!(!conns.is_empty(), "a load phase needs at least one connection");
    let measure_from = Instant::now() + spec.warmup;
    let until = measure_from + spec.duration;
    let value = vec![b'v'; spec.value_size];
    let keys_per_client = spec.keys_per_client.filter(|k| *k > 0);
    let operation = spec.operation;
    let clients = (0..spec.clients).map(|c| {
        let mut conn = conns[c % conns.len()].clone();
        let prefix = format!("{}/c{c}", spec.prefix);
        let value = value.clone();
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut run = LoadRun::default();
            for i in 0u64.. {
                if operation == Operation::IdleLocalRead {
                    tokio::time::sleep(IDLE_BEFORE_CALL).await;
                }
                let began = Instant::now();
                if began >= until {
                    break;
                }
                let key = format!("{prefix}/{}", keys_per_client.map_or(i, |k| i % k));
                let call = match operation {
                    Operation::Put => Either::Left(conn.put(key, value.clone())),
                    Operation::LocalRead | Operation::IdleLocalRead => {
                        Either::Right(conn.local_read(key))
                    }
                };
                let outcome = tokio::time::timeout(CALL_TIMEOUT, call)
                    .await
                    .unwrap_or(Err(PutError::Timeout(CALL_TIMEOUT)));
                let done = Instant::now();
                let measured = done >= measure_from && done <= until;
                match outcome {
                    Ok(()) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        if measured {
                            run.ops += 1;
                            run.latencies.push(done - began);
                        }
                    }
                    Err(error) => {
                        if measured {
                            run.errors += 1;
                            run.first_error.get_or_insert_with(|| error.to_string());
                        }
                        tokio::time::sleep(ERROR_BACKOFF).await;
                    }
                }
            }
            run
        })
    });
    let mut total = LoadRun { window: spec.duration, ..LoadRun::default() };
    for result in futures::future::join_all(clients.collect::<Vec<_>>()).await {
        match result {
            Ok(run) => total.merge(run),
            Err(error) => {
                total.errors += 1;
                total.first_error.get_or_insert_with(|| format!("client task failed: {error}"));
            }
        }
    }
    total.latencies.sort_unstable();
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(millis: &[u64]) -> LoadRun {
        let mut latencies: Vec<Duration> =
            millis.iter().map(|m| Duration::from_millis(*m)).collect();
        latencies.sort_unstable();
        LoadRun {
            ops: millis.len() as u64,
            window: Duration::from_secs(2),
            latencies,
            ..LoadRun::default()
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let run = run_of(&(1..=100).collect::<Vec<_>>());
        assert_eq!(run.percentile(0.50), Some(Duration::from_millis(50)));
        assert_eq!(run.percentile(0.99), Some(Duration::from_millis(99)));
        assert_eq!(run.percentile(1.0), Some(Duration::from_millis(100)));
        assert_eq!(run_of(&[7]).percentile(0.99), Some(Duration::from_millis(7)));
        assert_eq!(LoadRun::default().percentile(0.5), None);
    }

    #[test]
    fn throughput_is_acknowledgements_per_second_of_window() {
        assert!((run_of(&[1; 10]).throughput() - 5.0).abs() < f64::EPSILON);
    }

    #[test]
    fn leader_comes_first_then_the_others_in_order() {
        assert_eq!(leader_first(vec![1, 2, 3], 2), vec![2, 1, 3]);
        assert_eq!(leader_first(vec![3, 1, 2], 1), vec![1, 2, 3]);
    }

    #[derive(Clone)]
    struct OneMillisecondStore;

    impl KvConn for OneMillisecondStore {
        async fn put(&mut self, _key: String, _value: Vec<u8>) -> Result<(), PutError> {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok(())
        }
    }

    #[tokio::test]
    async fn closed_loop_counts_only_the_measured_window() {
        let spec = LoadSpec {
            clients: 4,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(200),
            value_size: 8,
            prefix: "t".into(),
            keys_per_client: None,
            operation: Operation::Put,
        };
        let acked = Arc::new(AtomicU64::new(0));
        let run = closed_loop(&[OneMillisecondStore], &spec, &acked).await;
        assert_eq!(run.errors, 0);
        assert!(run.ops > 0 && run.ops < acked.load(Ordering::Relaxed), "{run:?}");
        assert_eq!(run.latencies.len() as u64, run.ops);
    }
}
