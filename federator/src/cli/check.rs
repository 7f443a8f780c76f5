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

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use federator_proto::admin as pb;
use serde::Serialize;

use super::client::{Connection, ConnectionArgs, status_error};
use super::output::{self, OutputFormat, Text, print};
use super::status::{self, GroupView};
use crate::agent::AgentStatus;
use crate::bundle::{ValidationPolicy, parse_spiffe_bundle};

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

// === the replica group ===

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

/// Replica ids as `1, 2, 3`.
fn join_ids(ids: &[u64]) -> String {
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    ids.join(", ")
}

fn check_group(args: &CheckArgs, view: &GroupView, checks: &mut Checks) {
    let unreachable: Vec<String> = view
        .replicas
        .iter()
        .filter(|r| !r.reachable)
        .map(|r| format!("{} ({})", r.id, r.error.as_deref().unwrap_or("unreachable")))
        .collect();
    let quorum = format!("quorum: {}/{} voters answer", view.voters_up, view.voters);
    if !view.quorum {
        checks.fail(
            "replicas",
            quorum,
            "no writes and no linearizable reads until a majority is back: restart the replicas that are down",
        );
    } else if view.voters_up < view.voters {
        checks.warn(
            "replicas",
            quorum,
            "one more failure may cost the quorum: restart the replicas that are down",
        );
    } else {
        checks.pass("replicas", quorum);
    }
    for replica in &unreachable {
        checks.warn(
            "replicas",
            format!("replica {replica}"),
            "look at its log, restart it; `federator raft status` shows the group",
        );
    }
    let stopped: Vec<u64> = view
        .replicas
        .iter()
        .filter(|r| r.reachable && r.role.as_deref() == Some("shutdown"))
        .map(|r| r.id)
        .collect();
    for id in &stopped {
        checks.warn(
            "replicas",
            format!("replica {id} answers but its raft core stopped (stopping, or a storage error)"),
            "it is leaving service: if it does not exit within seconds, look at its log for a storage error",
        );
    }
    match view.leader {
        Some(leader) => checks.pass("replicas", format!("leader: replica {leader}, term {}", view.term)),
        None if !stopped.is_empty() && view.quorum => checks.fail(
            "replicas",
            format!("no leader (term {}): replica {} stopping", view.term, join_ids(&stopped)),
            "a stopping leader steps down: the others elect a successor within about three election timeouts; check again",
        ),
        None => checks.fail(
            "replicas",
            format!("no leader (term {})", view.term),
            "an election is under way or there is no quorum; if it persists, check the replicas' clocks and network",
        ),
    }
    let lagging: Vec<String> = view
        .replicas
        .iter()
        .filter(|r| r.lag.is_some_and(|l| l > args.max_lag))
        .map(|r| format!("replica {} is {} entries behind", r.id, r.lag.unwrap_or(0)))
        .collect();
    let max_lag = view.replicas.iter().filter_map(|r| r.lag).max().unwrap_or(0);
    if lagging.is_empty() {
        if view.leader.is_some() {
            checks.pass("replicas", format!("replication lag: at most {max_lag} entries"));
        }
    } else {
        checks.fail(
            "replicas",
            lagging.join(", "),
            "a replica that does not catch up gets a snapshot; check its disk and network (`federator raft status`)",
        );
    }
    check_digests(view, checks);
    check_versions(view, checks);
}

/// Voters of different builds are a rolling upgrade in progress: fine for a while, but
/// features that need the newer command kinds wait until the last voter is upgraded.
fn check_versions(view: &GroupView, checks: &mut Checks) {
    let voters: Vec<&status::ReplicaRow> =
        view.replicas.iter().filter(|r| r.membership == "voter").collect();
    let known: Vec<(u64, u32)> =
        voters.iter().filter_map(|r| r.command_version.map(|v| (r.id, v))).collect();
    let (Some(lowest), Some(highest)) =
        (known.iter().map(|(_, v)| *v).min(), known.iter().map(|(_, v)| *v).max())
    else {
        return;
    };
    if lowest == highest {
        checks.pass(
            "replicas",
            format!(
                "cluster version {lowest}: every voter that answered applies the same commands"
            ),
        );
        return;
    }
    let behind: Vec<String> = known
        .iter()
        .filter(|(_, v)| *v < highest)
        .map(|(id, v)| format!("replica {id} ({v})"))
        .collect();
    checks.warn(
        "replicas",
        format!(
            "mixed versions: cluster version {lowest}, newest {highest}; behind: {}",
            behind.join(", ")
        ),
        "a rolling upgrade is under way: features that need the newer version are refused until these replicas are upgraded (docs/upgrading.md)",
    );
}

