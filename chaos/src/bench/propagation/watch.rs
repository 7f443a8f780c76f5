//! Propagation latency: W watchers of one key (etcd) or one service (Federator), a
//! publisher changing it at a fixed pace with a distinct marker per change, and the
//! arithmetic that turns "watcher w first held change k at instant t" into latencies.
//!
//! A watcher *holds* change k once it has received k or any later change: Federator
//! sends each watcher the current import of a service, so a watcher that falls behind
//! gets the newest version and skips the ones in between (counted as *coalesced*);
//! etcd sends every revision. A (change, watcher) pair that was never held by the end
//! of the phase is *missed*.

use std::future::Future;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use tokio::sync::{mpsc, watch};

/// Deadline of one publisher write; a write that misses it counts as failed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A member process of the system under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Process {
    /// Member (replica) id in the harness.
    pub id: u64,
    /// Operating-system process id.
    pub pid: u32,
    /// Whether it led when the group was started.
    pub leader: bool,
}

/// What a watcher task is told when it is spawned.
#[derive(Clone, Debug)]
pub struct WatcherSpec {
    /// Changes the publisher will make (markers 1..=changes); 0 for a stream that is
    /// only held open (memory per stream), until `stop`.
    pub changes: u64,
    /// Where the watcher reports that its stream is open and its initial state (the
    /// snapshot, or etcd's "created" answer) has arrived, or why it could not open.
    pub ready: mpsc::Sender<anyhow::Result<()>>,
    /// Turns true when the watcher must stop.
    pub stop: watch::Receiver<bool>,
}

/// A system that can be watched: a process group plus client connections.
pub trait WatchTarget {
    /// Display name.
    fn name(&self) -> &'static str;

    /// Every member process, the leader first.
    fn processes(&self) -> Vec<Process>;

    /// Client connections the watchers are spread over (round-robin by index).
    fn connections(&self) -> usize;

    /// Watcher number `index`, on connection `index % connections()`, to be spawned: it
    /// opens its stream, reports to `spec.ready`, and records markers until it holds
    /// every change or is stopped.
    fn watcher(
        &self,
        index: usize,
        spec: WatcherSpec,
    ) -> impl Future<Output = Receipts> + Send + 'static;

    /// Makes change `change` (1-based; 0 is the initial state) and waits for the
    /// acknowledgement.
    fn write(&mut self, change: u64) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// When one watcher first held each change.
#[derive(Clone, Debug, Default)]
pub struct Receipts {
    /// `at[k - 1]`: when change k (or a later one) first arrived.
    at: Vec<Option<Instant>>,
    /// Highest marker received.
    highest: u64,
    /// Changes first held through a later change (the exact one never arrived first).
    pub coalesced: u64,
    /// Why the stream ended early, if it did.
    pub error: Option<String>,
}

impl Receipts {
    /// Nothing received yet of `changes` changes.
    #[must_use]
    pub fn new(changes: u64) -> Self {
        let len = usize::try_from(changes).unwrap_or(usize::MAX);
        Self { at: vec![None; len], ..Self::default() }
    }

    /// A change carrying `marker` arrived at `now`: every change up to it is now held.
    pub fn record(&mut self, marker: u64, now: Instant) {
        let changes = self.at.len() as u64;
        for k in self.highest + 1..=marker.min(changes) {
            if let Some(slot) = usize::try_from(k - 1).ok().and_then(|i| self.at.get_mut(i)) {
                *slot = Some(now);
                if k < marker {
                    self.coalesced += 1;
                }
            }
        }
        self.highest = self.highest.max(marker);
    }

    /// Every change is held (never true for a stream that is only held open).
    #[must_use]
    pub fn complete(&self) -> bool {
        !self.at.is_empty() && self.highest >= self.at.len() as u64
    }
}

/// What the publisher did.
#[derive(Clone, Debug, Default)]
pub struct Publication {
    /// `issued[k - 1]`: the instant write k was issued.
    pub issued: Vec<Instant>,
    /// Acknowledgement latency of every acknowledged write, sorted.
    pub acks: Vec<Duration>,
    /// Writes that failed or timed out.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
}

/// Issues changes 1..=`changes` through `target`, change k at `interval` × k after the
/// start (later if the previous write took longer), each awaited before the next so
/// markers arrive in order.
pub async fn publish<T: WatchTarget>(
    target: &mut T,
    changes: u64,
    interval: Duration,
    bar: &ProgressBar,
) -> Publication {
    let start = tokio::time::Instant::now();
    let mut publication = Publication::default();
    for k in 1..=changes {
        let at = start + interval.saturating_mul(u32::try_from(k).unwrap_or(u32::MAX));
        tokio::time::sleep_until(at).await;
        let issued = Instant::now();
        publication.issued.push(issued);
        match tokio::time::timeout(WRITE_TIMEOUT, target.write(k)).await {
            Ok(Ok(())) => publication.acks.push(issued.elapsed()),
            Ok(Err(error)) => {
                publication.errors += 1;
                publication.first_error.get_or_insert_with(|| format!("{error:#}"));
            }
            Err(_) => {
                publication.errors += 1;
                publication
                    .first_error
                    .get_or_insert_with(|| format!("no answer within {WRITE_TIMEOUT:?}"));
            }
        }
        bar.inc(1);
    }
    publication.acks.sort_unstable();
    publication
}

/// Latencies of every (change, watcher) pair that was held, and the counts of the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Receive instant − issue instant of every held pair, sorted.
    pub latencies: Vec<Duration>,
    /// Pairs never held.
    pub missed: u64,
    /// Pairs held through a later change.
    pub coalesced: u64,
}

