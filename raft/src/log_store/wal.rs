//! The log's redo file: what makes an append durable.
//!
//! A durable redb commit copies on write and flushes every page it touched: the log
//! table's leaf and branches, the metadata table, the table tree and the freed-page
//! table, about ten pages scattered over the file per append. On a disk shared by three
//! replicas the flush of ten scattered pages takes two to three times the flush of one
//! (BENCHMARKS.md, "The log's redo file"). So the writer commits an append to redb
//! without an fsync and makes it durable by one sequential write to this file and an
//! `fdatasync`, as etcd does with its WAL; a durable redb commit now and then (a
//! checkpoint) makes everything written so far durable in redb, and the file is written
//! again from its start.
//!
//! **The file** is zero-filled to its capacity when created, so that writing a record
//! changes no file metadata (no block is allocated, the size stays): the `fdatasync` then
//! flushes the written pages and nothing else.
//!
//! **A record** is a header — magic, payload length, the database's redo id, a sequence
//! number and a checksum (SHA-256 of id, sequence and payload, first 8 bytes) — and the
//! entries (index, length, postcard bytes each). Sequence numbers count appends over the
//! database's life; the writer records each append's number in redb ([`WAL_SEQ_KEY`])
//! in the same transaction as its entries.
//!
//! **Recovery**: redb returns to its last durable commit, which names the last sequence
//! number it holds. The records from the file's start that follow each other (each the
//! previous one's number plus one, same redo id, checksum good) are read, and those
//! after that number are written into redb again. A record that fails its checksum ends
//! the chain: it is the append that was being written when the process died, never
//! reported durable. Records of an earlier pass through the file carry smaller numbers,
//! and a file left by another database another id, so neither continues the chain.
//!
//! [`WAL_SEQ_KEY`]: super::tables::WAL_SEQ_KEY

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase as _};
use sha2::{Digest as _, Sha256};

use super::tables::{
    DuringOp as _, LOG, LOG_META, LogStoreError, WAL_ID_KEY, WAL_SEQ_KEY, decode_entry,
    encode_meta, get_meta, write_txn,
};

/// Bytes the file is created with; a batch of appends larger than this is made durable
/// by a durable redb commit instead.
pub(crate) const CAPACITY: u64 = 8 << 20;
/// Bytes written since the last checkpoint after which the writer makes one when its
/// queue is empty.
const CHECKPOINT_BYTES: u64 = 1 << 20;
/// Time since the first record after the last checkpoint after which the writer makes
/// one when its queue is empty: bounds what a restart replays and what redb holds only
/// in non-durable commits.
const CHECKPOINT_AFTER: Duration = Duration::from_secs(1);

const MAGIC: [u8; 4] = *b"FWAL";
/// magic (4), payload length (4), redo id (8), sequence number (8), checksum (8).
const HEADER: usize = 32;

/// One record read back: the entries of one append, as (index, postcard bytes).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Record {
    /// The append's sequence number.
    pub seq: u64,
    /// Its entries.
    pub entries: Vec<(u64, Vec<u8>)>,
}

/// The redo file, open for appending.
#[derive(Debug)]
pub(super) struct Wal {
    file: File,
    path: PathBuf,
    /// The database's redo id, written into every record.
    id: u64,
    /// Where the next record goes.
    position: u64,
    capacity: u64,
    /// The sequence number of the next record.
    pub next_seq: u64,
    /// When the first record since the last checkpoint was written.
    first_since_checkpoint: Option<Instant>,
    /// Where checkpoints' durations are observed, if anywhere.
    checkpoints: Option<prometheus_client::metrics::histogram::Histogram>,
}