/// Replicas that report a state digest at the same applied index must report the same
/// one: the state machine is deterministic, so a difference means a replica's state is
/// corrupt.
fn check_digests(view: &GroupView, checks: &mut Checks) {
    let mut by_index: std::collections::BTreeMap<u64, Vec<(u64, &str)>> =
        std::collections::BTreeMap::new();
    for r in &view.replicas {
        if let (Some(digest), Some(index)) = (r.state_digest.as_deref(), r.digest_index)
            && !digest.is_empty()
        {
            by_index.entry(index).or_default().push((r.id, digest));
        }
    }
    let compared: Vec<(u64, &Vec<(u64, &str)>)> =
        by_index.iter().filter(|(_, rs)| rs.len() > 1).map(|(i, rs)| (*i, rs)).collect();
    let diverged: Vec<String> = compared
        .iter()
        .filter(|(_, rs)| rs.iter().any(|(_, d)| *d != rs[0].1))
        .map(|(index, rs)| {
            let parts: Vec<String> = rs
                .iter()
                .map(|(id, d)| format!("replica {id} {}", &d[..d.len().min(12)]))
                .collect();
            format!("at index {index}: {}", parts.join(", "))
        })
        .collect();
    if !diverged.is_empty() {
        checks.fail(
            "replicas",
            format!("state digests differ {}", diverged.join("; ")),
            "a replica's state is corrupt: stop it, move its data directory away and add it back empty (it gets a snapshot)",
        );
    } else if let Some((index, rs)) = compared.last() {
        checks.pass(
            "replicas",
            format!("state digests agree ({} replicas at index {index})", rs.len()),
        );
    }
}

// === certificates ===

/// Checks one certificate's expiry.
fn check_expiry(
    args: &CheckArgs,
    what: &str,
    not_after: i64,
    now: i64,
    hint: &str,
    checks: &mut Checks,
) {
    let left = not_after - now;
    let days = left / 86_400;
    if left <= 0 {
        checks.fail("certificates", format!("{what} expired {} days ago", -days), hint);
    } else if u64::try_from(days).unwrap_or(0) < args.expiry_warning_days {
        checks.warn("certificates", format!("{what} expires in {}", human_duration(left)), hint);
    } else {
        checks.pass("certificates", format!("{what} valid for {days} more days"));
    }
}

fn human_duration(secs: i64) -> String {
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 3600 => format!("{} hours", s / 3600),
        s => format!("{} minutes", s.max(0) / 60),
    }
}

/// Expiry (unix seconds) of the first certificate of a PEM file.
fn pem_file_not_after(path: &std::path::Path) -> anyhow::Result<i64> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let text = std::fs::read(path)?;
    let der = CertificateDer::pem_slice_iter(&text)
        .next()
        .ok_or_else(|| anyhow::anyhow!("no CERTIFICATE block"))??;
    der_not_after(&der)
}

fn der_not_after(der: &[u8]) -> anyhow::Result<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

fn check_cert_files(
    args: &CheckArgs,
    connection_args: &ConnectionArgs,
    now: i64,
    checks: &mut Checks,
) {
    let files = [
        (
            &connection_args.ca,
            "federation CA",
            "renew the CA (`federator certs`) and roll it to every replica and agent before it expires",
        ),
        (
            &connection_args.cert,
            "admin certificate",
            "issue a new admin certificate with `federator certs`",
        ),
    ];
    for (path, what, hint) in files {
        let Some(path) = path else { continue };
        let what = format!("{what} ({})", path.display());
        match pem_file_not_after(path) {
            Ok(not_after) => check_expiry(args, &what, not_after, now, hint, checks),
            Err(error) => checks.fail("certificates", format!("{what}: {error:#}"), hint),
        }
    }
}

