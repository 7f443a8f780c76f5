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
//! The result is a [`report::RunReport`]: fault timeline, operation counts, failover
//! gaps (fault → first acknowledged write invoked after it), violations; in text, JSON or JUnit XML. A
//! failing run keeps its history and the replicas' data directories.

pub mod member_down;
pub mod membership;
pub mod report;
pub mod topology;
pub mod workload;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use self::member_down::MemberDown;
use self::report::{Counts, RunReport, TimelineEvent};
use self::topology::Topology;
use self::workload::{Clock, Workload, WorkloadConfig};
use crate::check::{self, Inputs};
use crate::proxy::{Faults, Latency};
use federator_raft::Timing;

/// The faults a scenario injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nemesis {
    /// SIGKILL the leader, restart it after the hold.
    KillLeader,
    /// SIGKILL a follower, restart it after the hold.
    KillFollower,
    /// SIGKILL a majority at once, restart them after the hold.
    KillMajority,
    /// SIGKILL every replica at once, restart them all.
    KillAll,
    /// SIGSTOP the leader, SIGCONT it after the hold.
    PauseLeader,
    /// Cut the leader off from every other replica.
    PartitionLeader,
    /// Cut a random minority off.
    PartitionMinority,
    /// The leader hears nobody but still reaches everyone.
    AsymmetricLeader,
    /// 75 ± 50 ms on every link, and dropped connections.
    LatencyAndDrops,
    /// Stall every link of one replica, then cap bandwidth everywhere.
    StallsAndBandwidth,
    /// Each fault above in turn, chosen by the seed.
    Mixed,
    /// Grow the group by a spare replica, then remove a random follower (killed and
    /// wiped; it may be added back later from nothing), and so on.
    MembershipChange,
    /// A whole member cluster (a real agent and its own etcd) SIGKILLed, then restarted;
    /// its endpoints must turn not ready, then ready again, in bounded time.
    MemberDown,
    /// SIGTERM the leader (a rolling restart): it must exit within the hold and the others
    /// must take writes meanwhile; restarted after the hold.
    TerminateLeader,
    /// Fill the leader's or a follower's disk (each replica's data directory is a small
    /// filesystem of its own): it must exit within the hold; freed and restarted after it.
    DiskFull,
    /// SIGSTOP the replica member `c`'s agent is attached to for 1.5 × its lease TTL: the
    /// agent moves, keeps its lease, and `c`'s endpoints stay ready.
    HungReplica,
    /// Damage a follower's current snapshot file (one byte) while it is down: it must
    /// refuse to start; it is then replaced from nothing (remove, wipe, add) as the
    /// error says.
    CorruptSnapshot,
}

/// What a scenario promises about writes, beside every safety check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    /// A write invoked after a fault starts is acknowledged within this many upper
    /// election timeouts, and while the fault is still held.
    DuringFault(u32),
    /// No quorum while the fault is held: a write invoked after the heal is acknowledged
    /// within this many upper election timeouts.
    AfterHeal(u32),
    /// Nothing asserted (the scenario measures something else).
    Unasserted,
}

impl Availability {
    /// The promise of one fault of `nemesis`.
    #[must_use]
    pub const fn of(nemesis: Nemesis) -> Self {
        match nemesis {
            Nemesis::KillMajority | Nemesis::KillAll => Self::AfterHeal(AFTER_HEAL_TIMEOUTS),
            Nemesis::Mixed
            | Nemesis::MembershipChange
            | Nemesis::MemberDown
            | Nemesis::CorruptSnapshot => Self::Unasserted,
            _ => Self::DuringFault(DURING_FAULT_TIMEOUTS),
        }
    }
}

/// Upper election timeouts a fault may cost writes: a crashed or deaf leader is replaced
/// after 2–4 of them (lease, random timeout, check-quorum), a client that picked the hung
/// replica waits out its operation timeout, and CI machines are slow. With the usual
/// 2.5 s hold the bound is the hold itself: a write acknowledged while the fault lasts.
const DURING_FAULT_TIMEOUTS: u32 = 16;
/// Upper election timeouts from healing a quorum loss until writes are taken: restarting
/// the replicas (open, replay) takes most of it.
const AFTER_HEAL_TIMEOUTS: u32 = 40;

