//! The live status view of `federator dev`: a frame redrawn every tick on a terminal, or
//! else one line per fact that changed.

use std::path::Path;

use federator_proto::admin as pb;

use super::DevReplica;
use super::clusters;
use crate::cli::status;

/// What the status view shows besides the replica group.
pub(super) struct Screen<'a> {
    pub(super) root: &'a Path,
    pub(super) env: &'a Path,
    pub(super) replicas: &'a [DevReplica],
    pub(super) members: &'a [clusters::DevCluster],
    pub(super) events: &'a [String],
}

/// Writes `text` to stdout and flushes it.
pub(super) fn write_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Whether stdout is a pipe whose reader has gone (`federator dev | head`), without
/// writing to it.
pub(super) fn stdout_closed() -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd as _;
    let stdout = std::io::stdout();
    // No events asked for: only an error or a hang-up on the descriptor is reported.
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::empty())];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0].revents().is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP))
}

/// `line` after the UTC time of day.
pub(super) fn stamped(line: &str) -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{:02}:{:02}:{:02}Z {line}", now.hour(), now.minute(), now.second())
}

/// What the dev frame shows, as facts by name, for output that is not a terminal: each
/// tick prints the facts that changed, one line each.
#[derive(Default)]
pub(super) struct Facts {
    seen: std::collections::BTreeMap<String, String>,
}

impl Facts {
    /// The lines for facts that changed since the last call, and records them.
    pub(super) fn changed(
        &mut self,
        screen: &Screen<'_>,
        view: Result<&status::GroupView, &anyhow::Error>,
        clusters: &[pb::Cluster],
    ) -> Vec<String> {
        let mut now = std::collections::BTreeMap::new();
        match view {
            Ok(view) => {
                let leader = view.leader.map_or_else(
                    || "none".to_string(),
                    |l| format!("replica {l} (term {})", view.term),
                );
                now.insert("leader".to_string(), leader);
                for r in &view.replicas {
                    let role = r.role.clone().unwrap_or_else(|| "unreachable".into());
                    now.insert(format!("replica {}", r.id), role);
                }
            }
            Err(error) => {
                now.insert("leader".to_string(), format!("unknown: no replica answered: {error}"));
            }
        }
        for replica in screen.replicas.iter().filter(|r| r.child.is_none()) {
            now.insert(format!("replica {}", replica.id), "down".into());
        }
        for member in screen.members {
            now.insert(member.name.clone(), member_summary(member, clusters));
        }
        let mut lines = Vec::new();
        for (name, value) in &now {
            if self.seen.get(name) != Some(value) {
                lines.push(
                    crate::cli::output::escape_control(&format!("{name}: {value}")).into_owned(),
                );
            }
        }
        for name in self.seen.keys().filter(|n| !now.contains_key(*n)) {
            lines.push(crate::cli::output::escape_control(&format!("{name}: gone")).into_owned());
        }
        self.seen = now;
        lines
    }
}

/// One member's agent, lease, bundle, imports and sinks in a line.
fn member_summary(member: &clusters::DevCluster, clusters: &[pb::Cluster]) -> String {
    let cluster = clusters.iter().find(|c| c.name == member.name);
    let status = member.status();
    let agent = member.pid().map_or_else(|| "down".to_string(), |p| format!("pid {p}"));
    let lease = cluster
        .and_then(|c| c.lease.as_ref())
        .map_or_else(|| "none".to_string(), |l| format!("{} {}", l.id, l.state));
    let bundle = cluster.map_or_else(
        || "not joined".to_string(),
        |c| format!("seq {} ({})", c.bundle_sequence, c.status),
    );
    let imports = status.as_ref().map_or_else(|| "-".to_string(), |s| s.imports.to_string());
    let failing = status.as_ref().map_or(0, |s| s.sinks.values().filter(|k| !k.healthy).count());
    format!(
        "agent {agent}, lease {lease}, bundle {bundle}, {imports} imports, {}",
        if failing == 0 { "sinks ok".to_string() } else { format!("{failing} sinks failing") }
    )
}

