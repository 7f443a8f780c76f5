//! The figures of a `bench raft` run, side by side: a text table for the terminal and a
//! markdown section for `BENCHMARKS.md`, each with the ratio Federator/etcd and the
//! issue's targets (shown as met or missed, never asserted).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use federator_raft::disk_check::DiskProbe;

use super::failover::{FailoverFigures, PROBE_PERIOD};
use super::load::{CONNECTIONS_PER_MEMBER, PhaseFigures};
use super::plot::{Series, latency_cdf_svg};
use super::steps::StepMeans;
pub use super::text::{aligned_table, wrap};
use super::{BenchTiming, RaftBenchConfig};

/// Marks the start of the section this benchmark owns in a markdown file.
const SECTION_BEGIN: &str =
    "<!-- bench raft: begin (written by `federator-chaos bench raft --markdown`) -->";
/// Marks its end.
const SECTION_END: &str = "<!-- bench raft: end -->";

/// Everything measured against one system.
#[derive(Clone, Debug)]
pub struct SystemFigures {
    /// Display name (`Federator`, `etcd`).
    pub system: &'static str,
    /// The raft timing it ran at.
    pub timing: BenchTiming,
    /// One load phase per client count, in the configured order.
    pub phases: Vec<PhaseFigures>,
    /// One client's reads answered from the member's own state (no consensus), through
    /// the same API and connection as the writes: the floor of one call.
    pub local_read: Option<PhaseFigures>,
    /// The same reads, each after the client idled for
    /// [`IDLE_BEFORE_CALL`](super::load::IDLE_BEFORE_CALL): the floor of one call that
    /// wakes both ends, as a single-client write's answer does.
    pub idle_local_read: Option<PhaseFigures>,
    /// The failover trials.
    pub failover: FailoverFigures,
}

impl SystemFigures {
    fn phase(&self, clients: usize) -> Option<&PhaseFigures> {
        self.phases.iter().find(|p| p.clients == clients)
    }

    fn elections(&self) -> u64 {
        self.phases.iter().map(|p| p.elections).sum()
    }

    fn leader_changes(&self) -> Option<u64> {
        self.phases.iter().map(|p| p.leader_changes).sum()
    }
}

/// The figures of one run of `bench raft`.
#[derive(Clone, Debug)]
pub struct RaftReport {
    /// What was asked for.
    pub config: RaftBenchConfig,
    /// The disk's floor under a replicated write, measured before the systems started.
    pub disk_floor: Option<DiskFloor>,
    /// One entry per system, in the order they ran.
    pub systems: Vec<SystemFigures>,
}

/// Durable log appends timed in the run's temporary directory, where both systems keep
/// their data: the least a replicated write costs on this disk.
#[derive(Clone, Debug)]
pub struct DiskFloor {
    /// One writer alone.
    pub alone: DiskProbe,
    /// One writer per replica of a group, all at once, as a group's replicas on one disk.
    pub together: DiskProbe,
    /// Bytes per appended entry.
    pub entry_bytes: usize,
}

// === impl DiskFloor ===

impl DiskFloor {
    /// One line for the terminal.
    #[must_use]
    pub fn summary(&self) -> String {
        format!(
            "durable log append p50 {:.2} ms alone, {:.2} ms with {} writers at once \
             (p99 {:.2} / {:.2} ms, {} + {} appends of {} B)",
            ms(self.alone.p50),
            ms(self.together.p50),
            self.together.writers,
            ms(self.alone.p99),
            ms(self.together.p99),
            self.alone.appends,
            self.together.appends,
            self.entry_bytes
        )
    }

    fn rows(&self) -> [Row; 2] {
        let n = self.together.writers;
        [
            Row::new(
                "durable log append, 1 writer alone, p50 (ms)",
                Some(ms(self.alone.p50)),
                None,
                2,
            ),
            Row::new(
                format!(
                    "durable log append, {n} writers at once (as {n} replicas on this disk), p50 (ms)"
                ),
                Some(ms(self.together.p50)),
                None,
                2,
            ),
        ]
    }

