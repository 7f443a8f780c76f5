//! Proposal batching on real replicas ([`federator_raft::Replica`]) over the mTLS
//! transport: concurrent writes share log entries (and, from a follower, forwards), yet
//! every writer gets the response to its own command, each command is applied exactly
//! once, in one order on every replica, and a follower's writer reads its own write.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use federator_raft::types::NodeId;
use federator_raft::{RestoreError, StateMachine};
use futures::future::join_all;
use support::{Pki, start_group};

type Running = support::Running<Counter>;

/// Counts the commands it applies and answers each with its position in the log's order
/// and the command itself, so a response shows which command it belongs to.
#[derive(Default)]
struct Counter {
    applied: u64,
    /// Every command, in apply order.
    seen: Vec<Vec<u8>>,
}

impl StateMachine for Counter {
    fn apply(&mut self, _log_index: u64, command: &[u8]) -> Vec<u8> {
        self.applied += 1;
        self.seen.push(command.to_vec());
        let mut response = format!("{}:", self.applied).into_bytes();
        response.extend_from_slice(command);
        response
    }

    fn snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(&(self.applied, &self.seen)).expect("encode")
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        (self.applied, self.seen) = postcard::from_bytes(snapshot).map_err(RestoreError::new)?;
        Ok(())
    }
}

fn replica(group: &[Running], id: NodeId) -> &Running {
    group.iter().find(|r| r.replica.id() == id).expect("replica of the group")
}

/// Writes `count` distinct commands concurrently through `writers` (round robin) and
/// checks each answer names its own command; returns the positions answered.
async fn write_concurrently(writers: &[&Running], tag: &str, count: usize) -> Vec<u64> {
    let writes = (0..count).map(|i| {
        let replica = writers[i % writers.len()].replica.clone();
        let command = format!("{tag}-{i}").into_bytes();
        async move {
            let outcome = replica.write(command.clone()).await.expect("write commits");
            let text = String::from_utf8(outcome.response).expect("utf-8 response");
            let (position, echoed) = text.split_once(':').expect("position:command");
            assert_eq!(echoed.as_bytes(), command, "a writer got another command's response");
            // Read your writes, on whichever replica took the write.
            let applied = replica.state().read(|c| c.applied);
            let position: u64 = position.parse().expect("position");
            assert!(applied >= position, "{applied} < {position} after the write returned");
            position
        }
    });
    tokio::time::timeout(Duration::from_secs(60), join_all(writes)).await.expect("writes in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_entries_and_each_gets_its_own_response() {
    let pki = Pki::new();
    let (group, leader) = start_group::<Counter>(&pki, &[1, 2, 3]).await;
    let leader = replica(&group, leader);
    let followers: Vec<&Running> =
        group.iter().filter(|r| r.replica.id() != leader.replica.id()).collect();
    let first_index = leader.replica.raft().metrics().borrow().last_log_index.unwrap_or(0);

    // On the leader, on a follower (forwarded in batches), and on all three at once.
    let mut positions = write_concurrently(&[leader], "leader", 300).await;
    positions.extend(write_concurrently(&[followers[0]], "follower", 300).await);
    positions.extend(write_concurrently(&group.iter().collect::<Vec<_>>(), "all", 300).await);

    // Each command applied exactly once: the answered positions are 1..=900.
    let unique: BTreeSet<u64> = positions.iter().copied().collect();
    assert_eq!(unique.len(), 900, "a position was answered twice");
    assert_eq!(unique.first().copied(), Some(1));
    assert_eq!(unique.last().copied(), Some(900));

    // Fewer entries than writes: concurrent writes shared entries.
    let last_index = leader.replica.raft().metrics().borrow().last_log_index.unwrap_or(0);
    let entries = last_index - first_index;
    assert!(entries < 450, "{entries} entries for 900 concurrent writes: no batching");
    // The same commands in the same order everywhere.
    let leader_seen = leader.replica.state().read(|c| c.seen.clone());
    assert_eq!(leader_seen.len(), 900);
    for running in &group {
        running
            .replica
            .raft()
            .wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(last_index), "every write applied")
            .await
            .expect("applied everywhere");
        assert_eq!(running.replica.state().read(|c| c.seen.clone()), leader_seen);
    }
    for running in group {
        running.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_one_after_the_other_commit_in_that_order() {
    let pki = Pki::new();
    let (group, leader) = start_group::<Counter>(&pki, &[1, 2, 3]).await;
    let leader = replica(&group, leader);
    let follower = group.iter().find(|r| r.replica.id() != leader.replica.id()).expect("follower");

    // Many queued before the first is awaited, each big enough to be an entry of its own
    // now and then: they commit in the order queued.
    let mut queued = Vec::new();
    for i in 0..64 {
        let mut command = format!("chunk-{i:02}:").into_bytes();
        command.resize(if i % 4 == 0 { 300 * 1024 } else { 16 }, b'x');
        queued.push(leader.replica.queue_here(command).await.expect("queued"));
    }
    let mut positions = Vec::new();
    for (i, write) in queued.into_iter().enumerate() {
        let outcome = tokio::time::timeout(Duration::from_secs(30), write.outcome())
            .await
            .expect("in time")
            .expect("commits");
        let text = String::from_utf8_lossy(&outcome.response).into_owned();
        let (position, echoed) = text.split_once(':').expect("position:command");
        assert!(echoed.starts_with(&format!("chunk-{i:02}")), "write {i} answered {echoed:.12}");
        positions.push(position.parse::<u64>().expect("position"));
    }
    assert!(positions.windows(2).all(|w| w[0] + 1 == w[1]), "out of order: {positions:?}");

    // A follower never forwards them: it refuses, naming the leader.
    let refused = follower.replica.queue_here(b"elsewhere".to_vec()).await.expect("queued");
    let error = refused.outcome().await.expect_err("a follower refuses");
    assert!(
        matches!(error, federator_raft::ReplicaError::NotLeader { leader_id, .. }
            if leader_id == leader.replica.id()),
        "{error}"
    );
    for running in group {
        running.stop().await;
    }
}

/// A replica's own tasks (check-quorum, metrics, the proposal loop and its batches) are
/// joined by its shutdown: none outlives it, on the leader or on a follower that
/// forwarded writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_a_replica_down_leaves_none_of_its_tasks_running() {
    let pki = Pki::new();
    let (group, _) = start_group::<Counter>(&pki, &[1, 2, 3]).await;
    let writers: Vec<&Running> = group.iter().collect();
    write_concurrently(&writers, "before-stop", 30).await;
    for running in &group {
        assert!(running.replica.running_tasks() >= 3, "background tasks and proposal loop run");
    }
    for running in group {
        let replica = running.replica.clone();
        running.stop().await;
        assert_eq!(replica.running_tasks(), 0, "replica {} left tasks running", replica.id());
    }
}