/// A named scenario.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// Its name on the command line.
    pub name: &'static str,
    /// What it does.
    pub about: &'static str,
    /// Replicas in the group.
    pub replicas: u64,
    /// Spare replicas: planned with their proxies, started only when added.
    pub spares: u64,
    /// The faults.
    pub nemesis: Nemesis,
    /// How long a fault is held before it is healed.
    pub hold: Duration,
    /// Quiet time between faults.
    pub quiet: Duration,
    /// The replicas' raft timing profile.
    pub timing: Timing,
    /// Each replica's data directory on a tmpfs of this many MiB (to fill it).
    pub disk_mib: Option<u32>,
    /// More `[raft]` settings of every replica.
    pub extra_config: &'static str,
}

impl Scenario {
    /// The bound one fault of `nemesis` puts on the time until a write is acknowledged,
    /// measured from the fault (or from its heal), if any.
    #[must_use]
    pub fn availability_bound(&self, nemesis: Nemesis) -> Option<(Availability, Duration)> {
        if nemesis == Nemesis::LatencyAndDrops && self.timing == Timing::Lan {
            // Round trips of 50–250 ms are what the lan profile is not for (its calls time
            // out at 19 ms): only safety is asserted (`mixed`).
            return None;
        }
        let upper = self.timing.election_timeout().1;
        match Availability::of(nemesis) {
            Availability::DuringFault(n) => {
                Some((Availability::DuringFault(n), (upper * n).min(self.hold)))
            }
            Availability::AfterHeal(n) => Some((Availability::AfterHeal(n), upper * n)),
            Availability::Unasserted => None,
        }
    }
}

/// Every scenario, in `list` order.
pub const SCENARIOS: &[Scenario] = &[
    scenario("kill-leader", "SIGKILL the leader under load, restart it", Nemesis::KillLeader),
    scenario("kill-follower", "SIGKILL a follower under load, restart it", Nemesis::KillFollower),
    scenario(
        "kill-majority",
        "SIGKILL a majority at once (no quorum), restart them",
        Nemesis::KillMajority,
    ),
    scenario("kill-all", "SIGKILL every replica at once, restart them all", Nemesis::KillAll),
    scenario("pause-leader", "SIGSTOP the leader, SIGCONT it", Nemesis::PauseLeader),
    scenario(
        "partition-leader",
        "isolate the leader from every other replica",
        Nemesis::PartitionLeader,
    ),
    scenario(
        "partition-minority",
        "cut a random minority of replicas off",
        Nemesis::PartitionMinority,
    ),
    scenario(
        "asymmetric-leader",
        "the leader reaches everyone but hears nobody",
        Nemesis::AsymmetricLeader,
    ),
    Scenario {
        // Round trips of 50–250 ms: the wan profile, and faults held for a few of its
        // heartbeats and reconnects.
        timing: Timing::Wan,
        hold: Duration::from_secs(5),
        ..scenario(
            "latency",
            "75 ± 50 ms on every replica link, connections dropped at random (wan timing)",
            Nemesis::LatencyAndDrops,
        )
    },
    scenario(
        "stalls-bandwidth",
        "stall every link of one replica, then 64 KiB/s on every link",
        Nemesis::StallsAndBandwidth,
    ),
    scenario("mixed", "every fault above in an order chosen by the seed", Nemesis::Mixed),
    Scenario {
        spares: 1,
        ..scenario(
            "membership-change",
            "add a 4th replica, remove a random follower (killed, wiped, re-added later), repeat",
            Nemesis::MembershipChange,
        )
    },
    Scenario {
        hold: member_down::HOLD,
        ..scenario(
            "member-down",
            "SIGKILL a member cluster's agent and etcd: endpoints not ready, then ready again",
            Nemesis::MemberDown,
        )
    },
    scenario(
        "sigterm-leader",
        "SIGTERM the leader under load with an agent attached (a rolling restart)",
        Nemesis::TerminateLeader,
    ),
    Scenario {
        hold: member_down::HANG_HOLD,
        ..scenario(
            "hung-replica",
            "SIGSTOP the replica a member's agent uses for 1.5 × its lease TTL: no lease lost",
            Nemesis::HungReplica,
        )
    },
    Scenario {
        extra_config: "snapshot_after_entries = 300\nkeep_entries_after_snapshot = 10",
        ..scenario(
            "snapshot-corruption",
            "flip a byte of a stopped follower's snapshot file: it refuses to start; replaced",
            Nemesis::CorruptSnapshot,
        )
    },
    Scenario {
        disk_mib: Some(256),
        ..scenario(
            "disk-full",
            "fill the leader's or a follower's disk: it exits; freed and restarted",
            Nemesis::DiskFull,
        )
    },
];

