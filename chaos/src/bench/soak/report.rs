//! The figures of a `bench soak` run, side by side per system with the ratio
//! Federator/etcd, as a table for the terminal and a markdown section for
//! `BENCHMARKS.md`. The issue's target (no election in 10 minutes at full load) is shown
//! as met or missed, never asserted.

use std::fmt::Write as _;
use std::time::Duration;

use super::{SoakFigures, SoakReport};
use crate::bench::load::CONNECTIONS_PER_MEMBER;
use crate::bench::report::{
    HEADER, Machine, Row, Target, aligned_table, capitalized, markdown_rows, ms, section_head, wrap,
};
use crate::bench::{BenchTiming, GROUP_SIZE};

/// Marks the start of the section this benchmark owns in a markdown file.
pub const SECTION_BEGIN: &str =
    "<!-- bench soak: begin (written by `federator-chaos bench soak --markdown`) -->";
/// Marks its end.
pub const SECTION_END: &str = "<!-- bench soak: end -->";

/// `500 ms`, `90 s` or `10 min` for a window length.
fn span(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs >= 60.0 && secs % 60.0 == 0.0 {
        format!("{:.0} min", secs / 60.0)
    } else if secs >= 1.0 {
        format!("{secs} s")
    } else {
        format!("{:.0} ms", secs * 1e3)
    }
}

impl SoakReport {
    fn system(&self, name: &str, timing: BenchTiming) -> Option<&SoakFigures> {
        self.systems.iter().find(|s| s.system == name && s.timing == timing)
    }

    /// The timings that were run, in order.
    fn timings(&self) -> Vec<BenchTiming> {
        crate::bench::distinct_timings(self.systems.iter().map(|s| s.timing))
    }

