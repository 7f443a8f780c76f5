//! Where a Federator write's time goes: the replicas' `write_step_seconds` and
//! `follower_append_step_seconds` histograms (see `federator_raft::timeline`), read
//! before and after a load phase, turned into the mean time from a write reaching the
//! leader's proposer to each step of its log entry, and a table of the time between
//! steps with what happens there.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::text::{aligned_table, wrap};

/// The leader's histogram (`raft_write_step_seconds`) as exposed by a replica.
const LEADER_METRIC: &str = "federator_raft_write_step_seconds";
/// A follower's histogram (`raft_follower_append_step_seconds`).
const FOLLOWER_METRIC: &str = "federator_raft_follower_append_step_seconds";

/// The leader's steps, with what happens before each. A leader writes its own copy while
/// it replicates the entry, so `durable` falls between `sent` and `applying` (or after
/// `acked`); the rows are put in the order of their means.
const LEADER_STEPS: [(&str, &str); 9] = [
    ("dispatched", "the proposer takes the write into a batch and hands it to raft core"),
    ("appending", "raft core takes the entry, gives it an index, hands it to the log store"),
    (
        "writing",
        "the leader's log writer thread wakes and takes the entry's batch off its queue (after any batch or checkpoint it was writing)",
    ),
    (
        "durable",
        "the leader's log writer commits it to redb and writes it to its redo file, durably, beside replication",
    ),
    ("sent", "raft core hands the entry to its replication task, which sends AppendEntries"),
    ("acked", "the transport to a follower and back, and the follower's work (below)"),
    (
        "applying",
        "raft core counts the quorum, commits, hands the entry to the state machine, which \
         waits for the leader's copy to be durable",
    ),
    ("applied", "the state machine applies the entry's commands"),
    ("answered", "raft core answers the proposer, which wakes the writer's task"),
];
/// A follower's steps of one AppendEntries, from its arrival.
const FOLLOWER_STEPS: [(&str, &str); 4] = [
    (
        "appending",
        "the follower's raft core checks the request and hands the entries to its log store",
    ),
    (
        "writing",
        "the follower's log writer thread wakes and takes the batch off its queue (after any batch or checkpoint it was writing)",
    ),
    (
        "durable",
        "the follower's log writer commits them to redb and writes them to its redo file, durably",
    ),
    ("answered", "raft core learns of the flush and the answer goes back"),
];

/// Sums and counts of both histograms, summed over the replicas, per step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepTotals {
    leader: BTreeMap<String, (f64, u64)>,
    follower: BTreeMap<String, (f64, u64)>,
}

impl StepTotals {
    /// Adds the step histograms of one replica's Prometheus text exposition.
    pub fn add_exposition(&mut self, text: &str) {
        for line in text.lines() {
            for (metric, totals) in
                [(LEADER_METRIC, &mut self.leader), (FOLLOWER_METRIC, &mut self.follower)]
            {
                let Some((field, step, value)) = parse_line(line, metric) else { continue };
                let entry = totals.entry(step.to_string()).or_default();
                match field {
                    Field::Sum => entry.0 += value,
                    Field::Count => entry.1 += value as u64,
                }
            }
        }
    }

    /// The means of what was observed after `before` until `self`.
    #[must_use]
    pub fn since(&self, before: &Self) -> StepMeans {
        let means = |after: &BTreeMap<String, (f64, u64)>,
                     before: &BTreeMap<String, (f64, u64)>,
                     steps: &[(&str, &str)]| {
            steps
                .iter()
                .map(|(step, _)| {
                    let (sum, count) = after.get(*step).copied().unwrap_or_default();
                    let (sum0, count0) = before.get(*step).copied().unwrap_or_default();
                    let n = count.saturating_sub(count0);
                    let mean = (n > 0).then(|| (sum - sum0) / n as f64 * 1e3);
                    (mean, n)
                })
                .collect()
        };
        StepMeans {
            leader: means(&self.leader, &before.leader, &LEADER_STEPS),
            follower: means(&self.follower, &before.follower, &FOLLOWER_STEPS),
        }
    }
}

enum Field {
    Sum,
    Count,
}