/// Every reachable replica's serving certificate, from a TLS handshake with it.
async fn check_replica_certs(
    args: &CheckArgs,
    connection: &Connection,
    view: &GroupView,
    now: i64,
    checks: &mut Checks,
) {
    let Some(tls) = connection.tls_config() else { return };
    let connector = federator_raft::tls::connector(tls);
    for replica in view.replicas.iter().filter(|r| r.reachable && !r.api_addr.is_empty()) {
        let what = format!("replica {} certificate", replica.id);
        let hint = "issue a new replica certificate (`federator certs`); replicas reload it without a restart";
        let result = async {
            let uri: http::Uri = format!("https://{}", replica.api_addr).parse()?;
            let stream =
                tokio::time::timeout(Duration::from_secs(3), connector.connect(&uri)).await??;
            let leaf = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or_else(|| anyhow::anyhow!("no certificate presented"))?;
            der_not_after(leaf)
        }
        .await;
        match result {
            Ok(not_after) => check_expiry(args, &what, not_after, now, hint, checks),
            Err(error) => checks.warn("certificates", format!("{what}: {error:#}"), hint),
        }
    }
}

// === members and bundles ===

fn check_members(clusters: &[pb::Cluster], now: i64, checks: &mut Checks) {
    if clusters.is_empty() {
        checks.warn(
            "members",
            "no member cluster has joined".into(),
            "create a join token (`federator token create CLUSTER --trust-domain TD`) and start that cluster's agent",
        );
        return;
    }
    for cluster in clusters {
        let name = &cluster.name;
        match &cluster.lease {
            Some(lease) if lease.state == "live" => {
                let heard = u64::try_from(lease.last_keepalive_ms)
                    .map_or_else(|_| "unknown".into(), super::services::ms_ago);
                checks.pass(
                    "members",
                    format!("{name}: lease {} live (ttl {}s), last keep-alive {heard}", lease.id, lease.ttl_seconds),
                );
            }
            Some(lease) => checks.fail(
                "members",
                format!(
                    "{name}: lease {} {}{}; its endpoints are not ready anywhere",
                    lease.id,
                    lease.state,
                    if lease.ended_at > 0 {
                        format!(" {} ago", human_duration(now - lease.ended_at))
                    } else {
                        String::new()
                    }
                ),
                "the cluster's agent is down or cannot reach any replica: `federator agent status --state-dir ...` on that cluster",
            ),
            None => checks.warn(
                "members",
                format!("{name}: no lease (its agent never took one)"),
                "start the cluster's agent; until it holds a lease its exports are not ready",
            ),
        }
    }
}

async fn check_bundle(
    args: &CheckArgs,
    admin: &mut federator_proto::admin::admin_client::AdminClient<tonic::transport::Channel>,
    cluster: &pb::Cluster,
    members: usize,
    now: i64,
    checks: &mut Checks,
) {
    let td = &cluster.trust_domain;
    let request = pb::BundleStatusRequest { trust_domain: td.clone(), ..Default::default() };
    match admin.bundle_status(request).await {
        Ok(status) => {
            let status = status.into_inner();
            let behind: Vec<String> = status
                .members
                .iter()
                .filter(|m| m.applied_sequence < status.sequence)
                .map(|m| m.cluster.clone())
                .collect();
            let applied = status.members.len() - behind.len();
            let age = now - status.updated_at;
            if status.complete || members <= 1 {
                checks.pass(
                    "bundles",
                    format!("{td}: sequence {} applied by every member", status.sequence),
                );
            } else {
                let detail = format!(
                    "{td}: sequence {} applied by {applied}/{} members for {} (waiting: {})",
                    status.sequence,
                    status.members.len(),
                    human_duration(age),
                    behind.join(", ")
                );
                let hint = "do not sign with the new key yet; check those clusters' agents (sinks, acks) with `federator agent status`";
                if age > i64::try_from(args.propagation_timeout).unwrap_or(i64::MAX) {
                    checks.fail("bundles", detail, hint);
                } else {
                    checks.warn("bundles", detail, hint);
                }
            }
        }
        Err(status) => checks.fail(
            "bundles",
            format!("{td}: cannot read its propagation: {}", status_error(status)),
            "check the leader's log",
        ),
    }
    // The member's CAs: a federated CA that expires breaks every cross-cluster call.
    let request = pb::GetBundleRequest { trust_domain: td.clone(), ..Default::default() };
    let Ok(bundle) = admin.get_bundle(request).await else { return };
    let bundle = bundle.into_inner();
    // Validated as of when the federation accepted it: a CA that expired since must still
    // parse, to be reported.
    let policy = ValidationPolicy::at(bundle.updated_at);
    let Ok(parsed) = parse_spiffe_bundle(td, bundle.document.as_bytes(), &policy) else {
        return;
    };
    if let Some(not_after) = parsed.x509_authorities.iter().map(|a| a.not_after).max() {
        check_expiry(
            args,
            &format!("{td} CA (newest of {})", parsed.x509_authorities.len()),
            not_after,
            now,
            "the member must rotate its CA: add the new CA to its bundle, wait for every member to apply it, then sign with it",
            checks,
        );
    }
}