const fn scenario(name: &'static str, about: &'static str, nemesis: Nemesis) -> Scenario {
    Scenario {
        name,
        about,
        replicas: 3,
        spares: 0,
        nemesis,
        hold: Duration::from_millis(2_500),
        quiet: Duration::from_millis(2_000),
        timing: Timing::Lan,
        disk_mib: None,
        extra_config: "",
    }
}

/// Scenarios `run --short` runs (CI).
pub const SHORT: &[&str] = &[
    "kill-leader",
    "kill-all",
    "partition-leader",
    "pause-leader",
    "asymmetric-leader",
    "latency",
    "sigterm-leader",
    "disk-full",
    "hung-replica",
    "snapshot-corruption",
];

/// The scenario called `name`.
#[must_use]
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

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

/// The faults [`Nemesis::Mixed`] picks from.
const MIXED: &[Nemesis] = &[
    Nemesis::KillLeader,
    Nemesis::KillFollower,
    Nemesis::KillMajority,
    Nemesis::KillAll,
    Nemesis::PauseLeader,
    Nemesis::PartitionLeader,
    Nemesis::PartitionMinority,
    Nemesis::AsymmetricLeader,
    Nemesis::LatencyAndDrops,
    Nemesis::StallsAndBandwidth,
    Nemesis::TerminateLeader,
];

/// What was done, to undo it.
struct Injected {
    what: String,
    killed: Vec<u64>,
    paused: Vec<u64>,
    /// Replicas that must exit by themselves within the hold (restarted at the heal).
    must_exit: Vec<u64>,
    /// Replicas whose disk was filled (freed at the heal).
    filled: Vec<u64>,
    /// Whether the fault was injected at all (a disk that could not be filled was not).
    took: bool,
}

/// One fault's availability promise, checked against the history after the run.
struct FaultWindow {
    what: String,
    /// When it was injected and healed (clock nanoseconds).
    at: u64,
    healed: u64,
    promise: Availability,
    bound: Duration,
}

