//! `federator-chaos run`: named fault scenarios against a real federation on loopback.
//!
//! A run starts N replicas with a fault proxy on every replica-to-replica link
//! ([`topology`]), joins three member clusters and starts the [`workload`]; member
//! cluster `c` — a real agent with its own etcd — comes up beside it, its links to every
//! replica and to its etcd through proxies too ([`member_down`]). The workload: register
//! clients, bundle rotations, watchers, an adversary and a status sampler. The
//! scenario's nemesis then injects one fault after another — each held for a while,
//! then healed — until the duration is over. Afterwards every fault is healed, every
//! replica restarted, and the run waits for all replicas to agree on one digest at one
//! applied index (the time it takes is reported). The checkers of [`crate::check`] then
//! hold the recorded history against the promises of `SECURITY.md`, and `c`'s agent must
//! have caught up with the federation ([`member_down::MemberDown::check_converged`]).
//!
//! Two scenarios change something else than replica faults: `membership-change` grows
//! and shrinks the group ([`membership`]; the checks then hold over the voters at the
//! end), and `member-down` kills a whole member cluster — a real agent and its etcd —
//! and checks that its endpoints turn not ready and ready again in bounded time
//! ([`member_down`], with the times measured in the report).
//!
//! The scenarios are listed in [`scenario`]; the faults are injected, held and healed by
//! `nemesis`, and each fault's availability promise is checked by `availability`.
//!
//! The result is a [`report::RunReport`]: fault timeline, operation counts, failover
//! gaps (fault → first acknowledged write invoked after it), violations; in text, JSON or JUnit XML. A
//! failing run keeps its history and the replicas' data directories.

mod availability;
pub mod member_down;
pub mod membership;
mod nemesis;
pub mod report;
pub mod scenario;
pub mod topology;
pub mod workload;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use self::availability::{FaultWindow, failover_gaps, unavailable};
use self::member_down::MemberDown;
use self::nemesis::{FullDisk, MIXED, after_full_disk, corrupt_snapshot, heal, hold, inject};
use self::report::{Counts, RunReport, TimelineEvent};
pub use self::scenario::{Availability, Nemesis, SCENARIOS, SHORT, Scenario, find};
use self::topology::Topology;
use self::workload::{Clock, Workload, WorkloadConfig};
use crate::check::{self, Inputs};

/// Settings of one run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Seed of every random choice (faults, workload).
    pub seed: u64,
    /// Time under faults.
    pub duration: Duration,
    /// Replicas (0: the scenario's own).
    pub replicas: u64,
    /// Where failing runs keep their history and data.
    pub keep_dir: Option<PathBuf>,
    /// The workload.
    pub workload: WorkloadConfig,
}

