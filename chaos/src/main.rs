//! `federator-chaos`: benchmarks (and, later, fault-injection runs) against real
//! processes on loopback. Figures go to stdout, progress to stderr.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use federator_chaos::bench::attack::{AttackConfig, AttackReport, run_attack};
use federator_chaos::bench::progress::Progress;
use federator_chaos::bench::propagation::report::PropagationReport;
use federator_chaos::bench::propagation::{PropagationConfig, run_propagation};
use federator_chaos::bench::report::{Machine, write_markdown, write_markdown_section};
use federator_chaos::bench::scale::{Level, ScaleConfig, ScaleReport, run_scale};
use federator_chaos::bench::snapshot::report::SnapshotReport;
use federator_chaos::bench::snapshot::{SnapshotConfig, run_snapshot};
use federator_chaos::bench::soak::{SoakConfig, SoakReport, run_soak};
use federator_chaos::bench::{
    BenchTiming, RaftBenchConfig, System, attack, propagation, run_raft, scale, snapshot, soak,
};
use federator_chaos::run;

/// Fault injection and benchmarks against real Federator (and etcd) processes on loopback.
#[derive(Debug, Parser)]
#[command(name = "federator-chaos", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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

#[derive(Debug, Args)]
struct RunArgs {
    /// Scenario names (see `list`); `all` runs every one.
    scenarios: Vec<String>,
    /// The short set CI runs: kill-leader, kill-all, partition-leader, pause-leader,
    /// asymmetric-leader, latency, sigterm-leader, disk-full, hung-replica,
    /// snapshot-corruption with 15 s each.
    #[arg(long)]
    short: bool,
    /// Seed of every random choice; a failing run names it [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
    /// Time under faults per scenario (e.g. 30s, 5m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Replicas per run [default: the scenario's, 3].
    #[arg(long, default_value_t = 0)]
    replicas: u64,
    /// Report format.
    #[arg(long, value_enum, default_value = "text")]
    format: ReportFormat,
    /// Write the report to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Also keep every run's history (JSON) in DIR, passing or not.
    #[arg(long, value_name = "DIR")]
    keep_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ReportFormat {
    Text,
    Json,
    Junit,
}

#[derive(Debug, Subcommand)]
enum Bench {
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
struct ScaleArgs {
    /// The federation's sizes, growing, as MEMBERS:ENDPOINTS.
    #[arg(long, value_delimiter = ',', default_value = "10:10000,100:100000,1000:1000000")]
    levels: Vec<Level>,
    /// Closed-loop writers of each level's throughput phase.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Measured window of each throughput phase (after a 1 s warm-up).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Watch streams of each propagation phase; each first receives every import of the
    /// federation.
    #[arg(long, default_value_t = 10)]
    watchers: usize,
    /// Changes the publisher makes in each propagation phase.
    #[arg(long, default_value_t = 50)]
    changes: u64,
    /// Time between two changes.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    interval: Duration,
    /// A quick run that keeps the benchmark from rotting (CI): levels 2:200 and 4:400,
    /// 8 clients for 1 s, 2 watchers, 5 changes. Overrides the other settings.
    #[arg(long)]
    smoke: bool,
    /// Also write the results as a markdown section into FILE (replacing the section a
    /// previous run wrote there).
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

impl ScaleArgs {
    fn config(&self) -> anyhow::Result<ScaleConfig> {
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
struct SoakArgs {
    /// Concurrent closed-loop writers.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Measured time under load (e.g. 10m, 90s), after a 2 s warm-up.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
    /// Distinct keys over all writers; each overwrites its share in turn, so the stored
    /// state stays bounded.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Bytes per written value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Time between two readings of the raft term and the acknowledgement count.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    sample_every: Duration,
    /// Systems to run, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "federator,etcd")]
    systems: Vec<System>,
    /// Raft timings to run every system at, in this order: `equal` (both at Federator's
    /// `lan` profile, etcd at the same election timeout) and `defaults` (each at its
    /// shipped default).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "equal,defaults")]
    timings: Vec<BenchTiming>,
    /// A quick run that keeps the benchmark from rotting (CI): 64 writers for 3 s,
    /// sampled every 500 ms. Overrides --clients, --duration and --sample-every.
    #[arg(long)]
    smoke: bool,
    /// Also write the results as a markdown section into FILE (replacing the section a
    /// previous run wrote there).
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

impl SoakArgs {
    fn config(&self) -> anyhow::Result<SoakConfig> {
        let mut config = SoakConfig {
            clients: self.clients,
            warmup: Duration::from_secs(2),
            duration: self.duration,
            value_size: self.value_size,
            keys: self.keys,
            sample_every: self.sample_every,
            systems: self.systems.clone(),
            timings: self.timings.clone(),
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
struct AttackArgs {
    /// Measured window of each phase (quiet, then under attack), after 1 s of unmeasured
    /// writes (and, under attack, floods).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Join flood tasks from 127.0.0.2, spread over the replicas, one connection each.
    #[arg(long, default_value_t = 8)]
    join_tasks: usize,
    /// Idle sockets from 127.0.0.3 held to each replica's API port.
    #[arg(long, default_value_t = 300)]
    sockets: usize,
    /// Pause before a socket the server closed is opened again.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    reopen_pause: Duration,
    /// Bytes per written value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// A quick run that keeps the benchmark from rotting (CI): 2 s windows after 500 ms,
    /// 4 join tasks, 100 sockets per port. Overrides --duration, --join-tasks and
    /// --sockets.
    #[arg(long)]
    smoke: bool,
    /// Also write the results as a markdown section into FILE (replacing the section a
    /// previous run wrote there).
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

impl AttackArgs {
    fn config(&self) -> anyhow::Result<AttackConfig> {
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
struct AllArgs {
    /// Each benchmark's quick smoke run instead of its full one.
    #[arg(long)]
    smoke: bool,
    /// Write every benchmark's section into FILE (replacing what a previous run wrote).
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SnapshotArgs {
    /// Keys loaded into each system.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Trials per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    trials: usize,
    /// Writes in flight while loading.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Systems to run, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "federator,etcd")]
    systems: Vec<System>,
    /// A quick run that keeps the benchmark from rotting (CI): 2,000 keys, 1 trial.
    /// Overrides --keys and --trials.
    #[arg(long)]
    smoke: bool,
    /// Also write the results as a markdown section into FILE (replacing the section a
    /// previous run wrote there).
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

impl SnapshotArgs {
    fn config(&self) -> anyhow::Result<SnapshotConfig> {
        let mut config = SnapshotConfig {
            keys: self.keys,
            value_size: self.value_size,
            trials: self.trials,
            in_flight: self.in_flight,
            systems: self.systems.clone(),
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
struct RaftArgs {
    /// Concurrent client counts, one load phase each.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// Measured time per load phase (e.g. 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured warm-up before each load phase [default: a fifth of --duration, at most 2s].
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// Leader-failover trials per system.
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// Bytes per written value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Systems to run, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "federator,etcd")]
    systems: Vec<System>,
    /// Raft timings to run every system at, in this order: `equal` (both at Federator's
    /// `lan` profile, etcd at the same election timeout) and `defaults` (each at its
    /// shipped default).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "equal,defaults")]
    timings: Vec<BenchTiming>,
    /// A quick run that keeps the benchmark from rotting (CI): clients 1,16, 1s phases,
    /// 2 failover trials, 30 disk probe appends per writer (300 otherwise). Overrides
    /// --clients, --duration, --warmup and --trials.
    #[arg(long)]
    smoke: bool,
    /// Also write the results as a markdown section into FILE (replacing the section a
    /// previous run wrote there).
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

impl RaftArgs {
    fn config(&self) -> anyhow::Result<RaftBenchConfig> {
        let mut config = RaftBenchConfig {
            clients: self.clients.clone(),
            duration: self.duration,
            warmup: self.warmup.unwrap_or_else(|| (self.duration / 5).min(Duration::from_secs(2))),
            trials: self.trials,
            value_size: self.value_size,
            systems: self.systems.clone(),
            disk_appends: federator_chaos::bench::DISK_FLOOR_APPENDS,
            timings: self.timings.clone(),
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
struct PropagationArgs {
    /// Concurrent watcher counts, one propagation phase each.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    watchers: Vec<usize>,
    /// Changes the publisher makes per phase.
    #[arg(long, default_value_t = 100)]
    changes: u64,
    /// Time between two changes (e.g. 50ms).
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    interval: Duration,
    /// Endpoint counts at which memory is read (loaded cumulatively in one run).
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    endpoints: Vec<usize>,
    /// Idle watch streams opened for the memory per stream.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Systems to run, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "federator,etcd")]
    systems: Vec<System>,
    /// A quick run that keeps the benchmark from rotting (CI): 10 watchers, 10 changes,
    /// 10,000 endpoints, 100 idle streams, short pauses. Overrides --watchers, --changes,
    /// --endpoints and --streams.
    #[arg(long)]
    smoke: bool,
    /// Also write the results as a markdown section into FILE (replacing the section a
    /// previous run wrote there).
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

impl PropagationArgs {
    fn config(&self) -> anyhow::Result<PropagationConfig> {
        let mut config = PropagationConfig {
            watchers: self.watchers.clone(),
            changes: self.changes,
            interval: self.interval,
            endpoints: self.endpoints.clone(),
            streams: self.streams,
            settle: Duration::from_secs(2),
            cpu_window: Duration::from_secs(3),
            systems: self.systems.clone(),
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let run = async {
        match &cli.command {
            Command::Bench(Bench::All(args)) => bench_all(args).await,
            Command::Bench(one) => bench(one).await,
            Command::List => {
                for s in run::SCENARIOS {
                    println!("{:<20} {}", s.name, s.about);
                }
                Ok(())
            }
            Command::Run(args) => chaos_run(args).await,
        }
    };
    // On ctrl-c the run is dropped, and with it the process groups, which kills them.
    let outcome = tokio::select! {
        result = run => Some(result),
        _ = tokio::signal::ctrl_c() => None,
    };
    outcome.unwrap_or_else(|| {
        eprintln!("interrupted; every process the run started was killed");
        std::process::exit(130)
    })
}

async fn chaos_run(args: &RunArgs) -> anyhow::Result<()> {
    let names: Vec<String> = if args.short {
        run::SHORT.iter().map(ToString::to_string).collect()
    } else if args.scenarios.iter().any(|s| s == "all") {
        run::SCENARIOS.iter().map(|s| s.name.to_string()).collect()
    } else {
        args.scenarios.clone()
    };
    if names.is_empty() {
        anyhow::bail!("name a scenario (see `federator-chaos list`), `all`, or pass --short");
    }
    let scenarios = names
        .iter()
        .map(|n| {
            run::find(n)
                .with_context(|| format!("no scenario {n:?}; `federator-chaos list` shows them"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let duration = if args.short { Duration::from_secs(15) } else { args.duration };
    let progress = Progress::new();
    let mut reports = Vec::new();
    for scenario in scenarios {
        let config = run::RunConfig {
            seed,
            duration,
            replicas: args.replicas,
            keep_dir: args.keep_dir.clone(),
            workload: run::workload::WorkloadConfig::default(),
        };
        let step = progress.step(format!("{} (seed {seed})", scenario.name));
        let report = run::run(scenario, &config, &|m: &str| {
            step.set_message(format!("{}: {m}", scenario.name))
        })
        .await?;
        step.finish_and_clear();
        progress.println(report.text());
        reports.push(report);
    }
    let rendered = match args.format {
        ReportFormat::Text => reports.iter().map(run::report::RunReport::text).collect::<String>(),
        ReportFormat::Json => serde_json::to_string_pretty(&reports)?,
        ReportFormat::Junit => run::report::junit(&reports),
    };
    match &args.out {
        Some(path) => {
            std::fs::write(path, rendered).with_context(|| format!("writing {}", path.display()))?
        }
        None if matches!(args.format, ReportFormat::Text) => {}
        None => println!("{rendered}"),
    }
    let failed: Vec<&str> =
        reports.iter().filter(|r| !r.passed()).map(|r| r.scenario.as_str()).collect();
    if !failed.is_empty() {
        eprintln!("broken promises in: {} (seed {seed})", failed.join(", "));
        std::process::exit(1);
    }
    Ok(())
}

async fn bench_raft(args: &RaftArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let machine = Machine::detect();
    let progress = Progress::new();
    let report = run_raft(&config, &progress).await?;
    println!("{}", report.text_table());
    if let Some(path) = &args.markdown {
        // The plot goes beside the markdown file, linked by a relative path.
        let dir = path.parent().unwrap_or_else(|| std::path::Path::new(""));
        let plot = dir.join(RAFT_PLOT);
        if let Some(parent) = plot.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&plot, report.latency_plot())
            .with_context(|| format!("writing {}", plot.display()))?;
        let section = report.markdown_section(&machine, &command_line(), &now(), Some(RAFT_PLOT));
        write_markdown(path, &section).with_context(|| format!("writing {}", path.display()))?;
        progress.println(format!(
            "wrote the results into {} and the latency plot into {}",
            path.display(),
            plot.display()
        ));
    }
    Ok(())
}

/// Runs `bench raft`, `bench propagation`, `bench snapshot`, `bench scale`, `bench soak`
/// and `bench attack` one after the other, each parsed from its own command line so it
/// gets exactly its defaults.
async fn bench_all(args: &AllArgs) -> anyhow::Result<()> {
    for argv in all_command_lines(args) {
        eprintln!("== {}", argv[1..].join(" "));
        let cli = Cli::try_parse_from(&argv).context("building the benchmark's command line")?;
        let outcome = match &cli.command {
            Command::Bench(one) if !matches!(one, Bench::All(_)) => bench(one).await,
            _ => unreachable!("only single benchmarks are listed"),
        };
        outcome.with_context(|| argv[1..].join(" "))?;
    }
    Ok(())
}

/// The command lines `bench all` runs.
fn all_command_lines(args: &AllArgs) -> Vec<Vec<String>> {
    let benchmarks: [&[&str]; 6] = [
        &["raft", "--clients", "1,16,64,256,1000", "--trials", "20"],
        &["propagation"],
        &["snapshot"],
        &["scale"],
        &["soak"],
        &["attack"],
    ];
    benchmarks
        .iter()
        .map(|bench| {
            let mut argv = vec!["federator-chaos".to_string(), "bench".to_string()];
            argv.extend(bench.iter().map(ToString::to_string));
            if args.smoke {
                argv.push("--smoke".into());
            }
            if let Some(path) = &args.markdown {
                argv.push("--markdown".into());
                argv.push(path.display().to_string());
            }
            argv
        })
        .collect()
}

/// Where `bench raft --markdown FILE` puts its latency plot, relative to FILE's directory.
const RAFT_PLOT: &str = "chaos/results/raft-latency.svg";

/// Runs one benchmark other than `bench all`.
async fn bench(command: &Bench) -> anyhow::Result<()> {
    match command {
        Bench::Raft(args) => bench_raft(args).await,
        Bench::Propagation(args) => {
            let config = args.config()?;
            reported(
                args.markdown.as_deref(),
                (propagation::report::SECTION_BEGIN, propagation::report::SECTION_END),
                async |progress| run_propagation(&config, progress).await,
                PropagationReport::text,
                PropagationReport::markdown_section,
            )
            .await
        }
        Bench::Snapshot(args) => {
            let config = args.config()?;
            reported(
                args.markdown.as_deref(),
                (snapshot::report::SECTION_BEGIN, snapshot::report::SECTION_END),
                async |progress| run_snapshot(&config, progress).await,
                SnapshotReport::text,
                SnapshotReport::markdown_section,
            )
            .await
        }
        Bench::Scale(args) => {
            let config = args.config()?;
            reported(
                args.markdown.as_deref(),
                (scale::report::SECTION_BEGIN, scale::report::SECTION_END),
                async |progress| run_scale(&config, progress).await,
                ScaleReport::text,
                ScaleReport::markdown_section,
            )
            .await
        }
        Bench::Soak(args) => {
            let config = args.config()?;
            reported(
                args.markdown.as_deref(),
                (soak::report::SECTION_BEGIN, soak::report::SECTION_END),
                async |progress| run_soak(&config, progress).await,
                SoakReport::text,
                SoakReport::markdown_section,
            )
            .await
        }
        Bench::Attack(args) => {
            let config = args.config()?;
            reported(
                args.markdown.as_deref(),
                (attack::SECTION_BEGIN, attack::SECTION_END),
                async |progress| run_attack(&config, progress).await,
                AttackReport::text,
                AttackReport::markdown_section,
            )
            .await
        }
        Bench::All(_) => unreachable!("`bench all` runs the others (see bench_all)"),
    }
}

/// Runs a benchmark (`run`, with the progress display), prints its report (`text`) and,
/// with `--markdown FILE`, writes its section (built by `section` from the machine and
/// this run's command line and date) between `markers` in FILE.
async fn reported<R>(
    markdown: Option<&std::path::Path>,
    markers: (&str, &str),
    run: impl AsyncFnOnce(&Progress) -> anyhow::Result<R>,
    text: impl FnOnce(&R) -> String,
    section: impl FnOnce(&R, &Machine, &str, &str) -> String,
) -> anyhow::Result<()> {
    let machine = Machine::detect();
    let progress = Progress::new();
    let report = run(&progress).await?;
    println!("{}", text(&report));
    if let Some(path) = markdown {
        let section = section(&report, &machine, &command_line(), &now());
        write_markdown_section(path, markers.0, markers.1, &section)
            .with_context(|| format!("writing {}", path.display()))?;
        progress.println(format!("wrote the results into {}", path.display()));
    }
    Ok(())
}

/// How this run was started, as a command to copy.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let profile = if cfg!(debug_assertions) { "" } else { " --release" };
    let env = std::env::var("FEDERATOR_BIN")
        .map(|bin| format!("FEDERATOR_BIN={bin} "))
        .unwrap_or_default();
    format!("{env}cargo run -p federator-chaos{profile} -- {}", args.join(" "))
}

/// The current time in UTC, as `date` prints it.
fn now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "(date unknown)".into())
}

/// Parses `10s`, `500ms`, `1.5s`, `2m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration like 10s or 500ms"))?;
    let seconds = match unit {
        "ms" => number / 1e3,
        "s" | "" => number,
        "m" => number * 60.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_all_runs_each_benchmark_with_its_own_defaults() {
        let cli = Cli::try_parse_from([
            "federator-chaos",
            "bench",
            "all",
            "--smoke",
            "--markdown",
            "B.md",
        ])
        .expect("parses");
        let Command::Bench(Bench::All(args)) = &cli.command else { panic!("{cli:?}") };
        let lines = all_command_lines(args);
        assert_eq!(lines.len(), 6);
        for argv in &lines {
            assert_eq!(&argv[argv.len() - 3..], ["--smoke", "--markdown", "B.md"], "{argv:?}");
            let parsed = Cli::try_parse_from(argv).expect("each command line parses");
            assert!(matches!(parsed.command, Command::Bench(_)));
        }
        let Command::Bench(Bench::Raft(raft)) =
            Cli::try_parse_from(&lines[0]).expect("raft").command
        else {
            panic!("raft first")
        };
        assert_eq!(raft.clients, [1, 16, 64, 256, 1000]);
        assert_eq!(raft.trials, 20);
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
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