/// One `snapshot-corruption` round: a follower with a snapshot file is stopped, one
/// byte in the middle of that file flipped, and the follower restarted. It must refuse to
/// start (exit non-zero, naming the file) rather than restore the damaged state; it is
/// then replaced from nothing as its error says (remove-member, wipe, add-member). When
/// no follower has a snapshot file yet, one is made to build one first. Returns what was
/// done and whether a file was damaged.
async fn corrupt_snapshot(
    topo: &mut Topology,
    violations: &mut Vec<check::Violation>,
) -> (String, bool) {
    let Some(leader) = leader(topo).await else {
        return ("snapshot not damaged: no agreed leader".into(), false);
    };
    let followers: Vec<u64> = topo.ids.iter().copied().filter(|id| *id != leader).collect();
    let with_file = |topo: &Topology| {
        followers
            .iter()
            .copied()
            .find_map(|id| Some((id, snapshot_file(&topo.fed.replica(id).data_dir)?)))
    };
    let found = match with_file(topo) {
        Some(found) => Some(found),
        None => {
            // None built or received one yet: have the first follower build one now.
            if let Some(&first) = followers.first() {
                let built = async {
                    let mut admin = topo.fed.admin(first).await.ok()?;
                    let request = federator_proto::admin::TriggerSnapshotRequest { purge: false };
                    admin.trigger_snapshot(request).await.ok()
                };
                let _ = tokio::time::timeout(Duration::from_secs(30), built).await;
            }
            with_file(topo)
        }
    };
    let Some((victim, file)) = found else {
        return (
            "snapshot not damaged: no follower has a snapshot file, even after being asked to \
             build one"
                .into(),
            false,
        );
    };
    topo.fed.kill(victim);
    // The file may have been replaced by a newer one while the replica ran.
    let file = snapshot_file(&topo.fed.replica(victim).data_dir).unwrap_or(file);
    if let Err(error) = flip_middle_byte(&file) {
        let _ = topo.fed.restart(victim);
        return (format!("snapshot of replica {victim} not damaged: {error:#}"), false);
    }
    if let Err(error) = topo.fed.restart(victim) {
        return (
            format!("replica {victim} not restarted after its snapshot was damaged: {error:#}"),
            false,
        );
    }
    let refused = topo.fed.wait_exit(victim, Duration::from_secs(15)).await;
    let name = file.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let outcome = match refused {
        Ok(status) if !status.success() && topo.fed.log_of(victim).contains(&name) => {
            format!("it refused to start ({status}), naming the file")
        }
        Ok(status) => {
            violations.push(check::Violation::new(
                check::ViolationKind::CorruptionServed,
                format!(
                    "replica {victim}, restarted on a damaged snapshot file {}, exited with \
                     {status} without naming the file",
                    file.display()
                ),
            ));
            format!("it exited ({status}) without naming the file")
        }
        Err(_) => {
            violations.push(check::Violation::new(
                check::ViolationKind::CorruptionServed,
                format!(
                    "replica {victim} started and kept running on a damaged snapshot file {}",
                    file.display()
                ),
            ));
            topo.fed.kill(victim);
            "it started on the damaged file".into()
        }
    };
    let replaced = membership::replace_from_nothing(topo, victim).await;
    (
        format!(
            "snapshot file of replica {victim} (follower) damaged, restarted: {outcome}; \
             {replaced}"
        ),
        true,
    )
}

/// The current snapshot file in a replica's data directory, if there is one.
fn snapshot_file(data_dir: &std::path::Path) -> Option<PathBuf> {
    std::fs::read_dir(data_dir.join("snapshots"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "snap"))
}

/// Flips every bit of the byte in the middle of `file`.
fn flip_middle_byte(file: &std::path::Path) -> anyhow::Result<()> {
    let mut bytes = std::fs::read(file)?;
    anyhow::ensure!(!bytes.is_empty(), "{} is empty", file.display());
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(file, bytes)?;
    Ok(())
}

/// What a replica did once the hold after its disk filled was over.
enum FullDisk {
    /// It answers with a running raft core and applied entries meanwhile: its database
    /// file had room, so no storage error reached it.
    Writes,
    /// It exited (during the sample: it reached the end of its file's room late).
    Exited(std::process::ExitStatus),
    /// Neither: a replica that hangs on a full disk.
    Stuck(anyhow::Error),
}

/// Samples replica `id` for [`FULL_DISK_SAMPLE`] after the hold that followed its full
/// disk: a replica whose database had room keeps applying; one that ran out of room exits.
async fn after_full_disk(topo: &mut Topology, id: u64) -> FullDisk {
    use federator_proto::admin::Role;
    let before = topo.fed.status(id).await;
    let exited = topo.fed.wait_exit(id, FULL_DISK_SAMPLE).await;
    if let Ok(status) = exited {
        return FullDisk::Exited(status);
    }
    let after = topo.fed.status(id).await;
    match (before, after) {
        (Some(before), Some(after))
            if after.role() != Role::Shutdown && after.applied_index > before.applied_index =>
        {
            FullDisk::Writes
        }
        (before, after) => FullDisk::Stuck(anyhow::anyhow!(
            "replica {id} neither exited nor applied an entry {FULL_DISK_SAMPLE:?} past the \
             hold after its disk filled (applied index {} → {})",
            before.map_or_else(|| "?".to_string(), |s| s.applied_index.to_string()),
            after.map_or_else(|| "?".to_string(), |s| s.applied_index.to_string()),
        )),
    }
}

/// How long a replica on a full disk is watched after the hold.
const FULL_DISK_SAMPLE: Duration = Duration::from_millis(500);

