//! The figures of a `bench propagation` run, side by side: a text table for the terminal
//! and a markdown section for `BENCHMARKS.md`, each with the ratio etcd/Federator (above
//! 1 means Federator is faster or smaller) and the targets, shown as met or
//! missed, never asserted.

use std::fmt::Write as _;

use super::memory::{ENDPOINTS_PER_EXPORT, RssChange};
use super::watch::percentile;
use super::{CONNECTIONS_PER_MEMBER, GRACE, PropagationConfig, SystemPropagation};
use crate::bench::report::{Machine, aligned_table, ms, section_head, wrap};

/// Marks the start of the section this benchmark owns in a markdown file.
pub const SECTION_BEGIN: &str =
    "<!-- bench propagation: begin (written by `federator-chaos bench propagation --markdown`) -->";
/// Marks its end.
pub const SECTION_END: &str = "<!-- bench propagation: end -->";

/// Watcher count the latency targets are set at.
const TARGET_WATCHERS: usize = 1_000;
/// Federator's propagation p99 at [`TARGET_WATCHERS`], at most (ms).
const TARGET_P99_MS: f64 = 50.0;
/// etcd's p99 over Federator's at [`TARGET_WATCHERS`], at least.
const TARGET_P99_RATIO: f64 = 3.0;
/// Resident bytes per stored endpoint, at most.
const TARGET_BYTES_PER_ENDPOINT: f64 = 300.0;
/// Resident bytes per idle watch stream, at most (2 KiB).
const TARGET_BYTES_PER_STREAM: f64 = 2_048.0;

/// The figures of one run of `bench propagation`.
#[derive(Clone, Debug)]
pub struct PropagationReport {
    /// What was asked for.
    pub config: PropagationConfig,
    /// One entry per system, in the order they ran.
    pub systems: Vec<SystemPropagation>,
}

/// A target of the issue, judged on one row.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// Federator's own value at most this.
    AtMost(f64),
    /// etcd/Federator at least this.
    RatioAtLeast(f64),
}

/// One figure for both systems.
#[derive(Clone, Debug)]
struct Row {
    figure: String,
    federator: Option<f64>,
    etcd: Option<f64>,
    decimals: usize,
    /// Whether etcd/Federator means something for this figure.
    ratio: bool,
    targets: Vec<Target>,
}

impl Row {
    fn new(figure: impl Into<String>, values: (Option<f64>, Option<f64>), decimals: usize) -> Self {
        Self {
            figure: figure.into(),
            federator: values.0,
            etcd: values.1,
            decimals,
            ratio: true,
            targets: Vec::new(),
        }
    }

    fn count(figure: impl Into<String>, values: (Option<f64>, Option<f64>)) -> Self {
        Self { ratio: false, ..Self::new(figure, values, 0) }
    }

    fn with_target(mut self, target: Target) -> Self {
        self.targets.push(target);
        self
    }

    fn ratio(&self) -> Option<f64> {
        match (self.federator, self.etcd) {
            (Some(f), Some(e)) if self.ratio && f > 0.0 && e >= 0.0 => Some(e / f),
            _ => None,
        }
    }

    fn cells(&self) -> [String; 5] {
        let value =
            |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| number(v, self.decimals));
        let targets: Vec<String> = self
            .targets
            .iter()
            .map(|target| {
                let (text, met) = match *target {
                    Target::AtMost(v) => {
                        (format!("≤ {}", number(v, 0)), self.federator.map(|x| x <= v))
                    }
                    Target::RatioAtLeast(r) => (format!("≥ {r}×"), self.ratio().map(|x| x >= r)),
                };
                match met {
                    Some(true) => format!("{text}: met"),
                    Some(false) => format!("{text}: MISSED"),
                    None => format!("{text}: n/a"),
                }
            })
            .collect();
        [
            self.figure.clone(),
            value(self.federator),
            value(self.etcd),
            self.ratio().map_or_else(|| "-".to_string(), |r| format!("{r:.2}×")),
            targets.join("; "),
        ]
    }
}

const HEADER: [&str; 5] = ["figure", "Federator", "etcd", "etcd/Federator", "target"];

