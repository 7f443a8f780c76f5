//! Storage faults (feature `failpoints`): a replica whose log append, log commit (fsync)
//! or snapshot store fails stops (fail-stop) instead of acknowledging what it could not
//! write; the rest of the group goes on; once the disk is healthy again the replica is
//! reopened from what it had written and catches up. Under every fault, no write that
//! was acknowledged is lost, and all replicas reach the same state at the same index.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use federator_raft::failpoints::{self, Point};
use federator_raft::types::NodeId;
use federator_raft::{Consistency, RestoreError, StateMachine};
use support::{Pki, Running, reopen, start_group};

/// A state machine that keeps every applied command, in order.
#[derive(Default)]
struct Applied(Vec<String>);

impl StateMachine for Applied {
    fn apply(&mut self, _log_index: u64, command: &[u8]) -> Vec<u8> {
        self.0.push(String::from_utf8_lossy(command).into_owned());
        Vec::new()
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.join("\n").into_bytes()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let text = std::str::from_utf8(snapshot).map_err(RestoreError::new)?;
        self.0 =
            if text.is_empty() { Vec::new() } else { text.lines().map(String::from).collect() };
        Ok(())
    }
}

type Replica = Running<Applied>;

/// Writes `w{first}`, … through the replicas in turn until `stop`; returns what was
/// acknowledged.
async fn write_load(
    replicas: Vec<federator_raft::Replica<Applied>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    first: usize,
) -> Vec<String> {
    let mut acked = Vec::new();
    let mut i = first;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let value = format!("w{i}");
        let replica = &replicas[i % replicas.len()];
        i += 1;
        let written =
            tokio::time::timeout(Duration::from_secs(3), replica.write(value.clone().into_bytes()))
                .await;
        if matches!(written, Ok(Ok(_))) {
            acked.push(value);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    acked
}

fn db_path(running: &Replica) -> std::path::PathBuf {
    running.dir.path().join("raft.redb")
}

/// Waits until `replica`'s raft core has stopped (it hit the storage fault).
async fn wait_stopped(running: &Replica) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stopped = running.replica.raft().metrics().borrow().running_state.is_err();
        // A write on a stopped core fails at once; on a live one it may go through.
        if stopped || Instant::now() > deadline {
            assert!(stopped, "replica {} did not stop on its storage fault", running.replica.id());
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every one of `survivors` knows a leader other than `gone`.
async fn wait_for_leader_other_than(survivors: &[&Replica], gone: NodeId, within: Duration) {
    for survivor in survivors {
        survivor
            .replica
            .raft()
            .wait(Some(within))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != gone),
                "a leader other than the stopped or stalled replica",
            )
            .await
            .expect("the survivors elect a leader among themselves");
    }
}

