//! Durable Raft log, vote and committed index on redb.
//!
//! Entries live in one table keyed by log index, each value the postcard encoding of the
//! [`Entry`]; the vote, the committed log id and the last purged log id live in a second,
//! small table. The vote and truncations are redb transactions committed with
//! [`Durability::Immediate`](redb::Durability::Immediate). Appends are committed to redb
//! without an fsync and made durable by a record in the log's redo file (`raft.wal`
//! beside the database, see `wal`), one sequential write where a durable redb commit
//! flushes about ten scattered pages; a durable redb commit now and then (a checkpoint)
//! lets the file be written again from its start, and opening the store writes what the
//! file holds beyond the last durable commit back into redb. Either way whatever this
//! store reports written survives a crash; the committed-index hint and purge steps ride
//! on the next durable commit.
//!
//! redb blocks on disk IO, so every transaction runs on tokio's blocking pool or the
//! writer's thread and the async methods only wait for it.
//!
//! Its parts: `tables` (the redb tables, their encoding and transactions, and
//! `LogStoreError`), `writer` (the group-commit thread), `wal` (the redo file), `cache`
//! (the log's tail in memory), `durable` (how far the log is durable, for those who wait
//! on it) and `migrate` (a log of entry format 1 rewritten on open).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use openraft::storage::{LogFlushed, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, RaftLogId as _, StorageIOError};
use redb::{Database, ReadableDatabase as _, ReadableTable as _};
use serde::Serialize;
use serde::de::DeserializeOwned;

mod cache;
mod durable;
mod migrate;
mod tables;
mod wal;
mod writer;

use cache::{Tail, lock_tail};
pub use durable::LogDurability;
use durable::WriterProgress;
use tables::{
    COMMITTED_KEY, LAST_PURGED_KEY, LOG, LOG_META, VOTE_KEY, decode_entry, encode_meta, get_meta,
    injected,
};
pub(crate) use tables::{DuringOp, LogStoreError, write_txn};
pub(crate) use writer::AppendPath;
use writer::{Writer, WriterOp};

use crate::failpoints::Point;
use crate::metrics::ConsensusMetrics;
use crate::timeline::{Step, Timeline, span};
use crate::types::{Entry, LogId, LogState, NodeId, StorageError, TypeConfig, Vote};

/// Opens (creating if needed) the replica's redb database file.
///
/// The parent directory is created if missing. The returned handle is meant to be shared
/// by [`LogStore`] and [`crate::state_machine::StateMachineStore`].
///
/// # Errors
/// The directory cannot be created, or redb cannot open or create the file (for example
/// another process holds it open, or it is not a redb database).
#[expect(
    clippy::result_large_err,
    reason = "openraft's storage API speaks StorageError; callers pass it on unchanged"
)]
pub fn open_database(path: &Path) -> Result<Arc<Database>, StorageError> {
    let to_storage = |error: LogStoreError| StorageError::from(StorageIOError::read(&error));
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| {
            to_storage(LogStoreError::CreateDir { path: dir.to_path_buf(), source })
        })?;
    }
    let db = Database::create(path)
        .map_err(|source| to_storage(LogStoreError::Open { path: path.to_path_buf(), source }))?;
    let db = Arc::new(db);
    #[cfg(feature = "failpoints")]
    crate::failpoints::register(&db, path);
    Ok(db)
}

/// Runs `f` on tokio's blocking pool and waits for it.
async fn blocking<T, F>(f: F) -> Result<T, LogStoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, LogStoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|source| LogStoreError::Task { source })?
}

