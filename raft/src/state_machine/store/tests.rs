//! Tests of the state machine store: apply (inline or on the blocking pool, stopping at a
//! command this build cannot apply), snapshot build, install and persistence, against a
//! key-value state machine.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{CommittedLeaderId, Membership};
use redb::ReadableDatabase as _;
use tempfile::TempDir;

use super::*;
use crate::log_store::open_database;
use crate::snapshot_files::Checksum;
use crate::state_machine::RestoreError;
use crate::state_machine::snapshot_store::{
    DuringOp as _, SNAPSHOT, SNAPSHOT_CHECKSUM_KEY, SNAPSHOT_DATA_KEY, SNAPSHOT_META_KEY, write_txn,
};
use crate::types::Command;

/// A key-value map whose commands are `key=value` bytes.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
struct Kv(BTreeMap<String, String>);

impl StateMachine for Kv {
    fn apply(&mut self, _log_index: u64, command: &[u8]) -> Vec<u8> {
        APPLIED_ON.lock().expect("record").push((command.to_vec(), std::thread::current().id()));
        let Some((key, value)) = std::str::from_utf8(command).ok().and_then(|c| c.split_once('='))
        else {
            return b"error".to_vec();
        };
        self.0.insert(key.to_owned(), value.to_owned()).unwrap_or_default().into_bytes()
    }

    fn snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(&self.0).expect("encode")
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        self.0 = postcard::from_bytes(snapshot).map_err(RestoreError::new)?;
        Ok(())
    }

    fn cheap_to_apply(command: &[u8]) -> bool {
        !command.starts_with(b"slow")
    }

    fn check_applicable(&self, command: &[u8]) -> Result<(), NotApplicable> {
        if command.starts_with(b"v2:") {
            return Err(NotApplicable("kind v2 is newer than this build".into()));
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_command_this_build_cannot_apply_stops_the_apply_before_it() {
    let dir = TempDir::new().expect("tempdir");
    let mut store = open(&dir);
    let error = store
        .apply([normal(1, 1, "a=1"), normal(1, 2, "v2:x=1"), normal(1, 3, "b=2")])
        .await
        .expect_err("an entry it cannot apply is an error, not a skipped command");
    let text = error.to_string();
    assert!(text.contains("kind v2 is newer") && text.contains("entry 2"), "{text}");
    assert_eq!(store.applied(), Some(log_id(1, 1)), "applied up to the entry before it");
    assert_eq!(store.read(|kv| kv.0.get("b").cloned()), None, "nothing after it");
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 0), index)
}

fn normal(term: u64, index: u64, data: &str) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Command::single(data.as_bytes().to_vec())),
    }
}

fn membership(term: u64, index: u64, voters: &[u64]) -> Entry {
    let voters: BTreeSet<u64> = voters.iter().copied().collect();
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], None)),
    }
}

fn db(dir: &TempDir) -> Arc<Database> {
    open_database(&dir.path().join("raft.redb")).expect("open database")
}

fn snapshots(dir: &TempDir) -> std::path::PathBuf {
    dir.path().join("snapshots")
}

fn open(dir: &TempDir) -> StateMachineStore<Kv> {
    StateMachineStore::open(db(dir), &snapshots(dir), Kv::default(), ConsensusMetrics::default())
        .expect("open state machine store")
}

#[test]
fn only_small_entries_of_cheap_commands_apply_inline() {
    let blank = Entry { log_id: log_id(1, 1), payload: EntryPayload::Blank };
    assert!(applies_inline::<Kv>(&[blank, membership(1, 2, &[1]), normal(1, 3, "a=1")]));
    assert!(!applies_inline::<Kv>(&[normal(1, 1, "a=1"), normal(1, 2, "slow=1")]));
    let half = format!("a={}", "x".repeat(INLINE_APPLY_BYTES / 2));
    assert!(applies_inline::<Kv>(&[normal(1, 1, &half)]));
    assert!(!applies_inline::<Kv>(&[normal(1, 1, &half), normal(1, 2, &half)]));
    // The default: nothing is cheap.
    #[derive(Default)]
    struct Plain;
    impl StateMachine for Plain {
        fn apply(&mut self, _: u64, _: &[u8]) -> Vec<u8> {
            Vec::new()
        }
        fn snapshot(&self) -> Vec<u8> {
            Vec::new()
        }
        fn restore(&mut self, _: &[u8]) -> Result<(), RestoreError> {
            Ok(())
        }
    }
    assert!(!applies_inline::<Plain>(&[normal(1, 1, "a=1")]));
}

