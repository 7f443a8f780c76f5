//! The figures of a `bench scale` run: one row per level, each compared with the first
//! level, as a table for the terminal and a markdown section for `BENCHMARKS.md`. The
//! issue's targets are shown as met or missed, never asserted.

use std::fmt::Write as _;
use std::time::Duration;

use super::{BENCH_MEMBERS, ENDPOINTS_PER_EXPORT, JOIN_CONCURRENCY, LevelFigures, ScaleReport};
use crate::bench::report::{Machine, section_head, wrap};

/// Marks the start of the section this benchmark owns in a markdown file.
pub const SECTION_BEGIN: &str =
    "<!-- bench scale: begin (written by `federator-chaos bench scale --markdown`) -->";
/// Marks its end.
pub const SECTION_END: &str = "<!-- bench scale: end -->";

/// Most throughput lost from the first level to the last (fraction).
const TARGET_THROUGHPUT_LOSS: f64 = 0.20;
/// Largest propagation p99 of the last level over the first's.
const TARGET_P99_GROWTH: f64 = 2.0;

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.2}", d.as_secs_f64() * 1e3))
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One terminal line for a finished level.
#[must_use]
pub fn level_summary(f: &LevelFigures) -> String {
    format!(
        "Federator at {} members, {} endpoints (loaded in {:.1} s): {:.0} writes/s, p50 {} ms, \
         p99 {} ms, {} errors; propagation to {} watchers p50 {} ms, p99 {} ms, {} missed; \
         snapshot to each watcher in {:.1} s; leader RSS {}; replicas' CPU {} µs per write",
        thousands(f.level.members),
        thousands(f.level.endpoints),
        f.load_time.as_secs_f64(),
        f.writes.throughput(),
        ms(f.writes.percentile(0.5)),
        ms(f.writes.percentile(0.99)),
        f.writes.errors,
        f.propagation.watchers,
        ms(f.propagation.latency(0.5)),
        ms(f.propagation.latency(0.99)),
        f.propagation.tally.missed,
        f.propagation.open_time.as_secs_f64(),
        f.leader_rss.map_or_else(|| "-".into(), |b| format!("{:.0} MiB", b as f64 / 1_048_576.0)),
        f.cpu_per_write_us.map_or_else(|| "-".into(), |us| format!("{us:.0}")),
    )
}

impl ScaleReport {
    /// Throughput of level `i` relative to the first level's.
    fn throughput_ratio(&self, i: usize) -> Option<f64> {
        let first = self.levels.first()?.writes.throughput();
        let this = self.levels.get(i)?.writes.throughput();
        (first > 0.0).then(|| this / first)
    }

    /// Replicas' CPU per write of level `i` over the first level's.
    fn cpu_ratio(&self, i: usize) -> Option<f64> {
        let first = self.levels.first()?.cpu_per_write_us?;
        let this = self.levels.get(i)?.cpu_per_write_us?;
        (first > 0.0).then(|| this / first)
    }

    /// Propagation p99 of level `i` over the first level's.
    fn p99_ratio(&self, i: usize) -> Option<f64> {
        let first = self.levels.first()?.propagation.latency(0.99)?;
        let this = self.levels.get(i)?.propagation.latency(0.99)?;
        (!first.is_zero()).then(|| this.as_secs_f64() / first.as_secs_f64())
    }

