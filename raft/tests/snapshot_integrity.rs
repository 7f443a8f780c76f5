//! Snapshot files are checked against the SHA-256 stored with their metadata (issue 24):
//! one digit flipped inside a replica's `snapshots/*.snap` is a state that still decodes,
//! to a wrong value. A replica whose current snapshot does not match refuses to start,
//! naming the file and what to do, instead of serving that state; following the remedy
//! (remove, wipe, add again) brings it back with the leader's snapshot. A leader whose
//! file was damaged while it ran never sends it: it stops, as on any storage fault, and
//! the group goes on without it.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use federator_raft::metrics::ConsensusMetrics;
use federator_raft::types::NodeId;
use federator_raft::{
    Consistency, Replica, ReplicaConfig, ReplicaError, RestoreError, StateMachine,
};
use support::{Pki, Running, start, start_group};

/// Accounts and their balances; commands are `name=value`. Its snapshot is text, one
/// `name=value` line per account, so a flipped digit still decodes — to a wrong balance.
#[derive(Default)]
struct Ledger(BTreeMap<String, String>);

impl StateMachine for Ledger {
    fn apply(&mut self, _log_index: u64, command: &[u8]) -> Vec<u8> {
        let Some((name, value)) = std::str::from_utf8(command).ok().and_then(|c| c.split_once('='))
        else {
            return b"error: not name=value".to_vec();
        };
        self.0.insert(name.to_owned(), value.to_owned());
        Vec::new()
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.iter().map(|(name, value)| format!("{name}={value}\n")).collect::<String>().into()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let text = std::str::from_utf8(snapshot).map_err(RestoreError::new)?;
        self.0 = text
            .lines()
            .map(|line| {
                let (name, value) = line.split_once('=').ok_or("a line without '='")?;
                Ok((name.to_owned(), value.to_owned()))
            })
            .collect::<Result<_, &str>>()
            .map_err(RestoreError::new)?;
        Ok(())
    }
}

/// Writes the balance the tests check, then other accounts.
async fn write_ledger(replica: &Replica<Ledger>) {
    replica.write(b"balance=1000".to_vec()).await.expect("write the balance");
    for i in 0..30 {
        replica.write(format!("account-{i}={}", 7 * i).into_bytes()).await.expect("write");
    }
}

/// The balance `replica` serves to a linearizable read.
async fn balance(replica: &Replica<Ledger>) -> Option<String> {
    let (balance, _) = replica
        .read(Consistency::Linearizable, |ledger| ledger.0.get("balance").cloned())
        .await
        .expect("linearizable read");
    balance
}

/// The current snapshot file in data directory `dir`.
fn snapshot_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir.join("snapshots"))
        .expect("read the snapshot directory")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "snap"))
        .collect();
    assert_eq!(files.len(), 1, "one current snapshot file: {files:?}");
    files.into_iter().next().expect("one file")
}

/// Flips the last digit of `balance=1000` in the file at `path` to `1001`.
fn flip_a_digit(path: &Path) {
    let mut bytes = std::fs::read(path).expect("read the snapshot file");
    let at = bytes
        .windows(b"balance=1000".len())
        .position(|w| w == b"balance=1000")
        .expect("the balance is in the snapshot");
    bytes[at + b"balance=1000".len() - 1] = b'1';
    std::fs::write(path, bytes).expect("damage the snapshot file");
}

/// Opens replica `id` from data directory `dir` as the server would, retrying while a
/// stopped replica's last handles still hold the database; returns the first other
/// outcome.
async fn open_replica(
    pki: &Pki,
    id: NodeId,
    dir: &Path,
    addr: &str,
) -> Result<Replica<Ledger>, ReplicaError> {
    let config = ReplicaConfig::new(id, addr, dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let opened = Replica::open(
            config.clone(),
            Ledger::default(),
            pki.client_tls(),
            ConsensusMetrics::default(),
        )
        .await;
        match opened {
            Err(error) if !error.to_string().contains("snapshot") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            opened => return opened,
        }
    }
}