/// Runs `scenario` and checks what happened.
///
/// # Errors
/// The federation could not be started, or did not converge after healing (reported as
/// an error, with the directories kept).
pub async fn run(
    scenario: &Scenario,
    config: &RunConfig,
    progress: &dyn Fn(&str),
) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    let replicas = if config.replicas == 0 { scenario.replicas } else { config.replicas };
    progress(&format!("starting {replicas} replicas with a fault proxy on every link"));
    let mut topo = Topology::start(
        replicas,
        scenario.spares,
        config.seed,
        scenario.timing,
        scenario.disk_mib,
        scenario.extra_config,
    )
    .await?;
    let clock = Clock::start();
    progress("joining members and starting the workload");
    let workload = Workload::start(&topo, config.workload, config.seed, clock).await?;
    progress("starting member cluster c: an agent with its own etcd, both through proxies");
    let mut member = MemberDown::start(&mut topo, config.seed).await?;

    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut timeline = Vec::new();
    let mut windows: Vec<FaultWindow> = Vec::new();
    let mut fault_violations = Vec::new();
    // Rounds whose fault did not take (no snapshot to damage, a disk that did not fill,
    // no agent attached): they prove nothing and are reported inconclusive; a run in
    // which no round injected its fault at all fails.
    let mut untaken: Vec<String> = Vec::new();
    let deadline = Instant::now() + config.duration;
    let mut round = 0usize;
    while Instant::now() + scenario.hold < deadline {
        tokio::time::sleep(scenario.quiet).await;
        match scenario.nemesis {
            Nemesis::MembershipChange => {
                round += 1;
                let at = clock.now();
                let what = membership::step(&mut topo, &mut rng).await;
                progress(&format!("change {round}: {what}"));
                timeline.push(TimelineEvent { at_ms: at / 1_000_000, what });
                tokio::time::sleep(scenario.hold).await;
                continue;
            }
            Nemesis::MemberDown => {
                round += 1;
                progress(&format!("fault {round}: member c down"));
                member.round(&topo, clock, &mut timeline).await?;
                continue;
            }
            Nemesis::HungReplica => {
                round += 1;
                progress(&format!("fault {round}: the replica member c uses hung"));
                match member.hang_round(&topo, clock, &mut timeline).await? {
                    Some((what, at, healed)) => {
                        if let Some((promise, bound)) =
                            scenario.availability_bound(Nemesis::HungReplica)
                        {
                            windows.push(FaultWindow { what, at, healed, promise, bound });
                        }
                    }
                    // Why is in the member's inconclusive notes already.
                    None => untaken.push(format!("round {round}: nothing hung")),
                }
                continue;
            }
            Nemesis::CorruptSnapshot => {
                round += 1;
                let at = clock.now();
                let (what, damaged) = corrupt_snapshot(&mut topo, &mut fault_violations).await;
                progress(&format!("fault {round}: {what}"));
                if !damaged {
                    untaken.push(format!("round {round}: {what}"));
                }
                timeline.push(TimelineEvent { at_ms: at / 1_000_000, what });
                continue;
            }
            _ => {}
        }
        let nemesis = match scenario.nemesis {
            Nemesis::Mixed => MIXED[rng.random_range(0..MIXED.len())],
            other => other,
        };
        round += 1;
        let injected = inject(&mut topo, nemesis, &mut rng).await;
        let at = clock.now();
        progress(&format!("fault {round}: {}", injected.what));
        if !injected.took {
            untaken.push(format!("round {round}: {}", injected.what));
        }
        timeline.push(TimelineEvent { at_ms: at / 1_000_000, what: injected.what.clone() });
        let held = Instant::now();
        // A replica asked to leave (SIGTERM) must be gone within the hold; one whose disk
        // filled up must be gone too, unless it still writes (its database had room).
        for &id in injected.must_exit.iter().chain(&injected.filled) {
            let filled = injected.filled.contains(&id);
            let exit = match topo.fed.wait_exit(id, scenario.hold).await {
                Err(_) if filled => match after_full_disk(&mut topo, id).await {
                    FullDisk::Writes => {
                        let what =
                            format!("observed: replica {id} still writes (its database had room)");
                        untaken.push(format!("round {round}: {what}; no storage error injected"));
                        timeline.push(TimelineEvent { at_ms: clock.now() / 1_000_000, what });
                        continue;
                    }
                    FullDisk::Exited(status) => Ok(status),
                    FullDisk::Stuck(error) => Err(error),
                },
                other => other,
            };
            match exit {
                Ok(status) => {
                    timeline.push(TimelineEvent {
                        at_ms: clock.now() / 1_000_000,
                        what: format!("observed: replica {id} exited ({status})"),
                    });
                    // SIGTERM: exit 0; a storage error: exit 1. A panic (101) or a signal
                    // is no way to leave.
                    if !matches!(status.code(), Some(0 | 1)) {
                        fault_violations.push(check::Violation::new(
                            check::ViolationKind::UncleanExit,
                            format!("after '{}': replica {id} exited with {status}", injected.what),
                        ));
                    }
                }
                Err(error) => fault_violations.push(check::Violation::new(
                    check::ViolationKind::Unavailable,
                    format!("after '{}': {error:#}", injected.what),
                )),
            }
        }
        hold(&topo, nemesis, scenario.hold.saturating_sub(held.elapsed()), &mut rng).await;
        heal(&mut topo, &injected)?;
        let healed = clock.now();
        timeline.push(TimelineEvent {
            at_ms: healed / 1_000_000,
            what: format!("healed: {}", injected.what),
        });
        if let Some((promise, bound)) = scenario.availability_bound(nemesis) {
            windows.push(FaultWindow { what: injected.what, at, healed, promise, bound });
        }
    }
    tokio::time::sleep(scenario.quiet).await;
    progress("stopping the workload");
    let shared = workload.stop().await;

    progress("waiting for every replica to agree");
    let healed_at = Instant::now();
    topo.heal();
    // Only the current voters: a replica removed by a membership change is gone (killed
    // and wiped), and one added is checked like the others.
    for &id in &topo.ids.clone() {
        if topo.fed.has_exited(id) {
            topo.fed.restart(id)?;
        }
    }
    let converged = topo.fed.wait_for_convergence(&topo.ids, Duration::from_secs(60)).await;
    let converge_ms = converged.as_ref().ok().map(|_| millis(healed_at.elapsed()));
    let finals = workload::final_states(&topo, config.workload.keys).await;

    let recorded =
        std::mem::take(&mut *shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let counts = Counts::of(&recorded);
    let gaps = failover_gaps(&recorded.history, &timeline);
    fault_violations.extend(unavailable(&recorded.history, &windows));
    let finals = match finals {
        Ok(finals) => finals,
        Err(error) => {
            // Without them nothing says whether an acknowledged write was lost.
            fault_violations.push(check::Violation::new(
                check::ViolationKind::Unverifiable,
                format!(
                    "cannot read the replicas' final states, so lost writes go unchecked: {error:#}"
                ),
            ));
            Vec::new()
        }
    };
    let committed = recorded.published.clone();
    let watchers: BTreeSet<u32> = recorded.watch_events.iter().map(|e| e.watcher).collect();
    let inputs = Inputs {
        history: recorded.history,
        final_states: finals,
        watch_events: recorded.watch_events,
        watch_committed: watchers.into_iter().map(|w| (w, committed.clone())).collect(),
        digests: recorded.digests,
        leaders: recorded.leaders,
        sequences: recorded.sequences,
        cross_domain: recorded.cross_domain,
        linearizability: check::linearizability::Config::default(),
    };
    progress("checking the history");
    let mut checked = check::check_all(&inputs);
    if scenario.nemesis == Nemesis::MembershipChange
        && let Some(note) = membership::check_voters(&topo).await
    {
        checked.inconclusive.push(note);
    }
    if converged.is_ok() {
        progress("checking that member c's agent converged");
        member.check_converged(&topo).await;
    }
    let measurements = std::mem::take(&mut member.measurements);
    if let Some(violation) = no_fault_taken(scenario.name, round, &untaken) {
        fault_violations.push(violation);
    }
    checked.inconclusive.extend(untaken.into_iter().map(|r| format!("fault did not take: {r}")));
    checked.violations.append(&mut fault_violations);
    checked.violations.append(&mut member.violations);
    checked.inconclusive.append(&mut member.inconclusive);
    if let Err(error) = &converged {
        checked.violations.push(check::Violation::new(
            check::ViolationKind::DigestMismatch,
            format!("replicas did not converge within 60 s after healing: {error:#}"),
        ));
    }
    let mut report = RunReport {
        scenario: scenario.name.to_string(),
        seed: config.seed,
        replicas,
        duration_ms: millis(started.elapsed()),
        timeline,
        counts,
        failover_gaps_ms: gaps,
        converge_ms,
        measurements,
        violations: checked.violations,
        inconclusive: checked.inconclusive,
        kept: None,
    };
    if !report.violations.is_empty() {
        let dir = topo.fed.keep_dir();
        let history = dir.join("history.json");
        std::fs::write(&history, serde_json::to_vec(&inputs)?)?;
        report.kept = Some(dir);
    }
    if let Some(keep) = &config.keep_dir {
        std::fs::create_dir_all(keep)?;
        std::fs::write(
            keep.join(format!("{}-{}-history.json", scenario.name, config.seed)),
            serde_json::to_vec(&inputs)?,
        )?;
    }
    Ok(report)
}

