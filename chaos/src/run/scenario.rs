//! The named fault scenarios of `federator-chaos run`: what each injects ([`Nemesis`]),
//! how long it holds a fault, the replicas' timing, and what it promises about writes
//! while a fault lasts or after its heal ([`Availability`]).

use std::time::Duration;

use federator_raft::Timing;

use super::member_down;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