    /// What floor the disk puts under the single-client latency.
    fn note(&self) -> String {
        let n = self.together.writers;
        let together = ms(self.together.p50);
        format!(
            "The durable log append rows time the log append a Federator replica makes (a \
             redb commit without an fsync, and a record in its redo file made durable by \
             `fdatasync`, as etcd's WAL is), in the run's temporary directory \
             before either system started ({per} appends of {bytes} B per writer): one writer \
             alone, and {n} writers at once, as {n} replicas on this disk append. A replicated \
             write is acknowledged once it is durable on the leader and on one follower. Both \
             systems write the leader's copy while they replicate it, so on this machine, \
             where the {n} replicas share one disk, neither single-client p50 can go below \
             about one contended append, {together:.2} ms, plus a round trip to a follower.",
            per = self.alone.appends / self.alone.writers.max(1),
            bytes = self.entry_bytes,
        )
    }
}

/// A target of the issue, judged on one row.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    /// Federator/etcd at least this.
    RatioAtLeast(f64),
    /// Federator/etcd at most this.
    RatioAtMost(f64),
    /// Federator's own value at most this.
    AtMost(f64),
    /// Federator's value at most etcd's divided by this (a time "this many times faster").
    FasterBy(f64),
}

/// One figure for both systems.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    figure: String,
    federator: Option<f64>,
    etcd: Option<f64>,
    decimals: usize,
    targets: Vec<Target>,
}

impl Row {
    pub(crate) fn new(
        figure: impl Into<String>,
        federator: Option<f64>,
        etcd: Option<f64>,
        decimals: usize,
    ) -> Self {
        Self { figure: figure.into(), federator, etcd, decimals, targets: Vec::new() }
    }

    pub(crate) fn with_target(mut self, target: Target) -> Self {
        self.targets.push(target);
        self
    }

    fn ratio(&self) -> Option<f64> {
        match (self.federator, self.etcd) {
            (Some(f), Some(e)) if e > 0.0 => Some(f / e),
            _ => None,
        }
    }

    pub(crate) fn cells(&self) -> [String; 5] {
        let value = |v: Option<f64>| {
            v.map_or_else(|| "-".to_string(), |v| format!("{v:.*}", self.decimals))
        };
        let judged = self.targets.iter().map(|target| {
            let (text, met) = match *target {
                Target::RatioAtLeast(r) => (format!("≥ {r}×"), self.ratio().map(|x| x >= r)),
                Target::RatioAtMost(r) => (format!("≤ {r}×"), self.ratio().map(|x| x <= r)),
                Target::AtMost(v) => (format!("≤ {v}"), self.federator.map(|x| x <= v)),
                Target::FasterBy(r) => {
                    (format!("≥ {r}× faster"), self.ratio().map(|x| x * r <= 1.0))
                }
            };
            match met {
                Some(true) => format!("{text}: met"),
                Some(false) => format!("{text}: MISSED"),
                None => format!("{text}: n/a"),
            }
        });
        let target = judged.collect::<Vec<_>>().join("; ");
        [
            self.figure.clone(),
            value(self.federator),
            value(self.etcd),
            self.ratio().map_or_else(|| "-".to_string(), |r| format!("{r:.2}×")),
            target,
        ]
    }
}

/// `text` with its first letter in upper case.
pub(crate) fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |c| c.to_uppercase().chain(chars).collect())
}

/// A duration in milliseconds, for the reports' tables.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// How the step breakdowns were taken.
const BREAKDOWN_NOTE: &str = "Each replica marks when a log entry passes each step of the write \
     path and observes the time since the write reached the leader's proposer (`federator_raft_\
     write_step_seconds{step}`, and on a follower since an AppendEntries arrived, `federator_\
     raft_follower_append_step_seconds{step}`); the tables are the means over the \
     single-client phase, warm-up included, read from the replicas' `/metrics` before and \
     after it. The client's latency is the mean over the measured window.";

/// The heading of one system's single-client breakdown.
fn breakdown_title(system: &SystemFigures, phase: &PhaseFigures) -> String {
    format!(
        "Where a single-client write's time goes: {}, {} (mean of {:.0} writes/s)",
        system.system,
        system.timing.title(),
        phase.run.throughput()
    )
}

