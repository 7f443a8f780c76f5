//! `bench soak`: spurious elections under sustained full load. Each system's group takes
//! closed-loop writes from many clients for a long time (10 minutes by default) while a
//! sampler reads its raft term and leader-change counters every second; with nobody
//! killed or partitioned, every term increase is an election the load caused.
//!
//! The clients cycle over a bounded key space (they overwrite their own keys), so a
//! long run keeps the stored state small and measures the replication path, not a
//! growing store.

pub mod report;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use super::load::{self, LoadRun, LoadSpec, Operation, closed_loop, leader_first, progress_ticker};
use super::progress::Progress;
use super::target::{self, KvTarget};
use super::{BenchTiming, System, start_etcd, start_federator};
use crate::etcd::EtcdTransport;

/// What `bench soak` runs.
#[derive(Clone, Debug)]
pub struct SoakConfig {
    /// Concurrent closed-loop clients.
    pub clients: usize,
    /// Unmeasured time at the start (elections in it still count).
    pub warmup: Duration,
    /// Measured time under load.
    pub duration: Duration,
    /// Bytes per value.
    pub value_size: usize,
    /// Distinct keys over all clients (each client overwrites its share).
    pub keys: u64,
    /// Time between two samples of the term and the acknowledgement count.
    pub sample_every: Duration,
    /// Systems to run, one after the other.
    pub systems: Vec<System>,
    /// Raft timings to run every system at, one after the other.
    pub timings: Vec<BenchTiming>,
    /// How etcd's clients and peers reach its members.
    pub etcd_transport: EtcdTransport,
}

impl SoakConfig {
    /// Checks the settings, naming the bad one.
    ///
    /// # Errors
    /// A count or duration is zero, or there are fewer keys than clients.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.clients == 0 {
            anyhow::bail!("--clients must be positive");
        }
        if self.duration.is_zero() {
            anyhow::bail!("--duration must be positive");
        }
        if self.sample_every.is_zero() {
            anyhow::bail!("--sample-every must be positive");
        }
        if self.keys < self.clients as u64 {
            anyhow::bail!(
                "--keys ({}) must be at least --clients ({}): each client needs a key of its own",
                self.keys,
                self.clients
            );
        }
        if self.systems.is_empty() {
            anyhow::bail!("--systems needs at least one system");
        }
        if self.timings.is_empty() {
            anyhow::bail!("--timings needs at least one timing (equal, defaults)");
        }
        Ok(())
    }

    /// Keys each client cycles through.
    #[must_use]
    pub fn keys_per_client(&self) -> u64 {
        (self.keys / self.clients.max(1) as u64).max(1)
    }
}

/// One reading of the sampler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Since the clients started (warm-up included).
    pub at: Duration,
    /// Acknowledgements so far (warm-up included).
    pub acked: u64,
    /// The highest raft term any member reported; `None` when none answered.
    pub term: Option<u64>,
}

/// Everything one system showed over the soak.
#[derive(Clone, Debug)]
pub struct SoakFigures {
    /// Display name.
    pub system: &'static str,
    /// The raft timing it ran at.
    pub timing: BenchTiming,
    /// Connections the clients shared.
    pub connections: usize,
    /// What the clients saw in the measured window.
    pub run: LoadRun,
    /// Raft term before the clients started.
    pub term_before: u64,
    /// Raft term after they stopped.
    pub term_after: u64,
    /// Increase of the members' leader-change counters, when the store has them.
    pub leader_changes: Option<u64>,
    /// The sampler's readings, in order.
    pub samples: Vec<Sample>,
}

impl SoakFigures {
    /// Elections during the soak: the term's increase.
    #[must_use]
    pub fn elections(&self) -> u64 {
        self.term_after.saturating_sub(self.term_before)
    }

    /// When the term went up, as (time since the clients started, new term).
    #[must_use]
    pub fn term_changes(&self) -> Vec<(Duration, u64)> {
        let mut last = Some(self.term_before);
        let mut changes = Vec::new();
        for sample in &self.samples {
            if let Some(term) = sample.term {
                if Some(term) > last {
                    changes.push((sample.at, term));
                }
                last = last.max(Some(term));
            }
        }
        changes
    }