/// Every replica holds every acknowledged write, and all hold the same commands in the
/// same order at the same applied index.
async fn assert_converged(group: &[Replica], acked: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let states: Vec<(u64, Vec<String>)> = group
            .iter()
            .map(|r| {
                let (applied, index) = r.replica.state().read_with_applied(|s| s.0.clone());
                (index, applied)
            })
            .collect();
        let agree = states.windows(2).all(|w| w[0] == w[1]);
        let complete = states.iter().all(|(_, applied)| acked.iter().all(|a| applied.contains(a)));
        if agree && complete {
            return;
        }
        if Instant::now() > deadline {
            let missing: Vec<Vec<&String>> = states
                .iter()
                .map(|(_, applied)| acked.iter().filter(|a| !applied.contains(a)).collect())
                .collect();
            panic!(
                "replicas did not converge: applied indexes {:?}, acknowledged writes missing per replica {missing:?}",
                states.iter().map(|(i, _)| *i).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a write load, makes `victim`'s storage fail at `point` (after `then` ran, e.g. to
/// trigger a snapshot), waits for it to stop, lets the others go on, heals the disk,
/// reopens the victim and checks the promises.
async fn fault_scenario(
    pick: impl Fn(NodeId, &[NodeId]) -> NodeId,
    point: Point,
    trigger_snapshot: bool,
) {
    let pki = Pki::new();
    let ids = [1, 2, 3];
    let (mut group, leader) = start_group::<Applied>(&pki, &ids).await;
    let victim = pick(leader, &ids);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(write_load(
        group.iter().map(|r| r.replica.clone()).collect(),
        Arc::clone(&stop),
        0,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let position = group.iter().position(|r| r.replica.id() == victim).expect("victim runs");
    failpoints::arm(&db_path(&group[position]), point);
    if trigger_snapshot {
        let snapshot = group[position].replica.snapshot_now(false).await;
        assert!(snapshot.is_err(), "a snapshot that cannot be stored is not reported built");
    }
    wait_stopped(&group[position]).await;

    // The others go on (with a new leader if the victim led).
    let survivors: Vec<&Replica> = group.iter().filter(|r| r.replica.id() != victim).collect();
    wait_for_leader_other_than(&survivors, victim, Duration::from_secs(15)).await;
    let before = survivors[0].replica.state().read(|s| s.0.len());
    let deadline = Instant::now() + Duration::from_secs(15);
    while survivors[0].replica.state().read(|s| s.0.len()) < before + 20 {
        assert!(Instant::now() < deadline, "the surviving majority stopped committing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = load.await.expect("load task");

    // The disk is healthy again: the victim is reopened from what it wrote, and the load
    // goes on through every replica.
    failpoints::heal(&db_path(&group[position]));
    let stopped = group.remove(position);
    let addr = stopped.replica.raft_addr().to_string();
    let dir = stopped.stop().await;
    group.insert(position, reopen::<Applied>(&pki, victim, dir, &addr).await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(write_load(
        group.iter().map(|r| r.replica.clone()).collect(),
        Arc::clone(&stop),
        // Above every value the first load tried.
        1_000_000,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    acked.extend(load.await.expect("load task"));
    assert!(acked.len() > 40, "the load made progress: {} writes acknowledged", acked.len());

    // A linearizable read on the reopened replica sees the last acknowledged write.
    let (applied, _) = group[position]
        .replica
        .read(Consistency::Linearizable, |s| s.0.clone())
        .await
        .expect("linearizable read on the reopened replica");
    assert!(applied.contains(acked.last().expect("acked")), "read your acknowledged writes");
    assert_converged(&group, &acked).await;
    for running in group {
        running.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_log_commit_fails_stops_and_loses_nothing_acknowledged() {
    fault_scenario(|leader, _| leader, Point::LogCommit, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_log_append_fails_stops_and_catches_up_when_healed() {
    fault_scenario(
        |leader, ids| *ids.iter().find(|&&id| id != leader).expect("a follower"),
        Point::LogAppend,
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_snapshot_cannot_be_stored_stops_and_recovers() {
    fault_scenario(
        |leader, ids| *ids.iter().find(|&&id| id != leader).expect("a follower"),
        Point::SnapshotStore,
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_disk_elsewhere_does_not_touch_this_replica() {
    // Faults are per database: arming another path leaves a replica alone.
    let pki = Pki::new();
    let (group, _) = start_group::<Applied>(&pki, &[1]).await;
    failpoints::arm(std::path::Path::new("/nonexistent/raft.redb"), Point::LogAppend);
    group[0].replica.write(b"fine".to_vec()).await.expect("write");
    for running in group {
        running.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_save_its_vote_stops_instead_of_voting() {
    let pki = Pki::new();
    let (mut group, leader) = start_group::<Applied>(&pki, &[1, 2, 3]).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let value = format!("before-{i}");
        group[0].replica.write(value.clone().into_bytes()).await.expect("write");
        acked.push(value);
    }
    let position = |group: &[Replica], id| group.iter().position(|r| r.replica.id() == id);
    let victim = group.iter().map(|r| r.replica.id()).find(|&id| id != leader).expect("follower");
    let v = position(&group, victim).expect("victim runs");
    failpoints::arm(&db_path(&group[v]), Point::VoteSave);

    // The leader goes away: an election needs the victim's vote, which it cannot persist.
    let l = position(&group, leader).expect("leader runs");
    let stopped_leader = group.remove(l);
    let leader_addr = stopped_leader.replica.raft_addr().to_string();
    let leader_dir = stopped_leader.stop().await;
    let v = position(&group, victim).expect("victim runs");
    wait_stopped(&group[v]).await;

    // Disk healthy again: both come back and the group goes on with everything.
    failpoints::heal(&db_path(&group[v]));
    let stopped = group.remove(v);
    let addr = stopped.replica.raft_addr().to_string();
    let dir = stopped.stop().await;
    group.push(reopen::<Applied>(&pki, victim, dir, &addr).await);
    group.push(reopen::<Applied>(&pki, leader, leader_dir, &leader_addr).await);
    let value = "after".to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while group[0].replica.write(value.clone().into_bytes()).await.is_err() {
        // An election of the reopened group may take a few timeouts.
        assert!(Instant::now() < deadline, "no leader 20 s after healing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    acked.push(value);
    assert_converged(&group, &acked).await;
    for running in group {
        running.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_core_stopped_never_answers_written_then_not_found() {
    use federator_raft::ReplicaError;
    let pki = Pki::new();
    let (group, leader) = start_group::<Applied>(&pki, &[1, 2, 3]).await;
    let v = group.iter().position(|r| r.replica.id() != leader).expect("a follower");
    let victim = &group[v].replica;
    let l = group.iter().position(|r| r.replica.id() == leader).expect("the leader runs");
    victim.write(b"before".to_vec()).await.expect("a write through a healthy follower");
    let (seen, _) = victim
        .read(Consistency::Stale, |s| s.0.contains(&"before".to_string()))
        .await
        .expect("stale read");
    assert!(seen, "read your writes on a healthy follower");

    // The victim's disk fails: the next entries the leader sends it cannot be appended, so
    // its core stops. Writes forwarded through it commit on the other two, and it must not
    // answer "written" for an entry it will never apply.
    failpoints::arm(&db_path(&group[v]), Point::LogAppend);
    let mut refused = Vec::new();
    for i in 0..10 {
        let value = format!("through-victim-{i}");
        match victim.write(value.clone().into_bytes()).await {
            Ok(written) => {
                // Answered "written": a stale read here sees it, or is refused — never "not
                // found".
                match victim.read(Consistency::Stale, |s| s.0.contains(&value)).await {
                    Ok((seen, applied)) => assert!(
                        seen && applied >= written.index,
                        "{value} answered written at index {} through replica {}, then a \
                         stale read there at applied index {applied} did not find it",
                        written.index,
                        victim.id()
                    ),
                    Err(error) => {
                        assert!(matches!(error, ReplicaError::Stopped(_)), "{error}");
                    }
                }
            }
            Err(error) => refused.push((value, error)),
        }
    }
    wait_stopped(&group[v]).await;
    assert!(!refused.is_empty(), "every write through a replica whose disk failed was answered");
    let not_applied: Vec<&String> = refused
        .iter()
        .filter(|(_, e)| matches!(e, ReplicaError::NotAppliedHere { .. }))
        .map(|(value, _)| value)
        .collect();
    for (value, error) in &refused {
        assert!(
            matches!(error, ReplicaError::NotAppliedHere { .. } | ReplicaError::Stopped(_)),
            "{value}: {error}"
        );
    }
    // "Committed but not applied here" is the truth: the write took effect elsewhere.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let on_leader = group[l].replica.state().read(|s| s.0.clone());
        if not_applied.iter().all(|value| on_leader.contains(value)) {
            break;
        }
        assert!(Instant::now() < deadline, "{not_applied:?} reported committed, not on the leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Stopped, it serves nothing: no stale read of a state that no longer advances, no
    // linearizable read, no write.
    let stale = victim.read(Consistency::Stale, |s| s.0.len()).await;
    assert!(
        matches!(stale, Err(ReplicaError::Stopped(_))),
        "stale read on a stopped core: {stale:?}"
    );
    let linearizable = victim.read(Consistency::Linearizable, |s| s.0.len()).await;
    assert!(linearizable.is_err(), "linearizable read on a stopped core: {linearizable:?}");
    let after = victim.write(b"after-stop".to_vec()).await;
    assert!(after.is_err(), "a write through a stopped core: {after:?}");
    eprintln!(
        "{} of 10 writes through replica {} refused after its disk failed ({} as committed but \
         not applied there)",
        refused.len(),
        victim.id(),
        not_applied.len()
    );
    failpoints::heal(&db_path(&group[v]));
    for running in group {
        running.stop().await;
    }
}

/// Heals the faults of a database when dropped: a test that fails while a disk hangs
/// must not hang in its clean-up (the log writer is joined on drop).
struct HealOnDrop(std::path::PathBuf);

impl Drop for HealOnDrop {
    fn drop(&mut self) {
        failpoints::heal(&self.0);
    }
}

/// The applied index of every replica of `group`.
fn applied_indexes(group: &[Replica]) -> Vec<u64> {
    group.iter().map(|r| r.replica.state().read_with_applied(|_| ()).1).collect()
}

/// A leader writes its own copy of an entry while it replicates it, and counts that copy
/// towards the commit before it is on disk. With the leader's disk hung, the entry
/// reaches both followers' disks (a quorum without the leader's copy), yet no replica
/// applies it and the writer is not answered: the leader's state machine waits for its
/// own copy, and the followers are told no commit beyond it. Once the disk writes again,
/// the write is answered and applied everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_applied_or_answered_before_the_leaders_own_copy_is_durable() {
    let pki = Pki::new();
    let (group, leader) = start_group::<Applied>(&pki, &[1, 2, 3]).await;
    let l = group.iter().position(|r| r.replica.id() == leader).expect("the leader runs");
    group[l].replica.write(b"before".to_vec()).await.expect("a write on a healthy disk");
    let metrics = group[l].replica.raft().metrics().borrow().clone();
    let (term, next) = (metrics.current_term, metrics.last_log_index.unwrap_or(0) + 1);

    let _heal = HealOnDrop(db_path(&group[l]));
    failpoints::arm(&db_path(&group[l]), Point::LogStall);
    let writer = group[l].replica.clone();
    let write = tokio::spawn(async move { writer.write(b"held".to_vec()).await });
    group[l]
        .replica
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| {
                m.replication.as_ref().is_some_and(|followers| {
                    followers.iter().filter(|(id, _)| **id != leader).count() == 2
                        && followers.iter().all(|(id, matched)| {
                            *id == leader || matched.is_some_and(|m| m.index >= next)
                        })
                })
            },
            "both followers hold the entry durably",
        )
        .await
        .expect("the entry reaches both followers while the leader's disk hangs");

    // Watched for a while: a follower told of the commit, or a leader applying before its
    // disk has the entry, would apply it within a few milliseconds. (Only while the
    // leader still leads its term: one that stepped down lets another commit it.)
    for _ in 0..10 {
        let terms: Vec<u64> =
            group.iter().map(|r| r.replica.raft().metrics().borrow().current_term).collect();
        if terms.iter().any(|t| *t != term) {
            break;
        }
        let applied = applied_indexes(&group);
        assert!(
            applied.iter().all(|index| *index < next),
            "entry {next} applied ({applied:?}) while only the followers held it durably"
        );
        assert!(!write.is_finished(), "the write was answered before the leader's disk had it");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    failpoints::heal(&db_path(&group[l]));
    let written = tokio::time::timeout(Duration::from_secs(10), write)
        .await
        .expect("answered once the disk writes again")
        .expect("write task")
        .expect("written");
    assert_eq!(written.index, next);
    assert_converged(&group, &["before".to_string(), "held".to_string()]).await;
    for running in group {
        running.stop().await;
    }
}

/// A leader whose disk hangs would go on heartbeating (its raft core does not wait for its
/// own appends) while nothing it commits is applied. It steps down instead once its log
/// writer has written nothing for two election timeouts; the others elect one of
/// themselves and go on, and the old leader rejoins once its disk writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_disk_hangs_steps_down_and_the_others_go_on() {
    let pki = Pki::new();
    let (group, leader) = start_group::<Applied>(&pki, &[1, 2, 3]).await;
    let l = group.iter().position(|r| r.replica.id() == leader).expect("the leader runs");
    let mut acked = vec!["before".to_string()];
    group[l].replica.write(b"before".to_vec()).await.expect("a write on a healthy disk");

    let _heal = HealOnDrop(db_path(&group[l]));
    failpoints::arm(&db_path(&group[l]), Point::LogStall);
    let writer = group[l].replica.clone();
    let held = tokio::spawn(async move { writer.write(b"held".to_vec()).await });
    let survivors: Vec<&Replica> = group.iter().filter(|r| r.replica.id() != leader).collect();
    wait_for_leader_other_than(&survivors, leader, Duration::from_secs(20)).await;
    assert_eq!(
        group[l].replica.consensus_metrics().stalled_log_step_downs.get(),
        1,
        "the leader stepped down for its stalled log writer"
    );
    survivors[0].replica.write(b"after".to_vec()).await.expect("the others go on");
    acked.push("after".to_string());

    failpoints::heal(&db_path(&group[l]));
    if let Ok(Ok(Ok(_))) = tokio::time::timeout(Duration::from_secs(10), held).await {
        acked.push("held".to_string());
    }
    assert_converged(&group, &acked).await;
    for running in group {
        running.stop().await;
    }
}