/// The thread each command was applied on, by command (tests run at once: each uses
/// commands of its own).
static APPLIED_ON: std::sync::Mutex<Vec<(Vec<u8>, std::thread::ThreadId)>> =
    std::sync::Mutex::new(Vec::new());

fn applied_on(command: &str) -> Option<std::thread::ThreadId> {
    let record = APPLIED_ON.lock().expect("record");
    record.iter().rev().find(|(c, _)| c == command.as_bytes()).map(|(_, thread)| *thread)
}

#[tokio::test]
async fn cheap_entries_apply_on_the_raft_task_unless_a_reader_holds_the_state() {
    let dir = TempDir::new().expect("tempdir");
    let mut store = open(&dir);
    // A current-thread runtime: the raft task runs on this thread; the blocking pool
    // on others.
    let here = std::thread::current().id();
    store.apply([normal(1, 1, "inline=1")]).await.expect("apply");
    assert_eq!(applied_on("inline=1"), Some(here));
    store.apply([normal(1, 2, "slow=1")]).await.expect("apply");
    assert_ne!(applied_on("slow=1"), Some(here));
    assert!(applied_on("slow=1").is_some());
    let big = format!("big={}", "x".repeat(INLINE_APPLY_BYTES));
    store.apply([normal(1, 3, &big)]).await.expect("apply");
    assert_ne!(applied_on(&big), Some(here));

    // A reader holds the state: the entry waits for it on the blocking pool, never
    // on the raft task.
    let (held, hold) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let reader = store.clone();
    let holder = std::thread::spawn(move || {
        reader.read(|_| {
            held.send(()).expect("held");
            released.recv_timeout(Duration::from_secs(10)).expect("release");
        });
    });
    hold.recv().expect("reader holds the state");
    let apply = tokio::spawn({
        let mut store = store.clone();
        async move { store.apply([normal(1, 4, "waited=1")]).await.expect("apply") }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!apply.is_finished(), "applied while a reader held the state");
    release.send(()).expect("release");
    apply.await.expect("apply task");
    holder.join().expect("holder");
    assert_ne!(applied_on("waited=1"), Some(here));
    assert_eq!(store.shared.metrics.applies_inline.get(), 1, "one batch applied inline");
    assert_eq!(store.applied(), Some(log_id(1, 4)));
    assert_eq!(store.read(|kv| kv.0.len()), 4);
}

#[tokio::test]
async fn apply_answers_each_entry_and_tracks_applied_and_membership() {
    let dir = TempDir::new().expect("tempdir");
    let mut store = open(&dir);
    let responses = store
        .apply([
            Entry { log_id: log_id(1, 1), payload: EntryPayload::Blank },
            membership(1, 2, &[1, 2, 3]),
            normal(1, 3, "a=1"),
            normal(1, 4, "a=2"),
            normal(1, 5, "garbage"),
            Entry {
                log_id: log_id(1, 6),
                payload: EntryPayload::Normal(Command(vec![
                    ByteBuf::from(b"a=3".to_vec()),
                    ByteBuf::from(b"b=1".to_vec()),
                ])),
            },
        ])
        .await
        .expect("apply");
    let bodies: Vec<Vec<&[u8]>> =
        responses.iter().map(|r| r.0.iter().map(|b| b.as_slice()).collect()).collect();
    let none: Vec<&[u8]> = Vec::new();
    assert_eq!(
        bodies,
        [none.clone(), none, vec![&b""[..]], vec![b"1"], vec![b"error"], vec![b"2", b""]]
    );
    assert_eq!(store.applied(), Some(log_id(1, 6)));
    assert_eq!(store.read_with_applied(|kv| kv.0.len()), (2, 6));
    let (applied, last_membership) = store.applied_state().await.expect("applied state");
    assert_eq!(applied, Some(log_id(1, 6)));
    assert_eq!(last_membership.log_id(), &Some(log_id(1, 2)));
    assert_eq!(store.read(|kv| kv.0.get("a").cloned()), Some("3".to_owned()));
    let mut registry = prometheus_client::registry::Registry::default();
    store.shared.metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode metrics");
    assert!(text.contains("raft_apply_duration_seconds_count 1\n"), "{text}");
    assert!(text.contains("raft_applies_inline_total 1\n"), "{text}");

    let (digest_applied, digest) = store.digest();
    assert_eq!(digest_applied, Some(log_id(1, 6)));
    assert_eq!(digest, store.read(StateMachine::digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_digest_is_computed_in_the_background_and_follows_the_state() {
    let dir = TempDir::new().expect("tempdir");
    let mut store = open(&dir);
    store.apply([normal(1, 1, "a=1")]).await.expect("apply");
    // The first call has nothing yet and starts a refresh; a later call sees it.
    let reader = store.clone();
    let wait_for = |applied: u64| {
        let store = reader.clone();
        async move {
            for _ in 0..500 {
                if let Some((at, digest)) = store.digest_cached(Duration::ZERO)
                    && at == Some(log_id(1, applied))
                {
                    return digest;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("no background digest at index {applied} within 5 s");
        }
    };
    assert_eq!(wait_for(1).await, store.read(StateMachine::digest));
    // Within its max age the cached digest is answered as it is, index and all.
    store.apply([normal(1, 2, "b=2")]).await.expect("apply");
    let (at, _) = store.digest_cached(Duration::from_secs(3600)).expect("cached");
    assert_eq!(at, Some(log_id(1, 1)));
    // Older than the max age: refreshed to the applied state.
    assert_eq!(wait_for(2).await, store.read(StateMachine::digest));
}

#[tokio::test]
async fn snapshot_is_persisted_and_restored_on_reopen() {
    let dir = TempDir::new().expect("tempdir");
    let (state, applied, built) = {
        let mut store = open(&dir);
        store
            .apply([membership(1, 1, &[1]), normal(1, 2, "a=1"), normal(2, 3, "b=2")])
            .await
            .expect("apply");
        let built = store.build_snapshot().await.expect("build snapshot");
        assert_eq!(store.shared.metrics.snapshots_built.get(), 1);
        assert!(built.meta.snapshot_id.starts_with("2-3-"), "{}", built.meta.snapshot_id);
        (store.read(Kv::clone), store.applied(), built)
    };

    let mut store = open(&dir);
    assert_eq!(store.read(Kv::clone), state);
    assert_eq!(store.applied(), applied);
    let (_, last_membership) = store.applied_state().await.expect("applied state");
    assert_eq!(last_membership, built.meta.last_membership);
    let current = store.get_current_snapshot().await.expect("read").expect("a snapshot");
    assert_eq!(current.meta, built.meta);
    assert_eq!(current.snapshot.into_inner(), built.snapshot.into_inner());
}

#[tokio::test]
async fn installed_snapshot_replaces_state_and_survives_reopen() {
    let leader_dir = TempDir::new().expect("tempdir");
    let mut leader = open(&leader_dir);
    leader.apply([membership(1, 1, &[1, 2]), normal(1, 2, "x=9")]).await.expect("apply");
    let snapshot = leader.build_snapshot().await.expect("build");

    let dir = TempDir::new().expect("tempdir");
    {
        let mut follower = open(&dir);
        follower.apply([normal(1, 1, "stale=1")]).await.expect("apply");
        let mut received = follower.begin_receiving_snapshot().await.expect("begin");
        *received = *snapshot.snapshot;
        follower.install_snapshot(&snapshot.meta, received).await.expect("install");
        assert_eq!(follower.read(Kv::clone), leader.read(Kv::clone));
        assert_eq!(follower.shared.metrics.snapshots_installed.get(), 1);
    }
    let follower = open(&dir);
    assert_eq!(follower.read(Kv::clone), leader.read(Kv::clone));
    assert_eq!(follower.digest(), leader.digest());
}

#[tokio::test]
async fn older_snapshot_does_not_replace_a_newer_one() {
    let dir = TempDir::new().expect("tempdir");
    let mut store = open(&dir);
    let meta = |index, id: &str| SnapshotMeta {
        last_log_id: Some(log_id(1, index)),
        last_membership: StoredMembership::default(),
        snapshot_id: id.to_owned(),
    };
    assert!(
        store
            .shared
            .snapshots
            .persist(&meta(5, "new"), Arc::new(b"new".to_vec()))
            .await
            .expect("persist")
    );
    assert!(
        !store
            .shared
            .snapshots
            .persist(&meta(4, "old"), Arc::new(b"old".to_vec()))
            .await
            .expect("persist")
    );
    let current = store.get_current_snapshot().await.expect("read").expect("a snapshot");
    assert_eq!(current.meta.snapshot_id, "new");
    assert_eq!(current.snapshot.into_inner(), b"new");
    assert_eq!(
        files_in(&dir),
        [store.shared.snapshots.files.path("new")],
        "the loser's file is gone"
    );
}

/// The snapshot directory's files, sorted.
fn files_in(dir: &TempDir) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(snapshots(dir))
        .expect("read the snapshot directory")
        .map(|entry| entry.expect("entry").path())
        .collect();
    files.sort();
    files
}

fn snapshot_meta(index: u64, id: &str) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: Some(log_id(1, index)),
        last_membership: StoredMembership::default(),
        snapshot_id: id.to_owned(),
    }
}

fn kv_bytes(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut kv = Kv::default();
    for (key, value) in pairs {
        kv.0.insert((*key).to_owned(), (*value).to_owned());
    }
    kv.snapshot()
}

#[tokio::test]
async fn snapshot_data_is_a_file_and_only_the_current_one_stays() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let first = kv_bytes(&[("a", "1")]);
    assert!(
        store
            .shared
            .snapshots
            .persist(&snapshot_meta(5, "1-5-1"), Arc::new(first.clone()))
            .await
            .expect("persist")
    );
    let path = store.shared.snapshots.files.path("1-5-1");
    assert_eq!(std::fs::read(&path).expect("the data file"), first);
    assert!(
        store
            .shared
            .snapshots
            .persist(&snapshot_meta(8, "1-8-2"), Arc::new(kv_bytes(&[("b", "2")])))
            .await
            .expect("persist")
    );
    assert_eq!(
        files_in(&dir),
        [store.shared.snapshots.files.path("1-8-2")],
        "the replaced one is removed"
    );
    // The database holds the metadata only.
    let txn = store.shared.snapshots.db.begin_read().expect("read");
    let table = txn.open_table(SNAPSHOT).expect("table");
    assert!(table.get(SNAPSHOT_DATA_KEY).expect("get").is_none());
}

#[tokio::test]
async fn a_crash_between_the_file_and_the_metadata_keeps_the_previous_snapshot() {
    let dir = TempDir::new().expect("tempdir");
    let current = kv_bytes(&[("a", "1")]);
    {
        let store = open(&dir);
        assert!(
            store
                .shared
                .snapshots
                .persist(&snapshot_meta(5, "1-5-1"), Arc::new(current.clone()))
                .await
                .expect("persist")
        );
        // Step 1 of a newer snapshot done, the process dies before step 2; and a file
        // it was still writing.
        store.shared.snapshots.files.write("1-9-2", &kv_bytes(&[("b", "2")])).expect("write");
        std::fs::write(snapshots(&dir).join("snapshot-3a.tmp"), b"half").expect("half a file");
    }
    let mut store = open(&dir);
    assert_eq!(store.read(|kv| kv.snapshot()), current, "the previous snapshot is current");
    let loaded = store.get_current_snapshot().await.expect("read").expect("a snapshot");
    assert_eq!(loaded.meta.snapshot_id, "1-5-1");
    assert_eq!(
        files_in(&dir),
        [store.shared.snapshots.files.path("1-5-1")],
        "the leftovers are removed"
    );
}

#[tokio::test]
async fn a_store_from_before_snapshot_files_loads_and_moves_its_data_out() {
    let dir = TempDir::new().expect("tempdir");
    let old = kv_bytes(&[("a", "1")]);
    {
        // What the store wrote before snapshot files: metadata and data in the database.
        let db = db(&dir);
        write_txn(&db, "write a store of the old layout", |txn| {
            let mut table = txn.open_table(SNAPSHOT).during("open")?;
            let meta = postcard::to_allocvec(&snapshot_meta(5, "1-5-1")).expect("encode");
            table.insert(SNAPSHOT_META_KEY, meta.as_slice()).during("meta")?;
            table.insert(SNAPSHOT_DATA_KEY, old.as_slice()).during("data")?;
            Ok(())
        })
        .expect("old layout");
    }
    let mut store = open(&dir);
    assert_eq!(store.read(|kv| kv.snapshot()), old);
    let loaded = store.get_current_snapshot().await.expect("read").expect("a snapshot");
    assert_eq!(loaded.snapshot.into_inner(), old);
    assert!(
        store
            .shared
            .snapshots
            .persist(&snapshot_meta(7, "1-7-2"), Arc::new(kv_bytes(&[("b", "2")])))
            .await
            .expect("persist")
    );
    let txn = store.shared.snapshots.db.begin_read().expect("read");
    let table = txn.open_table(SNAPSHOT).expect("table");
    assert!(table.get(SNAPSHOT_DATA_KEY).expect("get").is_none(), "the old data is dropped");
    drop((table, txn));
    assert_eq!(files_in(&dir), [store.shared.snapshots.files.path("1-7-2")]);
}

#[tokio::test]
async fn a_snapshot_whose_file_is_gone_fails_open_naming_the_file() {
    let dir = TempDir::new().expect("tempdir");
    {
        let store = open(&dir);
        assert!(
            store
                .shared
                .snapshots
                .persist(&snapshot_meta(5, "1-5-1"), Arc::new(kv_bytes(&[("a", "1")])))
                .await
                .expect("persist")
        );
        std::fs::remove_file(store.shared.snapshots.files.path("1-5-1"))
            .expect("an operator's mistake");
    }
    let error = StateMachineStore::open(
        db(&dir),
        &snapshots(&dir),
        Kv::default(),
        ConsensusMetrics::default(),
    )
    .err()
    .expect("no data, no start");
    let message = error.to_string();
    assert!(message.contains("1-5-1") && message.contains("no data file"), "{message}");
}

#[tokio::test]
async fn undecodable_snapshot_is_an_error_not_a_panic() {
    let dir = TempDir::new().expect("tempdir");
    let mut store = open(&dir);
    store.apply([normal(1, 1, "a=1")]).await.expect("apply");
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(1, 9)),
        last_membership: StoredMembership::default(),
        snapshot_id: "1-9-corrupt".to_owned(),
    };

    let error = store
        .install_snapshot(&meta, Box::new(Cursor::new(vec![0xff; 3])))
        .await
        .expect_err("garbage must not install");
    assert!(error.to_string().contains("1-9-corrupt"), "{error}");
    assert_eq!(store.applied(), Some(log_id(1, 1)), "a rejected snapshot changes nothing");
    assert!(store.get_current_snapshot().await.expect("read").is_none());
    assert!(files_in(&dir).is_empty(), "nor leaves its data file");

    // A corrupt snapshot already on disk makes open fail instead of panicking.
    store.shared.snapshots.persist(&meta, Arc::new(vec![0xff; 3])).await.expect("persist garbage");
    drop(store);
    let reopened = StateMachineStore::open(
        db(&dir),
        &snapshots(&dir),
        Kv::default(),
        ConsensusMetrics::default(),
    );
    let error = reopened.err().expect("garbage must not restore");
    assert!(error.to_string().contains("1-9-corrupt"), "{error}");
}

