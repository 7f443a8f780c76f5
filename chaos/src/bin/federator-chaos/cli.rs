//! The command line of `federator-chaos`: its subcommands and flags, and each
//! benchmark's settings as its flags make them (`--smoke` overriding the long ones).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use federator_chaos::bench::attack::AttackConfig;
use federator_chaos::bench::propagation::PropagationConfig;
use federator_chaos::bench::scale::{Level, ScaleConfig};
use federator_chaos::bench::snapshot::SnapshotConfig;
use federator_chaos::bench::soak::SoakConfig;
use federator_chaos::bench::{BenchTiming, RaftBenchConfig, System};
use federator_chaos::etcd::EtcdTransport;

/// Fault injection and benchmarks against real Federator (and etcd) processes on loopback.
#[derive(Debug, Parser)]
#[command(name = "federator-chaos", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Benchmarks: figures are printed, never asserted.
    #[command(subcommand)]
    Bench(Bench),
    /// The fault scenarios `run` knows, with what each injects.
    List,
    /// Run fault scenarios against a real federation on loopback and check the history.
    ///
    /// Each run starts the replicas with a fault proxy on every replica link, three
    /// member clusters rotating bundles (one of them also trying to publish for another's
    /// trust domain), register clients writing and linearizably reading probe keys, and
    /// watchers; injects the scenario's faults until --duration is over; heals
    /// everything, waits for the replicas to agree; then checks: per-key
    /// linearizability, no acknowledged write lost, watch revisions in order with no gap
    /// or duplicate across resumes, sequences never going back, one leader per term,
    /// equal digests at equal index, no cross-domain write committed.
    ///
    /// Exit status 1 when any run broke a promise; its history and data directories
    /// are kept (the path is printed).
    ///
    ///   federator-chaos run kill-leader --seed 7 --duration 60s
    ///   federator-chaos run --short --format junit --out chaos.xml
    Run(RunArgs),
}

/// Where a benchmark also writes its results (every benchmark has it).
#[derive(Debug, Args)]
pub struct MarkdownFile {
    /// Also write the results as a markdown section into FILE (replacing the section a
    /// previous run wrote there).
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
}

/// How etcd is reached in the benchmarks that write to it.
#[derive(Debug, Args)]
pub struct EtcdTransportArg {
    /// How etcd's clients and peers reach its members: `mtls` (client certificates
    /// required, as Federator always runs) or `plain` (etcd's default, no TLS).
    #[arg(long, value_enum, default_value = "mtls")]
    pub etcd_transport: EtcdTransport,
}

/// Which systems a benchmark compares.
#[derive(Debug, Args)]
pub struct Systems {
    /// Systems to run, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "federator,etcd")]
    pub systems: Vec<System>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Scenario names (see `list`); `all` runs every one.
    pub scenarios: Vec<String>,
    /// The short set CI runs: kill-leader, kill-all, partition-leader, pause-leader,
    /// asymmetric-leader, latency, sigterm-leader, disk-full, hung-replica,
    /// snapshot-corruption with 15 s each.
    #[arg(long)]
    pub short: bool,
    /// Seed of every random choice; a failing run names it [default: from the clock].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Time under faults per scenario (e.g. 30s, 5m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Replicas per run [default: the scenario's, 3].
    #[arg(long, default_value_t = 0)]
    pub replicas: u64,
    /// Report format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: ReportFormat,
    /// Write the report to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Also keep every run's history (JSON) in DIR, passing or not.
    #[arg(long, value_name = "DIR")]
    pub keep_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
    Junit,
}