// === agents ===

fn check_agent(dir: &std::path::Path, now_ms: i64, checks: &mut Checks) {
    let path = dir.join("status.json");
    let status: AgentStatus = match std::fs::read_to_string(&path)
        .map_err(anyhow::Error::from)
        .and_then(|text| serde_json::from_str(&text).map_err(Into::into))
    {
        Ok(status) => status,
        Err(error) => {
            checks.fail(
                "agents",
                format!("agent at {}: no status ({error})", dir.display()),
                "is the agent running with this state_dir?",
            );
            return;
        }
    };
    for check in agent_checks(&status, now_ms) {
        checks.0.push(check);
    }
}

/// The checks of one agent's status.
fn agent_checks(s: &AgentStatus, now_ms: i64) -> Vec<Check> {
    let mut checks = Checks::default();
    let who = if s.cluster.is_empty() {
        "agent (not joined)".to_string()
    } else {
        format!("agent of {}", s.cluster)
    };
    if s.is_too_old(now_ms) {
        checks.fail(
            "agents",
            format!(
                "{who}: status not written for {}s (stale: older than {}s, the lease TTL); its \
                 lease may have expired",
                (now_ms - s.written_at_ms) / 1000,
                s.stale_after_ms() / 1000
            ),
            "the agent is not running or stuck: its sinks serve the last applied view; restart it",
        );
        return checks.0;
    }
    match &s.connected_replica {
        Some(replica) => checks.pass("agents", format!("{who}: connected to {replica}, revision {}", s.applied_revision)),
        None => checks.fail(
            "agents",
            format!(
                "{who}: not connected{}",
                s.last_error.as_ref().map_or_else(String::new, |e| format!(" ({e})"))
            ),
            "it serves the last applied view; check that it can reach a replica and that its SVID is valid",
        ),
    }
    match &s.lease {
        Some(lease) if s.lease_is_live(now_ms) => checks.pass(
            "agents",
            format!("{who}: lease {} live (ttl {}s)", lease.id, lease.ttl_seconds),
        ),
        Some(lease) => checks.fail(
            "agents",
            format!(
                "{who}: lease {} not renewed: last keep-alive {}, {} failed since (ttl {}s)",
                lease.id,
                lease.last_keepalive_ms.map_or_else(
                    || "never".to_string(),
                    |at| format!("{}s ago", (now_ms - at).max(0) / 1000)
                ),
                lease.failed_keepalives,
                lease.ttl_seconds
            ),
            "the agent cannot renew its lease through the replica it uses: see its log and `federator agent status`",
        ),
        None => checks.fail(
            "agents",
            format!("{who}: holds no lease: this cluster's endpoints are not ready anywhere"),
            "see the agent's log and `federator agent status`",
        ),
    }
    if s.bundle.problem.is_none() && !s.own_bundle_published() {
        checks.fail(
            "agents",
            format!(
                "{who}: own bundle sequence {} not published (the federation holds {})",
                s.bundle.sequence.map_or_else(|| "-".into(), |v| v.to_string()),
                s.bundle.published_sequence.map_or_else(|| "-".into(), |v| v.to_string())
            ),
            "see the agent's log for why the federation did not take it",
        );
    }
    // A failover is no failure (the agent moved on, its lease renewed through the next
    // replica), but the replica it left may need a look.
    if let Some(f) = &s.last_failover {
        checks.pass(
            "agents",
            format!(
                "{who}: left {} {}s ago{} (failovers: {}): {}",
                f.from,
                (now_ms - f.at_ms).max(0) / 1000,
                f.to.as_ref().map_or_else(String::new, |to| format!(" for {to}")),
                s.failovers,
                f.reason
            ),
        );
    }
    for (name, sink) in &s.sinks {
        if sink.healthy {
            checks.pass(
                "agents",
                format!("{who}: sink {name} holds revision {}", sink.applied_revision),
            );
        } else {
            checks.fail(
                "agents",
                format!("{who}: sink {name} failing: {}", sink.error.as_deref().unwrap_or("unknown error")),
                "fix the sink's target (directory permissions, etcd reachability); the agent retries on its own",
            );
        }
    }
    for (name, sink) in &s.sinks {
        for skipped in &sink.skipped {
            checks.warn(
                "agents",
                format!("{who}: sink {name} skipped {}: {}", skipped.location, skipped.message),
                "the rest is written; fix what the message names",
            );
        }
    }
    for problem in &s.exports.problems {
        checks.warn(
            "agents",
            format!("{who}: export {} skipped: {}", problem.location, problem.message),
            "fix the export document; the other exports are unaffected",
        );
    }
    if let Some(problem) = &s.bundle.problem {
        checks.warn(
            "agents",
            format!("{who}: own bundle source: {}", problem.message),
            "the last good bundle stays published; fix the source",
        );
    }
    checks.0
}