pub(crate) const HEADER: [&str; 5] = ["figure", "Federator", "etcd", "Federator/etcd", "target"];

// === impl RaftReport ===

impl RaftReport {
    fn system(&self, name: &str, timing: BenchTiming) -> Option<&SystemFigures> {
        self.systems.iter().find(|s| s.system == name && s.timing == timing)
    }

    /// The timings that were run, in order.
    fn timings(&self) -> Vec<BenchTiming> {
        super::distinct_timings(self.systems.iter().map(|s| s.timing))
    }

    /// The rows of one timing; the disk floor goes with the first timing's.
    fn rows(&self, timing: BenchTiming) -> Vec<Row> {
        let fed = self.system("Federator", timing);
        let etcd = self.system("etcd", timing);
        let both = |f: &dyn Fn(&SystemFigures) -> Option<f64>| (fed.and_then(f), etcd.and_then(f));
        let mut rows = Vec::new();
        for clients in &self.config.clients {
            let clients = *clients;
            let noun = if clients == 1 { "client" } else { "clients" };
            let (f, e) = both(&|s| s.phase(clients).map(|p| p.run.throughput()));
            let mut row = Row::new(format!("throughput, {clients} {noun} (writes/s)"), f, e, 0);
            if clients == 256 || clients == 1000 {
                row = row.with_target(Target::RatioAtLeast(5.0));
            }
            rows.push(row);
            let (f, e) = both(&|s| s.phase(clients).and_then(|p| p.run.percentile(0.50)).map(ms));
            let mut row = Row::new(format!("p50 latency, {clients} {noun} (ms)"), f, e, 2);
            if clients == 1 {
                row = row.with_target(Target::RatioAtMost(0.5));
            }
            rows.push(row);
            let (f, e) = both(&|s| s.phase(clients).and_then(|p| p.run.percentile(0.99)).map(ms));
            let mut row = Row::new(format!("p99 latency, {clients} {noun} (ms)"), f, e, 2);
            if clients == 256 || clients == 1000 {
                row = row.with_target(Target::RatioAtMost(1.0));
            }
            rows.push(row);
            let (f, e) = both(&|s| s.phase(clients).map(|p| p.run.errors as f64));
            if f.unwrap_or(0.0) + e.unwrap_or(0.0) > 0.0 {
                rows.push(Row::new(format!("failed writes, {clients} {noun}"), f, e, 0));
            }
        }
        let read_p50 =
            |s: &SystemFigures| s.local_read.as_ref().and_then(|p| p.run.percentile(0.50)).map(ms);
        let (f, e) = both(&read_p50);
        if f.is_some() || e.is_some() {
            rows.push(Row::new("p50 local read, 1 client: the call's floor (ms)", f, e, 2));
            let (f, e) = both(&|s| {
                let write = s.phase(1).and_then(|p| p.run.percentile(0.50)).map(ms)?;
                Some(write - read_p50(s)?)
            });
            rows.push(Row::new("p50 write less p50 local read, 1 client (ms)", f, e, 2));
        }
        let (f, e) = both(&|s: &SystemFigures| {
            s.idle_local_read.as_ref().and_then(|p| p.run.percentile(0.50)).map(ms)
        });
        if f.is_some() || e.is_some() {
            rows.push(Row::new(
                format!(
                    "p50 local read after {} ms idle, 1 client: the floor of a call that wakes both ends (ms)",
                    super::load::IDLE_BEFORE_CALL.as_millis()
                ),
                f,
                e,
                2,
            ));
        }
        let (f, e) = both(&|s| s.failover.median().map(ms));
        rows.push(
            Row::new(format!("failover median, {} trials (ms)", self.config.trials), f, e, 0)
                .with_target(Target::AtMost(500.0))
                .with_target(Target::FasterBy(3.0)),
        );
        let (f, e) = both(&|s| s.failover.range().map(|(lo, _)| ms(lo)));
        rows.push(Row::new("failover min (ms)", f, e, 0));
        let (f, e) = both(&|s| s.failover.range().map(|(_, hi)| ms(hi)));
        rows.push(Row::new("failover max (ms)", f, e, 0));
        let (f, e) = both(&|s| Some(s.failover.failed() as f64));
        if f.unwrap_or(0.0) + e.unwrap_or(0.0) > 0.0 {
            rows.push(Row::new("failover trials with no write in 30 s", f, e, 0));
        }
        let (f, e) = both(&|s| Some(s.elections() as f64));
        rows.push(
            Row::new("elections under load (term increase)", f, e, 0)
                .with_target(Target::AtMost(0.0)),
        );
        let (f, e) = both(&|s| s.leader_changes().map(|c| c as f64));
        rows.push(Row::new("leader changes seen under load (sum of members' counters)", f, e, 0));
        if let Some(floor) = self.disk_floor.as_ref().filter(|_| self.timings()[0] == timing) {
            rows.extend(floor.rows());
        }
        rows
    }

