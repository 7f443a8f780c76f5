//! The figures of a `bench snapshot` run side by side: a text table and a markdown
//! section for `BENCHMARKS.md`, with the ratio Federator/etcd and the target
//! (Federator ≤ 0.5× etcd's time), shown as met or missed, never asserted.

use std::fmt::Write as _;
use std::time::Duration;

use super::{Install, SnapshotConfig, SystemSnapshot, median};
use crate::bench::report::{Machine, aligned_table, ms, section_head, wrap};

/// Marks the start of the section this benchmark owns in a markdown file.
pub const SECTION_BEGIN: &str =
    "<!-- bench snapshot: begin (written by `federator-chaos bench snapshot --markdown`) -->";
/// Marks its end.
pub const SECTION_END: &str = "<!-- bench snapshot: end -->";

/// The target: Federator's time at most this fraction of etcd's.
const TARGET_RATIO: f64 = 0.5;

const HEADER: [&str; 5] = ["figure", "Federator", "etcd", "Federator/etcd", "target"];

/// The figures of one run.
#[derive(Clone, Debug)]
pub struct SnapshotReport {
    /// What was asked for.
    pub config: SnapshotConfig,
    /// One entry per system, in the order they ran.
    pub systems: Vec<SystemSnapshot>,
}

/// A cell: a figure, or why there is none.
#[derive(Clone, Debug)]
enum Cell {
    Value(f64),
    Missing(&'static str),
}

impl Cell {
    fn value(&self) -> Option<f64> {
        match self {
            Self::Value(v) => Some(*v),
            Self::Missing(_) => None,
        }
    }
}

struct Row {
    figure: String,
    federator: Cell,
    etcd: Cell,
    decimals: usize,
    target: bool,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        match (self.federator.value(), self.etcd.value()) {
            (Some(f), Some(e)) if e > 0.0 => Some(f / e),
            _ => None,
        }
    }

    fn cells(&self) -> [String; 5] {
        let show = |c: &Cell| match c {
            Cell::Value(v) => format!("{v:.*}", self.decimals),
            Cell::Missing(why) => (*why).to_string(),
        };
        let target = if self.target {
            let text = format!("≤ {TARGET_RATIO}×");
            match self.ratio() {
                Some(r) if r <= TARGET_RATIO => format!("{text}: met"),
                Some(_) => format!("{text}: MISSED"),
                None => format!("{text}: n/a"),
            }
        } else {
            String::new()
        };
        [
            self.figure.clone(),
            show(&self.federator),
            show(&self.etcd),
            self.ratio().map_or_else(|| "-".to_string(), |r| format!("{r:.2}×")),
            target,
        ]
    }
}

fn list(trials: impl IntoIterator<Item = Duration>) -> String {
    trials.into_iter().map(|d| format!("{:.0}", ms(d))).collect::<Vec<_>>().join(", ")
}

impl SnapshotReport {
    fn system(&self, name: &str) -> Option<&SystemSnapshot> {
        self.systems.iter().find(|s| s.system == name)
    }

    fn rows(&self) -> Vec<Row> {
        let fed = self.system("Federator");
        let etcd = self.system("etcd");
        let cell = |s: Option<&SystemSnapshot>, f: &dyn Fn(&SystemSnapshot) -> Cell| {
            s.map_or(Cell::Missing("-"), f)
        };
        let row = |figure: String, decimals, target, f: &dyn Fn(&SystemSnapshot) -> Cell| Row {
            figure,
            federator: cell(fed, f),
            etcd: cell(etcd, f),
            decimals,
            target,
        };
        let of_median =
            |values: &[Duration]| median(values).map_or(Cell::Missing("-"), |d| Cell::Value(ms(d)));
        let n = self.config.trials;
        vec![
            row(format!("save, median of {n} (ms)"), 0, true, &|s| of_median(&s.save)),
            row("snapshot file (MiB)".into(), 1, false, &|s| {
                Cell::Value(s.file_size as f64 / 1024.0 / 1024.0)
            }),
            row(format!("restore, median of {n} (ms)"), 0, true, &|s| of_median(&s.restore)),
            row(format!("follower install, median of {n} (ms)"), 0, true, &|s| match &s.install {
                Install::Measured(_) => {
                    s.install.median().map_or(Cell::Missing("-"), |d| Cell::Value(ms(d)))
                }
                Install::NotMeasured(_) => Cell::Missing("not measured"),
            }),
            row(
                format!("loading {} keys (writes/s, not a target)", self.config.keys),
                0,
                false,
                &|s| Cell::Value(self.config.keys as f64 / s.load.as_secs_f64().max(1e-9)),
            ),
        ]
    }