    /// The slowest interval between two samples of the measured window, as (start of
    /// the interval since the clients started, acknowledgements per second in it).
    #[must_use]
    pub fn slowest_interval(&self, warmup: Duration) -> Option<(Duration, f64)> {
        self.samples
            .windows(2)
            .filter(|w| w[0].at >= warmup)
            .filter_map(|w| {
                let span = w[1].at.checked_sub(w[0].at)?.as_secs_f64();
                (span > 0.0).then(|| (w[0].at, (w[1].acked - w[0].acked) as f64 / span))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// One line for the progress log.
    #[must_use]
    pub fn summary(&self, warmup: Duration) -> String {
        let ms = |d: Option<Duration>| {
            d.map_or_else(|| "-".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
        };
        format!(
            "soak: {:.0} writes/s, p50 {}, p99 {}, max {}, {} errors, slowest interval {}, {} \
             elections (term {} → {})",
            self.run.throughput(),
            ms(self.run.percentile(0.5)),
            ms(self.run.percentile(0.99)),
            ms(self.run.percentile(1.0)),
            self.run.errors,
            self.slowest_interval(warmup)
                .map_or_else(|| "-".into(), |(_, rate)| format!("{rate:.0} writes/s")),
            self.elections(),
            self.term_before,
            self.term_after,
        )
    }
}

/// The figures of one `bench soak` run.
#[derive(Clone, Debug)]
pub struct SoakReport {
    /// What was asked for.
    pub config: SoakConfig,
    /// One entry per system, in the order they ran.
    pub systems: Vec<SoakFigures>,
}

/// etcd's members compact their history every minute (keeping the last minute) and may
/// grow to 8 GiB, as a long-running etcd is configured: with the defaults (no compaction,
/// 2 GB quota) ten minutes of overwrites fill the quota with old revisions and etcd
/// refuses every later write.
fn etcd_flags(timing: BenchTiming) -> Vec<String> {
    ["--auto-compaction-mode=periodic", "--auto-compaction-retention=1m"]
        .into_iter()
        .map(String::from)
        .chain([format!("--quota-backend-bytes={}", 8_u64 << 30)])
        .chain(timing.etcd_flags())
        .collect()
}

/// Runs the soak against every configured system, one after the other, each in a fresh
/// group torn down before the next starts.
///
/// # Errors
/// A group did not start or was not healthy; the error names the system.
pub async fn run_soak(config: &SoakConfig, progress: &Progress) -> anyhow::Result<SoakReport> {
    config.validate()?;
    let mut systems = Vec::new();
    for timing in &config.timings {
        for system in &config.systems {
            let figures = match system {
                System::Federator => {
                    let mut target = start_federator(progress, *timing).await?;
                    soak(&mut target, *timing, config, progress).await
                }
                System::Etcd => {
                    let mut target =
                        start_etcd(progress, &etcd_flags(*timing), config.etcd_transport).await?;
                    soak(&mut target, *timing, config, progress).await
                }
            };
            let figures = figures
                .with_context(|| format!("soaking {} ({})", system.name(), timing.title()))?;
            progress.println(format!("{:>9} {}", figures.system, figures.summary(config.warmup)));
            systems.push(figures);
        }
    }
    Ok(SoakReport { config: config.clone(), systems })
}

/// The soak against one group: the clients and the sampler side by side.
async fn soak<T: KvTarget>(
    target: &mut T,
    timing: BenchTiming,
    config: &SoakConfig,
    progress: &Progress,
) -> anyhow::Result<SoakFigures> {
    let leader = super::healthy_leader(target).await?;
    let members = leader_first(target.ids(), leader);
    let connections = config.clients.min(members.len() * load::CONNECTIONS_PER_MEMBER).max(1);
    let conns = target::pool(target, &members, connections).await?;
    let term_before = target.term().await?;
    let changes_before = target.leader_changes().await;

    let spec = LoadSpec {
        clients: config.clients,
        warmup: config.warmup,
        duration: config.duration,
        value_size: config.value_size,
        prefix: "bench/soak".into(),
        keys_per_client: Some(config.keys_per_client()),
        operation: Operation::Put,
    };
    let acked = Arc::new(AtomicU64::new(0));
    let bar = progress.load_bar(target.name(), &spec);
    let ticker = progress_ticker(&bar, &acked, spec.warmup + spec.duration);
    let total = spec.warmup + spec.duration;
    let (run, samples) = tokio::join!(
        closed_loop(&conns, &spec, &acked),
        sample(&*target, &acked, total, config.sample_every),
    );
    ticker.abort();
    bar.finish_and_clear();

    let term_after = target.term().await?;
    let changes_after = target.leader_changes().await;
    Ok(SoakFigures {
        system: target.name(),
        timing,
        connections,
        run,
        term_before,
        // The highest term seen at all: a member that answered a sample may not answer
        // the final reading.
        term_after: samples.iter().filter_map(|s| s.term).fold(term_after, u64::max),
        leader_changes: changes_before.zip(changes_after).map(|(b, a)| a.saturating_sub(b)),
        samples,
    })
}

/// Reads the term and the acknowledgement count every `every` until `total` has passed
/// since it started (the clients start at the same moment).
async fn sample<T: KvTarget>(
    target: &T,
    acked: &AtomicU64,
    total: Duration,
    every: Duration,
) -> Vec<Sample> {
    let started = tokio::time::Instant::now();
    let mut samples = Vec::new();
    for n in 0u32.. {
        let at = started.elapsed();
        let acked = acked.load(Ordering::Relaxed);
        let term = target.term().await.ok();
        samples.push(Sample { at, acked, term });
        let next = every * (n + 1);
        if next > total {
            break;
        }
        tokio::time::sleep_until(started + next).await;
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SoakConfig {
        SoakConfig {
            clients: 1000,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(600),
            value_size: 256,
            keys: 100_000,
            sample_every: Duration::from_secs(1),
            systems: vec![System::Federator, System::Etcd],
            timings: vec![BenchTiming::Equal, BenchTiming::Defaults],
            etcd_transport: EtcdTransport::MutualTls,
        }
    }

    fn figures(terms: &[(u64, u64, Option<u64>)]) -> SoakFigures {
        SoakFigures {
            system: "Federator",
            timing: BenchTiming::Equal,
            connections: 12,
            run: LoadRun::default(),
            term_before: 3,
            term_after: terms.iter().filter_map(|t| t.2).max().unwrap_or(3),
            leader_changes: Some(0),
            samples: terms
                .iter()
                .map(|(secs, acked, term)| Sample {
                    at: Duration::from_secs(*secs),
                    acked: *acked,
                    term: *term,
                })
                .collect(),
        }
    }

    #[test]
    fn keys_are_shared_out_over_the_clients() {
        assert_eq!(config().keys_per_client(), 100);
        let mut c = config();
        c.keys = 1500;
        assert_eq!(c.keys_per_client(), 1);
    }

    #[test]
    fn validation_names_the_bad_setting() {
        let mut c = config();
        c.keys = 10;
        let error = c.validate().expect_err("fewer keys than clients").to_string();
        assert!(error.contains("--keys (10)") && error.contains("--clients (1000)"), "{error}");
        let mut c = config();
        c.clients = 0;
        assert!(c.validate().expect_err("no clients").to_string().contains("--clients"));
        let mut c = config();
        c.duration = Duration::ZERO;
        assert!(c.validate().expect_err("no time").to_string().contains("--duration"));
        let mut c = config();
        c.sample_every = Duration::ZERO;
        assert!(c.validate().expect_err("no sampling").to_string().contains("--sample-every"));
        assert!(config().validate().is_ok());
    }

    #[test]
    fn term_changes_are_found_between_samples_and_unanswered_samples_skipped() {
        let f = figures(&[(0, 0, Some(3)), (1, 100, None), (2, 200, Some(5)), (3, 300, Some(5))]);
        assert_eq!(f.elections(), 2);
        assert_eq!(f.term_changes(), vec![(Duration::from_secs(2), 5)]);
        let quiet = figures(&[(0, 0, Some(3)), (1, 100, Some(3))]);
        assert_eq!(quiet.elections(), 0);
        assert!(quiet.term_changes().is_empty());
    }

    #[test]
    fn the_slowest_interval_skips_the_warmup() {
        let f = figures(&[
            (0, 0, Some(3)),
            (1, 10, Some(3)),
            (2, 1010, Some(3)),
            (3, 1510, Some(3)),
            (4, 2510, Some(3)),
        ]);
        // 0 → 1 s is warm-up (10 writes/s), then 1000, 500, 1000.
        assert_eq!(
            f.slowest_interval(Duration::from_secs(1)),
            Some((Duration::from_secs(2), 500.0))
        );
        assert_eq!(f.slowest_interval(Duration::ZERO), Some((Duration::ZERO, 10.0)));
        assert_eq!(figures(&[(0, 0, Some(3))]).slowest_interval(Duration::ZERO), None);
    }
}
