//! `federator check`, the replica group: quorum, leader, lag, command versions and state
//! digests.

use super::{CheckArgs, Checks};
use crate::cli::status::{self, GroupView};

/// Replica ids as `1, 2, 3`.
fn join_ids(ids: &[u64]) -> String {
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    ids.join(", ")
}

/// Quorum, leader, and how far each replica lags.
pub(super) fn check_group(args: &CheckArgs, view: &GroupView, checks: &mut Checks) {
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
    check_log_writers(view, checks);
    check_digests(view, checks);
    check_versions(view, checks);
}

/// A log writer that has written nothing for this long, with entries waiting, is a disk
/// that hangs (an fsync takes milliseconds, a slow one tens).
const LOG_STALL_FAILS_MS: u64 = 2_000;

/// Replicas whose disk has stopped writing their log (a failure: a leader steps down after
/// two election timeouts of it, a follower stops answering its leader), and replicas that
/// write it without its redo file (a warning: slower, as safe).
pub(super) fn check_log_writers(view: &GroupView, checks: &mut Checks) {
    for replica in &view.replicas {
        let Some(stalled) = replica.log_stalled_ms.filter(|ms| *ms >= LOG_STALL_FAILS_MS) else {
            continue;
        };
        checks.fail(
            "replicas",
            format!(
                "replica {}: its raft log writer has written nothing for {:.1} s with entries waiting",
                replica.id,
                stalled as f64 / 1000.0
            ),
            "its disk hangs: look at the disk under its data directory (`federator check --disk DIR` times it) and the kernel log; restart the replica once the disk answers",
        );
    }
    for replica in view.replicas.iter().filter(|r| r.log_without_redo_file == Some(true)) {
        checks.warn(
            "replicas",
            format!("replica {}: {}", replica.id, status::WITHOUT_REDO_FILE),
            "free at least 8 MiB under its data directory, then restart it (SIGTERM): it creates the file at start",
        );
    }
}

/// Voters of different builds are a rolling upgrade in progress: fine for a while, but
/// features that need the newer command kinds wait until the last voter is upgraded.
pub(super) fn check_versions(view: &GroupView, checks: &mut Checks) {
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
pub(super) fn check_digests(view: &GroupView, checks: &mut Checks) {
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

#[cfg(test)]
mod tests {
    use super::super::{Outcome, render, report};
    use super::*;

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
        check_group(&CheckArgs::gathering(&[]), &view, &mut checks);
        let text = render(&report(checks.0));
        assert!(text.contains("quorum: 2/3 voters answer"), "{text}");
        assert!(!text.contains("quorum: 3/3"), "{text}");
        assert!(text.contains("replica 3 answers but its raft core stopped"), "{text}");
    }

    #[test]
    fn a_replica_whose_log_writer_writes_nothing_for_seconds_fails_the_check() {
        let row = |id: u64, stalled: Option<u64>| status::ReplicaRow {
            reachable: true,
            error: None,
            log_stalled_ms: stalled,
            ..voter(id)
        };
        // An fsync in progress (12 ms), none waiting (0), an old build (None): fine.
        let view = group(vec![row(1, Some(12)), row(2, Some(0)), row(3, None)]);
        let mut checks = Checks::default();
        check_log_writers(&view, &mut checks);
        assert!(checks.0.is_empty(), "{:?}", checks.0);

        let view = group(vec![row(1, Some(0)), row(2, Some(4_300)), row(3, Some(0))]);
        let mut checks = Checks::default();
        check_log_writers(&view, &mut checks);
        let report = report(checks.0);
        assert!(!report.ok, "a hung disk is a failure (exit code too)");
        let text = render(&report);
        assert!(
            text.contains(
                "× replica 2: its raft log writer has written nothing for 4.3 s with entries waiting"
            ),
            "{text}"
        );
        assert!(text.contains("its disk hangs"), "{text}");
    }

    #[test]
    fn a_replica_without_its_redo_file_warns_naming_the_fix() {
        let row = |id: u64, without: Option<bool>| status::ReplicaRow {
            reachable: true,
            error: None,
            log_stalled_ms: Some(0),
            log_without_redo_file: without,
            ..voter(id)
        };
        let view = group(vec![row(1, Some(false)), row(2, Some(true)), row(3, None)]);
        let mut checks = Checks::default();
        check_log_writers(&view, &mut checks);
        assert_eq!(checks.0.len(), 1, "{:?}", checks.0);
        assert_eq!(checks.0[0].outcome, Outcome::Warn);
        let text = render(&report(checks.0));
        assert!(text.contains("replica 2: runs without its log's redo file"), "{text}");
        assert!(text.contains("free at least 8 MiB"), "{text}");
        assert!(status::view_table(&view, false).contains("replica 2: runs without"));
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
}
