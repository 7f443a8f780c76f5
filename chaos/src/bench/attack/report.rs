//! The report of `bench attack`: the quiet and attacked figures side by side (with the
//! ratio where it means something) as a text table, and as the markdown section of
//! `BENCHMARKS.md` with the prose that says how they were made.

use std::fmt::Write as _;
use std::time::Duration;

use super::{
    AttackReport, JOIN_FLOOD_SOURCE, JOIN_VIA, PhaseFigures, SECTION_BEGIN, SECTION_END,
    SOCKET_FLOOD_SOURCE, ServerCounters,
};
use crate::bench::GROUP_SIZE;
use crate::bench::report::{Machine, aligned_table, section_head, wrap};

/// One figure, quiet and under attack.
#[derive(Clone, Debug)]
struct Row {
    figure: String,
    quiet: Option<f64>,
    attack: Option<f64>,
    decimals: usize,
    /// Show attack/quiet.
    ratio: bool,
    note: String,
}

impl Row {
    fn new(
        figure: impl Into<String>,
        quiet: Option<f64>,
        attack: Option<f64>,
        decimals: usize,
    ) -> Self {
        Self { figure: figure.into(), quiet, attack, decimals, ratio: false, note: String::new() }
    }

    fn compared(mut self) -> Self {
        self.ratio = true;
        self
    }

    fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    fn cells(&self) -> [String; 5] {
        let value = |v: Option<f64>| {
            v.map_or_else(|| "-".to_string(), |v| format!("{v:.*}", self.decimals))
        };
        let ratio = match (self.ratio, self.quiet, self.attack) {
            (true, Some(q), Some(a)) if q > 0.0 => format!("{:.2}×", a / q),
            _ => "-".to_string(),
        };
        [self.figure.clone(), value(self.quiet), value(self.attack), ratio, self.note.clone()]
    }
}

const HEADER: [&str; 5] = ["figure", "quiet", "under attack", "attack/quiet", "note"];

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1e3)
}