    /// Per-system trial lists and notes, one line each.
    fn details(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for s in &self.systems {
            lines.push(format!(
                "{}: save trials (ms) {}; restore trials (ms) {}; file {} bytes",
                s.system,
                list(s.save.iter().copied()),
                list(s.restore.iter().copied()),
                s.file_size
            ));
            match &s.install {
                Install::Measured(trials) => {
                    let shown: Vec<String> = trials
                        .iter()
                        .map(|t| {
                            let how = match t.via_snapshot {
                                Some(true) => " (snapshot)",
                                Some(false) => " (log only, no snapshot sent)",
                                None => "",
                            };
                            let serving = t.serving.map_or_else(String::new, |d| {
                                format!(", answering clients at {:.0}", ms(d))
                            });
                            format!("{:.0}{how}{serving}", ms(t.time))
                        })
                        .collect();
                    lines.push(format!(
                        "{}: follower install trials (ms) {}",
                        s.system,
                        shown.join("; ")
                    ));
                }
                Install::NotMeasured(reason) => lines.push(format!(
                    "{}: follower install not measured: {}",
                    s.system,
                    reason.lines().next().unwrap_or_default()
                )),
            }
        }
        lines
    }

    /// What each figure times, for both systems (they are not identical operations).
    fn how(&self) -> String {
        let c = &self.config;
        format!(
            "How: 3 members of each system on 127.0.0.1, loaded with the same {keys} keys of \
             {value} B pseudo-random values ({in_flight} writes in flight over 4 connections \
             per member; Federator through the admin `Put`, etcd through the KV `Put`). The \
             operations differ between the systems, so the ratios compare the nearest \
             equivalents, not identical work. Save: one CLI process timed from spawn to exit \
             against the leader: `federator snapshot save FILE` (a linearizable read of the \
             whole state streamed over mTLS, checked against its SHA-256, fsync'd, renamed) \
             vs `etcdctl snapshot save FILE` (the bbolt database streamed over plain HTTP/2, \
             fsync'd, renamed). Restore: Federator restores online into a new, already formed \
             3-replica group (forming it is not timed): `federator snapshot restore FILE` \
             (the file goes through the raft log in 1 MiB entries and replaces the state on \
             every replica) until all 3 replicas report it applied (their state digests are \
             then compared, untimed); etcd \
             restores offline into one member: `etcdctl snapshot restore FILE --data-dir …` \
             (rewrites the database and a new WAL for a 1-member cluster) plus starting that \
             member until it answers a linearizable `Get` of the last key with its value — \
             a single member, not 3, and no replication. Follower install: the log is \
             compacted first (Federator: `TriggerSnapshot {{ purge: true }}` on the leader \
             with `keep_entries_after_snapshot = {keep}`; etcd: `--snapshot-count \
             {count}` on every member, so the in-memory raft log keeps only 5,000 entries \
             behind the last snapshot, and a physical key-space compaction), not timed; then \
             timed from the first step to the new member having applied what the leader has: \
             Federator from starting replica 4's process, through `federator raft \
             add-member` (learner, caught up, promoted to voter), until its applied index \
             reaches the leader's; etcd from the `MemberAdd` call, through starting member 4 \
             with `--initial-cluster-state existing`, until its applied raft index (read from \
             `etcd_server_proposals_applied_total` on its metrics listener, which serves from \
             the start) reaches the leader's committed index; when etcd's member also \
             answered clients later (it serves them only once it has published itself \
             through raft, which after a snapshot install can take a 7 s request timeout and \
             a retry), that time is shown per trial as well. Whether a snapshot was sent is shown per trial \
             (Federator: the new replica reports a snapshot index; etcd: it logged \"{logged}\"). \
             The new member is removed and killed before the next trial. Medians of {trials} \
             trials; the loaded group is killed before the restores run. Ratios are \
             Federator/etcd; the target is the issue's and is reported, not asserted.",
            keys = c.keys,
            value = c.value_size,
            in_flight = c.in_flight,
            keep = super::federator::KEEP_ENTRIES,
            count = super::etcd::SNAPSHOT_COUNT,
            logged = "received and saved database snapshot",
            trials = c.trials,
        )
    }

