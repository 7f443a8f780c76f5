//! `federator check --agent-state-dir`: a local agent's status file, connection, lease,
//! sinks and export problems.

use super::{Check, Checks};
use crate::agent::AgentStatus;

/// The agent whose state directory is `dir`, from its status file.
pub(super) fn check_agent(dir: &std::path::Path, now_ms: i64, checks: &mut Checks) {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{Outcome, report};
    use super::*;
    use crate::agent::status::SinkStatus;

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
        // The case: a status (and keep-alive) 5 m 6 s old.
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