    /// The figures as aligned text tables, one per timing under its title.
    #[must_use]
    pub fn text_table(&self) -> String {
        let mut out = String::new();
        for timing in self.timings() {
            let rows: Vec<[String; 5]> = self.rows(timing).iter().map(Row::cells).collect();
            let _ = writeln!(out, "{}: {}", capitalized(timing.title()), timing.describe());
            out.push_str(&aligned_table(HEADER, &rows));
            out.push('\n');
        }
        for (system, phase, steps) in self.breakdowns() {
            let _ = writeln!(out, "{}", breakdown_title(system, phase));
            out.push_str(&steps.text(phase.run.mean().map(ms)));
            out.push('\n');
        }
        out.trim_end().to_string() + "\n"
    }

    /// The single-client phases whose write path was timed step by step (Federator's),
    /// one per timing.
    fn breakdowns(&self) -> Vec<(&SystemFigures, &PhaseFigures, &StepMeans)> {
        self.systems
            .iter()
            .filter_map(|system| {
                let phase = system.phase(1)?;
                Some((system, phase, phase.steps.as_ref()?))
            })
            .collect()
    }

    /// The figures as markdown tables, one per timing under its own heading.
    #[must_use]
    pub fn markdown_table(&self) -> String {
        let mut out = String::new();
        for timing in self.timings() {
            let _ = writeln!(out, "### {}\n", capitalized(timing.title()));
            let _ = writeln!(out, "{}.\n", wrap(&capitalized(&timing.describe()), 90));
            out.push_str(&markdown_rows(&self.rows(timing)));
            out.push('\n');
        }
        out.trim_end().to_string() + "\n"
    }

    /// The cumulative latency distribution of every load phase of every system, as SVG
    /// (Federator solid, etcd dashed, one colour per client count).
    #[must_use]
    pub fn latency_plot(&self) -> String {
        let first = self.timings().first().copied();
        let series: Vec<Series> = self
            .systems
            .iter()
            .filter(|system| Some(system.timing) == first)
            .enumerate()
            .flat_map(|(s, system)| {
                system.phases.iter().enumerate().map(move |(p, phase)| Series {
                    label: format!(
                        "{}, {} client{}",
                        system.system,
                        phase.clients,
                        if phase.clients == 1 { "" } else { "s" }
                    ),
                    latencies: phase.run.latencies.clone(),
                    colour: p,
                    dashed: s > 0,
                })
            })
            .collect();
        let names: Vec<&str> =
            self.systems.iter().filter(|s| Some(s.timing) == first).map(|s| s.system).collect();
        let title = format!(
            "Write latency: {}{}",
            names.join(" vs "),
            first.map_or_else(String::new, |t| format!(", {}", t.title()))
        );
        latency_cdf_svg(&title, &series)
    }

