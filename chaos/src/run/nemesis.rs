//! The nemesis at work: one fault of a scenario injected into the topology (and what was
//! done, to undo it), held, and healed; the `snapshot-corruption` round; and what a
//! replica whose disk filled up did.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::Rng as _;
use rand::rngs::StdRng;

use super::membership;
use super::scenario::Nemesis;
use super::topology::Topology;
use crate::check;
use crate::proxy::{Faults, Latency};

/// The faults [`Nemesis::Mixed`] picks from.
pub(super) const MIXED: &[Nemesis] = &[
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
pub(super) struct Injected {
    pub(super) what: String,
    pub(super) killed: Vec<u64>,
    pub(super) paused: Vec<u64>,
    /// Replicas that must exit by themselves within the hold (restarted at the heal).
    pub(super) must_exit: Vec<u64>,
    /// Replicas whose disk was filled (freed at the heal).
    pub(super) filled: Vec<u64>,
    /// Whether the fault was injected at all (a disk that could not be filled was not).
    pub(super) took: bool,
}

/// One `snapshot-corruption` round: a follower with a snapshot file is stopped, one
/// byte in the middle of that file flipped, and the follower restarted. It must refuse to
/// start (exit non-zero, naming the file) rather than restore the damaged state; it is
/// then replaced from nothing as its error says (remove-member, wipe, add-member). When
/// no follower has a snapshot file yet, one is made to build one first. Returns what was
/// done and whether a file was damaged.
pub(super) async fn corrupt_snapshot(
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
pub(super) enum FullDisk {
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
pub(super) async fn after_full_disk(topo: &mut Topology, id: u64) -> FullDisk {
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

/// The current leader, if one is agreed within a few seconds.
async fn leader(topo: &Topology) -> Option<u64> {
    topo.fed.wait_for_leader(&topo.ids, Duration::from_secs(5)).await.ok()
}

pub(super) async fn inject(topo: &mut Topology, nemesis: Nemesis, rng: &mut StdRng) -> Injected {
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
pub(super) async fn hold(topo: &Topology, nemesis: Nemesis, hold: Duration, rng: &mut StdRng) {
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

pub(super) fn heal(topo: &mut Topology, injected: &Injected) -> anyhow::Result<()> {
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