/// `500 ms` or `10 s`.
fn span(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

impl AttackReport {
    fn rows(&self) -> Vec<Row> {
        let (q, a) = (&self.quiet, &self.attack);
        let both = |f: &dyn Fn(&PhaseFigures) -> Option<f64>| (f(q), f(a));
        let mut rows = Vec::new();
        let (x, y) = both(&|p| Some(p.writes.throughput()));
        rows.push(
            Row::new("legitimate writes/s (1 sequential writer → leader)", x, y, 0).compared(),
        );
        for (name, quantile) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
            let (x, y) = both(&|p| ms(p.writes.percentile(quantile)));
            rows.push(Row::new(format!("write {name} latency (ms)"), x, y, 2).compared());
        }
        let (x, y) = both(&|p| Some(p.writes.errors as f64));
        rows.push(Row::new("failed writes", x, y, 0));
        let (x, y) = both(&|p| p.join.as_ref().ok().map(|d| d.as_secs_f64() * 1e3));
        let failures: Vec<String> = [q, a]
            .iter()
            .filter_map(|p| p.join.as_ref().err().map(|e| format!("{}: FAILED ({e})", p.label)))
            .collect();
        rows.push(
            Row::new(
                format!("legitimate member's connect + join via replica {JOIN_VIA} (ms)"),
                x,
                y,
                0,
            )
            .compared()
            .note(if failures.is_empty() {
                "both joined".into()
            } else {
                failures.join("; ")
            }),
        );
        let (x, y) = both(&|p| p.replica_cpu);
        rows.push(Row::new("replicas' CPU, 3 together (cores)", x, y, 2).compared());
        let (x, y) = both(&|p| p.flood_cpu.filter(|_| p.join_flood.is_some()));
        rows.push(Row::new("attackers' CPU (cores; 1 thread of their own)", x, y, 2));

        if let Some(j) = &a.join_flood {
            let per_s = |n: u64| Some(j.per_second(n));
            rows.push(Row::new("join flood: joins sent (per s)", None, per_s(j.attempts), 0).note(
                format!(
                    "{} in {:.1} s; {} tasks from {JOIN_FLOOD_SOURCE} over {} replicas",
                    j.attempts,
                    j.ran.as_secs_f64(),
                    self.config.join_tasks,
                    GROUP_SIZE
                ),
            ));
            rows.push(
                Row::new(
                    "join flood: refused, PERMISSION_DENIED (per s)",
                    None,
                    per_s(j.denied),
                    0,
                )
                .note(format!("{}", j.denied)),
            );
            rows.push(
                Row::new(
                    "join flood: rate-limited, RESOURCE_EXHAUSTED (per s)",
                    None,
                    per_s(j.limited),
                    0,
                )
                .note(format!("{}", j.limited)),
            );
            if j.other + j.connect_failures > 0 {
                rows.push(
                    Row::new(
                        "join flood: other answers, failed connections",
                        None,
                        Some((j.other + j.connect_failures) as f64),
                        0,
                    )
                    .note(j.first_other.clone().unwrap_or_default()),
                );
            }
            rows.push(
                Row::new("join flood: joins accepted", None, Some(j.accepted as f64), 0)
                    .note(if j.accepted == 0 { "must be 0: met" } else { "must be 0: MISSED" }),
            );
        }
        if let Some(s) = &a.socket_flood {
            rows.push(
                Row::new("connection flood: idle sockets asked for", None, Some(s.asked as f64), 0)
                    .note(format!(
                        "{} per API port from {SOCKET_FLOOD_SOURCE}, no ClientHello",
                        self.config.sockets_per_port
                    )),
            );
            rows.push(
                Row::new(
                    "connection flood: idle sockets held at once (mean over the window)",
                    None,
                    s.held_mean(),
                    0,
                )
                .note(format!("max {}", s.held.iter().max().copied().unwrap_or(0))),
            );
            rows.push(
                Row::new(
                    "connection flood: sockets closed by the server (per s)",
                    None,
                    Some(s.per_second(s.closed_by_server)),
                    0,
                )
                .note(format!(
                    "{} of {} opened; each re-opened after {}",
                    s.closed_by_server,
                    s.opened,
                    span(self.config.reopen_pause)
                )),
            );
            if s.failed > 0 {
                rows.push(
                    Row::new(
                        "connection flood: connects that failed",
                        None,
                        Some(s.failed as f64),
                        0,
                    )
                    .note(s.first_error.clone().unwrap_or_default()),
                );
            }
        }
        let server = |f: fn(ServerCounters) -> u64| both(&|p| p.server.map(|c| f(c) as f64));
        let (x, y) = server(|c| c.refused_at_accept);
        rows.push(
            Row::new("replicas: API connections closed at accept", x, y, 0)
                .note("source over its handshake cap"),
        );
        let (x, y) = server(|c| c.timed_out + c.evicted);
        rows.push(Row::new("replicas: API handshakes timed out or evicted", x, y, 0));
        let (x, y) = server(|c| c.refusals);
        rows.push(
            Row::new("replicas: calls refused before the log", x, y, 0)
                .note("federator_refusals_total"),
        );
        let (x, y) = both(&|p| Some(p.growth() as f64));
        rows.push(Row::new("applied-index growth over the phase", x, y, 0).note(format!(
            "{:.1} s quiet, {:.1} s under attack",
            q.span.as_secs_f64(),
            a.span.as_secs_f64()
        )));
        let (x, y) = both(&|p| Some(p.legitimate_entries() as f64));
        rows.push(Row::new("… legitimate entries (writes + member join)", x, y, 0));
        let (x, y) = both(&|p| Some(p.other_entries() as f64));
        let allowance = a.report_allowance();
        rows.push(Row::new("… other entries", x, y, 0).note(format!(
            "under attack ≤ {allowance} (one refusal report per replica per second): {}",
            if a.other_entries() <= allowance { "met" } else { "MISSED" }
        )));
        rows
    }

    /// The figures for the terminal.
    #[must_use]
    pub fn text(&self) -> String {
        let rows: Vec<[String; 5]> = self.rows().iter().map(Row::cells).collect();
        let mut out = aligned_table(HEADER, &rows);
        for p in [&self.quiet, &self.attack] {
            if let Some(error) = &p.writes.first_error {
                let _ = writeln!(out, "{}: first failed write: {error}", p.label);
            }
        }
        out
    }

    /// This run as a markdown section (between [`SECTION_BEGIN`] and [`SECTION_END`]).
    #[must_use]
    pub fn markdown_section(&self, machine: &Machine, command: &str, date: &str) -> String {
        let c = &self.config;
        let mut out = section_head(
            SECTION_BEGIN,
            "Under attack: join flood and connection flood",
            date,
            "one 3-replica Federator group, quiet then under attack, in the same run",
            command,
            machine,
        );
        let _ = writeln!(out, "| {} |\n|---|--:|--:|--:|---|", HEADER.join(" | "));
        for row in self.rows() {
            let _ = writeln!(out, "| {} |", row.cells().join(" | "));
        }
        let how = format!(
            "How: 3 replicas on 127.0.0.1 with their default limits. One writer on \
             127.0.0.1 writes new probe keys ({value} B values) through the admin `Put` to \
             the leader (replica {leader}), one after the other, each acknowledged once \
             committed by a quorum and fsync'd; {ramp} of writes unmeasured, then {window} \
             measured, first quiet, then under attack. Under attack, from the start of the \
             unmeasured time to the end of the window: (a) a join flood from \
             {JOIN_FLOOD_SOURCE}: {tasks} tasks spread over the replicas, one connection \
             each, sending joins with a CA and SVID of the attacker's own, a valid bundle \
             of that CA and a well-formed token nobody created, each as soon as the previous \
             is answered; (b) a connection flood from {SOCKET_FLOOD_SOURCE}: {per_port} raw \
             TCP sockets to each replica's API port that never send a TLS ClientHello, each \
             opened again {pause} after the server closes it. The floods run in the \
             benchmark's process on a runtime of their own with one thread (their CPU is \
             the attackers' row); on this machine they share its cores with the replicas \
             and the writer. In the middle of each window a new member cluster joins from \
             127.0.0.1 through replica {JOIN_VIA} with a token the operator made before the \
             phase; its row is the time to connect (TLS) and join. The applied index (the \
             highest any replica reports) is read before each phase and {settle} after its \
             window, when the last refusal reports are in; its growth is compared with the \
             entries the legitimate clients may have proposed (acknowledged and failed \
             writes, the join). The replicas' rows are their own counters' increase over the \
             phase. Figures are reported, not asserted.",
            value = c.value_size,
            leader = self.leader,
            ramp = span(c.ramp),
            window = span(c.duration),
            tasks = c.join_tasks,
            per_port = c.sockets_per_port,
            pause = span(c.reopen_pause),
            settle = span(c.settle),
        );
        let _ = writeln!(out, "\n{}", wrap(&how, 90));
        let _ = writeln!(out, "{SECTION_END}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::report;
    use super::*;

    #[test]
    fn the_table_compares_latency_and_counts_the_floods() {
        let text = report(120).text();
        let p50 = text.lines().find(|l| l.starts_with("write p50 latency")).expect("row");
        assert!(p50.contains("2.00") && p50.contains("4.00") && p50.contains("2.00×"), "{p50}");
        let limited = text.lines().find(|l| l.contains("RESOURCE_EXHAUSTED")).expect("row");
        assert!(limited.contains(" 98 ") && limited.ends_with("980"), "{limited}");
        let held = text.lines().find(|l| l.contains("held at once")).expect("row");
        assert!(held.contains(" 50 ") && held.ends_with("max 52"), "{held}");
        assert!(text.contains("must be 0: met"), "{text}");
    }

    #[test]
    fn the_markdown_section_is_delimited_and_says_how() {
        let section = report(120).markdown_section(&Machine::default(), "CMD", "DATE");
        assert!(section.starts_with(SECTION_BEGIN) && section.trim_end().ends_with(SECTION_END));
        assert!(section.contains("```sh\nCMD\n```"));
        assert!(section.contains("| failed writes | 0 | 0 | - |  |"), "{section}");
        let prose = section.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(prose.contains("8 tasks spread over the replicas"), "{prose}");
        assert!(prose.contains("300 raw TCP sockets"), "{prose}");
    }
}