#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Write throughput, p50/p99 latency and leader failover of a 3-replica Federator
    /// group and a 3-member etcd cluster, side by side.
    Raft(RaftArgs),
    /// Watch propagation latency to many watchers, memory per stored endpoint and per
    /// idle watch stream, of a 3-replica Federator group and a 3-member etcd cluster,
    /// side by side.
    Propagation(PropagationArgs),
    /// Snapshot save, restore and follower install on the same data (keys of a fixed
    /// size loaded into both), of a 3-replica Federator group and a 3-member etcd
    /// cluster, side by side.
    Snapshot(SnapshotArgs),
    /// How write throughput and propagation latency change as the federation grows:
    /// one Federator group grown from 10 to 1,000 member clusters and from 10,000 to
    /// 1,000,000 endpoints, measured at each level (Federator only: the comparison is
    /// with its own first level).
    ///
    ///   FEDERATOR_BIN=target/release/federator federator-chaos bench scale --markdown BENCHMARKS.md
    Scale(ScaleArgs),
    /// Spurious elections under sustained full load: 1,000 closed-loop writers for 10
    /// minutes against a 3-replica Federator group and a 3-member etcd cluster, side by
    /// side, with the raft term sampled every second (nothing is killed: every term
    /// increase is an election the load caused).
    ///
    ///   FEDERATOR_BIN=target/release/federator federator-chaos bench soak --markdown BENCHMARKS.md
    ///   federator-chaos bench soak --systems federator --duration 2m
    Soak(SoakArgs),
    /// Legitimate write latency under attack, beside the quiet figure: one 3-replica
    /// Federator group, one sequential writer on 127.0.0.1 through the admin `Put`, first
    /// quiet, then during a join flood from 127.0.0.2 (forged tokens, the attacker's own
    /// CA, as fast as answers come) and a connection flood from 127.0.0.3 (idle sockets
    /// to every API port that never send a TLS ClientHello, re-opened when closed), with a
    /// legitimate member joining in each phase. Reports latency and writes/s side by
    /// side, the floods' answers, and the applied index's growth against the legitimate
    /// writes (the floods must propose nothing).
    ///
    ///   FEDERATOR_BIN=target/release/federator federator-chaos bench attack --markdown BENCHMARKS.md
    Attack(AttackArgs),
    /// Every benchmark in turn, each with its defaults and side by side with etcd: raft
    /// (1, 16, 64, 256 and 1,000 clients, 20 failover trials), propagation, snapshot,
    /// scale (Federator only), soak (10 minutes per system), then attack (Federator
    /// only). With --markdown each writes its section (and raft its latency plot) into
    /// FILE.
    ///
    ///   FEDERATOR_BIN=target/release/federator federator-chaos bench all --markdown BENCHMARKS.md
    All(AllArgs),
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// The federation's sizes, growing, as MEMBERS:ENDPOINTS.
    #[arg(long, value_delimiter = ',', default_value = "10:10000,100:100000,1000:1000000")]
    pub levels: Vec<Level>,
    /// Closed-loop writers of each level's throughput phase.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Measured window of each throughput phase (after a 1 s warm-up).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Watch streams of each propagation phase; each first receives every import of the
    /// federation.
    #[arg(long, default_value_t = 10)]
    pub watchers: usize,
    /// Changes the publisher makes in each propagation phase.
    #[arg(long, default_value_t = 50)]
    pub changes: u64,
    /// Time between two changes.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pub interval: Duration,
    /// A quick run that keeps the benchmark from rotting (CI): levels 2:200 and 4:400,
    /// 8 clients for 1 s, 2 watchers, 5 changes. Overrides the other settings.
    #[arg(long)]
    pub smoke: bool,
    #[command(flatten)]
    pub out: MarkdownFile,
}

impl ScaleArgs {
    pub fn config(&self) -> anyhow::Result<ScaleConfig> {
        let mut config = ScaleConfig {
            levels: self.levels.clone(),
            clients: self.clients,
            warmup: Duration::from_secs(1),
            duration: self.duration,
            watchers: self.watchers,
            changes: self.changes,
            interval: self.interval,
        };
        if self.smoke {
            config.levels =
                vec![Level { members: 2, endpoints: 200 }, Level { members: 4, endpoints: 400 }];
            config.clients = 8;
            config.warmup = Duration::from_millis(200);
            config.duration = Duration::from_secs(1);
            config.watchers = 2;
            config.changes = 5;
        }
        config.validate()?;
        Ok(config)
    }
}

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Concurrent closed-loop writers.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Measured time under load (e.g. 10m, 90s), after a 2 s warm-up.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub duration: Duration,
    /// Distinct keys over all writers; each overwrites its share in turn, so the stored
    /// state stays bounded.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Bytes per written value.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Time between two readings of the raft term and the acknowledgement count.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub sample_every: Duration,
    #[command(flatten)]
    pub compare: Systems,
    #[command(flatten)]
    pub etcd: EtcdTransportArg,
    /// Raft timings to run every system at, in this order: `equal` (both at Federator's
    /// `lan` profile, etcd at the same election timeout) and `defaults` (each at its
    /// shipped default).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "equal,defaults")]
    pub timings: Vec<BenchTiming>,
    /// A quick run that keeps the benchmark from rotting (CI): 64 writers for 3 s,
    /// sampled every 500 ms. Overrides --clients, --duration and --sample-every.
    #[arg(long)]
    pub smoke: bool,
    #[command(flatten)]
    pub out: MarkdownFile,
}