impl Wal {
    /// Opens the redo file at `path` for the database whose redo id is `id` to be written
    /// from its start, creating it (mode 0600) and zero-filling it to `capacity` when it
    /// is missing or shorter.
    pub(super) fn create(path: &Path, id: u64, capacity: u64) -> Result<Self, LogStoreError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let io = |op| io_error(path, op);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io("open"))?;
        let len = file.metadata().map_err(io("read the size of"))?.len();
        if len < capacity {
            zero_fill(&file, len, capacity).map_err(io("zero-fill"))?;
            if let Some(dir) = path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync the directory of"))?;
            }
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            id,
            position: 0,
            capacity: capacity.max(len),
            next_seq: 0,
            first_since_checkpoint: None,
            checkpoints: None,
        })
    }

    /// Whether a record of `len` bytes fits after the ones written since the last
    /// checkpoint.
    pub(super) fn fits(&self, len: usize) -> bool {
        self.position.saturating_add(len as u64) <= self.capacity
    }

    /// Whether a record of `len` bytes fits in the file at all.
    pub(super) fn fits_at_all(&self, len: usize) -> bool {
        len as u64 <= self.capacity
    }

    /// The record of `entries` with sequence number [`Wal::next_seq`].
    pub(super) fn encode<'a>(&self, entries: impl Iterator<Item = (u64, &'a [u8])>) -> Vec<u8> {
        encode(self.id, self.next_seq, entries)
    }

    /// Writes `record` (from [`Wal::encode`], checked with [`Wal::fits`]) and waits until
    /// it is durable; the next record gets the next sequence number.
    pub(super) fn write(&mut self, record: &[u8]) -> Result<(), LogStoreError> {
        let io = |op| io_error(&self.path, op);
        self.file.write_all_at(record, self.position).map_err(io("write to"))?;
        self.file.sync_data().map_err(io("flush"))?;
        self.position += record.len() as u64;
        self.next_seq += 1;
        self.first_since_checkpoint.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Whether the writer should make a checkpoint while it has nothing else to do.
    pub(super) fn checkpoint_due(&self) -> bool {
        self.position >= CHECKPOINT_BYTES
            || self.first_since_checkpoint.is_some_and(|first| first.elapsed() >= CHECKPOINT_AFTER)
    }

    /// How long until a checkpoint is due by time; `None` when nothing was written since
    /// the last one.
    pub(super) fn checkpoint_in(&self) -> Option<Duration> {
        self.first_since_checkpoint.map(|first| CHECKPOINT_AFTER.saturating_sub(first.elapsed()))
    }

    /// Observes the duration of every checkpoint in `histogram`.
    pub(super) fn observe_checkpoints(
        &mut self,
        histogram: prometheus_client::metrics::histogram::Histogram,
    ) {
        self.checkpoints = Some(histogram);
    }

    /// Tells the file that redb holds everything written to it durably, by a checkpoint
    /// that took `took`: the next record goes to its start.
    pub(super) fn checkpointed(&mut self, took: Duration) {
        if let Some(histogram) = &self.checkpoints {
            histogram.observe(took.as_secs_f64());
        }
        self.position = 0;
        self.first_since_checkpoint = None;
    }
}

