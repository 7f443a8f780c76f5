//! Golden fixtures of what a replica writes to its raft database and sends on the
//! transport in postcard: log entries of each payload kind (entry format 2), the vote,
//! a log id and snapshot metadata, as this version encodes them, under `tests/golden/`.
//!
//! The next version must read a log this one wrote (a rolling upgrade restarts each
//! replica on its own database), so these files are never regenerated to make a test
//! pass: a change that fails here changes the stored format and needs a new entry format
//! number read beside the old one (as format 1 still is) — see `docs/upgrading.md`.
//! `FEDERATOR_BLESS_GOLDEN=1 cargo test -p federator-raft --test golden` writes missing
//! files and never overwrites one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use federator_raft::Command;
use federator_raft::types::{Entry, LogId, Membership, Node, SnapshotMeta, StoredMembership, Vote};
use openraft::{CommittedLeaderId, EntryPayload};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The fixture `name`, written first when blessing and it does not exist.
fn fixture(name: &str, current: &[u8]) -> Vec<u8> {
    let path = dir().join(name);
    if !path.exists() && std::env::var_os("FEDERATOR_BLESS_GOLDEN").is_some() {
        std::fs::create_dir_all(dir()).expect("golden directory");
        std::fs::write(&path, current).expect("write fixture");
    }
    std::fs::read(&path).unwrap_or_else(|error| {
        panic!(
            "golden fixture {} is missing ({error}); a new stored type adds its own with \
             FEDERATOR_BLESS_GOLDEN=1",
            path.display()
        )
    })
}

/// Decodes fixture `name` as a `T`, checks it is `value`, and that `value` encodes to it.
fn round_trips<T>(name: &str, value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let current = postcard::to_stdvec(value).expect("encodes");
    let golden = fixture(name, &current);
    let decoded: T = postcard::from_bytes(&golden)
        .unwrap_or_else(|error| panic!("{name} no longer decodes: {error}"));
    assert_eq!(&decoded, value, "{name} decodes to something else");
    assert_eq!(current, golden, "{name}: this build encodes it differently");
}

fn log_id(term: u64, node: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

fn membership() -> Membership {
    let voters = BTreeSet::from([1, 2, 3]);
    let nodes: BTreeMap<u64, Node> =
        (1..=4).map(|id| (id, Node { addr: format!("127.0.0.1:{}", 7000 + id) })).collect();
    Membership::new(vec![voters], nodes)
}

#[test]
fn log_entries_of_every_payload_decode_from_their_fixtures() {
    let blank = Entry { log_id: log_id(3, 1, 17), payload: EntryPayload::Blank };
    round_trips("entry-blank.bin", &blank);
    let commands = Command(vec![
        serde_bytes::ByteBuf::from(b"first command".to_vec()),
        serde_bytes::ByteBuf::from((0..=255).collect::<Vec<u8>>()),
    ]);
    let normal = Entry { log_id: log_id(3, 1, 18), payload: EntryPayload::Normal(commands) };
    round_trips("entry-normal.bin", &normal);
    let change =
        Entry { log_id: log_id(4, 2, 19), payload: EntryPayload::Membership(membership()) };
    round_trips("entry-membership.bin", &change);
}

#[test]
fn the_vote_log_ids_and_snapshot_metadata_decode_from_their_fixtures() {
    let mut vote = Vote::new(5, 2);
    round_trips("vote.bin", &vote);
    vote.commit();
    round_trips("vote-committed.bin", &vote);
    round_trips("log-id.bin", &log_id(5, 2, 1234));
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(5, 2, 1200)),
        last_membership: StoredMembership::new(Some(log_id(4, 2, 19)), membership()),
        snapshot_id: "5-2-1200-7".into(),
    };
    round_trips("snapshot-meta.bin", &meta);
}
