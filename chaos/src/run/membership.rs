//! The `membership-change` nemesis: the replica group grows and shrinks under load.
//!
//! Each step either adds a spare replica (while the group has its minimum of voters) or
//! removes a random follower (never going below that minimum). A removed replica is
//! SIGKILLed and its data directory wiped at once, so that when it is added again later
//! (with the same id, addresses and proxies) it starts from nothing and catches up from
//! the leader. Membership changes go through the CLI (`federator raft add-member` /
//! `remove-member`), as an operator makes them.

use std::time::{Duration, Instant};

use rand::Rng as _;
use rand::rngs::StdRng;

use super::topology::Topology;

/// Voters the group never goes below.
pub const MIN_VOTERS: usize = 3;
/// Bound of one membership CLI call (a learner's catch-up included).
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of the wait for an agreed leader before removing a follower.
const LEADER_WAIT: Duration = Duration::from_secs(5);

/// Makes one membership change; returns what was done, for the timeline.
pub async fn step(topo: &mut Topology, rng: &mut StdRng) -> String {
    if topo.ids.len() <= MIN_VOTERS && !topo.spares.is_empty() {
        let id = topo.spares[rng.random_range(0..topo.spares.len())];
        add(topo, id).await
    } else if topo.ids.len() > MIN_VOTERS {
        remove(topo, rng).await
    } else {
        format!("membership unchanged: {} voters and no spare", topo.ids.len())
    }
}

/// Starts spare `id` (from nothing: it was never started, or wiped when removed) and
/// adds it as a voter.
async fn add(topo: &mut Topology, id: u64) -> String {
    let started = Instant::now();
    let spawned =
        if topo.fed.has_started(id) { topo.fed.restart(id) } else { topo.fed.start(id, false) };
    if let Err(error) = spawned {
        return format!("add-member {id} not tried: the replica did not start: {error:#}");
    }
    if let Err(error) = topo.fed.wait_for_api(id).await {
        let _ = topo.fed.wipe(id);
        return format!("add-member {id} not tried: the replica did not answer: {error:#}");
    }
    let addr = topo.fed.replica(id).raft_addr.clone();
    let added = topo
        .fed
        .cli_ok_within(&topo.ids, &["raft", "add-member", &id.to_string(), &addr], CLI_TIMEOUT)
        .await;
    let took = started.elapsed().as_millis();
    match added {
        Ok(_) => {
            topo.ids.push(id);
            topo.ids.sort_unstable();
            topo.spares.retain(|s| *s != id);
            format!("add-member {id} (started from nothing, took {took} ms): voters {:?}", topo.ids)
        }
        Err(error) => {
            let note = reconcile(topo).await;
            format!("add-member {id} failed after {took} ms: {}; {note}", first_line(&error))
        }
    }
}

/// Removes a random follower, then kills it and wipes its data.
async fn remove(topo: &mut Topology, rng: &mut StdRng) -> String {
    let Ok(leader) = topo.fed.wait_for_leader(&topo.ids, LEADER_WAIT).await else {
        return format!("membership unchanged: no agreed leader among {:?}", topo.ids);
    };
    let followers: Vec<u64> = topo.ids.iter().copied().filter(|id| *id != leader).collect();
    let victim = followers[rng.random_range(0..followers.len())];
    let remaining: Vec<u64> = topo.ids.iter().copied().filter(|id| *id != victim).collect();
    let started = Instant::now();
    let removed = topo
        .fed
        .cli_ok_within(&remaining, &["raft", "remove-member", &victim.to_string()], CLI_TIMEOUT)
        .await;
    let took = started.elapsed().as_millis();
    match removed {
        Ok(_) => {
            topo.ids = remaining;
            retire(topo, victim);
            format!(
                "remove-member {victim} (follower; took {took} ms), then SIGKILL and wipe it: voters {:?}",
                topo.ids
            )
        }
        Err(error) => {
            let note = reconcile(topo).await;
            format!("remove-member {victim} failed after {took} ms: {}; {note}", first_line(&error))
        }
    }
}

/// Replaces voter `victim` from nothing, as an operator recovers a replica whose data
/// is damaged: `remove-member` through the others, wipe, start it again and
/// `add-member`. Returns what was done, for the timeline.
pub async fn replace_from_nothing(topo: &mut Topology, victim: u64) -> String {
    let remaining: Vec<u64> = topo.ids.iter().copied().filter(|id| *id != victim).collect();
    let removed = topo
        .fed
        .cli_ok_within(&remaining, &["raft", "remove-member", &victim.to_string()], CLI_TIMEOUT)
        .await;
    if let Err(error) = removed {
        let note = reconcile(topo).await;
        return format!("remove-member {victim} failed: {}; {note}", first_line(&error));
    }
    topo.ids = remaining;
    retire(topo, victim);
    add(topo, victim).await
}

/// Kills a replica that left the group and wipes its data: it may come back only from
/// nothing.
fn retire(topo: &mut Topology, id: u64) {
    // The directory holds only files this process wrote; a failure leaves the old data
    // and would show as a start-up or catch-up failure of the next add.
    if let Err(error) = topo.fed.wipe(id) {
        tracing::warn!(id, %error, "wiping a removed replica");
    }
    if !topo.spares.contains(&id) {
        topo.spares.push(id);
        topo.spares.sort_unstable();
    }
}

/// After a failed change: takes the voters from the leader's own status, and retires
/// every replica that is not one.
async fn reconcile(topo: &mut Topology) -> String {
    let all = topo.all_ids();
    let candidates: Vec<u64> = all.iter().copied().filter(|id| topo.ids.contains(id)).collect();
    let Ok(leader) = topo.fed.wait_for_leader(&candidates, Duration::from_secs(10)).await else {
        return format!("no agreed leader afterwards; voters assumed still {:?}", topo.ids);
    };
    let Some(status) = topo.fed.status(leader).await else {
        return format!("leader {leader} did not answer; voters assumed still {:?}", topo.ids);
    };
    let mut voters: Vec<u64> = status.voters.iter().map(|m| m.id).collect();
    voters.sort_unstable();
    for id in all {
        if !voters.contains(&id) && topo.fed.has_started(id) {
            retire(topo, id);
        }
    }
    topo.spares.retain(|id| !voters.contains(id));
    topo.ids = voters;
    format!("the leader reports voters {:?}", topo.ids)
}

/// Whether the group's voters, as its leader reports them, are those the run holds in
/// `topo.ids` (on which the final checks run); what differs, if anything.
pub async fn check_voters(topo: &Topology) -> Option<String> {
    let Ok(leader) = topo.fed.wait_for_leader(&topo.ids, Duration::from_secs(10)).await else {
        return Some(format!("no agreed leader among the voters {:?} at the end", topo.ids));
    };
    let status = topo.fed.status(leader).await?;
    let mut voters: Vec<u64> = status.voters.iter().map(|m| m.id).collect();
    voters.sort_unstable();
    (voters != topo.ids).then(|| {
        format!(
            "the leader reports voters {voters:?} at the end, the run assumed {:?} (final states \
             were read from those)",
            topo.ids
        )
    })
}

fn first_line(error: &anyhow::Error) -> String {
    let text = format!("{error:#}");
    text.lines().filter(|l| !l.trim().is_empty()).take(3).collect::<Vec<_>>().join(" / ")
}