    /// The markdown section for `BENCHMARKS.md`: machine, command, date, table, the
    /// latency plot at `plot` (a path relative to the markdown file) when there is one,
    /// the individual failover trials and how the figures were taken.
    #[must_use]
    pub fn markdown_section(
        &self,
        machine: &Machine,
        command: &str,
        date: &str,
        plot: Option<&str>,
    ) -> String {
        let c = &self.config;
        let mut out = String::new();
        out.push_str(&section_head(
            SECTION_BEGIN,
            "Raft writes: Federator vs etcd 3.4",
            date,
            "both systems one after the other in the same run",
            command,
            machine,
        ));
        out.push_str(&self.markdown_table());
        out.push('\n');
        if let Some(floor) = &self.disk_floor {
            let _ = writeln!(out, "{}\n", wrap(&floor.note(), 90));
        }
        for (system, phase, steps) in self.breakdowns() {
            let _ = writeln!(out, "### {}\n", breakdown_title(system, phase));
            out.push_str(&steps.markdown(phase.run.mean().map(ms)));
            out.push('\n');
        }
        if !self.breakdowns().is_empty() {
            let _ = writeln!(out, "{}\n", wrap(BREAKDOWN_NOTE, 90));
        }
        if let Some(plot) = plot {
            let _ = writeln!(out, "![Cumulative write latency per client count]({plot})\n");
        }
        for system in &self.systems {
            let trials: Vec<String> = system
                .failover
                .trials
                .iter()
                .map(|t| {
                    t.outage
                        .map_or_else(|| "none".into(), |d| format!("{:.0}", d.as_secs_f64() * 1e3))
                })
                .collect();
            let _ = writeln!(
                out,
                "- {} failover trials, {} (ms, in order): {}",
                system.system,
                system.timing.title(),
                trials.join(", ")
            );
        }
        let how = format!(
            "How: 3 members of each system on 127.0.0.1. Closed-loop clients ({clients}), each \
             writing distinct keys one after the other with {value} B values; {warmup:?} warm-up, \
             then {duration:?} measured per client count. Clients share min(clients, {pool}) \
             connections spread round-robin over the members, leader first (so one client talks \
             to the leader); followers forward writes to the leader. Every write is acknowledged \
             only once committed by a quorum and fsync'd (Federator: its log's redo file; etcd: its \
             WAL, its default). Federator is written through the admin `Put` over mTLS, etcd through \
             the KV `Put` over {transport}. The local read is one client on the leader's \
             connection reading those keys back without consensus (Federator: admin `Get` at \
             stale consistency; etcd: serializable `Range`): what one call costs through each \
             system's API, transport and authentication, so the write less it is what \
             replication and the disk add; read again with the client idle for \
             {idle_ms} ms before each call, it shows what waking both ends after a pause \
             adds, which a single-client write's answer pays too. Each table is one raft timing, given above it: the \
             election timing decides how soon a crashed leader is replaced, so failover is \
             compared at equal timing; each system's default shows what an operator who \
             changes nothing gets. Failover: a writer issues one put every {period:?}, round-robin over one \
             connection per member; the leader is SIGKILLed and the time is from the process \
             being reaped to the first acknowledgement of a put issued after it; the killed \
             member is restarted and the group healthy again before the next trial. Elections \
             under load are the raft term's increase over the load phases. Ratios are \
             Federator/etcd; targets are the issue's and are reported, not asserted.",
            clients = c.clients.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            value = c.value_size,
            transport = c.etcd_transport.describe(),
            warmup = c.warmup,
            duration = c.duration,
            pool = super::GROUP_SIZE as usize * CONNECTIONS_PER_MEMBER,
            period = PROBE_PERIOD,
            idle_ms = super::load::IDLE_BEFORE_CALL.as_millis(),
        );
        let _ = writeln!(out, "\n{}", wrap(&how, 90));
        let _ = writeln!(out, "{SECTION_END}");
        out
    }
}

/// The opening of a benchmark's markdown section: its `begin` marker, `title`, when and
/// how it was `measured` ("both systems one after the other in the same run"), the
/// command and the machine.
#[must_use]
pub fn section_head(
    begin: &str,
    title: &str,
    date: &str,
    measured: &str,
    command: &str,
    machine: &Machine,
) -> String {
    format!(
        "{begin}\n## {title}\n\nMeasured {date}, {measured}:\n\n```sh\n{command}\n```\n\n{}\n\n",
        wrap(&format!("Machine: {machine}"), 90)
    )
}