/// Reads the redo file at `path` for `db` and writes the appends it holds beyond the
/// database's last durable commit into the database, durably; returns the file, ready to
/// be written from its start, or `None` when it cannot be created or zero-filled (the
/// writer then makes every append a durable redb commit).
pub(super) fn replay(db: &Database, path: &Path) -> Result<Option<Wal>, LogStoreError> {
    let (id, durable) = {
        let txn = db.begin_read().during("begin a read transaction")?;
        let meta = txn.open_table(LOG_META).during("open the log metadata table")?;
        (get_meta::<u64>(&meta, WAL_ID_KEY)?, get_meta::<u64>(&meta, WAL_SEQ_KEY)?.unwrap_or(0))
    };
    // A new database gets a redo id of its own, so that a file another database left
    // behind is never replayed into it.
    let id = id.unwrap_or_else(rand::random);
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(io_error(path, "read")(source)),
    };
    let replay: Vec<_> =
        read_chain(&bytes, id).into_iter().filter(|record| record.seq > durable).collect();
    if let Some(first) = replay.first()
        && first.seq != durable + 1
    {
        return Err(LogStoreError::WalGap { durable, first: first.seq });
    }
    let last = replay.last().map_or(durable, |record| record.seq);
    let encoded_id = encode_meta(WAL_ID_KEY, &id)?;
    let encoded_last = encode_meta(WAL_SEQ_KEY, &last)?;
    let mut entries = 0usize;
    write_txn(db, "replay the log's redo file", |txn| {
        let mut log = txn.open_table(LOG).during("open the log table")?;
        for record in &replay {
            for (index, bytes) in &record.entries {
                decode_entry(*index, bytes)?;
                log.insert(*index, bytes.as_slice()).during("replay log entries")?;
                entries += 1;
            }
        }
        let mut meta = txn.open_table(LOG_META).during("open the log metadata table")?;
        meta.insert(WAL_ID_KEY, encoded_id.as_slice()).during("record the redo id")?;
        meta.insert(WAL_SEQ_KEY, encoded_last.as_slice()).during("record the append's number")?;
        Ok(())
    })?;
    if !replay.is_empty() {
        tracing::info!(
            appends = replay.len(),
            entries,
            last_append = last,
            "raft log: wrote the appends the redo file held beyond the database's last durable commit"
        );
    }
    // Everything the file held is durable in the database now: a file that cannot be
    // created or filled (a full disk) costs speed, not safety.
    match Wal::create(path, id, CAPACITY) {
        Ok(mut wal) => {
            wal.next_seq = last + 1;
            Ok(Some(wal))
        }
        Err(error) => {
            // What a zero-fill cut short would only take space the database needs; its
            // records, if any, were just written into the database.
            let removed = std::fs::remove_file(path);
            tracing::warn!(
                %error,
                removed_partial_file = removed.is_ok(),
                "raft log: running without its redo file: every append is a durable database \
                 commit (slower) until a restart finds room for the file"
            );
            Ok(None)
        }
    }
}