impl SoakArgs {
    pub fn config(&self) -> anyhow::Result<SoakConfig> {
        let mut config = SoakConfig {
            clients: self.clients,
            warmup: Duration::from_secs(2),
            duration: self.duration,
            value_size: self.value_size,
            keys: self.keys,
            sample_every: self.sample_every,
            systems: self.compare.systems.clone(),
            timings: self.timings.clone(),
            etcd_transport: self.etcd.etcd_transport,
        };
        if self.smoke {
            config.clients = 64;
            config.warmup = Duration::from_millis(500);
            config.duration = Duration::from_secs(3);
            config.sample_every = Duration::from_millis(500);
        }
        config.validate()?;
        Ok(config)
    }
}

#[derive(Debug, Args)]
pub struct AttackArgs {
    /// Measured window of each phase (quiet, then under attack), after 1 s of unmeasured
    /// writes (and, under attack, floods).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Join flood tasks from 127.0.0.2, spread over the replicas, one connection each.
    #[arg(long, default_value_t = 8)]
    pub join_tasks: usize,
    /// Idle sockets from 127.0.0.3 held to each replica's API port.
    #[arg(long, default_value_t = 300)]
    pub sockets: usize,
    /// Pause before a socket the server closed is opened again.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub reopen_pause: Duration,
    /// Bytes per written value.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// A quick run that keeps the benchmark from rotting (CI): 2 s windows after 500 ms,
    /// 4 join tasks, 100 sockets per port. Overrides --duration, --join-tasks and
    /// --sockets.
    #[arg(long)]
    pub smoke: bool,
    #[command(flatten)]
    pub out: MarkdownFile,
}

impl AttackArgs {
    pub fn config(&self) -> anyhow::Result<AttackConfig> {
        let mut config = AttackConfig {
            duration: self.duration,
            ramp: Duration::from_secs(1),
            settle: Duration::from_millis(1500),
            join_tasks: self.join_tasks,
            sockets_per_port: self.sockets,
            reopen_pause: self.reopen_pause,
            value_size: self.value_size,
        };
        if self.smoke {
            config.duration = Duration::from_secs(2);
            config.ramp = Duration::from_millis(500);
            config.join_tasks = 4;
            config.sockets_per_port = 100;
        }
        config.validate()?;
        Ok(config)
    }
}

#[derive(Debug, Args)]
pub struct AllArgs {
    /// Each benchmark's quick smoke run instead of its full one.
    #[arg(long)]
    pub smoke: bool,
    /// Write every benchmark's section into FILE (replacing what a previous run wrote).
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Keys loaded into each system.
    #[arg(long, default_value_t = 100_000)]
    pub keys: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Trials per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub trials: usize,
    /// Writes in flight while loading.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    #[command(flatten)]
    pub compare: Systems,
    /// A quick run that keeps the benchmark from rotting (CI): 2,000 keys, 1 trial.
    /// Overrides --keys and --trials.
    #[arg(long)]
    pub smoke: bool,
    #[command(flatten)]
    pub out: MarkdownFile,
}