// === disks ===

/// Durable appends the disk check times: a second or two even on a disk at the limit.
const DISK_PROBE_APPENDS: usize = 200;
/// Bytes per appended entry: a small batch of writes, as most log entries are.
const DISK_PROBE_ENTRY_BYTES: usize = 512;
/// A p99 above this warns: etcd's guidance for its WAL fsync.
const DISK_WARN_P99: Duration = Duration::from_millis(10);
/// A p99 above this fails: appends this slow hold up heartbeats past election timeouts.
const DISK_FAIL_P99: Duration = Duration::from_millis(100);

/// Times durable log appends in `dir` as one replica makes them (one writer, its own log).
async fn check_disk(dir: &Path, checks: &mut Checks) {
    let owned = dir.to_path_buf();
    let probe = tokio::task::spawn_blocking(move || {
        federator_raft::disk_check::measure_durable_appends(
            &owned,
            1,
            DISK_PROBE_APPENDS,
            DISK_PROBE_ENTRY_BYTES,
        )
    })
    .await;
    match probe {
        Ok(Ok(probe)) => disk_checks(dir, &probe, checks),
        Ok(Err(error)) => checks.fail(
            "disk",
            format!("disk {}: cannot time durable log appends: {error}", dir.display()),
            "the directory must exist and be writable by the user the replica runs as",
        ),
        Err(error) => checks.fail(
            "disk",
            format!("disk {}: the durable log append probe stopped: {error}", dir.display()),
            "run the check again; if it persists, report it with the output",
        ),
    }
}