    /// The table, in markdown (readable in a terminal too).
    #[must_use]
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| members | endpoints | load (s) | writes/s | vs first | write p50 (ms) | write p99 \
             (ms) | CPU per write (µs) | vs first | propagation p50 (ms) | propagation p99 \
             (ms) | vs first | missed | leader RSS (MiB) |\n\
             |--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
        );
        for (i, f) in self.levels.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                thousands(f.level.members),
                thousands(f.level.endpoints),
                f.load_time.as_secs_f64(),
                f.writes.throughput(),
                self.throughput_ratio(i)
                    .map_or_else(|| "-".into(), |r| format!("{:.0} %", r * 100.0)),
                ms(f.writes.percentile(0.5)),
                ms(f.writes.percentile(0.99)),
                f.cpu_per_write_us.map_or_else(|| "-".into(), |us| format!("{us:.0}")),
                self.cpu_ratio(i).map_or_else(|| "-".into(), |r| format!("{r:.2}×")),
                ms(f.propagation.latency(0.5)),
                ms(f.propagation.latency(0.99)),
                self.p99_ratio(i).map_or_else(|| "-".into(), |r| format!("{r:.2}×")),
                f.propagation.tally.missed,
                f.leader_rss
                    .map_or_else(|| "-".into(), |b| format!("{:.0}", b as f64 / 1_048_576.0)),
            );
        }
        out
    }

    /// The targets, judged on the last level against the first.
    #[must_use]
    pub fn verdicts(&self) -> Vec<String> {
        let last = self.levels.len().saturating_sub(1);
        if last == 0 {
            return vec!["targets: need two levels or more".into()];
        }
        let judge = |met: Option<bool>| match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "n/a",
        };
        let throughput = self.throughput_ratio(last);
        let p99 = self.p99_ratio(last);
        let cpu = self.cpu_ratio(last);
        // A last level faster than the first (noise, or a warmer machine) is no loss.
        let loss = |r: f64| {
            if r > 1.0 {
                format!("none (the last level was {:.0} % faster)", (r - 1.0) * 100.0)
            } else {
                format!("{:.0} %", (1.0 - r) * 100.0)
            }
        };
        vec![
            format!(
                "throughput loss, first level to last: {} (target ≤ {:.0} %: {})",
                throughput.map_or_else(|| "-".into(), loss),
                TARGET_THROUGHPUT_LOSS * 100.0,
                judge(throughput.map(|r| 1.0 - r <= TARGET_THROUGHPUT_LOSS)),
            ),
            format!(
                "propagation p99 growth, first level to last: {} (target ≤ {TARGET_P99_GROWTH}×: \
                 {})",
                p99.map_or_else(|| "-".into(), |r| format!("{r:.2}×")),
                judge(p99.map(|r| r <= TARGET_P99_GROWTH)),
            ),
            format!(
                "replicas' CPU per write, first level to last: {} (not a target; it tells a \
                 write that costs more in a larger federation from a noisier machine)",
                cpu.map_or_else(|| "-".into(), |r| format!("{r:.2}×")),
            ),
        ]
    }

    /// The figures for the terminal.
    #[must_use]
    pub fn text(&self) -> String {
        let mut out = self.table();
        out.push('\n');
        for line in self.verdicts() {
            let _ = writeln!(out, "{line}");
        }
        for f in &self.levels {
            if let Some(error) = &f.writes.first_error {
                let _ = writeln!(out, "first write error at {} members: {error}", f.level.members);
            }
            if let Some(error) = &f.propagation.first_stream_error {
                let _ = writeln!(out, "first watch error at {} members: {error}", f.level.members);
            }
        }
        out
    }

    /// This run as a markdown section (between [`SECTION_BEGIN`] and [`SECTION_END`]).
    #[must_use]
    pub fn markdown_section(&self, machine: &Machine, command: &str, date: &str) -> String {
        let c = &self.config;
        let mut out = String::new();
        out.push_str(&section_head(
            SECTION_BEGIN,
            "Scale: 10 → 1,000 member clusters, 10k → 1M endpoints",
            date,
            "one group grown level by level",
            command,
            machine,
        ));
        out.push_str(&self.table());
        out.push('\n');
        for line in self.verdicts() {
            let _ = writeln!(out, "- {line}");
        }
        out.push('\n');
        let how = format!(
            "How: one 3-replica Federator group on 127.0.0.1, grown to each level in turn \
             and measured there. Members joined through the federation API ({JOIN_CONCURRENCY} \
             at a time, tokens from the admin API, spread over the replicas), each taking a \
             lease and exporting its share of the level's new endpoints as `scale/svc-0`, \
             `scale/svc-1`, … of at most {ENDPOINTS_PER_EXPORT} endpoints, so every import \
             gathers the endpoints of many clusters. The group also holds {BENCH_MEMBERS} \
             benchmark members (a publisher, watchers, the load member), not counted. \
             Writes: {clients} closed-loop clients of the load member, over connections to \
             every replica, each re-exporting its own service with a new weight \
             (`ExportService`, acknowledged once committed and applied), {warmup:?} warm-up \
             then {duration:?} measured. Propagation: {watchers} fresh `Watch` streams spread \
             over the replicas receive their snapshot (every import of the federation), then \
             the publisher makes {changes} changes to `bench/svc`, one every {interval:?}; \
             latency of a (change, watcher) pair = received − issued, as in the propagation \
             benchmark. CPU per write: the user + system time of the three replicas over \
             the throughput phase, warm-up included, divided by the writes acknowledged in \
             it. Leader RSS is read after both phases. `vs first` compares with the \
             first level; the targets (throughput loss ≤ 20 %, propagation p99 ≤ 2× from \
             the smallest federation to the largest) are reported, not asserted.",
            clients = c.clients,
            warmup = c.warmup,
            duration = c.duration,
            watchers = c.watchers,
            changes = c.changes,
            interval = c.interval,
        );
        let _ = writeln!(out, "{}", wrap(&how, 90));
        let _ = writeln!(out, "{SECTION_END}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Level, ScaleConfig};
    use super::*;
    use crate::bench::load::LoadRun;
    use crate::bench::propagation::watch::{LatencyPhase, Tally};

    fn level(members: usize, ops: u64, p99_ms: u64) -> LevelFigures {
        LevelFigures {
            level: Level { members, endpoints: members * 1_000 },
            load_time: Duration::from_secs(1),
            writes: LoadRun {
                ops,
                window: Duration::from_secs(1),
                latencies: vec![Duration::from_millis(2)],
                ..LoadRun::default()
            },
            propagation: LatencyPhase {
                watchers: 10,
                tally: Tally { latencies: vec![Duration::from_millis(p99_ms)], ..Tally::default() },
                ..LatencyPhase::default()
            },
            leader_rss: Some(64 << 20),
            cpu_per_write_us: Some(ops as f64 / 10.0),
        }
    }

    fn report(levels: Vec<LevelFigures>) -> ScaleReport {
        ScaleReport {
            config: ScaleConfig {
                levels: levels.iter().map(|l| l.level).collect(),
                clients: 64,
                warmup: Duration::from_secs(1),
                duration: Duration::from_secs(5),
                watchers: 10,
                changes: 50,
                interval: Duration::from_millis(20),
            },
            levels,
        }
    }

    #[test]
    fn the_last_level_is_judged_against_the_first() {
        let r = report(vec![level(10, 1_000, 10), level(100, 900, 15), level(1_000, 700, 25)]);
        let verdicts = r.verdicts();
        assert!(verdicts[0].contains("30 %") && verdicts[0].contains("MISSED"), "{verdicts:?}");
        assert!(verdicts[1].contains("2.50×") && verdicts[1].contains("MISSED"), "{verdicts:?}");
        let table = r.table();
        assert!(table.contains("| 1,000 | 1,000,000 |"), "{table}");
        assert!(table.contains("| 90 % |"), "{table}");
        assert!(table.contains("| 70 | 0.70× |"), "CPU per write and its ratio: {table}");
        assert!(verdicts[2].contains("0.70×"), "{verdicts:?}");

        let r = report(vec![level(10, 1_000, 10), level(1_000, 850, 19)]);
        assert!(r.verdicts()[..2].iter().all(|v| v.contains(": met")), "{:?}", r.verdicts());

        let r = report(vec![level(10, 1_000, 10), level(1_000, 1_100, 12)]);
        let verdicts = r.verdicts();
        assert!(verdicts[0].contains("none (the last level was 10 % faster)"), "{verdicts:?}");
        assert!(verdicts[0].contains(": met"), "{verdicts:?}");
    }

    #[test]
    fn one_level_has_nothing_to_compare() {
        let r = report(vec![level(10, 1_000, 10)]);
        assert_eq!(r.verdicts().len(), 1);
        let mut unmeasured = level(1_000, 900, 10);
        unmeasured.cpu_per_write_us = None;
        let r = report(vec![level(10, 1_000, 10), unmeasured]);
        assert!(r.verdicts()[2].contains(": -"), "{:?}", r.verdicts());
        let section = r.markdown_section(&Machine::default(), "bench scale", "today");
        assert!(section.starts_with(SECTION_BEGIN) && section.trim_end().ends_with(SECTION_END));
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