impl SnapshotArgs {
    pub fn config(&self) -> anyhow::Result<SnapshotConfig> {
        let mut config = SnapshotConfig {
            keys: self.keys,
            value_size: self.value_size,
            trials: self.trials,
            in_flight: self.in_flight,
            systems: self.compare.systems.clone(),
        };
        if self.smoke {
            config.keys = 2_000;
            config.trials = 1;
        }
        if config.keys == 0 || config.trials == 0 || config.in_flight == 0 {
            anyhow::bail!("--keys, --trials and --in-flight must be positive");
        }
        Ok(config)
    }
}

#[derive(Debug, Args)]
pub struct RaftArgs {
    /// Concurrent client counts, one load phase each.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub clients: Vec<usize>,
    /// Measured time per load phase (e.g. 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured warm-up before each load phase [default: a fifth of --duration, at most 2s].
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,
    /// Leader-failover trials per system.
    #[arg(long, default_value_t = 10)]
    pub trials: usize,
    /// Bytes per written value.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    #[command(flatten)]
    pub compare: Systems,
    #[command(flatten)]
    pub etcd: EtcdTransportArg,
    /// Raft timings to run every system at, in this order: `equal` (both at Federator's
    /// `lan` profile, etcd at the same election timeout) and `defaults` (each at its
    /// shipped default).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "equal,defaults")]
    pub timings: Vec<BenchTiming>,
    /// A quick run that keeps the benchmark from rotting (CI): clients 1,16, 1s phases,
    /// 2 failover trials, 30 disk probe appends per writer (300 otherwise). Overrides
    /// --clients, --duration, --warmup and --trials.
    #[arg(long)]
    pub smoke: bool,
    #[command(flatten)]
    pub out: MarkdownFile,
}

impl RaftArgs {
    pub fn config(&self) -> anyhow::Result<RaftBenchConfig> {
        let mut config = RaftBenchConfig {
            clients: self.clients.clone(),
            duration: self.duration,
            warmup: self.warmup.unwrap_or_else(|| (self.duration / 5).min(Duration::from_secs(2))),
            trials: self.trials,
            value_size: self.value_size,
            systems: self.compare.systems.clone(),
            disk_appends: federator_chaos::bench::DISK_FLOOR_APPENDS,
            timings: self.timings.clone(),
            etcd_transport: self.etcd.etcd_transport,
        };
        if self.smoke {
            config.clients = vec![1, 16];
            config.duration = Duration::from_secs(1);
            config.warmup = Duration::from_millis(300);
            config.trials = 2;
            config.disk_appends = federator_chaos::bench::DISK_FLOOR_APPENDS_SMOKE;
        }
        if config.clients.is_empty() || config.clients.contains(&0) {
            anyhow::bail!("--clients needs one or more positive counts");
        }
        if config.duration.is_zero() {
            anyhow::bail!("--duration must be positive");
        }
        if config.timings.is_empty() {
            anyhow::bail!("--timings needs at least one timing (equal, defaults)");
        }
        Ok(config)
    }
}

#[derive(Debug, Args)]
pub struct PropagationArgs {
    /// Concurrent watcher counts, one propagation phase each.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    pub watchers: Vec<usize>,
    /// Changes the publisher makes per phase.
    #[arg(long, default_value_t = 100)]
    pub changes: u64,
    /// Time between two changes (e.g. 50ms).
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub interval: Duration,
    /// Endpoint counts at which memory is read (loaded cumulatively in one run).
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    pub endpoints: Vec<usize>,
    /// Idle watch streams opened for the memory per stream.
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
    #[command(flatten)]
    pub compare: Systems,
    /// A quick run that keeps the benchmark from rotting (CI): 10 watchers, 10 changes,
    /// 10,000 endpoints, 100 idle streams, short pauses. Overrides --watchers, --changes,
    /// --endpoints and --streams.
    #[arg(long)]
    pub smoke: bool,
    #[command(flatten)]
    pub out: MarkdownFile,
}