/// Durable Raft log + vote + committed index on redb.
///
/// Clones share the database; a clone is also the log reader handed to replication tasks,
/// which read concurrently with the single writer (redb's MVCC keeps them consistent).
///
/// Appends do not wait for the disk: they enter an in-memory queue, readable at once as
/// openraft needs, and a dedicated writer thread writes everything queued so far in one
/// fsync'd transaction, then reports each append as flushed, in order. Under load one
/// fsync covers many appends; alone, an append waits for exactly one.
///
/// **A follower's appends** are written on raft core's own thread when the writer is idle
/// and holds nothing unwritten (on a multi-thread runtime, inside
/// [`tokio::task::block_in_place`]): openraft 0.9's core awaits a follower's append
/// before it answers, so handing it to the writer thread only added two wake-ups after an
/// idle stretch — the writer thread's, then raft core's from it (0.05–0.15 ms each on the
/// benchmark machine). Counted in `federator_raft_log_appends_inline_total`.
///
/// Purges do not wait either: openraft awaits `purge` inside its core loop, so a purge
/// that deleted thousands of entries there would stop heartbeats for as long as the
/// deletion took (long enough, under load, for the followers to elect a new leader). A
/// purge takes effect for readers at once (entries up to it are no longer returned) and
/// the writer deletes them in steps of at most [`writer::PURGE_STEP_ENTRIES`] entries or
/// about [`writer::PURGE_STEP_BYTES`] between batches of appends. Deleting a whole
/// snapshot's worth at once (~20,000 entries, a gigabyte under full load) held the writer
/// — and with it every append, which openraft's core awaits — for about a second.
///
/// The newest written entries stay in memory too (up to [`cache::RECENT_BYTES`]):
/// replication reads what was just appended, and reading it from memory saves a trip to
/// the blocking pool, a redb read and a decode per AppendEntries.
///
/// **A leader's own appends** ([`LogStore::flush_own_appends_at_once`]): openraft 0.9
/// awaits the flush of a leader's append inside its core before it replicates the entry,
/// which puts the leader's fsync and a follower's one after the other on every write. Raft
/// allows the leader to write its log in parallel with replicating it (Ongaro's thesis,
/// §10.2.1), so a store told so reports the appends of its own leadership flushed at once
/// and writes them as usual. openraft then counts the leader's copy towards a commit
/// before it is durable; what makes that safe is that nothing acts on such a commit
/// before the leader's copy is durable: the state machine waits for it
/// ([`LogDurability::wait_through`]) before applying — and so before any client is
/// answered or a snapshot includes the entry — and the transport tells followers no
/// committed index beyond it ([`LogDurability::durable_through`]). A crash of the leader
/// before its fsync loses only what nobody was told. Appends as a follower, and any
/// append once the vote has moved on, are reported flushed only when durable; saving a
/// vote first makes every queued append durable, so no node votes or follows another
/// leader with an entry it reported but has not written.
#[derive(Clone)]
pub struct LogStore {
    /// The replica's database, shared with the state machine store.
    db: Arc<Database>,
    /// The log's tail in memory (see [`Tail`]).
    tail: Arc<RwLock<Tail>>,
    /// The last purged log id as readers see it: ahead of `db` until the writer has
    /// deleted the entries.
    purged: Arc<RwLock<Option<LogId>>>,
    /// The group-commit writer.
    writer: Arc<Writer>,
    /// Where appended entries are marked (see [`crate::timeline`]).
    timeline: Timeline,
    /// How far the log is durable.
    durability: LogDurability,
    /// This replica's id, when the appends of its own leadership are reported flushed at
    /// once (see [`LogStore`]).
    flush_own_appends: Option<NodeId>,
    /// The vote as last saved or read.
    vote: Arc<RwLock<Option<Vote>>>,
}

// === impl LogStore ===