/// `metric_sum{step="x"} 1.5` or `metric_count{step="x"} 3` → (field, step, value).
fn parse_line<'a>(line: &'a str, metric: &str) -> Option<(Field, &'a str, f64)> {
    let rest = line.strip_prefix(metric)?;
    let (field, rest) = if let Some(rest) = rest.strip_prefix("_sum{") {
        (Field::Sum, rest)
    } else {
        (Field::Count, rest.strip_prefix("_count{")?)
    };
    let rest = rest.strip_prefix("step=\"")?;
    let (step, rest) = rest.split_once('"')?;
    let value = rest.strip_prefix('}')?.split_whitespace().next()?.parse().ok()?;
    Some((field, step, value))
}

/// Mean milliseconds from a write reaching the leader's proposer to each step (and from
/// an AppendEntries arriving at a follower to each of its steps), with how many entries
/// were observed; in the order of [`LEADER_STEPS`] and [`FOLLOWER_STEPS`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepMeans {
    leader: Vec<(Option<f64>, u64)>,
    follower: Vec<(Option<f64>, u64)>,
}

impl StepMeans {
    /// Whether any leader step was observed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.leader.iter().all(|(mean, _)| mean.is_none())
    }

    /// Rows of the breakdown: step, mean since the proposer (ms), time in the step (ms),
    /// what happens in it; then the follower's steps, then what lies outside the raft
    /// layer given the clients' mean latency `client_mean_ms`.
    #[must_use]
    pub fn rows(&self, client_mean_ms: Option<f64>) -> Vec<[String; 4]> {
        let mut rows = side_rows("leader", &LEADER_STEPS, &self.leader);
        rows.extend(side_rows("follower", &FOLLOWER_STEPS, &self.follower));
        let answered = self.leader.last().and_then(|(mean, _)| *mean);
        if let (Some(client), Some(answered)) = (client_mean_ms, answered) {
            rows.push([
                "outside raft".into(),
                "-".into(),
                format!("{:.3}", client - answered),
                format!(
                    "the client's mean latency ({client:.3} ms) less the leader's `answered`: \
                     the client, gRPC and mTLS both ways, the admin API's authorization and \
                     handler"
                ),
            ]);
        }
        rows
    }

    /// The transport's share of the leader's `sent` → `acked`: that span less the
    /// follower's whole answer.
    #[must_use]
    pub fn transport_ms(&self) -> Option<f64> {
        let at = |step: &str| {
            LEADER_STEPS.iter().position(|(s, _)| *s == step).and_then(|i| self.leader.get(i)?.0)
        };
        let follower = self.follower.last()?.0?;
        Some(at("acked")? - at("sent")? - follower)
    }

    /// The breakdown as a markdown table.
    #[must_use]
    pub fn markdown(&self, client_mean_ms: Option<f64>) -> String {
        let mut out = String::from(
            "| step | mean since the write reached the leader (ms) | time in this step (ms) | what happens |\n|---|--:|--:|---|\n",
        );
        for row in self.rows(client_mean_ms) {
            let _ = writeln!(out, "| {} | {} | {} | {} |", row[0], row[1], row[2], row[3]);
        }
        if let Some(transport) = self.transport_ms() {
            let _ = writeln!(
                out,
                "\n{}",
                wrap(
                    &format!(
                        "Of the leader's `sent` → `acked`, the follower's answer takes its \
                         `answered` above and the transport (encoding, mTLS, loopback, both \
                         ways) the rest: {transport:.3} ms. Follower times run from the \
                         request's arrival."
                    ),
                    90
                )
            );
        }
        out
    }

    /// The breakdown as an aligned text table.
    #[must_use]
    pub fn text(&self, client_mean_ms: Option<f64>) -> String {
        let rows: Vec<[String; 5]> = self
            .rows(client_mean_ms)
            .into_iter()
            .map(|[a, b, c, d]| [a, b, c, d, String::new()])
            .collect();
        aligned_table(["step", "since start (ms)", "in step (ms)", "what happens", ""], &rows)
    }
}