/// Flips the last digit of the first `1000` in the file at `path`: data that still
/// decodes, to a wrong value.
fn flip_a_digit(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).expect("read the snapshot file");
    let at = bytes.windows(4).position(|w| w == b"1000").expect("a balance of 1000");
    bytes[at + 3] = b'1';
    std::fs::write(path, bytes).expect("damage the snapshot file");
}

#[tokio::test]
async fn a_corrupt_current_snapshot_is_neither_restored_nor_sent() {
    let dir = TempDir::new().expect("tempdir");
    let path = {
        let mut store = open(&dir);
        store.apply([normal(1, 1, "balance=1000"), normal(1, 2, "b=2")]).await.expect("apply");
        let built = store.build_snapshot().await.expect("build");
        let path = store.shared.snapshots.files.path(&built.meta.snapshot_id);
        let good = std::fs::read(&path).expect("the snapshot file");
        flip_a_digit(&path);
        // The damaged data still decodes, to a wrong balance: only the checksum tells.
        let mut wrong = Kv::default();
        wrong.restore(&std::fs::read(&path).expect("read")).expect("decodes");
        assert_eq!(wrong.0.get("balance").map(String::as_str), Some("1001"));

        // A leader reads its current snapshot to send it: refused.
        let error = store.get_current_snapshot().await.expect_err("not sent");
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(&Checksum::of(&good).to_string()), "{message}");
        path
    };
    // Nor restored: the replica does not open, and says why and what to do.
    let error = StateMachineStore::open(
        db(&dir),
        &snapshots(&dir),
        Kv::default(),
        ConsensusMetrics::default(),
    )
    .err()
    .expect("a corrupt snapshot must not restore");
    let message = error.to_string();
    let found = Checksum::of(&std::fs::read(&path).expect("the file is kept"));
    for part in [
        path.display().to_string(),
        "is corrupt".to_owned(),
        found.to_string(),
        "remove-member".to_owned(),
        "delete its data directory".to_owned(),
    ] {
        assert!(message.contains(&part), "{message:?} should contain {part:?}");
    }
}