/// `rows` as a markdown table under [`HEADER`].
pub(crate) fn markdown_rows(rows: &[Row]) -> String {
    let mut out = format!("| {} |\n|---|--:|--:|--:|---|\n", HEADER.join(" | "));
    for row in rows {
        let _ = writeln!(out, "| {} |", row.cells().join(" | "));
    }
    out
}

/// Writes `section` into the markdown file at `path`: replaces this benchmark's previous
/// section if there is one, appends otherwise, creates the file if needed.
///
/// # Errors
/// The file could not be read or written.
pub fn write_markdown(path: &Path, section: &str) -> std::io::Result<()> {
    write_markdown_section(path, SECTION_BEGIN, SECTION_END, section)
}

/// Writes `section` into the markdown file at `path`: replaces the text from the line
/// `begin` through the line `end` (a previous version of the section, which `section`
/// must begin and end with) if there is one, appends otherwise, creates the file if
/// needed.
///
/// # Errors
/// The file could not be read or written.
pub fn write_markdown_section(
    path: &Path,
    begin: &str,
    end: &str,
    section: &str,
) -> std::io::Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => "# Benchmarks\n".to_string(),
        Err(error) => return Err(error),
    };
    let updated = match (existing.find(begin), existing.find(end)) {
        (Some(begin_at), Some(end_at)) if begin_at < end_at => {
            let after = end_at + end.len();
            let after = existing[after..].strip_prefix('\n').map_or(after, |_| after + 1);
            format!("{}{section}{}", &existing[..begin_at], &existing[after..])
        }
        _ => format!("{}\n{section}", existing.trim_end().to_string() + "\n"),
    };
    std::fs::write(path, updated)
}

/// The machine a benchmark ran on.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    /// CPU model and clock (`/proc/cpuinfo`), marked when it is a virtual machine's.
    pub cpu: String,
    /// Logical CPUs available to this process.
    pub cpus: usize,
    /// Total memory (`/proc/meminfo`).
    pub memory: String,
    /// Kernel release.
    pub kernel: String,
    /// Device and file system of the temporary directory, where both systems fsync.
    pub disk: String,
    /// `etcd --version`, first line.
    pub etcd: String,
    /// Build profile of this binary.
    pub profile: &'static str,
    /// `/proc/loadavg` when detected: other work on the machine skews every figure.
    pub load_average: String,
}