/// The dev frame: header, replica group, members, recent events and what to try next.
pub(super) fn render(
    interactive: bool,
    screen: &Screen<'_>,
    view: Result<&status::GroupView, &anyhow::Error>,
    clusters: &[pb::Cluster],
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let Screen { root, env, replicas, members, events } = *screen;
    if interactive {
        // Clear the screen and home the cursor.
        out.push_str("\x1b[2J\x1b[H");
    }
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "federator dev — {} replicas and {} member clusters on loopback, state in {}",
        replicas.len(),
        members.len(),
        root.display()
    );
    match view {
        Ok(view) => {
            out.push_str(&status::view_table(view, false));
            let down: Vec<String> = replicas
                .iter()
                .filter(|r| r.child.is_none())
                .map(|r| {
                    format!(
                        "replica {} is down{}",
                        r.id,
                        r.died_at
                            .map_or(String::new(), |t| format!(" ({}s)", t.elapsed().as_secs()))
                    )
                })
                .collect();
            if !down.is_empty() {
                let _ = writeln!(out, "{}", down.join("; "));
            }
            if !members.is_empty() {
                let _ = writeln!(out, "\n{}", members_table(members, clusters));
            }
            for event in events {
                let _ = writeln!(out, "{}", crate::cli::output::escape_control(event));
            }
            let leader_pid = view
                .leader
                .and_then(|l| view.replicas.iter().find(|r| r.id == l))
                .and_then(|r| r.pid);
            let mut tips: Vec<(String, String)> = vec![
                (format!("source {}", env.display()), String::new()),
                ("federator status".into(), "the replica group".into()),
            ];
            if let Some(pid) = leader_pid {
                tips.push((format!("kill -9 {pid}"), "kill the leader; watch the failover".into()));
            }
            if let Some(replica) = replicas.first()
                && let (spiffe, Some(web)) = replica.bundle_endpoints
            {
                let certs = root.join("certs");
                tips.push((
                    format!(
                        "curl --cacert {} https://{web}/bundles",
                        certs.join("web-ca.pem").display()
                    ),
                    format!(
                        "the SPIFFE bundle endpoint (https_web{})",
                        spiffe.map_or(String::new(), |s| format!("; https_spiffe on {s}"))
                    ),
                ));
            }
            if let Some(first) = members.first() {
                if let Some(pid) = first.pid() {
                    tips.push((
                        format!("kill -9 {pid}"),
                        format!(
                            "kill {}'s agent: its lease expires in {} s, its endpoints turn not \
                             ready; dev restarts it {} s after",
                            first.name,
                            clusters::LEASE_TTL,
                            clusters::AGENT_RESTART_AFTER_SECS
                        ),
                    ));
                }
                tips.push((
                    format!("touch {}", first.dir.join("rotate").display()),
                    format!("rotate {}'s CA", first.name),
                ));
                tips.push((
                    format!("curl -s 127.0.0.1:{}/metrics", first.metrics_port),
                    format!("{}'s agent metrics (and /readyz)", first.name),
                ));
                tips.push((
                    "federator cluster list".into(),
                    "members, leases, bundle rotations".into(),
                ));
                if let Some(other) = members.get(1) {
                    tips.push((
                        format!("federator import list --cluster {}", other.name),
                        format!("what {} imports, in failover order", other.name),
                    ));
                }
                tips.push((
                    format!(
                        "federator check --agent-state-dir {}",
                        first.dir.join("state").display()
                    ),
                    "everything an operator must see".into(),
                ));
            } else {
                tips.push(("federator probe put hello world".into(), "a replicated write".into()));
            }
            let width = tips.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
            let _ = writeln!(out, "\ntry next (in another terminal):");
            for (command, why) in tips {
                if why.is_empty() {
                    let _ = writeln!(out, "  {command}");
                } else {
                    let _ = writeln!(out, "  {command:width$}  # {why}");
                }
            }
        }
        Err(error) => {
            let line = format!("no replica answered: {error}");
            let _ = writeln!(out, "{}", crate::cli::output::escape_control(&line));
        }
    }
    let _ = writeln!(out, "\nCtrl-C stops everything.");
    if !interactive {
        let _ = writeln!(out, "(not a terminal: from here on, one line per change)");
    }
    out
}

/// One row per member cluster: its agent, lease, bundle and what it imports.
fn members_table(
    members: &[clusters::DevCluster],
    clusters: &[pb::Cluster],
) -> crate::cli::output::Table {
    let mut t = crate::cli::output::Table::new(&[
        "CLUSTER",
        "TRUST DOMAIN",
        "AGENT PID",
        "CONNECTED TO",
        "LEASE",
        "BUNDLE",
        "IMPORTS",
        "SINKS",
        "ENVOY XDS",
    ]);
    for member in members {
        let cluster = clusters.iter().find(|c| c.name == member.name);
        let status = member.status();
        let lease = cluster
            .and_then(|c| c.lease.as_ref())
            .map_or_else(|| "-".to_string(), |l| format!("{} {}", l.id, l.state));
        let bundle = cluster.map_or_else(
            || "(not joined)".to_string(),
            |c| format!("seq {} — {}", c.bundle_sequence, c.status),
        );
        let sinks = status.as_ref().map_or_else(
            || "-".to_string(),
            |s| {
                let failing = s.sinks.values().filter(|k| !k.healthy).count();
                if failing == 0 {
                    format!("{} ok", s.sinks.len())
                } else {
                    format!("{failing} failing")
                }
            },
        );
        t.add_row(vec![
            member.name.clone(),
            member.trust_domain.clone(),
            member.pid().map_or_else(|| "down".to_string(), |p| p.to_string()),
            status.as_ref().and_then(|s| s.connected_replica.clone()).unwrap_or_else(|| "-".into()),
            lease,
            bundle,
            status.as_ref().map_or_else(|| "-".to_string(), |s| s.imports.to_string()),
            sinks,
            format!("127.0.0.1:{}", member.xds_port),
        ]);
    }
    t
}