#[tokio::test]
async fn a_snapshot_stored_before_checksums_still_loads() {
    let dir = TempDir::new().expect("tempdir");
    let data = kv_bytes(&[("balance", "1000")]);
    {
        let store = open(&dir);
        assert!(
            store
                .shared
                .snapshots
                .persist(&snapshot_meta(5, "1-5-1"), Arc::new(data.clone()))
                .await
                .expect("persist")
        );
        // An earlier version wrote the same file and metadata, and no checksum.
        write_txn(&store.shared.snapshots.db, "forget the checksum", |txn| {
            let mut table = txn.open_table(SNAPSHOT).during("open")?;
            table.remove(SNAPSHOT_CHECKSUM_KEY).during("remove")?;
            Ok(())
        })
        .expect("a store of the previous version");
    }
    let mut store = open(&dir);
    assert_eq!(store.read(Kv::snapshot), data, "restored unchecked");
    let loaded = store.get_current_snapshot().await.expect("read").expect("a snapshot");
    assert_eq!(loaded.snapshot.into_inner(), data, "and sent unchecked");

    // The next snapshot carries a checksum again.
    let newer = kv_bytes(&[("balance", "1000"), ("b", "2")]);
    assert!(
        store
            .shared
            .snapshots
            .persist(&snapshot_meta(9, "1-9-2"), Arc::new(newer))
            .await
            .expect("persist")
    );
    flip_a_digit(&store.shared.snapshots.files.path("1-9-2"));
    assert!(store.get_current_snapshot().await.is_err(), "checked again");
}