    fn rows(&self, timing: BenchTiming) -> Vec<Row> {
        let fed = self.system("Federator", timing);
        let etcd = self.system("etcd", timing);
        let both = |f: &dyn Fn(&SoakFigures) -> Option<f64>| (fed.and_then(f), etcd.and_then(f));
        let warmup = self.config.warmup;
        let mut rows = Vec::new();
        let (f, e) = both(&|s| Some(s.run.throughput()));
        rows.push(Row::new("throughput (writes/s)", f, e, 0));
        let (f, e) = both(&|s| s.slowest_interval(warmup).map(|(_, rate)| rate));
        rows.push(Row::new(
            format!("slowest {} interval (writes/s)", span(self.config.sample_every)),
            f,
            e,
            0,
        ));
        for (name, q) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
            let (f, e) = both(&|s| s.run.percentile(q).map(ms));
            rows.push(Row::new(format!("{name} latency (ms)"), f, e, 2));
        }
        let (f, e) = both(&|s| Some(s.run.errors as f64));
        rows.push(Row::new("failed writes", f, e, 0));
        let (f, e) = both(&|s| Some(s.elections() as f64));
        rows.push(
            Row::new(
                format!("elections in {} at full load (term increase)", span(self.config.duration)),
                f,
                e,
                0,
            )
            .with_target(Target::AtMost(0.0)),
        );
        let (f, e) = both(&|s| s.leader_changes.map(|c| c as f64));
        rows.push(Row::new("leader changes seen (sum of members' counters)", f, e, 0));
        rows
    }

    /// Per system, when its term went up (nothing when it never did).
    fn term_change_lines(&self) -> Vec<String> {
        self.systems
            .iter()
            .filter(|s| s.elections() > 0)
            .map(|s| {
                let changes: Vec<String> = s
                    .term_changes()
                    .iter()
                    .map(|(at, term)| format!("term {term} seen at {:.0} s", at.as_secs_f64()))
                    .collect();
                format!(
                    "{}, {}: term {} → {} ({})",
                    s.system,
                    s.timing.title(),
                    s.term_before,
                    s.term_after,
                    if changes.is_empty() { "between samples".into() } else { changes.join(", ") }
                )
            })
            .collect()
    }

    /// The figures for the terminal.
    #[must_use]
    pub fn text(&self) -> String {
        let mut out = String::new();
        for timing in self.timings() {
            let rows: Vec<[String; 5]> = self.rows(timing).iter().map(Row::cells).collect();
            let _ = writeln!(out, "{}: {}", capitalized(timing.title()), timing.describe());
            out.push_str(&aligned_table(HEADER, &rows));
        }
        for line in self.term_change_lines() {
            let _ = writeln!(out, "{line}");
        }
        for s in &self.systems {
            if let Some(error) = &s.run.first_error {
                let _ = writeln!(out, "{}: first failed write: {error}", s.system);
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
            "Elections under sustained full load: Federator vs etcd 3.4",
            date,
            "both systems one after the other in the same run",
            command,
            machine,
        ));
        for timing in self.timings() {
            let _ = writeln!(out, "### {}\n", capitalized(timing.title()));
            let _ = writeln!(out, "{}.\n", wrap(&capitalized(&timing.describe()), 90));
            out.push_str(&markdown_rows(&self.rows(timing)));
            out.push('\n');
        }
        let lines = self.term_change_lines();
        if !lines.is_empty() {
            out.push('\n');
        }
        for line in lines {
            let _ = writeln!(out, "- {line}");
        }
        let how = format!(
            "How: 3 members of each system on 127.0.0.1, nothing killed, paused or \
             partitioned. {clients} closed-loop clients over min(clients, {pool}) connections \
             spread round-robin over the members, leader first, each overwriting its own {per} \
             keys in turn ({keys} keys in all) with {value} B values, so the stored state \
             stays bounded however long the run; every write acknowledged once committed by a \
             quorum and fsync'd, as in the raft benchmark (Federator through the admin `Put` \
             over mTLS, etcd through the KV `Put` over {transport}, with its defaults except for \
             the raft timing of each table and that it compacts its history every minute and may grow to 8 GiB, so that old \
             revisions do not fill its 2 GB default quota). \
             {warmup:?} warm-up, then {duration} measured. Every {every:?} a sampler reads the \
             highest raft term any member reports and the acknowledgements so far; elections \
             are the term's increase from before the clients start to after they stop (warm-up \
             included), the slowest interval is the fewest acknowledgements per second between \
             two samples of the measured window. Ratios are Federator/etcd; the target (no \
             election at full load) is the issue's and is reported, not asserted.",
            clients = c.clients,
            transport = c.etcd_transport.describe(),
            pool = GROUP_SIZE as usize * CONNECTIONS_PER_MEMBER,
            per = c.keys_per_client(),
            keys = c.keys,
            value = c.value_size,
            warmup = c.warmup,
            duration = span(c.duration),
            every = c.sample_every,
        );
        let _ = writeln!(out, "\n{}", wrap(&how, 90));
        let _ = writeln!(out, "{SECTION_END}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Sample, SoakConfig};
    use super::*;
    use crate::bench::System;
    use crate::bench::load::LoadRun;

    fn figures(system: &'static str, term_after: u64) -> SoakFigures {
        SoakFigures {
            system,
            timing: BenchTiming::Equal,
            connections: 12,
            run: LoadRun {
                ops: 6000,
                window: Duration::from_secs(60),
                latencies: vec![Duration::from_millis(4); 10],
                ..LoadRun::default()
            },
            term_before: 2,
            term_after,
            leader_changes: Some(term_after - 2),
            samples: (0..=62)
                .map(|s| Sample {
                    at: Duration::from_secs(s),
                    acked: s * 100,
                    term: Some(if s > 30 { term_after } else { 2 }),
                })
                .collect(),
        }
    }

    fn report(etcd_term_after: u64) -> SoakReport {
        SoakReport {
            config: SoakConfig {
                clients: 1000,
                warmup: Duration::from_secs(2),
                duration: Duration::from_secs(60),
                value_size: 256,
                keys: 100_000,
                sample_every: Duration::from_secs(1),
                systems: vec![System::Federator, System::Etcd],
                timings: vec![BenchTiming::Equal],
                etcd_transport: crate::etcd::EtcdTransport::MutualTls,
            },
            systems: vec![figures("Federator", 2), figures("etcd", etcd_term_after)],
        }
    }

    #[test]
    fn the_table_judges_elections_on_federator_and_lists_term_changes() {
        let text = report(4).text();
        let line = text.lines().find(|l| l.starts_with("elections in 1 min")).expect("row");
        assert!(line.ends_with("≤ 0: met"), "{line}");
        assert!(
            text.contains("etcd, both at equal raft timing: term 2 → 4 (term 4 seen at 31 s)"),
            "{text}"
        );
        assert!(!text.contains("Federator: term"), "{text}");
        let slowest = text.lines().find(|l| l.starts_with("slowest 1 s interval")).expect("row");
        assert!(slowest.contains("100"), "{slowest}");
    }

    #[test]
    fn spans_read_naturally() {
        assert_eq!(span(Duration::from_secs(600)), "10 min");
        assert_eq!(span(Duration::from_secs(90)), "90 s");
        assert_eq!(span(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(span(Duration::from_millis(500)), "500 ms");
    }

    #[test]
    fn the_markdown_section_is_delimited_and_says_how() {
        let section = report(2).markdown_section(&Machine::default(), "CMD", "DATE");
        assert!(section.starts_with(SECTION_BEGIN) && section.trim_end().ends_with(SECTION_END));
        assert!(section.contains("```sh\nCMD\n```"));
        assert!(section.contains("| elections in 1 min at full load (term increase) | 0 | 0 |"));
        let prose = section.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            prose.contains("overwriting its own 100 keys in turn (100000 keys in all)"),
            "{prose}"
        );
    }
}
