//! Benchmarks: Federator's replicated write path against a 3-member etcd cluster, both
//! driven by the same client harness on the same machine in the same run.
//!
//! The figures are printed, never asserted: [`run_raft`] measures, [`report`] lays the
//! two systems side by side with the ratio Federator/etcd and the targets. Before
//! the systems start, [`run_raft`] also times durable log appends on the disk they share
//! (one writer alone, then one per replica at once): the floor under a replicated write,
//! reported beside the latencies it explains.
//!
//! - [`target`]: the [`KvTarget`](target::KvTarget) interface and its Federator and etcd
//!   implementations (process groups plus client connections).
//! - [`load`]: the closed-loop load generator (throughput, p50/p99 latency); [`load_spec`]:
//!   what one load phase is.
//! - [`failover`]: the SIGKILL-the-leader trial loop (kill → next acknowledged write).
//! - [`report`]: the text table and the markdown section for `BENCHMARKS.md`.
//! - [`plot`]: SVG plots of latency distributions for `BENCHMARKS.md`.
//! - [`progress`]: progress bars and phase summaries on stderr.
//! - [`propagation`]: `bench propagation`, watch propagation latency to many watchers and
//!   memory per stored endpoint and per watch stream, Federator against etcd.
//! - [`snapshot`]: `bench snapshot`, snapshot save, restore and follower install on the
//!   same data, Federator against etcd.
//! - [`scale`]: `bench scale`, how throughput and propagation change as one Federator
//!   group grows from 10 to 1,000 member clusters.
//! - [`soak`]: `bench soak`, elections under sustained full load, Federator against etcd.
//! - [`attack`]: `bench attack`, legitimate write latency under a join flood and a
//!   connection flood, beside the quiet figure (Federator only).

pub mod attack;
pub mod failover;
pub mod load;
pub mod load_spec;
pub mod plot;
pub mod progress;
pub mod propagation;
pub mod report;
pub mod scale;
pub mod snapshot;
pub mod soak;
pub mod steps;
pub mod target;
pub mod text;

use std::time::{Duration, Instant};

use anyhow::Context as _;

use self::load::{LoadSpec, Operation};
use self::progress::Progress;
use self::report::{DiskFloor, RaftReport, SystemFigures};
use self::target::{EtcdTarget, FederatorTarget, KvTarget};
use crate::etcd::EtcdTransport;

/// Replicas (members) in each group under test.
pub const GROUP_SIZE: u64 = 3;
/// Time allowed for a group to start, elect a leader, or recover after a restart.
pub(crate) const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);

/// The raft timing a benchmark gives each system: election timing decides how fast a
/// crashed leader is replaced and how easily load causes a spurious election, so the
/// systems are compared at the same timing as well as at each one's shipped default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchTiming {
    /// Both at Federator's `lan` profile: heartbeat 25 ms, election timeout 80–160 ms.
    /// etcd gets election timeout 80 ms (it randomizes to 80–160 ms itself) and heartbeat
    /// 16 ms, the longest it accepts with that timeout (it refuses an election timeout
    /// under five heartbeats).
    Equal,
    /// Each at its shipped default: Federator's `wan` profile (heartbeat 250 ms, election
    /// timeout 1–2 s), etcd's 100 ms heartbeat and 1,000 ms election timeout.
    Defaults,
}

impl BenchTiming {
    /// The timing's name in reports.
    #[must_use]
    pub fn title(self) -> &'static str {
        match self {
            Self::Equal => "both at equal raft timing",
            Self::Defaults => "each at its default raft timing",
        }
    }

    /// Federator's timing profile.
    #[must_use]
    pub fn federator(self) -> federator_raft::Timing {
        match self {
            Self::Equal => federator_raft::Timing::Lan,
            Self::Defaults => federator_raft::Timing::default(),
        }
    }

    /// etcd's (heartbeat, election timeout) in milliseconds.
    #[must_use]
    pub fn etcd_millis(self) -> (u128, u128) {
        match self {
            Self::Equal => {
                let (election, _) = self.federator().election_timeout();
                let heartbeat = self.federator().heartbeat().as_millis();
                let election = election.as_millis();
                (heartbeat.min(election / ETCD_MIN_ELECTION_TICKS), election)
            }
            Self::Defaults => (100, 1_000),
        }
    }

    /// etcd's command-line flags for this timing (none for its defaults).
    #[must_use]
    pub fn etcd_flags(self) -> Vec<String> {
        match self {
            Self::Equal => {
                let (heartbeat, election) = self.etcd_millis();
                vec![
                    format!("--heartbeat-interval={heartbeat}"),
                    format!("--election-timeout={election}"),
                ]
            }
            Self::Defaults => Vec::new(),
        }
    }

    /// What each system ran with, for the reports.
    #[must_use]
    pub fn describe(self) -> String {
        let timing = self.federator();
        let (lo, hi) = timing.election_timeout();
        let (heartbeat, election) = self.etcd_millis();
        format!(
            "Federator `{}` profile (heartbeat {} ms, election timeout {}–{} ms), etcd \
             heartbeat {heartbeat} ms and election timeout {election} ms (randomized by etcd \
             to {election}–{} ms){}",
            timing.name(),
            timing.heartbeat().as_millis(),
            lo.as_millis(),
            hi.as_millis(),
            2 * election,
            match self {
                Self::Equal => {
                    "; etcd refuses an election timeout under five heartbeats, hence its \
                     shorter heartbeat"
                }
                Self::Defaults => "",
            },
        )
    }
}