/// The check of one disk probe's figures.
fn disk_checks(dir: &Path, probe: &federator_raft::disk_check::DiskProbe, checks: &mut Checks) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let detail = format!(
        "disk {}: durable log append p50 {:.2} ms, p99 {:.2} ms ({} appends, {} writer{})",
        dir.display(),
        ms(probe.p50),
        ms(probe.p99),
        probe.appends,
        probe.writers,
        if probe.writers == 1 { "" } else { "s at once" }
    );
    let hint = "etcd's guidance for its WAL fsync is a p99 under 10 ms; raft heartbeats and \
                elections will suffer: move the data directory to a faster disk (SSD/NVMe), \
                off shared or network storage";
    if probe.p99 > DISK_FAIL_P99 {
        checks.fail("disk", detail, hint);
    } else if probe.p99 > DISK_WARN_P99 {
        checks.warn("disk", detail, hint);
    } else {
        checks.pass("disk", detail);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::agent::status::SinkStatus;

    /// A voter row with nothing known of it, for the tests to fill in.
    fn voter(id: u64) -> status::ReplicaRow {
        status::ReplicaRow::unreachable(id, "voter", String::new(), String::new(), String::new())
    }

    /// A healthy group of three voters led by replica 1, of `replicas`.
    fn group(replicas: Vec<status::ReplicaRow>) -> GroupView {
        GroupView {
            leader: Some(1),
            term: 2,
            voters_up: 3,
            voters: 3,
            quorum: true,
            cluster_version: None,
            replicas,
        }
    }

    fn args() -> CheckArgs {
        CheckArgs {
            wait: None,
            agent_state_dirs: Vec::new(),
            disks: Vec::new(),
            expiry_warning_days: 30,
            max_lag: 1000,
            propagation_timeout: 600,
        }
    }

    #[test]
    fn expiry_is_pass_warn_or_fail() {
        let mut checks = Checks::default();
        let now = 1_000_000_000;
        check_expiry(&args(), "ca", now + 90 * 86_400, now, "renew", &mut checks);
        check_expiry(&args(), "ca", now + 5 * 86_400, now, "renew", &mut checks);
        check_expiry(&args(), "ca", now - 86_400, now, "renew", &mut checks);
        let outcomes: Vec<Outcome> = checks.0.iter().map(|c| c.outcome).collect();
        assert_eq!(outcomes, [Outcome::Pass, Outcome::Warn, Outcome::Fail]);
        assert!(checks.0[1].detail.contains("5 days"), "{:?}", checks.0[1]);
        assert_eq!(checks.0[2].hint.as_deref(), Some("renew"));
    }

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

    #[test]
    fn a_voter_whose_core_stopped_is_not_in_the_quorum_count() {
        let row = |id: u64, role: &str| status::ReplicaRow {
            reachable: true,
            error: None,
            role: Some(role.into()),
            ..voter(id)
        };
        // Replica 3 fail-stopped on a full disk but still answers: never "3/3".
        let mut view = group(vec![row(1, "leader"), row(2, "follower"), row(3, "shutdown")]);
        view.tally();
        let mut checks = Checks::default();
        check_group(&args(), &view, &mut checks);
        let text = render(&report(checks.0));
        assert!(text.contains("quorum: 2/3 voters answer"), "{text}");
        assert!(!text.contains("quorum: 3/3"), "{text}");
        assert!(text.contains("replica 3 answers but its raft core stopped"), "{text}");
    }

    #[test]
    fn a_stopping_replica_is_named_instead_of_an_election() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: CheckArgs,
        }
        let args = Cli::parse_from(["check"]).args;
        let row = |id: u64, role: &str| status::ReplicaRow {
            reachable: true,
            error: None,
            role: Some(role.into()),
            ..voter(id)
        };
        let view = GroupView {
            leader: None,
            term: 4,
            voters_up: 2,
            voters: 3,
            quorum: true,
            cluster_version: None,
            replicas: vec![row(1, "shutdown"), row(2, "follower"), row(3, "follower")],
        };
        let mut checks = Checks::default();
        check_group(&args, &view, &mut checks);
        let text = render(&report(checks.0));
        assert!(text.contains("× no leader (term 4): replica 1 stopping"), "{text}");
        assert!(text.contains("a stopping leader steps down"), "{text}");
        assert!(text.contains("replica 1 answers but its raft core stopped"), "{text}");
        assert!(text.contains("quorum: 2/3 voters answer"), "{text}");

        let view = GroupView { replicas: vec![row(2, "follower"), row(3, "candidate")], ..view };
        let mut checks = Checks::default();
        check_group(&args, &view, &mut checks);
        let text = render(&report(checks.0));
        assert!(text.contains("an election is under way"), "{text}");
    }

    #[test]
    fn mixed_versions_warn_and_name_the_replicas_behind() {
        let row = |id: u64, version: Option<u32>| status::ReplicaRow {
            reachable: version.is_some(),
            command_version: version,
            ..voter(id)
        };
        let mut checks = Checks::default();
        check_versions(&group(vec![row(1, Some(22)), row(2, Some(21)), row(3, None)]), &mut checks);
        assert_eq!(checks.0.len(), 1);
        assert_eq!(checks.0[0].outcome, Outcome::Warn);
        assert!(checks.0[0].detail.contains("behind: replica 2 (21)"), "{:?}", checks.0[0]);
        let mut checks = Checks::default();
        check_versions(&group(vec![row(1, Some(22)), row(2, Some(22))]), &mut checks);
        assert_eq!(checks.0[0].outcome, Outcome::Pass);
        assert!(checks.0[0].detail.contains("cluster version 22"), "{:?}", checks.0[0]);
    }

    #[test]
    fn digests_that_differ_at_one_index_fail() {
        let row = |id: u64, digest: &str, index: u64| status::ReplicaRow {
            reachable: true,
            error: None,
            lag: Some(0),
            state_digest: Some(digest.into()),
            digest_index: Some(index),
            ..voter(id)
        };
        let mut checks = Checks::default();
        check_digests(
            &group(vec![row(1, "aaaa", 7), row(2, "aaaa", 7), row(3, "bbbb", 6)]),
            &mut checks,
        );
        assert_eq!(checks.0.len(), 1);
        assert_eq!(checks.0[0].outcome, Outcome::Pass, "{:?}", checks.0);
        let mut checks = Checks::default();
        check_digests(
            &group(vec![row(1, "aaaa", 7), row(2, "cccc", 7), row(3, "aaaa", 7)]),
            &mut checks,
        );
        assert_eq!(checks.0[0].outcome, Outcome::Fail);
        assert!(checks.0[0].detail.contains("replica 2 cccc"), "{:?}", checks.0[0]);
    }

    #[test]
    fn a_disk_is_judged_on_its_p99() {
        let probe = |p99_ms: u64| federator_raft::disk_check::DiskProbe {
            writers: 1,
            appends: 200,
            p50: Duration::from_micros(220),
            p99: Duration::from_millis(p99_ms),
            max: Duration::from_millis(p99_ms),
        };
        let mut checks = Checks::default();
        for p99_ms in [1, 11, 101] {
            disk_checks(Path::new("/var/lib/federator"), &probe(p99_ms), &mut checks);
        }
        let outcomes: Vec<Outcome> = checks.0.iter().map(|c| c.outcome).collect();
        assert_eq!(outcomes, [Outcome::Pass, Outcome::Warn, Outcome::Fail]);
        assert_eq!(
            checks.0[0].detail,
            "disk /var/lib/federator: durable log append p50 0.22 ms, p99 1.00 ms \
             (200 appends, 1 writer)"
        );
        assert!(checks.0[1].hint.as_deref().is_some_and(|h| h.contains("SSD")), "{:?}", checks.0);
    }

    #[test]
    fn a_missing_disk_directory_fails_naming_it() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let mut checks = Checks::default();
        let missing = Path::new("/nonexistent/federator-disk-check");
        runtime.block_on(check_disk(missing, &mut checks));
        assert_eq!(checks.0.len(), 1);
        assert_eq!(checks.0[0].outcome, Outcome::Fail);
        assert!(checks.0[0].detail.contains("/nonexistent/federator-disk-check"), "{:?}", checks.0);
    }

    #[test]
    fn agent_checks_name_stale_disconnected_and_failing_sinks() {
        let now = 1_700_000_000_000;
        let mut s = AgentStatus {
            cluster: "a".into(),
            written_at_ms: now - 500,
            connected_replica: Some("127.0.0.1:7101".into()),
            applied_revision: 9,
            lease: Some(crate::agent::status::LeaseStatus {
                id: 3,
                ttl_seconds: 10,
                last_keepalive_ms: Some(now - 1_000),
                failed_keepalives: 0,
            }),
            ..AgentStatus::default()
        };
        s.sinks = BTreeMap::from([
            (
                "files".to_string(),
                SinkStatus { healthy: true, applied_revision: 9, error: None, skipped: Vec::new() },
            ),
            (
                "etcd".to_string(),
                SinkStatus {
                    healthy: false,
                    applied_revision: 7,
                    error: Some("refused".into()),
                    skipped: vec![crate::agent::SourceProblem {
                        location: "ServiceImport shop/cart".into(),
                        message: "namespace shop does not exist in this cluster".into(),
                    }],
                },
            ),
        ]);
        let checks = agent_checks(&s, now);
        assert_eq!(checks.iter().filter(|c| c.outcome == Outcome::Fail).count(), 1);
        assert!(checks.iter().any(|c| c.detail.contains("sink etcd failing: refused")));
        assert!(
            checks.iter().any(|c| c.outcome == Outcome::Warn
                && c.detail.contains("sink etcd skipped ServiceImport shop/cart: namespace shop")),
            "a skipped object is a warning: {checks:?}"
        );
        s.failovers = 2;
        s.last_failover = Some(crate::agent::status::FailoverStatus {
            from: "127.0.0.1:7102".into(),
            reason: "keep-alive: no answer within 2500 ms".into(),
            at_ms: now - 4_000,
            to: Some("127.0.0.1:7101".into()),
            connected_at_ms: Some(now - 3_900),
        });
        let checks = agent_checks(&s, now);
        assert_eq!(checks.iter().filter(|c| c.outcome == Outcome::Fail).count(), 1);
        assert!(
            checks.iter().any(|c| c.outcome == Outcome::Pass
                && c.detail
                    == "agent of a: left 127.0.0.1:7102 4s ago for 127.0.0.1:7101 (failovers: 2): \
                        keep-alive: no answer within 2500 ms"),
            "{checks:?}"
        );
        s.connected_replica = None;
        assert!(agent_checks(&s, now).iter().any(|c| c.detail.contains("not connected")));
        s.written_at_ms = now - 60_000;
        let stale = agent_checks(&s, now);
        assert_eq!(stale.len(), 1);
        assert!(stale[0].detail.contains("status not written for 60s"), "{:?}", stale[0]);
    }

    #[test]
    fn check_fails_on_a_stale_status_an_unrenewed_lease_and_an_unpublished_bundle() {
        let now = crate::clock::unix_now_ms();
        let live = AgentStatus {
            cluster: "a".into(),
            written_at_ms: now - 500,
            connected_replica: Some("127.0.0.1:7101".into()),
            lease: Some(crate::agent::status::LeaseStatus {
                id: 3,
                ttl_seconds: 10,
                last_keepalive_ms: Some(now - 1_000),
                failed_keepalives: 0,
            }),
            ..AgentStatus::default()
        };
        // Through the state directory, as `check --agent-state-dir` reads it.
        let judge = |s: &AgentStatus| {
            let dir = tempfile::tempdir().expect("dir");
            std::fs::write(dir.path().join("status.json"), serde_json::to_vec(s).expect("json"))
                .expect("write");
            let mut checks = Checks::default();
            check_agent(dir.path(), now, &mut checks);
            report(checks.0)
        };
        assert!(judge(&live).ok, "{:?}", judge(&live).checks);
        // The issue's case: a status (and keep-alive) 5 m 6 s old.
        let mut stale = live.clone();
        stale.written_at_ms = now - 306_000;
        if let Some(l) = &mut stale.lease {
            l.last_keepalive_ms = Some(now - 306_000);
        }
        let report_stale = judge(&stale);
        assert!(!report_stale.ok);
        assert!(
            report_stale.checks.iter().any(|c| c.detail.contains("stale: older than 10s")),
            "{:?}",
            report_stale.checks
        );
        // A fresh status whose keep-alives stopped renewing.
        let mut unrenewed = live.clone();
        if let Some(l) = &mut unrenewed.lease {
            l.last_keepalive_ms = Some(now - 20_000);
            l.failed_keepalives = 3;
        }
        assert!(!judge(&unrenewed).ok);
        let mut no_lease = live.clone();
        no_lease.lease = None;
        assert!(!judge(&no_lease).ok);
        let mut unpublished = live.clone();
        unpublished.bundle.sequence = Some(2);
        unpublished.bundle.published_sequence = Some(1);
        assert!(!judge(&unpublished).ok);
        // A restart renumbered the same authorities: nothing to publish.
        unpublished.bundle.published_current = Some(true);
        assert!(judge(&unpublished).ok);
    }
}
