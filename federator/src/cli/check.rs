//! `federator check`: what an operator must see, as grouped `√`/`‼`/`×` lines with a hint
//! for every problem, and a non-zero exit when something has failed.
//!
//! Groups: the replica group (quorum, leader, lag), certificates (the operator's CA and
//! certificate files, every replica's serving certificate, every member's CAs), members
//! (lease freshness), bundles (propagation of the newest sequence to every member) and,
//! when asked, local agents (status file, connection, sinks, export problems) and disks
//! (how long a durable log append takes in a data directory).
//!
//! With --disk and no endpoint, only the local checks run (the disks, and agents and
//! certificate files when given): a disk can be checked before any replica exists.
//!
//! `‼` (warning) does not fail the check: a certificate that expires soon, an unreachable
//! minority replica, a rotation still propagating. `×` does.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use federator_proto::admin as pb;
use serde::Serialize;

use super::client::{Connection, ConnectionArgs, status_error};
use super::output::{self, OutputFormat, Text, print};
use super::status;

mod agents;
mod certs;
mod disk;
mod group;
mod members;

use agents::check_agent;
use certs::{check_cert_files, check_replica_certs};
use disk::check_disk;
use group::check_group;
use members::{check_bundle, check_members};

/// `federator check`'s flags (its help text is on the subcommand in `cli.rs`).
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Keep checking until every check passes, for at most this long (`30s`, `5m`);
    /// prints the last result either way.
    #[arg(long, value_parser = super::trust::parse_duration_secs)]
    wait: Option<u64>,
    /// Also check the agent whose state directory is DIR (repeatable).
    #[arg(long = "agent-state-dir", value_name = "DIR")]
    agent_state_dirs: Vec<PathBuf>,
    /// Also time durable log appends in DIR, a replica's data directory or where one will
    /// be (repeatable); alone, without --endpoints, only the local checks run.
    #[arg(long = "disk", value_name = "DIR")]
    disks: Vec<PathBuf>,
    /// Warn about certificates that expire within this many days.
    #[arg(long, default_value_t = 30)]
    expiry_warning_days: u64,
    /// A replica more than this many log entries behind the leader fails.
    #[arg(long, default_value_t = 1000)]
    max_lag: u64,
    /// A bundle sequence not yet applied by every member after this long fails (`10m`);
    /// younger rotations are warnings.
    #[arg(long, default_value = "10m", value_parser = super::trust::parse_duration_secs)]
    propagation_timeout: u64,
}

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Fine.
    Pass,
    /// Works, but needs attention soon.
    Warn,
    /// Broken.
    Fail,
}