    /// The figures as an aligned text table, then the trials and what was timed.
    #[must_use]
    pub fn text(&self) -> String {
        let rows: Vec<[String; 5]> = self.rows().iter().map(Row::cells).collect();
        let mut out = aligned_table(HEADER, &rows);
        out.push('\n');
        for line in self.details() {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out, "\n{}", wrap(&self.how(), 90));
        out
    }

    /// The markdown section for `BENCHMARKS.md`.
    #[must_use]
    pub fn markdown_section(&self, machine: &Machine, command: &str, date: &str) -> String {
        let mut out = String::new();
        out.push_str(&section_head(
            SECTION_BEGIN,
            "Snapshots: save, restore, follower install — Federator vs etcd 3.4",
            date,
            "both systems one after the other in the same run",
            command,
            machine,
        ));
        let _ = writeln!(out, "| {} |\n|---|--:|--:|--:|---|", HEADER.join(" | "));
        for row in self.rows() {
            let _ = writeln!(out, "| {} |", row.cells().join(" | "));
        }
        out.push('\n');
        for line in self.details() {
            let _ = writeln!(out, "- {line}");
        }
        let _ = writeln!(out, "\n{}", wrap(&self.how(), 90));
        let _ = writeln!(out, "{SECTION_END}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::InstallTrial;
    use super::*;
    use crate::bench::System;
    use crate::bench::report::write_markdown_section;

    fn system(name: &'static str, millis: u64, install: Install) -> SystemSnapshot {
        let d = Duration::from_millis(millis);
        SystemSnapshot {
            system: name,
            load: Duration::from_secs(1),
            save: vec![d, d * 2, d],
            file_size: 3 << 20,
            restore: vec![d * 4; 3],
            install,
        }
    }

    fn report(etcd_install: Install) -> SnapshotReport {
        let trial = |ms| InstallTrial {
            time: Duration::from_millis(ms),
            via_snapshot: Some(true),
            serving: None,
        };
        SnapshotReport {
            config: SnapshotConfig {
                keys: 1000,
                value_size: 256,
                trials: 3,
                in_flight: 64,
                systems: vec![System::Federator, System::Etcd],
            },
            systems: vec![
                system("Federator", 100, Install::Measured(vec![trial(50); 3])),
                system("etcd", 400, etcd_install),
            ],
        }
    }

    #[test]
    fn table_shows_medians_ratios_and_the_target() {
        let text = report(Install::NotMeasured("it broke\nbadly".into())).text();
        assert!(text.contains("save, median of 3 (ms)"), "{text}");
        assert!(text.contains("0.25×"), "{text}");
        assert!(text.contains("≤ 0.5×: met"), "{text}");
        assert!(text.contains("not measured"), "{text}");
        assert!(text.contains("≤ 0.5×: n/a"), "{text}");
        assert!(text.contains("etcd: follower install not measured: it broke"), "{text}");
        assert!(text.contains("3.0"), "{text}");
    }

    #[test]
    fn markdown_section_replaces_its_previous_version_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("BENCHMARKS.md");
        let raft = "<!-- bench raft: begin -->\nraft figures\n<!-- bench raft: end -->\n";
        std::fs::write(&path, format!("# Benchmarks\n\n{raft}")).expect("write");
        let trial = InstallTrial {
            time: Duration::from_millis(800),
            via_snapshot: Some(false),
            serving: Some(Duration::from_millis(7800)),
        };
        let section = report(Install::Measured(vec![trial; 3])).markdown_section(
            &Machine::default(),
            "bench snapshot",
            "today",
        );
        for _ in 0..2 {
            write_markdown_section(&path, SECTION_BEGIN, SECTION_END, &section).expect("write");
        }
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.matches(SECTION_BEGIN).count(), 1, "{text}");
        assert!(text.starts_with(&format!("# Benchmarks\n\n{raft}")), "{text}");
        assert!(
            text.contains(
                "| follower install, median of 3 (ms) | 50 | 800 | 0.06× | ≤ 0.5×: met |"
            ),
            "{text}"
        );
        assert!(text.contains("(log only, no snapshot sent), answering clients at 7800"), "{text}");
        assert!(text.trim_end().ends_with(SECTION_END), "{text}");
    }
}