impl LogStore {
    /// Opens the log store on `db`, creating its tables if this is a new database.
    ///
    /// # Errors
    /// The tables cannot be created (IO error, or a table of the same name with other
    /// types exists).
    #[expect(
        clippy::result_large_err,
        reason = "openraft's storage API speaks StorageError; callers pass it on unchanged"
    )]
    pub fn new(db: Arc<Database>, metrics: ConsensusMetrics) -> Result<Self, StorageError> {
        Self::open_with(db, None, metrics)
    }

    /// Opens the log store on `db` with its redo file at `redo_file` (created if missing),
    /// which makes each append durable by one sequential write instead of a durable redb
    /// commit (see the `wal` module). The appends the file holds beyond the database's last
    /// durable commit are written into the database first.
    ///
    /// # Errors
    /// As [`LogStore::new`]; the redo file cannot be created, read or zero-filled, or its
    /// appends do not continue the database's (appends were lost).
    #[expect(
        clippy::result_large_err,
        reason = "openraft's storage API speaks StorageError; callers pass it on unchanged"
    )]
    pub fn with_redo_file(
        db: Arc<Database>,
        redo_file: &Path,
        metrics: ConsensusMetrics,
    ) -> Result<Self, StorageError> {
        Self::open_with(db, Some(redo_file), metrics)
    }

    #[expect(
        clippy::result_large_err,
        reason = "openraft's storage API speaks StorageError; callers pass it on unchanged"
    )]
    fn open_with(
        db: Arc<Database>,
        redo_file: Option<&Path>,
        metrics: ConsensusMetrics,
    ) -> Result<Self, StorageError> {
        write_txn(&db, "create the log tables", |txn| {
            let mut log = txn.open_table(LOG).during("create the log table")?;
            let mut meta = txn.open_table(LOG_META).during("create the log metadata table")?;
            migrate::to_current_format(&mut log, &mut meta)
        })
        .map_err(|error| StorageIOError::write_logs(&error))?;
        let wal = redo_file
            .map(|path| wal::replay(&db, path))
            .transpose()
            .map_err(|error| StorageIOError::write_logs(&error))?
            .flatten()
            .map(|mut wal| {
                wal.observe_checkpoints(metrics.log_checkpoint_seconds.clone());
                wal
            });
        let redo_file = wal.is_some();
        metrics.log_redo_file.set(i64::from(redo_file));
        let tail = Arc::new(RwLock::new(Tail::default()));
        let timeline = metrics.timeline.clone();
        let (progress, watched) = tokio::sync::watch::channel(WriterProgress::default());
        let writer = Writer::start(db.clone(), tail.clone(), metrics, progress, wal)
            .map_err(|error| StorageIOError::write_logs(&error))?;
        Ok(Self {
            durability: LogDurability::new(tail.clone(), watched, redo_file),
            db,
            tail,
            purged: Arc::new(RwLock::new(None)),
            writer,
            timeline,
            flush_own_appends: None,
            vote: Arc::new(RwLock::new(None)),
        })
    }

    /// Reports the appends of replica `id`'s own leadership flushed as soon as they are
    /// queued, so that openraft replicates them while this disk writes them (see
    /// [`LogStore`]). Only sound when the state machine waits on [`LogStore::durability`]
    /// before applying and the transport clamps the committed index it sends to it, as
    /// [`crate::Replica`] sets them up.
    #[must_use]
    pub fn flush_own_appends_at_once(mut self, id: NodeId) -> Self {
        self.flush_own_appends = Some(id);
        self
    }

    /// Queues `op`, an append, for the writer; when the writer has stopped, reports its
    /// callback (if any) failed.
    #[expect(
        clippy::result_large_err,
        reason = "openraft's storage API speaks StorageError; callers pass it on unchanged"
    )]
    fn enqueue_append(&self, op: WriterOp) -> Result<(), StorageError> {
        let Err(op) = self.writer.enqueue(op) else { return Ok(()) };
        let error = LogStoreError::WriterStopped;
        if let WriterOp::Append { callback: Some(callback), .. } = op {
            callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
        }
        Err(StorageIOError::write_logs(&error).into())
    }

    /// How far this log is durable.
    #[must_use]
    pub fn durability(&self) -> LogDurability {
        self.durability.clone()
    }

    /// Whether `entries` are this replica's own, appended while it leads: the saved vote
    /// is a committed one for this replica and every entry carries that leadership. A
    /// leader appends nothing else, and an entry it gets from another leader comes after
    /// a vote for that one.
    fn own_leadership(&self, entries: &[Entry]) -> bool {
        let Some(id) = self.flush_own_appends else { return false };
        let vote = match self.vote.read() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        };
        vote.is_some_and(|vote| {
            vote.is_committed()
                && vote.leader_id().voted_for() == Some(id)
                && entries.iter().all(|e| e.get_log_id().leader_id == *vote.leader_id())
        })
    }

    /// Remembers `vote` as the saved one.
    fn remember_vote(&self, vote: Option<Vote>) {
        match self.vote.write() {
            Ok(mut guard) => *guard = vote,
            Err(poisoned) => *poisoned.into_inner() = vote,
        }
    }

    /// Reads the metadata value under `key` on the blocking pool.
    async fn read_meta<T>(&self, key: &'static str) -> Result<Option<T>, LogStoreError>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_read().during("begin a read transaction")?;
            let table = txn.open_table(LOG_META).during("open the log metadata table")?;
            get_meta(&table, key)
        })
        .await
    }

    /// Durably writes `value` under metadata `key` on the blocking pool.
    async fn write_meta<T>(&self, key: &'static str, value: &T) -> Result<(), LogStoreError>
    where
        T: Serialize,
    {
        let bytes = encode_meta(key, value)?;
        let db = self.db.clone();
        blocking(move || {
            write_txn(&db, "write log metadata", |txn| {
                let mut table = txn.open_table(LOG_META).during("open the log metadata table")?;
                table.insert(key, bytes.as_slice()).during("write log metadata")?;
                Ok(())
            })
        })
        .await
    }

    /// The last purged log id readers must respect (the writer may not have deleted up
    /// to it yet).
    fn purged_in_memory(&self) -> Option<LogId> {
        match self.purged.read() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Read access to the tail.
    fn read_tail(&self) -> std::sync::RwLockReadGuard<'_, Tail> {
        cache::read_tail(&self.tail)
    }

    /// Entries in `start..end` that are queued but not yet written, oldest first.
    fn pending_in(&self, start: u64, end: Option<u64>) -> Vec<Entry> {
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let tail = self.read_tail();
        tail.pending.range((Bound::Included(start), upper)).map(|(_, e)| e.clone()).collect()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let Some((start, end)) = index_span(&range) else {
            return Ok(Vec::new());
        };
        // Replication reads what was just appended: usually all in memory.
        let in_memory = self.read_tail().entries(start, end);
        if let Some(mut entries) = in_memory {
            if let Some(purged) = self.purged_in_memory() {
                entries.retain(|e| e.get_log_id().index > purged.index);
            }
            return Ok(entries);
        }
        // Queued entries first: the writer moves them out of `pending` only after they
        // are readable from redb, so one of the two reads sees every entry.
        let queued = self.pending_in(start, end);
        let db = self.db.clone();
        let written = blocking(move || {
            let txn = db.begin_read().during("begin a read transaction")?;
            let table = txn.open_table(LOG).during("open the log table")?;
            let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
            let mut entries = Vec::new();
            for item in table.range((Bound::Included(start), upper)).during("read log entries")? {
                let (key, value) = item.during("read log entries")?;
                entries.push(decode_entry(key.value(), value.value())?);
            }
            Ok(entries)
        })
        .await
        .map_err(|error| StorageIOError::read_logs(&error))?;
        let mut merged: BTreeMap<u64, Entry> =
            written.into_iter().map(|e| (e.get_log_id().index, e)).collect();
        merged.extend(queued.into_iter().map(|e| (e.get_log_id().index, e)));
        // Purged entries the writer has not deleted yet.
        if let Some(purged) = self.purged_in_memory() {
            merged = merged.split_off(&(purged.index + 1));
        }
        Ok(merged.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState, StorageError> {
        let queued_last = self.read_tail().pending.values().next_back().map(|e| *e.get_log_id());
        let db = self.db.clone();
        let state = blocking(move || {
            let txn = db.begin_read().during("begin a read transaction")?;
            let meta = txn.open_table(LOG_META).during("open the log metadata table")?;
            let last_purged_log_id: Option<LogId> = get_meta(&meta, LAST_PURGED_KEY)?;
            let log = txn.open_table(LOG).during("open the log table")?;
            let last = match log.last().during("read the last log entry")? {
                Some((key, value)) => Some(*decode_entry(key.value(), value.value())?.get_log_id()),
                None => None,
            };
            Ok(LogState { last_log_id: last.or(last_purged_log_id), last_purged_log_id })
        })
        .await
        .map_err(|error| StorageIOError::read_logs(&error))?;
        let last_purged_log_id = self.purged_in_memory().max(state.last_purged_log_id);
        Ok(LogState {
            last_log_id: queued_last.max(state.last_log_id).max(last_purged_log_id),
            last_purged_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// Makes every queued append durable first: an append of this replica's leadership
    /// may have been reported flushed before it was written, and once the vote has moved
    /// on, what this replica reports to others (its vote, its log as a follower) must be
    /// on disk.
    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        injected(&self.db, Point::VoteSave).map_err(|error| StorageIOError::write_vote(&error))?;
        self.writer.barrier().await.map_err(|error| StorageIOError::write_vote(&error))?;
        self.write_meta(VOTE_KEY, vote)
            .await
            .map_err(|error| StorageIOError::write_vote(&error))?;
        self.remember_vote(Some(*vote));
        Ok(())
    }

    /// openraft reads the vote when it starts, and resumes leading when the vote is a
    /// committed one for this replica. A store that reports its own leadership's appends
    /// flushed at once (see [`LogStore`]) may have sent entries it never wrote, and a
    /// leader that resumed its term would give new entries their log ids, which the
    /// followers already hold with other contents: the logs would diverge for good. So
    /// such a vote is returned as not committed: this replica still voted for itself in
    /// that term (it votes for no one else in it) but no longer leads it; the next
    /// election is in a new term.
    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let vote: Option<Vote> =
            self.read_meta(VOTE_KEY).await.map_err(|error| StorageIOError::read_vote(&error))?;
        let vote = match (vote, self.flush_own_appends) {
            (Some(led), Some(id))
                if led.is_committed() && led.leader_id().voted_for() == Some(id) =>
            {
                Some(Vote::new(led.leader_id().term, id))
            }
            (vote, _) => vote,
        };
        self.remember_vote(vote);
        Ok(vote)
    }

    /// The committed index is a hint for a faster restart (openraft re-derives it), so it
    /// is queued for the writer, which records it with its next append (or alone,
    /// without an fsync, when none comes for 100 ms): raft core neither waits for an fsync
    /// nor for a redb write lock the writer holds, and no append pays for a transaction of
    /// the hint's own.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let bytes = encode_meta(COMMITTED_KEY, &committed)
            .map_err(|error| StorageIOError::write(&error))?;
        if self.writer.enqueue(WriterOp::Committed(bytes)).is_err() {
            return Err(StorageIOError::write(&LogStoreError::WriterStopped).into());
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        // The writer holds back the newest hint for its next append: a barrier writes it.
        self.writer.barrier().await.map_err(|error| StorageIOError::read(&error))?;
        let committed: Option<Option<LogId>> =
            self.read_meta(COMMITTED_KEY).await.map_err(|error| StorageIOError::read(&error))?;
        Ok(committed.flatten())
    }

    /// Queues `entries` for the writer — readable as soon as this returns, as openraft
    /// needs — which reports the flush to `callback` once they are durable, or writes
    /// them here when the writer is idle (see [`LogStore`]); the appends of this replica's
    /// own leadership are reported flushed at once when the store is told so.
    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = Instant::now();
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut encoded = Vec::with_capacity(entries.len());
        for entry in &entries {
            let log_id = *entry.get_log_id();
            match postcard::to_allocvec(entry) {
                Ok(bytes) => encoded.push((log_id.index, log_id, bytes)),
                Err(source) => {
                    let error = LogStoreError::EncodeEntry { index: log_id.index, source };
                    callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                    return Err(StorageIOError::write_logs(&error).into());
                }
            }
        }
        self.timeline.mark_at(Step::Appending, span(&encoded, |e| e.0), started);
        let at_once = self.own_leadership(&entries);
        let nothing_pending = {
            let mut tail = lock_tail(&self.tail);
            let nothing_pending = tail.pending.is_empty();
            if nothing_pending {
                tail.pending_since = Some(started);
            }
            tail.pending.extend(entries.into_iter().map(|e| (e.get_log_id().index, e)));
            nothing_pending
        };
        if at_once {
            if let Err(error) =
                self.enqueue_append(WriterOp::Append { entries: encoded, callback: None, started })
            {
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                return Err(error);
            }
            // Refused once the writer has failed: nothing queued after that is written.
            if let Some(error) = self.durability.failed() {
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                return Err(StorageIOError::write_logs(&error).into());
            }
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        let op = WriterOp::Append { entries: encoded, callback: Some(callback), started };
        match self.writer.write_inline(op, nothing_pending) {
            Ok(()) => Ok(()),
            Err(op) => self.enqueue_append(op),
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Queued appends first, so that none lands after the truncation.
        self.writer.barrier().await.map_err(|error| StorageIOError::write_logs(&error))?;
        lock_tail(&self.tail).truncate(log_id.index);
        let db = self.db.clone();
        blocking(move || {
            write_txn(&db, "truncate the log", |txn| {
                let mut table = txn.open_table(LOG).during("open the log table")?;
                table.retain_in(log_id.index.., |_, _| false).during("truncate the log")?;
                Ok(())
            })
        })
        .await
        .map_err(|error| StorageIOError::write_logs(&error))?;
        Ok(())
    }

    /// Takes effect for readers at once and is queued for the writer (see [`LogStore`]).
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut purged = match self.purged.write() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            *purged = (*purged).max(Some(log_id));
        }
        lock_tail(&self.tail).purge(log_id.index);
        if self.writer.enqueue(WriterOp::Purge(log_id)).is_err() {
            return Err(StorageIOError::write_logs(&LogStoreError::WriterStopped).into());
        }
        Ok(())
    }
}

/// The indexes `range` covers as `[start, end)` (`end` `None` for unbounded), or `None`
/// when it covers nothing.
fn index_span(range: &impl RangeBounds<u64>) -> Option<(u64, Option<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(&start) => start,
        Bound::Excluded(&start) => start.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        // `..=u64::MAX` is the same as unbounded.
        Bound::Included(&end) => end.checked_add(1),
        Bound::Excluded(&end) => Some(end),
        Bound::Unbounded => None,
    };
    match end {
        Some(end) if end <= start => None,
        _ => Some((start, end)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::storage::RaftLogStorageExt as _;
    use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader as _};
    use tempfile::TempDir;

    use super::*;
    use crate::types::Command;

    pub(super) fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 0), index)
    }

    pub(super) fn normal(term: u64, index: u64, data: &[u8]) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Command::single(data.to_vec())),
        }
    }

    /// The store as a replica opens it: with its redo file.
    pub(super) fn open(dir: &TempDir) -> LogStore {
        let db = open_database(&dir.path().join("raft.redb")).expect("open database");
        LogStore::with_redo_file(db, &dir.path().join("raft.wal"), ConsensusMetrics::default())
            .expect("open log store")
    }

    #[tokio::test]
    async fn reopen_after_append_returns_all_entries_and_vote() {
        let dir = TempDir::new().expect("tempdir");
        let entries: Vec<Entry> =
            (1..=5).map(|i| normal(1, i, format!("k{i}=v").as_bytes())).collect();
        {
            let mut store = open(&dir);
            store.save_vote(&Vote::new(3, 7)).await.expect("save vote");
            store.blocking_append(entries[..2].to_vec()).await.expect("append");
            store.blocking_append(entries[2..].to_vec()).await.expect("append");
            store.save_committed(Some(log_id(1, 4))).await.expect("save committed");
        }

        let mut store = open(&dir);
        let got = store.try_get_log_entries(..).await.expect("read");
        assert_eq!(got, entries);
        assert_eq!(store.read_vote().await.expect("vote"), Some(Vote::new(3, 7)));
        assert_eq!(store.read_committed().await.expect("committed"), Some(log_id(1, 4)));
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(log_id(1, 5)));
        assert_eq!(state.last_purged_log_id, None);
    }

    #[tokio::test]
    async fn the_newest_committed_hint_is_read_back_before_any_append_takes_it_along() {
        let dir = TempDir::new().expect("tempdir");
        let mut store = open(&dir);
        store.blocking_append(vec![normal(1, 1, b"a"), normal(1, 2, b"b")]).await.expect("append");
        store.save_committed(Some(log_id(1, 1))).await.expect("save committed");
        store.save_committed(Some(log_id(1, 2))).await.expect("save committed");
        assert_eq!(store.read_committed().await.expect("committed"), Some(log_id(1, 2)));
        store.blocking_append(vec![normal(1, 3, b"c")]).await.expect("append");
        drop(store);
        let mut store = open(&dir);
        assert_eq!(store.read_committed().await.expect("committed"), Some(log_id(1, 2)));
    }

    #[tokio::test]
    async fn purge_then_reopen_keeps_last_purged() {
        let dir = TempDir::new().expect("tempdir");
        {
            let mut store = open(&dir);
            let entries: Vec<Entry> = (1..=6).map(|i| normal(2, i, b"a=b")).collect();
            store.blocking_append(entries).await.expect("append");
            store.purge(log_id(2, 3)).await.expect("purge");
        }

        let mut store = open(&dir);
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 3)));
        assert_eq!(state.last_log_id, Some(log_id(2, 6)));
        let indexes: Vec<u64> = store
            .try_get_log_entries(0..100)
            .await
            .expect("read")
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(indexes, vec![4, 5, 6]);

        store.purge(log_id(2, 6)).await.expect("purge all");
        drop(store);
        let mut store = open(&dir);
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 6)));
        assert_eq!(state.last_log_id, Some(log_id(2, 6)), "empty log reports the last purged id");
    }

    #[tokio::test]
    async fn a_purge_hides_entries_at_once_without_waiting_for_the_disk() {
        let dir = TempDir::new().expect("tempdir");
        let mut store = open(&dir);
        let entries: Vec<Entry> = (1..=6).map(|i| normal(2, i, b"a=b")).collect();
        store.blocking_append(entries).await.expect("append");
        // Hold redb's write lock: the writer cannot delete anything until it is released,
        // yet the purge (awaited inside openraft's core loop) must return.
        let held = store.db.begin_write().expect("write transaction");
        tokio::time::timeout(Duration::from_secs(10), store.purge(log_id(2, 3)))
            .await
            .expect("the purge returns while the writer is blocked")
            .expect("purge");
        let indexes =
            |entries: Vec<Entry>| -> Vec<u64> { entries.iter().map(|e| e.log_id.index).collect() };
        let read: Vec<u64> = indexes(store.try_get_log_entries(0..100).await.expect("read"));
        assert_eq!(read, vec![4, 5, 6], "purged entries are hidden before they are deleted");
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 3)));
        assert_eq!(state.last_log_id, Some(log_id(2, 6)));
        drop(held);
        drop(store);

        let mut store = open(&dir);
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 3)), "deleted and recorded on close");
        let read: Vec<u64> = indexes(store.try_get_log_entries(0..100).await.expect("read"));
        assert_eq!(read, vec![4, 5, 6]);
    }

    #[tokio::test]
    async fn reads_from_memory_agree_with_redb_across_truncate_and_purge() {
        let dir = TempDir::new().expect("tempdir");
        let mut store = open(&dir);
        let entries: Vec<Entry> = (1..=8).map(|i| normal(1, i, b"a=b")).collect();
        store.blocking_append(entries).await.expect("append");
        store.truncate(log_id(1, 6)).await.expect("truncate");
        store.blocking_append(vec![normal(2, 6, b"c=d")]).await.expect("append");
        store.purge(log_id(1, 2)).await.expect("purge");
        let from_memory = store.try_get_log_entries(3..).await.expect("read");
        let ids: Vec<LogId> = from_memory.iter().map(|e| e.log_id).collect();
        assert_eq!(ids, vec![log_id(1, 3), log_id(1, 4), log_id(1, 5), log_id(2, 6)]);
        drop(store);
        // The same from redb alone.
        let mut store = open(&dir);
        assert_eq!(store.try_get_log_entries(3..).await.expect("read"), from_memory);
    }

    #[tokio::test]
    async fn truncate_removes_the_suffix_durably() {
        let dir = TempDir::new().expect("tempdir");
        {
            let mut store = open(&dir);
            let entries: Vec<Entry> = (1..=6).map(|i| normal(1, i, b"a=b")).collect();
            store.blocking_append(entries).await.expect("append");
            store.truncate(log_id(1, 4)).await.expect("truncate");
        }
        let mut store = open(&dir);
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(log_id(1, 3)));
        assert_eq!(store.try_get_log_entries(4..).await.expect("read"), Vec::<Entry>::new());
    }

    #[tokio::test]
    async fn undecodable_entry_is_a_read_error_not_a_panic() {
        let dir = TempDir::new().expect("tempdir");
        let mut store = open(&dir);
        write_txn(&store.db, "corrupt", |txn| {
            let mut table = txn.open_table(LOG).during("open")?;
            table.insert(1, [0xff_u8, 0xff, 0xff].as_slice()).during("insert")?;
            Ok(())
        })
        .expect("write garbage");
        let error = store.try_get_log_entries(..).await.expect_err("garbage must not decode");
        assert!(error.to_string().contains("index 1"), "{error}");
    }

    /// Appends `entries` on a task of its own; the handle ends once they are reported
    /// flushed.
    fn append_in_background(
        store: &LogStore,
        entries: Vec<Entry>,
    ) -> tokio::task::JoinHandle<Result<(), StorageError>> {
        let mut store = store.clone();
        tokio::spawn(async move { store.blocking_append(entries).await })
    }

    /// Appends `entry` while the writer cannot write (redb's write lock held, as a slow
    /// disk would): not reported flushed within 100 ms, then reported once it can.
    async fn assert_reported_only_once_durable(store: &LogStore, entry: Entry, context: &str) {
        let held = store.db.begin_write().expect("write transaction");
        let append = append_in_background(store, vec![entry]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!append.is_finished(), "{context}: reported before durable");
        drop(held);
        tokio::time::timeout(Duration::from_secs(10), append)
            .await
            .expect("reported once durable")
            .expect("append task")
            .expect("append");
        assert_eq!(store.durability().durable_through(), u64::MAX, "{context}");
    }

    #[tokio::test]
    async fn a_leaders_own_appends_are_reported_flushed_at_once_and_written_after() {
        let dir = TempDir::new().expect("tempdir");
        let mut store = open(&dir).flush_own_appends_at_once(0);
        store.save_vote(&Vote::new_committed(2, 0)).await.expect("save vote");
        let durability = store.durability();
        assert_eq!(durability.durable_through(), u64::MAX, "nothing pending");
        // Holding redb's write lock keeps the writer from writing, as a slow disk would.
        let held = store.db.begin_write().expect("write transaction");
        tokio::time::timeout(
            Duration::from_secs(10),
            store.blocking_append(vec![normal(2, 1, b"a"), normal(2, 2, b"b")]),
        )
        .await
        .expect("reported flushed while the writer cannot write")
        .expect("append");
        assert_eq!(durability.durable_through(), 0);
        assert!(durability.stalled_for().is_some(), "entries wait for the writer");
        durability.wait_through(0).await.expect("nothing to wait for under index 1");
        let waiting = tokio::time::timeout(Duration::from_millis(100), durability.wait_through(2));
        assert!(waiting.await.is_err(), "not durable while the writer cannot write");

        drop(held);
        tokio::time::timeout(Duration::from_secs(10), durability.wait_through(2))
            .await
            .expect("durable once the writer can write")
            .expect("written");
        assert_eq!(durability.durable_through(), u64::MAX);
        assert_eq!(durability.stalled_for(), None);
        drop(store);
        let mut store = open(&dir);
        assert_eq!(store.try_get_log_entries(..).await.expect("read").len(), 2);
    }

    #[tokio::test]
    async fn other_appends_are_reported_flushed_only_once_durable() {
        // (store told of its id, saved vote): a follower's, a candidate's, and a newer
        // leadership of its own appending entries of an older one; and a store not told.
        let cases = [
            (true, Vote::new_committed(2, 7)),
            (true, Vote::new(2, 0)),
            (true, Vote::new_committed(3, 0)),
            (false, Vote::new_committed(2, 0)),
        ];
        for (told, vote) in cases {
            let dir = TempDir::new().expect("tempdir");
            let mut store = open(&dir);
            if told {
                store = store.flush_own_appends_at_once(0);
            }
            store.save_vote(&vote).await.expect("save vote");
            let context = format!("{vote:?} (told {told})");
            assert_reported_only_once_durable(&store, normal(2, 1, b"a"), &context).await;
        }
    }

    #[tokio::test]
    async fn a_reopened_leader_does_not_resume_its_term() {
        let dir = TempDir::new().expect("tempdir");
        {
            let mut store = open(&dir).flush_own_appends_at_once(0);
            store.save_vote(&Vote::new_committed(2, 0)).await.expect("save vote");
        }
        let mut store = open(&dir).flush_own_appends_at_once(0);
        assert_eq!(
            store.read_vote().await.expect("vote"),
            Some(Vote::new(2, 0)),
            "its own leadership comes back as a vote for itself, not committed"
        );
        // Another leader's vote, and a store not told, come back as saved.
        store.save_vote(&Vote::new_committed(3, 7)).await.expect("save vote");
        assert_eq!(store.read_vote().await.expect("vote"), Some(Vote::new_committed(3, 7)));
        store.save_vote(&Vote::new_committed(4, 0)).await.expect("save vote");
        drop(store);
        let mut store = open(&dir);
        assert_eq!(store.read_vote().await.expect("vote"), Some(Vote::new_committed(4, 0)));
    }

    #[tokio::test]
    async fn saving_a_vote_first_writes_what_a_leader_reported_flushed() {
        let dir = TempDir::new().expect("tempdir");
        let mut store = open(&dir).flush_own_appends_at_once(0);
        store.save_vote(&Vote::new_committed(2, 0)).await.expect("save vote");
        let held = store.db.begin_write().expect("write transaction");
        let entries: Vec<Entry> = (1..=3).map(|i| normal(2, i, b"a")).collect();
        store.blocking_append(entries).await.expect("reported at once");
        let mut voting = store.clone();
        let vote = tokio::spawn(async move { voting.save_vote(&Vote::new(3, 7)).await });
        drop(held);
        tokio::time::timeout(Duration::from_secs(10), vote)
            .await
            .expect("the vote is saved once the writer can write")
            .expect("vote task")
            .expect("save vote");
        assert_eq!(
            store.durability().durable_through(),
            u64::MAX,
            "every reported append is durable before the vote moves on"
        );
        // The vote moved on: an entry of the old leadership now waits for the disk.
        assert_reported_only_once_durable(&store, normal(2, 4, b"a"), "after the vote moved on")
            .await;
    }

    #[test]
    fn index_span_handles_every_bound() {
        assert_eq!(index_span(&(3..3)), None);
        assert_eq!(index_span(&(Bound::Included(5), Bound::Excluded(3))), None);
        assert_eq!(index_span(&(3..7)), Some((3, Some(7))));
        assert_eq!(index_span(&(3..=7)), Some((3, Some(8))));
        assert_eq!(index_span(&(..)), Some((0, None)));
        assert_eq!(index_span(&(0..=u64::MAX)), Some((0, None)));
        assert_eq!(index_span(&(Bound::Excluded(u64::MAX), Bound::Unbounded)), None);
    }
}