/// One row per observed step of one side (`leader`, `follower`), in the order of their
/// means: its mean since the start and the time since the step before it.
fn side_rows(side: &str, steps: &[(&str, &str)], means: &[(Option<f64>, u64)]) -> Vec<[String; 4]> {
    let mut observed: Vec<(&str, &str, f64)> = steps
        .iter()
        .zip(means)
        .filter_map(|((step, what), (mean, _))| Some((*step, *what, (*mean)?)))
        .collect();
    observed.sort_by(|a, b| a.2.total_cmp(&b.2));
    let mut previous = 0.0;
    let mut rows = Vec::new();
    for (step, what, mean) in observed {
        rows.push([
            format!("{side}: {step}"),
            format!("{mean:.3}"),
            format!("{:.3}", mean - previous),
            what.to_string(),
        ]);
        previous = mean;
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(leader: &[(&str, f64, u64)], follower: &[(&str, f64, u64)]) -> String {
        let mut text = String::from("# HELP federator_raft_term x\nfederator_raft_term 3\n");
        for (metric, steps) in [(LEADER_METRIC, leader), (FOLLOWER_METRIC, follower)] {
            for (step, sum, count) in steps {
                let _ = writeln!(text, "{metric}_sum{{step=\"{step}\"}} {sum}");
                let _ = writeln!(text, "{metric}_count{{step=\"{step}\"}} {count}");
                let _ = writeln!(text, "{metric}_bucket{{le=\"0.001\",step=\"{step}\"}} {count}");
            }
        }
        text
    }

    #[test]
    fn means_are_of_the_observations_between_two_readings() {
        let mut before = StepTotals::default();
        before.add_exposition(&exposition(&[("dispatched", 0.001, 10)], &[]));
        let mut after = StepTotals::default();
        after.add_exposition(&exposition(
            &[("dispatched", 0.003, 20), ("durable", 0.005, 10)],
            &[("durable", 0.004, 8)],
        ));
        // A second replica's exposition adds up.
        after.add_exposition(&exposition(&[], &[("durable", 0.004, 8)]));
        let means = after.since(&before);
        assert!(!means.is_empty());
        let dispatched = means.leader[0].0.expect("dispatched observed");
        assert!((dispatched - 0.2).abs() < 1e-9, "{dispatched}");
        let durable = means.leader[3].0.expect("durable observed");
        assert!((durable - 0.5).abs() < 1e-9, "{durable}");
        assert_eq!(means.leader[1], (None, 0));
        assert_eq!(means.follower[2].1, 16);
    }

    #[test]
    fn rows_give_the_time_between_steps_and_what_lies_outside_raft() {
        let mut after = StepTotals::default();
        after.add_exposition(&exposition(
            &[
                ("dispatched", 0.01, 100),
                ("sent", 0.06, 100),
                ("acked", 0.1, 100),
                ("answered", 0.15, 100),
            ],
            &[("answered", 0.03, 100)],
        ));
        let means = after.since(&StepTotals::default());
        let rows = means.rows(Some(2.0));
        let cells: Vec<(&str, &str)> =
            rows.iter().map(|r| (r[0].as_str(), r[2].as_str())).collect();
        assert_eq!(
            cells,
            [
                ("leader: dispatched", "0.100"),
                ("leader: sent", "0.500"),
                ("leader: acked", "0.400"),
                ("leader: answered", "0.500"),
                ("follower: answered", "0.300"),
                ("outside raft", "0.500"),
            ]
        );
        let transport = means.transport_ms().expect("both sides observed");
        assert!((transport - 0.1).abs() < 1e-9, "{transport}");
        assert!(means.markdown(Some(2.0)).contains("| leader: sent | 0.600 | 0.500 |"));
    }

    #[test]
    fn lines_of_other_metrics_and_garbage_are_ignored() {
        let mut totals = StepTotals::default();
        totals.add_exposition(
            "federator_raft_write_step_seconds_sum{step=\"x\"} nope\n\
             federator_raft_write_step_seconds_sum{step=\"x\" 1\n\
             federator_raft_write_step_seconds_bucket{le=\"1\",step=\"x\"} 1\n\
             federator_raft_write_step_seconds_total 5\n\
             other_sum{step=\"x\"} 1\n",
        );
        assert_eq!(totals, StepTotals::default());
    }
}