/// A violation for every fault after which no write was acknowledged within its bound.
fn unavailable(
    history: &check::history::History,
    windows: &[FaultWindow],
) -> Vec<check::Violation> {
    let writes: Vec<(u64, u64)> = history
        .ops
        .iter()
        .filter(|op| matches!(op.kind, check::history::OpKind::Write { .. }))
        .filter_map(|op| Some((op.invoke, op.acked_at()?)))
        .collect();
    let ms = |ns: u64| ns / 1_000_000;
    windows
        .iter()
        .filter_map(|w| {
            let (from, since) = match w.promise {
                Availability::DuringFault(_) => (w.at, "the fault"),
                Availability::AfterHeal(_) => (w.healed, "its heal"),
                Availability::Unasserted => return None,
            };
            let first =
                writes.iter().filter(|(invoke, _)| *invoke >= from).map(|(_, ack)| *ack).min();
            let bound_ns = u64::try_from(w.bound.as_nanos()).unwrap_or(u64::MAX);
            match first {
                Some(ack) if ack - from <= bound_ns => None,
                Some(ack) => Some(format!(
                    "'{}': the first write invoked after {since} was acknowledged {} ms after it; \
                     the promise is {} ms",
                    w.what,
                    ms(ack - from),
                    w.bound.as_millis()
                )),
                None => Some(format!(
                    "'{}': no write invoked after {since} was acknowledged at all (promise: {} ms)",
                    w.what,
                    w.bound.as_millis()
                )),
            }
        })
        .map(|message| check::Violation::new(check::ViolationKind::Unavailable, message))
        .collect()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The current leader, if one is agreed within a few seconds.
async fn leader(topo: &Topology) -> Option<u64> {
    topo.fed.wait_for_leader(&topo.ids, Duration::from_secs(5)).await.ok()
}

async fn inject(topo: &mut Topology, nemesis: Nemesis, rng: &mut StdRng) -> Injected {
    let mut injected = Injected {
        what: String::new(),
        killed: Vec::new(),
        paused: Vec::new(),
        must_exit: Vec::new(),
        filled: Vec::new(),
        took: true,
    };
    let ids = topo.ids.clone();
    let leader = leader(topo).await;
    let random_other = |rng: &mut StdRng, not: Option<u64>| {
        let others: Vec<u64> = ids.iter().copied().filter(|id| Some(*id) != not).collect();
        others[rng.random_range(0..others.len())]
    };
    match nemesis {
        Nemesis::KillLeader | Nemesis::KillFollower => {
            let victim = if nemesis == Nemesis::KillLeader {
                leader.unwrap_or(ids[0])
            } else {
                random_other(rng, leader)
            };
            topo.fed.kill(victim);
            injected.killed.push(victim);
            injected.what = format!("SIGKILL replica {victim} ({})", role(leader, victim));
        }
        Nemesis::KillMajority => {
            let mut victims = ids.clone();
            while victims.len() > ids.len() / 2 + 1 {
                victims.remove(rng.random_range(0..victims.len()));
            }
            for &victim in &victims {
                topo.fed.kill(victim);
            }
            injected.what = format!("SIGKILL replicas {victims:?} (a majority)");
            injected.killed = victims;
        }
        Nemesis::KillAll => {
            topo.fed.kill_all();
            injected.killed = ids.clone();
            injected.what = "SIGKILL every replica".into();
        }
        Nemesis::PauseLeader => {
            let victim = leader.unwrap_or(ids[0]);
            topo.fed.pause(victim);
            injected.paused.push(victim);
            injected.what = format!("SIGSTOP replica {victim} ({})", role(leader, victim));
        }
        Nemesis::PartitionLeader => {
            let victim = leader.unwrap_or(ids[0]);
            topo.partition(&BTreeSet::from([victim]));
            injected.what = format!("partition: replica {victim} (leader) alone");
        }
        Nemesis::PartitionMinority => {
            let mut side = BTreeSet::new();
            while side.len() < (ids.len() - 1) / 2 {
                side.insert(ids[rng.random_range(0..ids.len())]);
            }
            topo.partition(&side);
            injected.what = format!("partition: minority {side:?} cut off");
        }
        Nemesis::AsymmetricLeader => {
            let victim = leader.unwrap_or(ids[0]);
            topo.deafen(victim);
            injected.what = format!("asymmetric: replica {victim} (leader) hears nobody");
        }
        Nemesis::LatencyAndDrops => {
            let latency =
                Latency { mean: Duration::from_millis(75), jitter: Duration::from_millis(50) };
            topo.all_links(Faults { latency: Some(latency), ..Faults::default() });
            injected.what = "75 ± 50 ms on every link, connections dropped at random".into();
        }
        Nemesis::StallsAndBandwidth => {
            let victim = random_other(rng, None);
            topo.stall(victim);
            injected.what =
                format!("every link of replica {victim} stalled, then 64 KiB/s everywhere");
        }
        Nemesis::TerminateLeader => {
            let victim = leader.unwrap_or(ids[0]);
            topo.fed.terminate(victim);
            injected.must_exit.push(victim);
            injected.what = format!("SIGTERM replica {victim} ({})", role(leader, victim));
        }
        Nemesis::DiskFull => {
            let victim = if rng.random_bool(0.5) {
                leader.unwrap_or(ids[0])
            } else {
                random_other(rng, leader)
            };
            match topo.disks.get(&victim).map(crate::disk::SmallDisk::fill) {
                Some(Ok(())) => {
                    injected.filled.push(victim);
                    injected.what =
                        format!("disk full under replica {victim} ({})", role(leader, victim));
                }
                Some(Err(error)) => {
                    injected.took = false;
                    injected.what = format!("disk of replica {victim} not filled: {error:#}");
                }
                None => {
                    injected.took = false;
                    injected.what = format!("replica {victim} has no disk of its own");
                }
            }
        }
        Nemesis::Mixed
        | Nemesis::MembershipChange
        | Nemesis::MemberDown
        | Nemesis::HungReplica
        | Nemesis::CorruptSnapshot => {
            unreachable!("resolved or run before injecting")
        }
    }
    injected
}

/// Holds a fault; some faults evolve while held.
async fn hold(topo: &Topology, nemesis: Nemesis, hold: Duration, rng: &mut StdRng) {
    match nemesis {
        Nemesis::LatencyAndDrops => {
            let end = Instant::now() + hold;
            while Instant::now() < end {
                // One replica's connections reset every second: each link every 1.5 s or
                // so, and a reconnect costs three round trips (TCP, TLS 1.3, HTTP/2).
                tokio::time::sleep(Duration::from_secs(1)).await;
                let ids = &topo.ids;
                topo.drop_connections(Some(ids[rng.random_range(0..ids.len())]));
            }
        }
        Nemesis::StallsAndBandwidth => {
            tokio::time::sleep(hold / 2).await;
            topo.all_links(Faults { bandwidth: Some(64 * 1024), ..Faults::default() });
            tokio::time::sleep(hold / 2).await;
        }
        _ => tokio::time::sleep(hold).await,
    }
}

fn heal(topo: &mut Topology, injected: &Injected) -> anyhow::Result<()> {
    topo.heal();
    for &id in &injected.paused {
        topo.fed.resume(id);
    }
    for &id in &injected.filled {
        if let Some(disk) = topo.disks.get(&id) {
            disk.free()?;
        }
    }
    for &id in &injected.must_exit {
        // One that did not leave (a violation already) is made to.
        if !topo.fed.has_exited(id) {
            topo.fed.kill(id);
        }
        topo.fed.restart(id)?;
    }
    for &id in &injected.filled {
        // Left by itself (a supervisor would restart it), or still writing.
        if topo.fed.has_exited(id) {
            topo.fed.restart(id)?;
        }
    }
    for &id in &injected.killed {
        topo.fed.restart(id)?;
    }
    Ok(())
}

fn role(leader: Option<u64>, id: u64) -> &'static str {
    match leader {
        Some(l) if l == id => "leader",
        Some(_) => "follower",
        None => "no agreed leader",
    }
}

