//! A run's report: fault timeline, operation counts, failover gaps, convergence time and
//! violations, rendered as text, JSON or JUnit XML (one test case per scenario run).

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use super::workload::Recorded;
use crate::check::Violation;
use crate::check::history::{OpKind, Outcome};

/// One line of the fault timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TimelineEvent {
    /// Milliseconds since the workload started.
    pub at_ms: u64,
    /// What was done.
    pub what: String,
}

/// A named time a scenario measured (e.g. how long a dead member's endpoints stayed
/// ready).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Measurement {
    /// What was measured.
    pub name: String,
    /// Milliseconds.
    pub ms: u64,
}

/// How many operations of each kind ended how.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Register writes acknowledged.
    pub writes_ok: u64,
    /// Register writes never sent (no connection to the chosen replica).
    pub writes_failed: u64,
    /// Register writes that erred or timed out (may or may not have happened).
    pub writes_indeterminate: u64,
    /// Linearizable reads answered.
    pub reads_ok: u64,
    /// Reads that erred or timed out.
    pub reads_failed: u64,
    /// Bundle rotations acknowledged.
    pub publishes_ok: u64,
    /// Bundle rotations that erred or timed out.
    pub publishes_failed: u64,
    /// Exports and unexports acknowledged.
    pub exports_ok: u64,
    /// Exports and unexports that erred or timed out.
    pub exports_failed: u64,
    /// Watch events received (outside snapshots).
    pub watch_events: u64,
    /// Watch streams resumed after breaking.
    pub watch_resumes: u64,
    /// Cross-domain publishes tried (each must be refused).
    pub cross_domain_attempts: u64,
    /// Leader and digest samples taken.
    pub samples: u64,
}

impl Counts {
    /// Counts what `recorded` holds.
    #[must_use]
    pub fn of(recorded: &Recorded) -> Self {
        let mut counts = Self {
            publishes_ok: recorded.publishes.0,
            publishes_failed: recorded.publishes.1,
            exports_ok: recorded.exports.0,
            exports_failed: recorded.exports.1,
            watch_events: recorded.watch_events.len() as u64,
            watch_resumes: recorded.resumes,
            cross_domain_attempts: recorded.cross_domain.len() as u64,
            samples: (recorded.leaders.len() + recorded.digests.len()) as u64,
            ..Self::default()
        };
        for op in &recorded.history.ops {
            match (op.kind, op.outcome) {
                (OpKind::Write { .. }, Outcome::Ok { .. }) => counts.writes_ok += 1,
                (OpKind::Write { .. }, Outcome::Failed) => counts.writes_failed += 1,
                (OpKind::Write { .. }, Outcome::Indeterminate) => counts.writes_indeterminate += 1,
                (OpKind::Read, Outcome::Ok { .. }) => counts.reads_ok += 1,
                (OpKind::Read, _) => counts.reads_failed += 1,
            }
        }
        counts
    }
}

/// The result of one scenario run.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// Scenario name.
    pub scenario: String,
    /// Seed of the run (rerun with `--seed`).
    pub seed: u64,
    /// Replicas.
    pub replicas: u64,
    /// Wall time of the whole run.
    pub duration_ms: u64,
    /// Faults and heals.
    pub timeline: Vec<TimelineEvent>,
    /// Operation counts.
    pub counts: Counts,
    /// Per fault: milliseconds from its injection until a write invoked after it is
    /// acknowledged.
    pub failover_gaps_ms: Vec<u64>,
    /// Milliseconds from healing everything to every replica agreeing.
    pub converge_ms: Option<u64>,
    /// Times the scenario measured, if it measures any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub measurements: Vec<Measurement>,
    /// Broken promises.
    pub violations: Vec<Violation>,
    /// Checks that could not decide.
    pub inconclusive: Vec<String>,
    /// Where the history and data directories of a failing run are kept.
    pub kept: Option<PathBuf>,
}