/// A violation when `rounds` rounds ran and none of them injected its fault (each is in
/// `untaken`): the scenario then tested nothing of what it is named for.
fn no_fault_taken(scenario: &str, rounds: usize, untaken: &[String]) -> Option<check::Violation> {
    (rounds > 0 && untaken.len() >= rounds).then(|| {
        check::Violation::new(
            check::ViolationKind::Unverifiable,
            format!(
                "'{scenario}': none of its {rounds} rounds injected the fault, so the run proves \
                 nothing about it ({})",
                untaken.join("; ")
            ),
        )
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_membership_and_member_scenarios_are_listed_but_neither_short_nor_mixed() {
        let change = find("membership-change").expect("listed");
        assert_eq!(
            (change.nemesis, change.replicas, change.spares),
            (Nemesis::MembershipChange, 3, 1)
        );
        let down = find("member-down").expect("listed");
        assert_eq!(down.nemesis, Nemesis::MemberDown);
        assert!(
            down.hold
                > Duration::from_secs(u64::from(member_down::LEASE_TTL))
                    + member_down::NOT_READY_MARGIN
        );
        for name in ["membership-change", "member-down"] {
            assert!(!SHORT.contains(&name), "{name}");
        }
        assert!(
            !MIXED.contains(&Nemesis::MembershipChange) && !MIXED.contains(&Nemesis::MemberDown)
        );
    }

    #[test]
    fn a_run_in_which_no_round_injected_its_fault_fails() {
        assert!(no_fault_taken("disk-full", 0, &[]).is_none(), "no round ran");
        let one = ["round 1: disk of replica 2 not filled: no space".to_string()];
        assert!(no_fault_taken("disk-full", 2, &one).is_none(), "one round of two took");
        let both = [one[0].clone(), "round 2: observed: replica 3 still writes".to_string()];
        let violation = no_fault_taken("disk-full", 2, &both).expect("none took");
        assert_eq!(violation.kind, check::ViolationKind::Unverifiable);
        assert!(
            violation.message.contains("none of its 2 rounds")
                && violation.message.contains("still writes"),
            "{}",
            violation.message
        );
    }
}