/// Pairs every watcher's receipts with the issue instants.
#[must_use]
pub fn tally(issued: &[Instant], receipts: &[Receipts]) -> Tally {
    let mut tally = Tally::default();
    for r in receipts {
        for (at, issued) in r.at.iter().zip(issued) {
            match at {
                Some(at) => tally.latencies.push(at.saturating_duration_since(*issued)),
                None => tally.missed += 1,
            }
        }
        tally.coalesced += r.coalesced;
    }
    tally.latencies.sort_unstable();
    tally
}

/// The `q` quantile (0 < q ≤ 1) of `sorted`, by nearest rank.
#[must_use]
pub fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// One propagation phase against one system.
#[derive(Clone, Debug, Default)]
pub struct LatencyPhase {
    /// Concurrent watchers.
    pub watchers: usize,
    /// Changes published.
    pub changes: u64,
    /// The (change, watcher) pairs.
    pub tally: Tally,
    /// The publisher's writes.
    pub publication: Publication,
    /// Watchers whose stream ended or failed before the end.
    pub broken_streams: u64,
    /// The first such failure.
    pub first_stream_error: Option<String>,
    /// Time to open every stream and receive every initial state.
    pub open_time: Duration,
    /// CPU of every member together while the changes were published, in cores.
    pub cpu: Option<f64>,
}

impl LatencyPhase {
    /// The `q` quantile of propagation latency.
    #[must_use]
    pub fn latency(&self, q: f64) -> Option<Duration> {
        percentile(&self.tally.latencies, q)
    }

    /// The longest propagation latency.
    #[must_use]
    pub fn max(&self) -> Option<Duration> {
        self.tally.latencies.last().copied()
    }

    /// One line for the progress log.
    #[must_use]
    pub fn summary(&self) -> String {
        let ms = |d: Option<Duration>| {
            d.map_or_else(|| "-".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
        };
        let errors = [&self.publication.first_error, &self.first_stream_error]
            .into_iter()
            .flatten()
            .map(|e| format!(" (first error: {e})"))
            .collect::<String>();
        format!(
            "{:>5} watchers: propagation p50 {}, p99 {}, max {}; {} missed, {} coalesced of \
             {}; write ack p50 {}; {} failed writes, {} broken streams; opened in {:.1} s; \
             members' CPU {:.0} % of a core{errors}",
            self.watchers,
            ms(self.latency(0.50)),
            ms(self.latency(0.99)),
            ms(self.max()),
            self.tally.missed,
            self.tally.coalesced,
            self.watchers as u64 * self.changes,
            ms(percentile(&self.publication.acks, 0.50)),
            self.publication.errors,
            self.broken_streams,
            self.open_time.as_secs_f64(),
            self.cpu.unwrap_or(f64::NAN) * 100.0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&sorted, 0.50), Some(ms(50)));
        assert_eq!(percentile(&sorted, 0.99), Some(ms(99)));
        assert_eq!(percentile(&sorted, 1.0), Some(ms(100)));
        assert_eq!(percentile(&[ms(7)], 0.99), Some(ms(7)));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn a_later_marker_fills_the_skipped_changes_as_coalesced() {
        let t0 = Instant::now();
        let mut r = Receipts::new(4);
        r.record(0, t0); // the initial state
        r.record(1, t0 + ms(1));
        r.record(3, t0 + ms(3));
        assert!(!r.complete());
        assert_eq!(r.at, vec![Some(t0 + ms(1)), Some(t0 + ms(3)), Some(t0 + ms(3)), None]);
        assert_eq!(r.coalesced, 1);
        r.record(2, t0 + ms(9)); // late and older: changes nothing
        assert_eq!(r.at[1], Some(t0 + ms(3)));
        r.record(4, t0 + ms(4));
        assert!(r.complete());
        assert_eq!(r.coalesced, 1);
    }

    #[test]
    fn a_stream_held_open_is_never_complete() {
        let mut r = Receipts::new(0);
        r.record(5, Instant::now());
        assert!(!r.complete());
        assert_eq!(r.coalesced, 0);
    }

    #[test]
    fn tally_measures_from_the_issue_and_counts_the_missed() {
        let t0 = Instant::now();
        let issued = [t0, t0 + ms(50), t0 + ms(100)];
        let mut fast = Receipts::new(3);
        fast.record(1, t0 + ms(2));
        fast.record(2, t0 + ms(53));
        fast.record(3, t0 + ms(104));
        let mut slow = Receipts::new(3);
        slow.record(2, t0 + ms(60)); // change 1 held through change 2, 60 ms after issue
        let tally = tally(&issued, &[fast, slow]);
        assert_eq!(tally.latencies, vec![ms(2), ms(3), ms(4), ms(10), ms(60)]);
        assert_eq!(tally.missed, 1);
        assert_eq!(tally.coalesced, 1);
    }
}