/// The distinct timings in `timings`, in the order they first appear.
pub(crate) fn distinct_timings(timings: impl IntoIterator<Item = BenchTiming>) -> Vec<BenchTiming> {
    let mut distinct: Vec<BenchTiming> = Vec::new();
    for timing in timings {
        if !distinct.contains(&timing) {
            distinct.push(timing);
        }
    }
    distinct
}

/// Keys the single-client local-read phase cycles through.
const LOCAL_READ_KEYS: u64 = 64;

/// etcd refuses an election timeout shorter than this many heartbeats.
const ETCD_MIN_ELECTION_TICKS: u128 = 5;

/// A system under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    /// Federator replicas (`federator server`), writes through the admin API's `Put`.
    Federator,
    /// etcd 3.4 members (`/usr/bin/etcd`), writes through the KV API's `Put`.
    Etcd,
}

impl System {
    /// Display name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Federator => "Federator",
            Self::Etcd => "etcd",
        }
    }
}

/// What `bench raft` measures and for how long.
#[derive(Clone, Debug)]
pub struct RaftBenchConfig {
    /// Concurrent client counts, one load phase each.
    pub clients: Vec<usize>,
    /// Measured time of each load phase.
    pub duration: Duration,
    /// Unmeasured time at the start of each load phase.
    pub warmup: Duration,
    /// Leader-failover trials per system.
    pub trials: usize,
    /// Bytes per written value.
    pub value_size: usize,
    /// Systems to run, one after the other.
    pub systems: Vec<System>,
    /// Durable appends per writer of the disk floor probes.
    pub disk_appends: usize,
    /// Raft timings to run every system at, one after the other.
    pub timings: Vec<BenchTiming>,
    /// How etcd's clients and peers reach its members.
    pub etcd_transport: EtcdTransport,
}

/// Runs every configured system, one after the other, each in a fresh group that is
/// torn down (every process killed) before the next one starts.
///
/// # Errors
/// A group did not start or did not recover; the error names the system and step.
pub async fn run_raft(config: &RaftBenchConfig, progress: &Progress) -> anyhow::Result<RaftReport> {
    let disk_floor = measure_disk_floor(config, progress).await?;
    let mut systems = Vec::new();
    for timing in &config.timings {
        for system in &config.systems {
            let figures = match system {
                System::Federator => {
                    let mut target = start_federator(progress, *timing).await?;
                    measure(&mut target, *timing, config, progress).await
                }
                System::Etcd => {
                    let mut target =
                        start_etcd(progress, &timing.etcd_flags(), config.etcd_transport).await?;
                    measure(&mut target, *timing, config, progress).await
                }
            };
            systems.push(
                figures.with_context(|| {
                    format!("benchmarking {} ({})", system.name(), timing.title())
                })?,
            );
        }
    }
    Ok(RaftReport { config: config.clone(), disk_floor: Some(disk_floor), systems })
}

/// Durable appends per writer of the disk floor probes.
pub const DISK_FLOOR_APPENDS: usize = 300;
/// Durable appends per writer of the disk floor probes in a `--smoke` run.
pub const DISK_FLOOR_APPENDS_SMOKE: usize = 30;
/// Bytes a log entry holds besides the value: the key, the command and entry headers.
const ENTRY_OVERHEAD: usize = 64;

/// Times durable log appends in the temporary directory, where both systems keep their
/// data: one writer alone, then one per replica of a group at once, before any system
/// runs (so nothing else writes to the disk meanwhile).
///
/// # Errors
/// The temporary directory is not writable, or redb failed there.
async fn measure_disk_floor(
    config: &RaftBenchConfig,
    progress: &Progress,
) -> anyhow::Result<DiskFloor> {
    let dir = std::env::temp_dir();
    let appends = config.disk_appends.max(1);
    let entry_bytes = config.value_size + ENTRY_OVERHEAD;
    let step = progress.step(format!("timing durable log appends in {}", dir.display()));
    let alone = time_appends(&dir, 1, appends, entry_bytes).await?;
    let together = time_appends(&dir, GROUP_SIZE as usize, appends, entry_bytes).await?;
    step.finish_and_clear();
    let floor = DiskFloor { alone, together, entry_bytes };
    progress.println(format!("{:>9} {}", "disk", floor.summary()));
    Ok(floor)
}