/// What failed doing `op` on the redo file at `path`, given the OS error.
fn io_error(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> LogStoreError {
    let path = path.to_path_buf();
    move |source| LogStoreError::Wal { op, path, source }
}

/// Writes zeros over `from..to` of `file` and makes them durable.
fn zero_fill(mut file: &File, from: u64, to: u64) -> std::io::Result<()> {
    use std::io::Seek as _;
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    file.seek(std::io::SeekFrom::Start(from))?;
    let mut left = to - from;
    while left > 0 {
        let n = usize::try_from(left).map_or(CHUNK, |left| left.min(CHUNK));
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

/// The record of `entries` with redo id `id` and sequence number `seq`.
pub(super) fn encode<'a>(
    id: u64,
    seq: u64,
    entries: impl Iterator<Item = (u64, &'a [u8])>,
) -> Vec<u8> {
    let mut record = vec![0u8; HEADER];
    for (index, bytes) in entries {
        record.extend_from_slice(&index.to_le_bytes());
        // Entries are bounded far below 4 GiB (the proposer's batches stay within 1 MiB).
        record.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
        record.extend_from_slice(bytes);
    }
    let payload_len = u32::try_from(record.len() - HEADER).unwrap_or(u32::MAX);
    record[0..4].copy_from_slice(&MAGIC);
    record[4..8].copy_from_slice(&payload_len.to_le_bytes());
    record[8..16].copy_from_slice(&id.to_le_bytes());
    record[16..24].copy_from_slice(&seq.to_le_bytes());
    let sum = checksum(id, seq, &record[HEADER..]);
    record[24..32].copy_from_slice(&sum);
    record
}

fn checksum(id: u64, seq: u64, payload: &[u8]) -> [u8; 8] {
    let mut hash = Sha256::new();
    hash.update(id.to_le_bytes());
    hash.update(seq.to_le_bytes());
    hash.update(payload);
    let digest = hash.finalize();
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&digest[..8]);
    sum
}

/// The records of redo id `id` that follow each other from the start of `bytes`: each
/// with a good checksum and the previous one's sequence number plus one.
pub(super) fn read_chain(bytes: &[u8], id: u64) -> Vec<Record> {
    let mut records: Vec<Record> = Vec::new();
    let mut at = 0usize;
    while let Some((record, len)) = read_record(&bytes[at..], id) {
        if records.last().is_some_and(|last| last.seq.checked_add(1) != Some(record.seq)) {
            break;
        }
        records.push(record);
        at += len;
    }
    records
}

/// The record at the start of `bytes` and its length, when it is a whole one of redo id
/// `id` with a good checksum.
fn read_record(bytes: &[u8], id: u64) -> Option<(Record, usize)> {
    let (header, rest) = bytes.split_first_chunk::<HEADER>()?;
    let field =
        |at: usize| header.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    if header[0..4] != MAGIC || field(8)? != id {
        return None;
    }
    let payload_len = usize::try_from(u32::from_le_bytes(header[4..8].try_into().ok()?)).ok()?;
    let seq = field(16)?;
    let payload = rest.get(..payload_len)?;
    if checksum(id, seq, payload) != header[24..32] {
        return None;
    }
    let mut entries = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let (index, tail) = rest.split_first_chunk::<8>()?;
        let (len, tail) = tail.split_first_chunk::<4>()?;
        let (entry, tail) =
            tail.split_at_checked(usize::try_from(u32::from_le_bytes(*len)).ok()?)?;
        entries.push((u64::from_le_bytes(*index), entry.to_vec()));
        rest = tail;
    }
    Some((Record { seq, entries }, HEADER + payload_len))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn record(id: u64, seq: u64, entries: &[(u64, &[u8])]) -> Vec<u8> {
        encode(id, seq, entries.iter().copied())
    }

    #[test]
    fn a_chain_reads_back_what_was_written_and_stops_at_zeros() {
        let mut bytes = record(7, 3, &[(10, b"ten"), (11, b"eleven")]);
        bytes.extend(record(7, 4, &[(12, b"")]));
        bytes.extend(vec![0u8; 100]);
        assert_eq!(
            read_chain(&bytes, 7),
            vec![
                Record { seq: 3, entries: vec![(10, b"ten".to_vec()), (11, b"eleven".to_vec())] },
                Record { seq: 4, entries: vec![(12, Vec::new())] },
            ]
        );
    }

    #[test]
    fn a_torn_or_corrupted_record_ends_the_chain() {
        let first = record(7, 3, &[(10, b"ten")]);
        let second = record(7, 4, &[(11, b"eleven")]);
        let mut torn = first.clone();
        torn.extend(&second[..second.len() - 1]);
        assert_eq!(read_chain(&torn, 7).len(), 1, "a record cut short");
        let mut flipped = first.clone();
        let mut bad = second.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        flipped.extend(bad);
        flipped.extend(record(7, 5, &[(12, b"twelve")]));
        assert_eq!(read_chain(&flipped, 7).len(), 1, "a flipped bit, and nothing after it");
    }

    #[test]
    fn records_of_an_earlier_pass_or_another_database_do_not_continue_the_chain() {
        // A new pass wrote seq 9 over the start of an earlier pass's seq 3, 4, 5.
        let old = [record(7, 3, &[(1, b"a")]), record(7, 4, &[(2, b"b")])].concat();
        let new = record(7, 9, &[(5, b"e")]);
        let mut bytes = new.clone();
        // The earlier pass's next record happens to start right after the new one.
        bytes.extend(&old[..]);
        assert_eq!(read_chain(&bytes, 7).iter().map(|r| r.seq).collect::<Vec<_>>(), vec![9]);
        assert!(read_chain(&new, 8).is_empty(), "another database's redo id");
    }

    #[test]
    fn a_new_file_is_zero_filled_and_reads_no_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft.wal");
        let mut wal = Wal::create(&path, 1, 64 << 10).expect("open");
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 64 << 10);
        wal.next_seq = 5;
        let r = wal.encode([(1, &b"one"[..])].into_iter());
        assert!(wal.fits(r.len()));
        wal.write(&r).expect("write");
        let r = wal.encode([(2, &b"two"[..])].into_iter());
        wal.write(&r).expect("write");
        drop(wal);
        let records = read_chain(&std::fs::read(&path).expect("read"), 1);
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![5, 6]);
        Wal::create(&path, 1, 64 << 10).expect("reopen");
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 64 << 10, "not grown");
    }

    #[test]
    fn after_a_checkpoint_the_file_is_written_from_its_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft.wal");
        let mut wal = Wal::create(&path, 1, 1024).expect("open");
        let big = vec![7u8; 600];
        let r = wal.encode([(1, &big[..])].into_iter());
        wal.write(&r).expect("write");
        let r = wal.encode([(2, &big[..])].into_iter());
        assert!(!wal.fits(r.len()), "two do not fit in 1 KiB");
        wal.checkpointed(Duration::ZERO);
        assert!(wal.fits(r.len()));
        wal.write(&r).expect("write");
        drop(wal);
        let records = read_chain(&std::fs::read(&path).expect("read"), 1);
        assert_eq!(records, vec![Record { seq: 1, entries: vec![(2, big)] }]);
    }

    mod recovery {
        use openraft::RaftLogReader as _;
        use openraft::storage::RaftLogStorageExt as _;
        use tempfile::TempDir;

        use super::super::super::tests::{normal, open};
        use super::*;
        use crate::log_store::LogStore;
        use crate::metrics::ConsensusMetrics;
        use crate::types::Entry;

        /// The redo id and the last append's number the closed store's database holds.
        fn ids(dir: &TempDir) -> (u64, u64) {
            let db = Database::open(dir.path().join("raft.redb")).expect("open");
            let txn = db.begin_read().expect("read");
            let meta = txn.open_table(LOG_META).expect("meta");
            (
                get_meta(&meta, WAL_ID_KEY).expect("id").expect("an id"),
                get_meta(&meta, WAL_SEQ_KEY).expect("seq").expect("a seq"),
            )
        }

        /// A closed store with entries 1..=3 and a redo file whose start is `record`.
        async fn closed_store_then(dir: &TempDir, record: impl FnOnce(u64, u64) -> Vec<u8>) {
            let mut store = open(dir);
            let entries: Vec<Entry> = (1..=3).map(|i| normal(1, i, b"x")).collect();
            store.blocking_append(entries).await.expect("append");
            drop(store);
            let (id, seq) = ids(dir);
            let file =
                OpenOptions::new().write(true).open(dir.path().join("raft.wal")).expect("open");
            file.write_all_at(&record(id, seq), 0).expect("write");
        }

        fn record_of(id: u64, seq: u64, entries: &[Entry]) -> Vec<u8> {
            let encoded: Vec<(u64, Vec<u8>)> = entries
                .iter()
                .map(|e| (e.log_id.index, postcard::to_allocvec(e).expect("encode")))
                .collect();
            encode(id, seq, encoded.iter().map(|(i, b)| (*i, b.as_slice())))
        }

        async fn indexes(store: &mut LogStore) -> Vec<u64> {
            let entries = store.try_get_log_entries(..).await.expect("read");
            entries.iter().map(|e| e.log_id.index).collect()
        }

        #[tokio::test]
        async fn appends_beyond_the_last_durable_commit_are_written_into_the_database() {
            let dir = TempDir::new().expect("tempdir");
            closed_store_then(&dir, |id, seq| {
                record_of(id, seq + 1, &[normal(1, 4, b"four"), normal(1, 5, b"five")])
            })
            .await;
            let mut store = open(&dir);
            assert_eq!(indexes(&mut store).await, vec![1, 2, 3, 4, 5]);
            drop(store);
            // Written durably, and numbered on: the file's next record follows it.
            let mut store = open(&dir);
            store.blocking_append(vec![normal(1, 6, b"six")]).await.expect("append");
            assert_eq!(indexes(&mut store).await, vec![1, 2, 3, 4, 5, 6]);
        }

        #[tokio::test]
        async fn a_file_that_skips_appends_is_refused_naming_the_way_back() {
            let dir = TempDir::new().expect("tempdir");
            closed_store_then(&dir, |id, seq| record_of(id, seq + 2, &[normal(1, 5, b"five")]))
                .await;
            let db = crate::log_store::open_database(&dir.path().join("raft.redb")).expect("db");
            let Err(error) = LogStore::with_redo_file(
                db,
                &dir.path().join("raft.wal"),
                ConsensusMetrics::default(),
            ) else {
                panic!("a redo file with a gap was accepted");
            };
            let message = error.to_string();
            assert!(message.contains("appends between are lost"), "{message}");
            assert!(message.contains("delete"), "{message}");
        }

        #[tokio::test]
        async fn a_file_another_database_left_is_not_replayed() {
            let dir = TempDir::new().expect("tempdir");
            closed_store_then(&dir, |id, seq| {
                record_of(id.wrapping_add(1), seq + 1, &[normal(1, 4, b"four")])
            })
            .await;
            let mut store = open(&dir);
            assert_eq!(indexes(&mut store).await, vec![1, 2, 3]);
        }

        #[tokio::test]
        async fn a_clean_close_leaves_nothing_to_replay() {
            let dir = TempDir::new().expect("tempdir");
            let mut store = open(&dir);
            assert!(store.durability().redo_file());
            for i in 1..=5 {
                store.blocking_append(vec![normal(1, i, b"v")]).await.expect("append");
            }
            drop(store);
            let (id, durable) = ids(&dir);
            let chain = read_chain(&std::fs::read(dir.path().join("raft.wal")).expect("read"), id);
            assert_eq!(
                chain.last().map(|r| r.seq),
                Some(durable),
                "the last record is durable in redb"
            );
        }

        #[tokio::test]
        async fn without_room_for_the_file_every_append_is_a_durable_commit() {
            let dir = TempDir::new().expect("tempdir");
            // A redo file that cannot be created (as on a full disk).
            let unwritable = dir.path().join("missing").join("raft.wal");
            let db = crate::log_store::open_database(&dir.path().join("raft.redb")).expect("db");
            let metrics = ConsensusMetrics::default();
            let mut store = LogStore::with_redo_file(db, &unwritable, metrics.clone())
                .expect("opens without its redo file");
            // What status, check and the metrics report.
            assert!(!store.durability().redo_file());
            assert_eq!(metrics.log_redo_file.get(), 0);
            store.blocking_append(vec![normal(1, 1, b"v")]).await.expect("append");
            // A crash image: durable without any redo file.
            let image = TempDir::new().expect("tempdir");
            std::fs::copy(dir.path().join("raft.redb"), image.path().join("raft.redb"))
                .expect("copy");
            let mut crashed = open(&image);
            assert_eq!(indexes(&mut crashed).await, vec![1]);
        }

        /// The files as a crash would leave them — copied while the store runs, after each
        /// append was reported durable — hold every such append: appends the writer thread
        /// wrote (a current-thread runtime) and appends written inline (a multi-thread
        /// runtime, as a replica runs).
        async fn crash_images_hold_every_append_reported_durable() -> u64 {
            let dir = TempDir::new().expect("tempdir");
            let db = crate::log_store::open_database(&dir.path().join("raft.redb")).expect("db");
            let metrics = ConsensusMetrics::default();
            let mut store =
                LogStore::with_redo_file(db, &dir.path().join("raft.wal"), metrics.clone())
                    .expect("open");
            for i in 1..=20 {
                store.blocking_append(vec![normal(1, i, b"v")]).await.expect("append");
                let image = TempDir::new().expect("tempdir");
                for name in ["raft.redb", "raft.wal"] {
                    std::fs::copy(dir.path().join(name), image.path().join(name)).expect("copy");
                }
                let mut crashed = open(&image);
                assert_eq!(indexes(&mut crashed).await, (1..=i).collect::<Vec<_>>());
            }
            metrics.log_appends_inline.get()
        }

        #[tokio::test]
        async fn a_crash_image_holds_every_append_the_writer_thread_reported_durable() {
            assert_eq!(crash_images_hold_every_append_reported_durable().await, 0);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_crash_image_holds_every_append_written_inline() {
            assert_eq!(crash_images_hold_every_append_reported_durable().await, 20);
        }
    }

    proptest! {
        /// Whatever bytes follow a good chain — or stand in for it — reading never panics,
        /// and a good chain is read back whole.
        #[test]
        fn any_bytes_read_without_panic(
            entries in proptest::collection::vec((any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..8),
            garbage in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let good = encode(3, 1, entries.iter().map(|(i, b)| (*i, b.as_slice())));
            let mut bytes = good.clone();
            bytes.extend(&garbage);
            let chain = read_chain(&bytes, 3);
            prop_assert!(!chain.is_empty());
            prop_assert_eq!(&chain[0].entries, &entries);
            let _ = read_chain(&garbage, 3);
        }
    }
}