/// `value` with `decimals` decimals and thin thousands separators (`1,234.5`).
fn number(value: f64, decimals: usize) -> String {
    let text = format!("{:.*}", decimals, value.abs());
    let (int, frac) = text.split_once('.').map_or((text.as_str(), None), |(i, f)| (i, Some(f)));
    let mut grouped = String::new();
    for (i, digit) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let sign =
        if value < 0.0 && text.chars().any(|c| c.is_ascii_digit() && c != '0') { "-" } else { "" };
    match frac {
        Some(frac) => format!("{sign}{grouped}.{frac}"),
        None => format!("{sign}{grouped}"),
    }
}

fn mib(bytes: i64) -> String {
    format!("{:+.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

// === impl PropagationReport ===

impl PropagationReport {
    fn system(&self, name: &str) -> Option<&SystemPropagation> {
        self.systems.iter().find(|s| s.system == name)
    }

    fn both(&self, f: &dyn Fn(&SystemPropagation) -> Option<f64>) -> (Option<f64>, Option<f64>) {
        (self.system("Federator").and_then(f), self.system("etcd").and_then(f))
    }

    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let changes = self.config.changes;
        for watchers in &self.config.watchers {
            let w = *watchers;
            let phase =
                move |s: &SystemPropagation| s.phases.iter().find(|p| p.watchers == w).cloned();
            let at = |q: f64| self.both(&|s| phase(s).and_then(|p| p.latency(q)).map(ms));
            rows.push(Row::new(format!("propagation p50, {w} watchers (ms)"), at(0.50), 2));
            let mut p99 = Row::new(format!("propagation p99, {w} watchers (ms)"), at(0.99), 2);
            if w == TARGET_WATCHERS {
                p99 = p99
                    .with_target(Target::AtMost(TARGET_P99_MS))
                    .with_target(Target::RatioAtLeast(TARGET_P99_RATIO));
            }
            rows.push(p99);
            let max = self.both(&|s| phase(s).and_then(|p| p.max()).map(ms));
            rows.push(Row::new(format!("propagation max, {w} watchers (ms)"), max, 2));
            let missed = self.both(&|s| phase(s).map(|p| p.tally.missed as f64));
            rows.push(Row::count(
                format!(
                    "missed deliveries, {w} watchers (of {})",
                    number((w as u64 * changes) as f64, 0)
                ),
                missed,
            ));
            let coalesced = self.both(&|s| phase(s).map(|p| p.tally.coalesced as f64));
            if coalesced.0.unwrap_or(0.0) + coalesced.1.unwrap_or(0.0) > 0.0 {
                rows.push(Row::count(
                    format!("deliveries coalesced into a later change, {w} watchers"),
                    coalesced,
                ));
            }
            let ack = self
                .both(&|s| phase(s).and_then(|p| percentile(&p.publication.acks, 0.50)).map(ms));
            rows.push(Row::new(format!("publisher write ack p50, {w} watchers (ms)"), ack, 2));
            let cpu = self.both(&|s| phase(s).and_then(|p| p.cpu).map(|c| c * 100.0));
            rows.push(Row::new(
                format!("members' CPU while publishing, {w} watchers (% of a core)"),
                cpu,
                0,
            ));
            let failures =
                self.both(&|s| phase(s).map(|p| (p.publication.errors + p.broken_streams) as f64));
            if failures.0.unwrap_or(0.0) + failures.1.unwrap_or(0.0) > 0.0 {
                rows.push(Row::count(
                    format!("failed writes + broken streams, {w} watchers"),
                    failures,
                ));
            }
        }
        let mut counts: Vec<usize> = self
            .systems
            .iter()
            .flat_map(|s| s.endpoints.steps.iter().map(|e| e.endpoints))
            .collect();
        counts.sort_unstable();
        counts.dedup();
        for n in &counts {
            let n = *n;
            let step = move |s: &SystemPropagation| {
                s.endpoints.steps.iter().find(|e| e.endpoints == n).cloned()
            };
            let label = number(n as f64, 0);
            let leader = self.both(&|s| step(s).and_then(|e| e.leader.per_item(n)));
            rows.push(
                Row::new(
                    format!("RSS per stored endpoint, leader, {label} endpoints (B)"),
                    leader,
                    0,
                )
                .with_target(Target::AtMost(TARGET_BYTES_PER_ENDPOINT)),
            );
            let follower = self.both(&|s| step(s).and_then(|e| e.follower.per_item(n)));
            rows.push(
                Row::new(
                    format!("RSS per stored endpoint, follower, {label} endpoints (B)"),
                    follower,
                    0,
                )
                .with_target(Target::AtMost(TARGET_BYTES_PER_ENDPOINT)),
            );
        }
        let compacted = |pick: fn(&(RssChange, RssChange)) -> &RssChange| {
            self.both(&|s| {
                let last = s.endpoints.steps.last()?;
                s.endpoints.compacted.as_ref().and_then(|c| pick(c).per_item(last.endpoints))
            })
        };
        let (leader, follower) = (compacted(|c| &c.0), compacted(|c| &c.1));
        if leader.0.is_some() || leader.1.is_some() {
            let label = counts.last().map_or_else(String::new, |n| number(*n as f64, 0));
            rows.push(Row::new(
                format!("… after a snapshot with the log purged, leader, {label} (B)"),
                leader,
                0,
            ));
            rows.push(Row::new(
                format!("… after a snapshot with the log purged, follower, {label} (B)"),
                follower,
                0,
            ));
        }
        let streams = self.config.streams;
        let per_stream = self.both(&|s| s.streams.per_stream());
        rows.push(
            Row::new(
                format!(
                    "RSS per idle watch stream, {} streams, all members (B)",
                    number(streams as f64, 0)
                ),
                per_stream,
                0,
            )
            .with_target(Target::AtMost(TARGET_BYTES_PER_STREAM)),
        );
        let cpu = |f: fn(&SystemPropagation) -> f64| self.both(&|s| Some(f(s) * 100.0));
        rows.push(Row::new(
            format!(
                "idle CPU, all members, {} warm-up streams (% of a core)",
                3 * CONNECTIONS_PER_MEMBER
            ),
            cpu(|s| s.streams.idle_cpu_before),
            1,
        ));
        rows.push(Row::new(
            format!(
                "idle CPU, all members, {} more idle streams (% of a core)",
                number(streams as f64, 0)
            ),
            cpu(|s| s.streams.idle_cpu_after),
            1,
        ));
        rows
    }

    /// The figures as an aligned text table, then the details.
    #[must_use]
    pub fn text(&self) -> String {
        let rows: Vec<[String; 5]> = self.rows().iter().map(Row::cells).collect();
        let mut out = aligned_table(HEADER, &rows);
        for line in self.details() {
            let _ = writeln!(out, "- {line}");
        }
        out
    }

    /// The figures as a markdown table.
    #[must_use]
    pub fn markdown_table(&self) -> String {
        let mut out = format!("| {} |\n|---|--:|--:|--:|---|\n", HEADER.join(" | "));
        for row in self.rows() {
            let _ = writeln!(out, "| {} |", row.cells().join(" | "));
        }
        out
    }

    /// Where the memory went, per system, and anything that failed.
    fn details(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for s in &self.systems {
            let name = s.system;
            for e in &s.endpoints.steps {
                let (lt, la, lf) = e.leader.growth();
                let (ft, fa, ff) = e.follower.growth();
                lines.push(format!(
                    "{name}, {} endpoints in {} exports, loaded in {:.1} s: leader RSS {} \
                     (anonymous {}, file-backed {}), follower {} (anonymous {}, file-backed {})",
                    number(e.endpoints as f64, 0),
                    e.exports,
                    e.load_time.as_secs_f64(),
                    mib(lt),
                    mib(la),
                    mib(lf),
                    mib(ft),
                    mib(fa),
                    mib(ff),
                ));
            }
            if let Some((leader, follower)) = &s.endpoints.compacted {
                let (lt, la, lf) = leader.growth();
                let (ft, fa, ff) = follower.growth();
                lines.push(format!(
                    "{name}, after a snapshot with the log purged on every replica: leader RSS {} \
                     (anonymous {}, file-backed {}), follower {} (anonymous {}, file-backed {})",
                    mib(lt),
                    mib(la),
                    mib(lf),
                    mib(ft),
                    mib(fa),
                    mib(ff),
                ));
            }
            let members: Vec<String> = s
                .streams
                .members
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let role = if i == 0 { "leader" } else { "follower" };
                    format!("{role} {}", mib(m.growth().0))
                })
                .collect();
            lines.push(format!(
                "{name}, {} idle watch streams opened in {:.1} s: RSS {}",
                number(s.streams.streams as f64, 0),
                s.streams.open_time.as_secs_f64(),
                members.join(", ")
            ));
            for p in &s.phases {
                lines.push(format!(
                    "{name}, {} watchers: streams opened in {:.1} s{}{}",
                    number(p.watchers as f64, 0),
                    p.open_time.as_secs_f64(),
                    p.publication
                        .first_error
                        .as_ref()
                        .map(|e| format!("; first failed write: {e}"))
                        .unwrap_or_default(),
                    p.first_stream_error
                        .as_ref()
                        .map(|e| format!("; first broken stream: {e}"))
                        .unwrap_or_default(),
                ));
            }
        }
        lines
    }

    /// The markdown section for `BENCHMARKS.md`: machine, command, date, table, details
    /// and how the figures were taken.
    #[must_use]
    pub fn markdown_section(&self, machine: &Machine, command: &str, date: &str) -> String {
        let c = &self.config;
        let mut out = String::new();
        out.push_str(&section_head(
            SECTION_BEGIN,
            "Propagation and memory: Federator vs etcd 3.4",
            date,
            "both systems one after the other in the same run",
            command,
            machine,
        ));
        out.push_str(&self.markdown_table());
        out.push('\n');
        for line in self.details() {
            let _ = writeln!(out, "{}", wrap(&format!("- {line}"), 90).replace('\n', "\n  "));
        }
        let how = format!(
            "How: 3 members of each system on 127.0.0.1, started fresh for the watch figures \
             and again for the endpoint figures. Propagation: W watch streams ({watchers}), \
             each its own gRPC stream, spread round-robin over {conns} connections (Federator: \
             {per} watcher members × 3 replicas, each stream a `Watch` from revision 0 that \
             receives its snapshot first; etcd: {per} client connections × 3 members, each \
             stream a `Watch` of one key from the next revision). A publisher connected to the \
             leader makes {changes} changes, one every {interval:?}, each awaited before the \
             next (Federator: `ExportService` of `bench/svc` by member `pub`, whose lease is \
             live, with the endpoint weight carrying the change number; etcd: `put` of one key \
             whose value starts with the change number and holds the same export as JSON). \
             Latency of a (change, watcher) pair = the instant the watcher received that \
             change (or a later one) − the instant the publisher issued the write, so it \
             includes the raft commit and, on followers, their apply. A pair never received \
             within {grace:?} of the last change is missed. Federator sends each watcher the \
             service's current import, so a watcher that falls behind skips to the newest \
             version (counted as coalesced); etcd sends every revision. Memory per endpoint: \
             exports of at most {per_export} endpoints (Federator: services `bench/ep-N` of \
             one member through `ExportService`; etcd: one JSON document per export, same \
             fields, one key each), loaded up to each count in one run; the leader's and a \
             follower's RSS (`VmRSS`) growth from before the first export, divided by the \
             endpoints held. Federator's figure is then read again after `TriggerSnapshot` \
             with the log purged on every replica; etcd has no such call (it keeps its raft \
             log in memory until 100,000 entries). Memory per stream: one warm-up stream per \
             connection, then {streams} more idle streams, after their snapshots (etcd: \
             creation) arrived; the growth of all members' RSS together, divided by the \
             streams. Idle CPU is the members' user + system time over {cpu:?}. Ratios are \
             etcd/Federator (above 1: Federator faster or smaller); targets are the issue's \
             and are reported, not asserted.",
            watchers = c.watchers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            conns = 3 * CONNECTIONS_PER_MEMBER,
            per = CONNECTIONS_PER_MEMBER,
            changes = c.changes,
            interval = c.interval,
            grace = GRACE,
            per_export = number(ENDPOINTS_PER_EXPORT as f64, 0),
            streams = number(c.streams as f64, 0),
            cpu = c.cpu_window,
        );
        let _ = writeln!(out, "\n{}", wrap(&how, 90));
        let _ = writeln!(out, "{SECTION_END}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::System;
    use super::super::memory::{EndpointFigures, EndpointMemory, Rss, StreamMemory};
    use super::super::watch::{LatencyPhase, Publication, Tally};
    use super::*;
    use crate::bench::report::write_markdown_section;
    use std::time::Duration;

    fn rss(mib: u64) -> Rss {
        Rss { total: mib << 20, anon: mib << 20, file: 0 }
    }

    fn system(name: &'static str, latency_ms: u64, bytes_per_endpoint: u64) -> SystemPropagation {
        let phases = [100, 1_000]
            .into_iter()
            .map(|watchers| LatencyPhase {
                watchers,
                changes: 10,
                tally: Tally {
                    latencies: vec![Duration::from_millis(latency_ms); 10],
                    missed: 0,
                    coalesced: 0,
                },
                publication: Publication {
                    acks: vec![Duration::from_millis(2)],
                    ..Publication::default()
                },
                ..LatencyPhase::default()
            })
            .collect();
        let endpoints = 1_000_000;
        let step = EndpointMemory {
            endpoints,
            exports: 100,
            load_time: Duration::from_secs(5),
            leader: RssChange {
                before: rss(10),
                after: Rss { total: (10 << 20) + bytes_per_endpoint * endpoints as u64, ..rss(10) },
            },
            follower: RssChange { before: rss(10), after: rss(10) },
        };
        SystemPropagation {
            system: name,
            phases,
            streams: StreamMemory {
                streams: 1_000,
                members: vec![RssChange { before: rss(10), after: rss(11) }],
                idle_cpu_before: 0.01,
                idle_cpu_after: 0.02,
                open_time: Duration::from_secs(1),
            },
            endpoints: EndpointFigures { steps: vec![step], compacted: None },
        }
    }

    fn report() -> PropagationReport {
        PropagationReport {
            config: PropagationConfig {
                watchers: vec![100, 1_000],
                changes: 10,
                interval: Duration::from_millis(50),
                endpoints: vec![1_000_000],
                streams: 1_000,
                settle: Duration::from_secs(1),
                cpu_window: Duration::from_secs(1),
                systems: vec![System::Federator, System::Etcd],
            },
            systems: vec![system("Federator", 10, 250), system("etcd", 40, 500)],
        }
    }

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(number(1_000_000.0, 0), "1,000,000");
        assert_eq!(number(999.0, 0), "999");
        assert_eq!(number(1234.567, 2), "1,234.57");
        assert_eq!(number(-2048.0, 0), "-2,048");
        assert_eq!(number(-0.001, 1), "0.0");
    }

    #[test]
    fn table_shows_etcd_over_federator_and_judges_targets() {
        let text = report().text();
        let p99 = text.lines().find(|l| l.starts_with("propagation p99, 1000")).expect("row");
        assert!(p99.contains("4.00×"), "{p99}");
        assert!(p99.contains("≤ 50: met; ≥ 3×: met"), "{p99}");
        let endpoint = text.lines().find(|l| l.contains("leader, 1,000,000")).expect("row");
        assert!(endpoint.contains("250") && endpoint.contains("≤ 300: met"), "{endpoint}");
        let stream = text.lines().find(|l| l.contains("per idle watch stream")).expect("row");
        assert!(stream.contains("1,049") && stream.contains("≤ 2,048: met"), "{stream}");
        let missed = text.lines().find(|l| l.starts_with("missed deliveries, 100 ")).expect("row");
        assert!(missed.contains("(of 1,000)"), "{missed}");
        assert!(!missed.contains('×'), "counts have no ratio: {missed}");
    }

    #[test]
    fn a_missing_system_leaves_dashes() {
        let mut r = report();
        r.systems.truncate(1);
        let text = r.text();
        let p99 = text.lines().find(|l| l.starts_with("propagation p99, 1000")).expect("row");
        assert!(p99.contains("≤ 50: met; ≥ 3×: n/a"), "{p99}");
    }

    #[test]
    fn markdown_section_replaces_its_previous_version_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("BENCHMARKS.md");
        let raft = "<!-- bench raft: begin -->\nraft figures\n<!-- bench raft: end -->\n";
        std::fs::write(&path, format!("# Benchmarks\n\n{raft}\nNotes.\n")).expect("write");
        let section = report().markdown_section(&Machine::default(), "bench propagation", "today");
        for _ in 0..2 {
            write_markdown_section(&path, SECTION_BEGIN, SECTION_END, &section).expect("write");
        }
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.matches(SECTION_BEGIN).count(), 1, "{text}");
        assert!(text.starts_with(&format!("# Benchmarks\n\n{raft}\nNotes.\n")), "{text}");
        assert!(text.contains("| propagation p50, 100 watchers (ms) | 10.00 | 40.00 | 4.00× |  |"));
        assert!(text.trim_end().ends_with(SECTION_END), "{text}");
    }
}