/// [`measure_durable_appends`](federator_raft::disk_check::measure_durable_appends) on the
/// blocking pool.
async fn time_appends(
    dir: &std::path::Path,
    writers: usize,
    appends: usize,
    entry_bytes: usize,
) -> anyhow::Result<federator_raft::disk_check::DiskProbe> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        federator_raft::disk_check::measure_durable_appends(&dir, writers, appends, entry_bytes)
    })
    .await
    .context("the durable log append probe stopped")?
    .with_context(|| format!("timing durable log appends with {writers} writers at once"))
}

/// Starts a [`GROUP_SIZE`]-replica Federator group at `timing`, showing the step.
///
/// # Errors
/// A replica did not start or the group did not form.
pub(crate) async fn start_federator(
    progress: &Progress,
    timing: BenchTiming,
) -> anyhow::Result<FederatorTarget> {
    let profile = timing.federator();
    let step = progress
        .step(format!("starting {GROUP_SIZE} Federator replicas ({} timing)", profile.name()));
    let target = FederatorTarget::start(GROUP_SIZE, profile).await?;
    step.finish_and_clear();
    Ok(target)
}

/// Starts a [`GROUP_SIZE`]-member etcd cluster (with `flags` added to every member's
/// command line, clients and peers over `transport`) and waits until it is healthy,
/// showing the step.
///
/// # Errors
/// A member did not start or the cluster elected no leader in time.
pub(crate) async fn start_etcd(
    progress: &Progress,
    flags: &[String],
    transport: EtcdTransport,
) -> anyhow::Result<EtcdTarget> {
    let step = progress.step(format!("starting {GROUP_SIZE} etcd members ({transport:?})"));
    let mut target = EtcdTarget::start_with(GROUP_SIZE, flags, transport)?;
    target.wait_healthy(HEALTHY_TIMEOUT).await?;
    step.finish_and_clear();
    Ok(target)
}

/// Load phases (one per client count), then failover trials, against one group.
async fn measure<T: KvTarget>(
    target: &mut T,
    timing: BenchTiming,
    config: &RaftBenchConfig,
    progress: &Progress,
) -> anyhow::Result<SystemFigures> {
    let name = target.name();
    let mut phases = Vec::new();
    for clients in &config.clients {
        let spec = LoadSpec {
            clients: *clients,
            warmup: config.warmup,
            duration: config.duration,
            value_size: config.value_size,
            prefix: format!("bench/load-{clients}"),
            keys_per_client: None,
            operation: Operation::Put,
        };
        let phase = load::phase(target, &spec, progress).await?;
        progress.println(format!("{name:>9} {}", phase.summary()));
        phases.push(phase);
    }
    // One client reading what the first phase wrote, from the member it talks to (the
    // leader): the same API, connection and authentication as a write, no consensus.
    let spec = LoadSpec {
        clients: 1,
        warmup: config.warmup,
        duration: config.duration,
        value_size: 0,
        prefix: format!("bench/load-{}", config.clients.first().copied().unwrap_or(1)),
        keys_per_client: Some(LOCAL_READ_KEYS),
        operation: Operation::LocalRead,
    };
    let local_read = load::phase(target, &spec, progress).await?;
    progress.println(format!("{name:>9} local reads: {}", local_read.summary()));
    // The same reads, each after the client idled as long as a write takes: what waking
    // both ends after a pause adds to a call, which a single-client write pays too.
    let spec = LoadSpec { operation: Operation::IdleLocalRead, ..spec };
    let idle_local_read = load::phase(target, &spec, progress).await?;
    progress.println(format!(
        "{name:>9} local reads after {} ms idle: {}",
        load::IDLE_BEFORE_CALL.as_millis(),
        idle_local_read.summary()
    ));
    let failover = failover::trials(target, config.trials, config.value_size, progress).await?;
    progress.println(format!("{name:>9} {}", failover.summary()));
    Ok(SystemFigures {
        system: name,
        timing,
        phases,
        local_read: Some(local_read),
        idle_local_read: Some(idle_local_read),
        failover,
    })
}

/// Waits until `target` is healthy and returns its leader, naming the system on failure.
async fn healthy_leader<T: KvTarget>(target: &mut T) -> anyhow::Result<u64> {
    let started = Instant::now();
    target
        .wait_healthy(HEALTHY_TIMEOUT)
        .await
        .with_context(|| format!("{} not healthy after {:?}", target.name(), started.elapsed()))
}