impl RunReport {
    /// No promise was broken.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The report for a human.
    #[must_use]
    pub fn text(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        let _ = writeln!(
            out,
            "{verdict} {} (seed {}, {} replicas, {:.1} s)",
            self.scenario,
            self.seed,
            self.replicas,
            self.duration_ms as f64 / 1000.0
        );
        let c = &self.counts;
        let _ = writeln!(
            out,
            "  operations: writes {} ok / {} not sent / {} indeterminate, reads {} ok / {} failed, \
             rotations {} ok / {} failed, exports {} ok / {} failed, watch events {} ({} resumes), cross-domain attempts {} (all refused: {})",
            c.writes_ok,
            c.writes_failed,
            c.writes_indeterminate,
            c.reads_ok,
            c.reads_failed,
            c.publishes_ok,
            c.publishes_failed,
            c.exports_ok,
            c.exports_failed,
            c.watch_events,
            c.watch_resumes,
            c.cross_domain_attempts,
            !self
                .violations
                .iter()
                .any(|v| v.kind == crate::check::ViolationKind::CrossDomainCommit)
        );
        if !self.failover_gaps_ms.is_empty() {
            let mut sorted = self.failover_gaps_ms.clone();
            sorted.sort_unstable();
            let _ = writeln!(
                out,
                "  failover gaps (fault → first acknowledged write invoked after it): median {} ms, max {} ms over {}",
                sorted[sorted.len() / 2],
                sorted[sorted.len() - 1],
                sorted.len()
            );
        }
        match self.converge_ms {
            Some(ms) => {
                let _ = writeln!(out, "  converged {ms} ms after healing");
            }
            None => {
                let _ = writeln!(out, "  did not converge after healing");
            }
        }
        if !self.measurements.is_empty() {
            let _ = writeln!(out, "  measurements:");
            for m in &self.measurements {
                let _ = writeln!(out, "    {:>7} ms  {}", m.ms, m.name);
            }
        }
        let _ = writeln!(out, "  timeline:");
        for event in &self.timeline {
            let _ = writeln!(out, "    {:>7} ms  {}", event.at_ms, event.what);
        }
        for violation in &self.violations {
            let _ = writeln!(out, "  violation: {violation}");
        }
        for reason in &self.inconclusive {
            let _ = writeln!(out, "  inconclusive: {reason}");
        }
        if let Some(kept) = &self.kept {
            let _ = writeln!(out, "  history and data kept in {}", kept.display());
        }
        out
    }
}

/// JUnit XML for a set of runs: one test suite, one test case per run, a failure per
/// run that broke a promise.
#[must_use]
pub fn junit(reports: &[RunReport]) -> String {
    let failures = reports.iter().filter(|r| !r.passed()).count();
    let seconds: f64 = reports.iter().map(|r| r.duration_ms as f64 / 1000.0).sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuite name=\"federator-chaos\" tests=\"{}\" failures=\"{failures}\" time=\"{seconds:.3}\">",
        reports.len()
    );
    for report in reports {
        let _ = write!(
            out,
            "  <testcase classname=\"chaos\" name=\"{} (seed {})\" time=\"{:.3}\">",
            xml_escape(&report.scenario),
            report.seed,
            report.duration_ms as f64 / 1000.0
        );
        if !report.passed() {
            let message =
                report.violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            let _ = write!(
                out,
                "\n    <failure message=\"{}\">{}</failure>\n  ",
                xml_escape(&message),
                xml_escape(&report.text())
            );
        }
        let _ = write!(out, "<system-out>{}</system-out>", xml_escape(&report.text()));
        out.push_str("</testcase>\n");
    }
    out.push_str("</testsuite>\n");
    out
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::ViolationKind;

    fn report(violations: Vec<Violation>) -> RunReport {
        RunReport {
            scenario: "kill-leader".into(),
            seed: 7,
            replicas: 3,
            duration_ms: 12_345,
            timeline: vec![TimelineEvent {
                at_ms: 2_000,
                what: "SIGKILL replica 1 (leader)".into(),
            }],
            counts: Counts { writes_ok: 10, ..Counts::default() },
            failover_gaps_ms: vec![300, 100, 200],
            converge_ms: Some(40),
            measurements: vec![Measurement { name: "c down → not ready".into(), ms: 4_213 }],
            violations,
            inconclusive: Vec::new(),
            kept: None,
        }
    }

    #[test]
    fn text_shows_the_verdict_timeline_and_gaps() {
        let text = report(Vec::new()).text();
        assert!(text.starts_with("PASS kill-leader (seed 7, 3 replicas, 12.3 s)"), "{text}");
        assert!(text.contains("median 200 ms, max 300 ms over 3"), "{text}");
        assert!(text.contains("2000 ms  SIGKILL replica 1 (leader)"), "{text}");
        assert!(text.contains("4213 ms  c down → not ready"), "{text}");
    }

    #[test]
    fn json_has_measurements_only_when_there_are_some() {
        let json = serde_json::to_value(report(Vec::new())).expect("serializes");
        assert_eq!(json["measurements"][0]["ms"], 4_213, "{json}");
        let mut none = report(Vec::new());
        none.measurements.clear();
        let json = serde_json::to_value(none).expect("serializes");
        assert!(json.get("measurements").is_none(), "{json}");
    }

    #[test]
    fn junit_has_a_failure_per_failing_run_and_escapes_text() {
        let bad = report(vec![Violation::new(ViolationKind::LostWrite, "key <k> & \"v\" lost")]);
        let xml = junit(&[report(Vec::new()), bad]);
        assert!(xml.contains("tests=\"2\" failures=\"1\""), "{xml}");
        assert!(xml.contains("key &lt;k&gt; &amp; &quot;v&quot; lost"), "{xml}");
        assert_eq!(xml.matches("<failure").count(), 1, "{xml}");
        assert_eq!(xml.matches("<testcase").count(), 2, "{xml}");
    }
}