impl PropagationArgs {
    pub fn config(&self) -> anyhow::Result<PropagationConfig> {
        let mut config = PropagationConfig {
            watchers: self.watchers.clone(),
            changes: self.changes,
            interval: self.interval,
            endpoints: self.endpoints.clone(),
            streams: self.streams,
            settle: Duration::from_secs(2),
            cpu_window: Duration::from_secs(3),
            systems: self.compare.systems.clone(),
        };
        if self.smoke {
            config.watchers = vec![10];
            config.changes = 10;
            config.endpoints = vec![10_000];
            config.streams = 100;
            config.settle = Duration::from_millis(300);
            config.cpu_window = Duration::from_millis(500);
        }
        if config.watchers.is_empty() || config.watchers.contains(&0) {
            anyhow::bail!("--watchers needs one or more positive counts");
        }
        if config.changes == 0 || config.changes > 1_000_000 {
            anyhow::bail!("--changes must be 1 to 1,000,000 (it is an endpoint weight)");
        }
        if config.endpoints.is_empty() || config.endpoints.contains(&0) {
            anyhow::bail!("--endpoints needs one or more positive counts");
        }
        if config.streams == 0 {
            anyhow::bail!("--streams must be positive");
        }
        Ok(config)
    }
}

/// Parses `10s`, `500ms`, `1.5s`, `2m`.
fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| anyhow::anyhow!("{text:?} is not a duration like 10s or 500ms"))?;
    let seconds = match unit {
        "ms" => number / 1e3,
        "s" | "" => number,
        "m" => number * 60.0,
        _ => anyhow::bail!("{text:?}: unknown unit {unit:?} (use ms, s or m)"),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| anyhow::anyhow!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s").ok(), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms").ok(), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s").ok(), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m").ok(), Some(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn smoke_overrides_the_long_settings() {
        let cli =
            Cli::parse_from(["federator-chaos", "bench", "raft", "--smoke", "--duration", "30s"]);
        let Command::Bench(Bench::Raft(args)) = &cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        let config = args.config().expect("valid");
        assert_eq!(config.clients, vec![1, 16]);
        assert_eq!(config.trials, 2);
        assert_eq!(config.duration, Duration::from_secs(1));
    }

    #[test]
    fn propagation_defaults_and_smoke() {
        let cli = Cli::parse_from(["federator-chaos", "bench", "propagation"]);
        let Command::Bench(Bench::Propagation(args)) = &cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        let config = args.config().expect("valid");
        assert_eq!(config.watchers, vec![100, 1000]);
        assert_eq!(config.changes, 100);
        assert_eq!(config.interval, Duration::from_millis(50));
        assert_eq!(config.endpoints, vec![100_000, 1_000_000]);
        assert_eq!(config.streams, 1000);
        assert_eq!(config.systems, vec![System::Federator, System::Etcd]);

        let cli = Cli::parse_from([
            "federator-chaos",
            "bench",
            "propagation",
            "--smoke",
            "--watchers",
            "5000",
            "--systems",
            "etcd",
        ]);
        let Command::Bench(Bench::Propagation(args)) = &cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        let config = args.config().expect("valid");
        assert_eq!(config.watchers, vec![10]);
        assert_eq!(config.changes, 10);
        assert_eq!(config.endpoints, vec![10_000]);
        assert_eq!(config.systems, vec![System::Etcd]);
    }

    #[test]
    fn attack_defaults_and_smoke() {
        let cli = Cli::parse_from(["federator-chaos", "bench", "attack"]);
        let Command::Bench(Bench::Attack(args)) = &cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        let config = args.config().expect("valid");
        assert_eq!(config.duration, Duration::from_secs(10));
        assert_eq!(config.sockets_per_port, 300);
        assert_eq!(config.join_tasks, 8);
        let cli = Cli::parse_from(["federator-chaos", "bench", "attack", "--smoke"]);
        let Command::Bench(Bench::Attack(args)) = &cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        let config = args.config().expect("valid");
        assert_eq!(config.duration, Duration::from_secs(2));
        assert_eq!(config.sockets_per_port, 100);
    }

    #[test]
    fn propagation_refuses_empty_counts() {
        let cli = Cli::parse_from(["federator-chaos", "bench", "propagation", "--watchers", "0"]);
        let Command::Bench(Bench::Propagation(args)) = &cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert!(args.config().is_err());
    }
}