#[tokio::test]
async fn a_checksum_of_another_snapshot_leaves_the_current_one_legacy() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let first = kv_bytes(&[("a", "1")]);
    assert!(
        store
            .shared
            .snapshots
            .persist(&snapshot_meta(5, "1-5-1"), Arc::new(first))
            .await
            .expect("persist")
    );
    // Rolled back, an earlier version makes a newer snapshot current: metadata and
    // file, but the checksum it does not know of stays that of the first one.
    let newer = kv_bytes(&[("balance", "1000")]);
    store.shared.snapshots.files.write("1-8-2", &newer).expect("write");
    write_txn(&store.shared.snapshots.db, "an earlier version's step 2", |txn| {
        let mut table = txn.open_table(SNAPSHOT).during("open")?;
        let meta = postcard::to_allocvec(&snapshot_meta(8, "1-8-2")).expect("encode");
        table.insert(SNAPSHOT_META_KEY, meta.as_slice()).during("meta")?;
        Ok(())
    })
    .expect("an earlier version's snapshot");
    drop(store);
    let store = open(&dir);
    assert_eq!(store.read(Kv::snapshot), newer, "the newer snapshot, unchecked");
    assert_eq!(store.applied(), Some(log_id(1, 8)));
}

#[tokio::test]
async fn a_received_snapshot_the_disk_changed_is_not_installed() {
    let leader_dir = TempDir::new().expect("tempdir");
    let mut leader = open(&leader_dir);
    leader.apply([membership(1, 1, &[1, 2]), normal(1, 2, "balance=1000")]).await.expect("apply");
    let snapshot = leader.build_snapshot().await.expect("build");
    let data = snapshot.snapshot.into_inner();

    let dir = TempDir::new().expect("tempdir");
    let mut follower = open(&dir);
    follower.apply([normal(1, 1, "balance=5")]).await.expect("apply");
    // The transport writes the snapshot to its `.recv` file as it streams in; the disk
    // changes a digit of it before the install.
    let files = follower.snapshot_files();
    let receiving = files.receive(&snapshot.meta.snapshot_id).expect("receive");
    receiving.push(data.clone()).await;
    receiving.finish().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let recv = loop {
        let whole = files_in(&dir).into_iter().find(|path| {
            path.extension().is_some_and(|e| e == "recv")
                && std::fs::metadata(path).is_ok_and(|m| m.len() == data.len() as u64)
        });
        if let Some(path) = whole {
            break path;
        }
        assert!(Instant::now() < deadline, "the writer wrote the data");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    flip_a_digit(&recv);

    let error = follower
        .install_snapshot(&snapshot.meta, Box::new(Cursor::new(data.clone())))
        .await
        .expect_err("refused");
    let message = error.to_string();
    assert!(message.contains(&recv.display().to_string()), "{message}");
    assert!(message.contains(&Checksum::of(&data).to_string()), "{message}");
    assert_eq!(follower.read(|kv| kv.0.get("balance").cloned()), Some("5".to_owned()));
    assert_eq!(follower.applied(), Some(log_id(1, 1)), "nothing installed");
    assert!(follower.get_current_snapshot().await.expect("read").is_none());
    assert!(files_in(&dir).is_empty(), "the damaged file is removed");

    // Sent again (intact), it installs.
    follower.install_snapshot(&snapshot.meta, Box::new(Cursor::new(data))).await.expect("install");
    assert_eq!(follower.read(|kv| kv.0.get("balance").cloned()), Some("1000".to_owned()));
    drop(follower);
    let follower = open(&dir);
    assert_eq!(follower.read(|kv| kv.0.get("balance").cloned()), Some("1000".to_owned()));
}