/// Per fault: milliseconds from its injection until a write invoked after it is
/// acknowledged (writes in flight at the fault do not count). Timeline lines starting
/// with `healed` or `observed` are not faults.
fn failover_gaps(history: &check::history::History, timeline: &[TimelineEvent]) -> Vec<u64> {
    let writes: Vec<(u64, u64)> = history
        .ops
        .iter()
        .filter(|op| matches!(op.kind, check::history::OpKind::Write { .. }))
        .filter_map(|op| Some((op.invoke, op.acked_at()?)))
        .collect();
    timeline
        .iter()
        .filter(|e| !e.what.starts_with("healed") && !e.what.starts_with("observed"))
        .filter_map(|e| {
            let at = e.at_ms * 1_000_000;
            let first =
                writes.iter().filter(|(invoke, _)| *invoke >= at).map(|(_, ack)| *ack).min()?;
            Some((first - at) / 1_000_000)
        })
        .collect()
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
    fn a_fault_without_an_acknowledged_write_in_its_bound_is_a_violation() {
        let mut history = check::history::History::default();
        let write = |history: &mut check::history::History, invoke_ms: u64, ack_ms: u64| {
            let id = history.invoke(
                check::history::Process(0),
                "k".to_string(),
                check::history::OpKind::Write { value: 1 },
                invoke_ms * 1_000_000,
            );
            history.complete(
                id,
                ack_ms * 1_000_000,
                check::history::Outcome::Ok { read_value: None },
            );
        };
        write(&mut history, 1_000, 1_010);
        write(&mut history, 2_100, 2_600);
        write(&mut history, 9_000, 9_100);
        let window = |at_ms: u64, healed_ms: u64, promise| FaultWindow {
            what: format!("fault at {at_ms}"),
            at: at_ms * 1_000_000,
            healed: healed_ms * 1_000_000,
            promise,
            bound: Duration::from_millis(1_000),
        };
        let windows = [
            // Acknowledged 600 ms after the fault: kept.
            window(2_000, 4_500, Availability::DuringFault(16)),
            // The next acknowledged write comes 4 s after the fault: broken.
            window(5_000, 7_500, Availability::DuringFault(16)),
            // 100 ms after the heal: kept.
            window(6_000, 8_950, Availability::AfterHeal(40)),
            // Nothing after it at all: broken.
            window(10_000, 12_500, Availability::DuringFault(16)),
            window(10_000, 12_500, Availability::Unasserted),
        ];
        let found = unavailable(&history, &windows);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].message.contains("'fault at 5000'") && found[0].message.contains("4100 ms")
        );
        assert!(
            found[1].message.contains("'fault at 10000'") && found[1].message.contains("at all")
        );
        assert!(found.iter().all(|v| v.kind == check::ViolationKind::Unavailable));
    }

    #[test]
    fn availability_bounds_follow_the_timing_and_stay_within_the_hold() {
        let kill = find("kill-leader").expect("listed");
        assert_eq!(
            kill.availability_bound(Nemesis::KillLeader),
            Some((Availability::DuringFault(16), Duration::from_millis(2_500)))
        );
        assert_eq!(
            kill.availability_bound(Nemesis::KillAll),
            Some((Availability::AfterHeal(40), Duration::from_millis(6_400)))
        );
        let latency = find("latency").expect("listed");
        assert_eq!(latency.timing, Timing::Wan);
        assert_eq!(
            latency.availability_bound(Nemesis::LatencyAndDrops),
            Some((Availability::DuringFault(16), latency.hold)),
            "32 s of wan election timeouts, capped by the 5 s hold"
        );
        assert_eq!(
            find("member-down").expect("listed").availability_bound(Nemesis::MemberDown),
            None
        );
        for name in ["sigterm-leader", "disk-full", "asymmetric-leader"] {
            assert!(SHORT.contains(&name), "{name} in the short set");
        }
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

    #[test]
    fn observations_in_the_timeline_are_not_faults() {
        let mut history = check::history::History::default();
        let id = history.invoke(
            check::history::Process(0),
            "k".to_string(),
            check::history::OpKind::Write { value: 1 },
            3_000_000_000,
        );
        history.complete(id, 3_100_000_000, check::history::Outcome::Ok { read_value: None });
        let event = |at_ms: u64, what: &str| TimelineEvent { at_ms, what: what.into() };
        let timeline = [
            event(2_000, "SIGKILL member c: its agent and its etcd"),
            event(2_500, "observed: member c not ready (500 ms after the kill)"),
            event(2_900, "healed: restarted member c's etcd and agent"),
        ];
        assert_eq!(failover_gaps(&history, &timeline), vec![1_100]);
    }
}