impl Machine {
    /// Reads what it can from `/proc` and `etcd --version`; unknown parts stay empty.
    #[must_use]
    pub fn detect() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let field = |text: &str, name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        let cpuinfo = read("/proc/cpuinfo");
        let mut cpu = field(&cpuinfo, "model name");
        if let Ok(mhz) = field(&cpuinfo, "cpu MHz").parse::<f64>() {
            let _ = write!(cpu, " @ {:.2} GHz", mhz / 1000.0);
        }
        if field(&cpuinfo, "flags").split_whitespace().any(|f| f == "hypervisor") {
            cpu.push_str(" (virtual machine)");
        }
        let memory = field(&read("/proc/meminfo"), "MemTotal")
            .trim_end_matches(" kB")
            .parse::<u64>()
            .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
            .unwrap_or_default();
        let etcd = std::process::Command::new(crate::etcd::etcd_bin())
            .arg("--version")
            .output()
            .map(|o| {
                let text = String::from_utf8_lossy(&o.stdout);
                let first = text.lines().next().unwrap_or_default();
                first.replace("etcd Version: ", "etcd ")
            })
            .unwrap_or_default();
        Self {
            cpu,
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            memory,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            disk: mount_of(&read("/proc/mounts"), &std::env::temp_dir()),
            etcd,
            profile: if cfg!(debug_assertions) { "debug" } else { "release" },
            load_average: read("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// "DEVICE FSTYPE" of the mount holding `path`, from a `/proc/mounts` listing.
fn mount_of(mounts: &str, path: &Path) -> String {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (device, point, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(point).then(|| (point.len(), format!("{device} {fstype}")))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, mount)| mount)
        .unwrap_or_default()
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} × {}, {} RAM, Linux {}, temporary directories on {}; {}; load generator \
             built {}; load average before the run {}",
            self.cpus,
            self.cpu,
            self.memory,
            self.kernel,
            self.disk,
            self.etcd,
            self.profile,
            self.load_average
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::System;
    use super::super::failover::FailoverTrial;
    use super::super::load::LoadRun;
    use super::*;

    fn system(name: &'static str, millis: u64, ops: u64, failover_ms: u64) -> SystemFigures {
        let run = LoadRun {
            ops,
            window: Duration::from_secs(1),
            latencies: vec![Duration::from_millis(millis); 10],
            ..LoadRun::default()
        };
        let phases = [1, 256]
            .into_iter()
            .map(|clients| PhaseFigures {
                clients,
                connections: 1,
                run: run.clone(),
                elections: 0,
                leader_changes: Some(0),
                steps: None,
            })
            .collect();
        let trials = (0..3)
            .map(|_| FailoverTrial { killed: 1, outage: Some(Duration::from_millis(failover_ms)) })
            .collect();
        let reads =
            LoadRun { latencies: vec![Duration::from_micros(millis * 250); 10], ..run.clone() };
        let local_read = PhaseFigures {
            clients: 1,
            connections: 1,
            run: reads,
            elections: 0,
            leader_changes: Some(0),
            steps: None,
        };
        SystemFigures {
            system: name,
            timing: BenchTiming::Equal,
            phases,
            local_read: Some(local_read.clone()),
            idle_local_read: Some(local_read),
            failover: FailoverFigures { trials },
        }
    }

    fn report() -> RaftReport {
        RaftReport {
            config: RaftBenchConfig {
                clients: vec![1, 256],
                duration: Duration::from_secs(1),
                warmup: Duration::from_millis(100),
                trials: 3,
                value_size: 256,
                systems: vec![System::Federator, System::Etcd],
                disk_appends: 300,
                timings: vec![BenchTiming::Equal],
                etcd_transport: crate::etcd::EtcdTransport::MutualTls,
            },
            disk_floor: Some(DiskFloor {
                alone: probe(1, 220),
                together: probe(3, 460),
                entry_bytes: 320,
            }),
            systems: vec![system("Federator", 1, 6000, 300), system("etcd", 4, 1000, 1500)],
        }
    }

    fn probe(writers: usize, p50_micros: u64) -> DiskProbe {
        DiskProbe {
            writers,
            appends: writers * 300,
            p50: Duration::from_micros(p50_micros),
            p99: Duration::from_micros(p50_micros * 3),
            max: Duration::from_micros(p50_micros * 5),
        }
    }

    #[test]
    fn the_disk_floor_is_a_federator_row_and_a_note_under_the_table() {
        let table = report().text_table();
        assert!(table.contains("durable log append, 1 writer alone, p50 (ms)"), "{table}");
        let section = report().markdown_section(&Machine::default(), "bench raft", "today", None);
        assert!(
            section.contains(
                "| durable log append, 3 writers at once (as 3 replicas on this disk), p50 (ms) \
                 | 0.46 | - | - |  |"
            ),
            "{section}"
        );
        assert!(section.contains("The durable log append rows time"), "{section}");
        let note = report().disk_floor.map(|f| f.note()).unwrap_or_default();
        assert!(note.contains("one contended append, 0.46 ms"), "{note}");
        assert!(note.contains("300 appends of 320 B per writer"), "{note}");
        let without = RaftReport { disk_floor: None, ..report() };
        assert!(!without.text_table().contains("durable log append"));
    }

    #[test]
    fn table_shows_ratios_and_judges_targets() {
        let table = report().text_table();
        assert!(table.contains("6.00×"), "{table}");
        assert!(table.contains("≥ 5×: met"), "{table}");
        assert!(table.contains("≤ 0.5×: met"), "{table}");
        assert!(table.contains("≤ 500: met"), "{table}");
        assert!(table.contains("0.20×"), "{table}");
    }

    #[test]
    fn markdown_section_replaces_its_previous_version_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("BENCHMARKS.md");
        std::fs::write(&path, "# Benchmarks\n\nOther section.\n").expect("write");
        let section =
            report().markdown_section(&Machine::default(), "bench raft", "today", Some("p.svg"));
        assert!(section.contains("](p.svg)"), "{section}");
        write_markdown(&path, &section).expect("first write");
        write_markdown(&path, &section).expect("second write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.matches(SECTION_BEGIN).count(), 1, "{text}");
        assert!(text.starts_with("# Benchmarks\n\nOther section.\n"), "{text}");
        assert!(
            text.contains("| p50 latency, 1 client (ms) | 1.00 | 4.00 | 0.25× | ≤ 0.5×: met |"),
            "{text}"
        );
        assert!(
            text.contains(
                "| p50 local read, 1 client: the call's floor (ms) | 0.25 | 1.00 | 0.25× |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| p50 write less p50 local read, 1 client (ms) | 0.75 | 3.00 | 0.25× |"),
            "{text}"
        );
        assert!(
            text.contains(
                "| p50 local read after 2 ms idle, 1 client: the floor of a call that wakes both ends (ms) | 0.25 | 1.00 | 0.25× |"
            ),
            "{text}"
        );
    }

    #[test]
    fn each_timing_gets_its_own_table_and_the_disk_floor_goes_with_the_first() {
        let mut report = report();
        report.config.timings = vec![BenchTiming::Equal, BenchTiming::Defaults];
        let at_defaults: Vec<SystemFigures> = report
            .systems
            .iter()
            .map(|s| SystemFigures { timing: BenchTiming::Defaults, ..s.clone() })
            .collect();
        report.systems.extend(at_defaults);
        let table = report.text_table();
        let equal =
            table.find("Both at equal raft timing: Federator `lan` profile (heartbeat 25 ms");
        let defaults = table.find("Each at its default raft timing: Federator `wan` profile");
        assert!(equal.is_some() && defaults.is_some() && equal < defaults, "{table}");
        assert!(table.contains("etcd heartbeat 16 ms and election timeout 80 ms"), "{table}");
        assert!(table.contains("etcd heartbeat 100 ms and election timeout 1000 ms"), "{table}");
        assert_eq!(table.matches("durable log append, 1 writer alone").count(), 1, "{table}");
        assert_eq!(table.matches("failover median").count(), 2, "{table}");
        let section = report.markdown_section(&Machine::default(), "bench raft", "today", None);
        assert!(section.contains("### Both at equal raft timing\n"), "{section}");
        assert!(section.contains("### Each at its default raft timing\n"), "{section}");
        assert!(
            section.contains("- etcd failover trials, each at its default raft timing (ms"),
            "{section}"
        );
    }

    #[test]
    fn etcd_gets_the_longest_heartbeat_it_accepts_at_federators_election_timeout() {
        assert_eq!(
            BenchTiming::Equal.etcd_flags(),
            ["--heartbeat-interval=16", "--election-timeout=80"]
        );
        assert!(BenchTiming::Defaults.etcd_flags().is_empty());
        assert_eq!(BenchTiming::Defaults.federator(), federator_raft::Timing::Wan);
    }

    #[test]
    fn text_is_wrapped_at_word_boundaries() {
        assert_eq!(wrap("aa bb cc dd", 5), "aa bb\ncc dd");
        assert_eq!(wrap("a verylongword b", 4), "a\nverylongword\nb");
    }

    #[test]
    fn temporary_directory_mount_is_the_longest_matching_mount_point() {
        let mounts = "/dev/vda / ext4 rw 0 0\ntmpfs /tmp tmpfs rw 0 0\ntmpfs /tmpx tmpfs rw 0 0\n";
        assert_eq!(mount_of(mounts, Path::new("/tmp")), "tmpfs tmpfs");
        assert_eq!(mount_of(mounts, Path::new("/var/tmp")), "/dev/vda ext4");
    }
}