/// Waits until `running`'s raft core has stopped, and returns why.
async fn stopped_because(running: &Running<Ledger>) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Err(fatal) = &running.replica.raft().metrics().borrow().running_state {
            return fatal.to_string();
        }
        assert!(Instant::now() < deadline, "replica {} did not stop", running.replica.id());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_snapshot_file_was_damaged_refuses_to_start_and_is_recovered_from_the_leader()
 {
    let pki = Pki::new();
    let (mut group, leader) = start_group::<Ledger>(&pki, &[1, 2, 3]).await;
    write_ledger(&group[0].replica).await;
    let position = group.iter().position(|r| r.replica.id() != leader).expect("a follower");
    let victim = group[position].replica.id();
    // The follower snapshots what it applied and purges the log behind it; so does the
    // leader, which must then send a snapshot to a replica that has nothing.
    assert_eq!(balance(&group[position].replica).await.as_deref(), Some("1000"));
    group[position].replica.snapshot_now(true).await.expect("follower snapshot");
    let leader_at = group.iter().position(|r| r.replica.id() == leader).expect("leader");
    group[leader_at].replica.snapshot_now(true).await.expect("leader snapshot");

    let stopped = group.remove(position);
    let addr = stopped.replica.raft_addr().to_string();
    let dir = stopped.stop().await;
    let path = snapshot_file(dir.path());
    flip_a_digit(&path);
    let damaged = std::fs::read(&path).expect("read");

    let error = open_replica(&pki, victim, dir.path(), &addr)
        .await
        .err()
        .expect("a replica must not start from a corrupt snapshot");
    let message = error.to_string();
    for part in [
        path.display().to_string(),
        "is corrupt: expected".to_owned(),
        "SHA-256".to_owned(),
        "remove-member".to_owned(),
        "add-member".to_owned(),
    ] {
        assert!(message.contains(&part), "{message:?} should contain {part:?}");
    }
    assert_eq!(std::fs::read(&path).expect("the file is kept"), damaged, "left for the operator");

    // The remedy the error names: remove it, wipe its data, add it again.
    let leader_at = group.iter().position(|r| r.replica.id() == leader).expect("leader");
    group[leader_at].replica.remove_member(victim).await.expect("remove the replica");
    drop(dir);
    let fresh = start::<Ledger>(&pki, victim).await;
    let fresh_addr = fresh.replica.raft_addr().to_string();
    group[leader_at].replica.add_member(victim, fresh_addr, false).await.expect("add it again");
    assert_eq!(balance(&fresh.replica).await.as_deref(), Some("1000"));
    assert!(
        fresh.replica.metrics().borrow().snapshot.is_some(),
        "it caught up from the leader's snapshot"
    );
    fresh.stop().await;
    for running in group {
        running.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_snapshot_file_was_damaged_never_sends_it() {
    let pki = Pki::new();
    let (mut group, leader) = start_group::<Ledger>(&pki, &[1, 2, 3]).await;
    write_ledger(&group[0].replica).await;
    let leader_at = group.iter().position(|r| r.replica.id() == leader).expect("leader");
    // Only the leader snapshots and purges its log: a new replica needs its snapshot.
    group[leader_at].replica.snapshot_now(true).await.expect("leader snapshot");
    let path = snapshot_file(group[leader_at].dir.path());
    flip_a_digit(&path);

    let learner = start::<Ledger>(&pki, 4).await;
    let learner_addr = learner.replica.raft_addr().to_string();
    // The leader reads its snapshot to send it, finds the damage and stops.
    let adding = {
        let leader = group[leader_at].replica.clone();
        let addr = learner_addr.clone();
        tokio::spawn(async move { leader.add_member(4, addr, true).await })
    };
    let why = stopped_because(&group[leader_at]).await;
    assert!(why.contains(&path.display().to_string()), "{why}");
    assert!(why.contains("is corrupt"), "{why}");
    let _ = adding.await;
    let stopped = group.remove(leader_at);

    // The others elect a leader, whose log still holds everything, and it brings the
    // learner up (adding it again if the old leader's change did not reach them).
    let mut new_leader = None;
    for survivor in &group {
        let metrics = survivor
            .replica
            .raft()
            .wait(Some(Duration::from_secs(20)))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != leader),
                "a leader other than the stopped one",
            )
            .await
            .expect("the others elect a leader");
        new_leader = new_leader.or(metrics.current_leader);
    }
    let new_leader = new_leader.expect("a new leader");
    let at = group.iter().position(|r| r.replica.id() == new_leader).expect("new leader");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = group[at].replica.metrics().borrow().clone();
        if metrics.membership_config.membership().get_node(&4).is_some() {
            break;
        }
        match group[at].replica.add_member(4, learner_addr.clone(), true).await {
            Ok(_) => break,
            Err(error) => {
                assert!(Instant::now() < deadline, "cannot add the learner: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let served = learner.replica.state().read(|ledger| ledger.0.get("balance").cloned());
        assert_ne!(served.as_deref(), Some("1001"), "the damaged snapshot was installed");
        if served.as_deref() == Some("1000") && learner.replica.state().read(|l| l.0.len()) == 31 {
            break;
        }
        assert!(Instant::now() < deadline, "the learner did not catch up: {served:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    learner.stop().await;
    stopped.stop().await;
    for running in group {
        running.stop().await;
    }
}