impl Outcome {
    fn mark(self) -> &'static str {
        match self {
            Self::Pass => "√",
            Self::Warn => "‼",
            Self::Fail => "×",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `replicas`, `certificates`, `members`, `bundles`, `agents` or `disk`.
    pub group: &'static str,
    /// The outcome.
    pub outcome: Outcome,
    /// What was found.
    pub detail: String,
    /// What to do about it (for warnings and failures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// No check failed.
    pub ok: bool,
    /// Checks passed, warned, failed.
    pub passed: usize,
    /// Warnings.
    pub warnings: usize,
    /// Failures.
    pub failed: usize,
    /// Every check, grouped in order.
    pub checks: Vec<Check>,
}

/// The order groups are printed in.
const GROUPS: [&str; 6] = ["replicas", "certificates", "members", "bundles", "agents", "disk"];

/// Collects checks.
#[derive(Default)]
struct Checks(Vec<Check>);

impl Checks {
    fn add(&mut self, group: &'static str, outcome: Outcome, detail: String, hint: Option<&str>) {
        self.0.push(Check { group, outcome, detail, hint: hint.map(str::to_string) });
    }
    fn pass(&mut self, group: &'static str, detail: String) {
        self.add(group, Outcome::Pass, detail, None);
    }
    fn warn(&mut self, group: &'static str, detail: String, hint: &str) {
        self.add(group, Outcome::Warn, detail, Some(hint));
    }
    fn fail(&mut self, group: &'static str, detail: String, hint: &str) {
        self.add(group, Outcome::Fail, detail, Some(hint));
    }
}

/// Runs `federator check`.
///
/// # Errors
/// Only when the report cannot be printed; an unreachable federation is a failed check.
pub async fn run(
    args: CheckArgs,
    connection_args: &ConnectionArgs,
    out: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let deadline = args.wait.map(|w| tokio::time::Instant::now() + Duration::from_secs(w));
    let report = loop {
        let report = check_once(&args, connection_args).await;
        match deadline {
            Some(deadline) if !report.ok && tokio::time::Instant::now() < deadline => {
                if matches!(out, OutputFormat::Table | OutputFormat::Wide) {
                    let failing: Vec<&str> = report
                        .checks
                        .iter()
                        .filter(|c| c.outcome == Outcome::Fail)
                        .map(|c| c.detail.as_str())
                        .collect();
                    output::eprint_line(format_args!("waiting: {}", failing.join("; ")));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            _ => break report,
        }
    };
    print(out, &report, |r| print!("{}", render(r)))?;
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

impl CheckArgs {
    /// The default checks, with the agents in `agent_state_dirs` (for a support bundle).
    pub(super) fn gathering(agent_state_dirs: &[PathBuf]) -> Self {
        Self {
            wait: None,
            agent_state_dirs: agent_state_dirs.to_vec(),
            disks: Vec::new(),
            expiry_warning_days: 30,
            max_lag: 1000,
            propagation_timeout: 600,
        }
    }
}

/// One round of every check.
pub(super) async fn check_once(args: &CheckArgs, connection_args: &ConnectionArgs) -> Report {
    let mut checks = Checks::default();
    let now = crate::clock::unix_now();
    let local_only = !args.disks.is_empty()
        && connection_args.endpoints.iter().all(|endpoint| endpoint.trim().is_empty());
    if !local_only {
        match Connection::new(connection_args) {
            Ok(connection) => check_federation(args, &connection, now, &mut checks).await,
            Err(error) => checks.fail(
                "replicas",
                format!("cannot reach the federation: {error:#}"),
                "pass --endpoints and --ca/--cert/--key (or source the env file of `federator dev --dir`)",
            ),
        }
    }
    check_cert_files(args, connection_args, now, &mut checks);
    for dir in &args.agent_state_dirs {
        check_agent(dir, crate::clock::unix_now_ms(), &mut checks);
    }
    // One directory after the other: probes at once would slow each other down.
    for dir in &args.disks {
        check_disk(dir, &mut checks).await;
    }
    report(checks.0)
}

fn report(mut checks: Vec<Check>) -> Report {
    checks.sort_by_key(|c| GROUPS.iter().position(|g| *g == c.group).unwrap_or(GROUPS.len()));
    let count = |o: Outcome| checks.iter().filter(|c| c.outcome == o).count();
    let (passed, warnings, failed) =
        (count(Outcome::Pass), count(Outcome::Warn), count(Outcome::Fail));
    Report { ok: failed == 0, passed, warnings, failed, checks }
}

/// The report for people.
pub(super) fn render(report: &Report) -> String {
    let mut text = Text::new();
    let mut group = "";
    for check in &report.checks {
        if check.group != group {
            group = check.group;
            text.line(group);
        }
        text.line(format_args!("  {} {}", check.outcome.mark(), check.detail));
        if let Some(hint) = &check.hint {
            text.line(format_args!("      hint: {hint}"));
        }
    }
    text.line(format_args!(
        "{}: {} passed, {} warning{}, {} failed",
        if report.ok { "healthy" } else { "UNHEALTHY" },
        report.passed,
        report.warnings,
        if report.warnings == 1 { "" } else { "s" },
        report.failed
    ));
    text.into()
}

// === the federation: replica group, certificates, members and bundles ===

async fn check_federation(
    args: &CheckArgs,
    connection: &Connection,
    now: i64,
    checks: &mut Checks,
) {
    let view = match status::collect(connection).await {
        Ok(view) => view,
        Err(error) => {
            checks.fail(
                "replicas",
                format!("no replica answers: {error:#}"),
                "start the replicas (`federator server --config ...`) or fix --endpoints",
            );
            return;
        }
    };
    check_group(args, &view, checks);
    check_replica_certs(args, connection, &view, now, checks).await;
    if view.leader.is_none() {
        // Member and bundle reads are linearizable: they need a leader.
        return;
    }
    let mut admin = match connection.leader().await {
        Ok(admin) => admin,
        Err(error) => {
            checks.fail(
                "members",
                format!("cannot reach the leader: {error:#}"),
                "check the leader's log",
            );
            return;
        }
    };
    let clusters = match admin.list_clusters(pb::ListClustersRequest::default()).await {
        Ok(r) => r.into_inner().clusters,
        Err(status) => {
            checks.fail(
                "members",
                format!("cannot list member clusters: {}", status_error(status)),
                "check the leader's log",
            );
            return;
        }
    };
    check_members(&clusters, now, checks);
    for cluster in &clusters {
        check_bundle(args, &mut admin, cluster, clusters.len(), now, checks).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_fails_only_on_failures_and_groups_in_order() {
        let mut checks = Checks::default();
        checks.warn("bundles", "rotating".into(), "wait");
        checks.pass("replicas", "quorum".into());
        let r = report(checks.0.clone());
        assert!(r.ok);
        assert_eq!(r.checks[0].group, "replicas");
        checks.fail("members", "lease expired".into(), "restart the agent");
        let r = report(checks.0);
        assert!(!r.ok);
        let text = render(&r);
        assert!(text.contains("× lease expired\n      hint: restart the agent"), "{text}");
        assert!(text.contains("UNHEALTHY: 1 passed, 1 warning, 1 failed"), "{text}");
        assert!(text.find("replicas").unwrap_or(usize::MAX) < text.find("members").unwrap_or(0));
    }

    #[test]
    fn hostile_details_and_hints_stay_on_their_line() {
        let hostile = "\n\x1b]0;pwned\x07\x1b[1A";
        let mut checks = Checks::default();
        checks.fail("members", format!("{hostile}: lease expired"), hostile);
        let text = render(&report(checks.0));
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(!text.contains(|c: char| c.is_control() && c != '\n'), "{text:?}");
        assert!(text.contains(r"  × \n\x1b]0;pwned\x07\x1b[1A: lease expired"), "{text}");
    }
}
