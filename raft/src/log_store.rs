//! Durable Raft log, vote and committed index on redb.
//!
//! Entries live in one table keyed by log index, each value the postcard encoding of the
//! [`Entry`]; the vote, the committed log id and the last purged log id live in a second,
//! small table. Appends, the vote and truncations are redb transactions committed with
//! [`Durability::Immediate`], so whatever this store reports written survives a crash;
//! the committed-index hint and purge steps ride on the next such commit.
//!
//! redb blocks on disk IO, so every transaction runs on tokio's blocking pool and the
//! async methods only wait for it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use openraft::storage::{LogFlushed, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, RaftLogId as _, StorageIOError};
use redb::{Database, Durability, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::failpoints::Point;
use crate::metrics::ConsensusMetrics;
use crate::types::{Entry, LogId, LogState, StorageError, TypeConfig, Vote};

/// Log entries by index; values are postcard-encoded [`Entry`]s.
const LOG: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("raft_log");

/// Vote, committed and last purged log id, by name; values are postcard-encoded.
const LOG_META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("raft_log_meta");

/// [`LOG_META`] key of the vote.
const VOTE_KEY: &str = "vote";
/// [`LOG_META`] key of the committed log id.
const COMMITTED_KEY: &str = "committed";
/// [`LOG_META`] key of the last purged log id.
const LAST_PURGED_KEY: &str = "last_purged";
/// [`LOG_META`] key of the encoding of stored entries ([`ENTRY_FORMAT`]).
const ENTRY_FORMAT_KEY: &str = "entry_format";
/// Normal entries hold a batch of commands. Format 1 (no [`ENTRY_FORMAT_KEY`]) held one
/// command each; such a log is rewritten to this format when the store opens it.
const ENTRY_FORMAT: u32 = 2;

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

/// What went wrong in the log store; wrapped into openraft's [`StorageError`] with the
/// subject (logs, vote, store) and verb (read, write) of the failed operation.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LogStoreError {
    /// A fault injected for a test (feature `failpoints`).
    #[cfg(feature = "failpoints")]
    #[error("{source}")]
    Injected {
        /// The injected error.
        source: std::io::Error,
    },
    /// The directory of the database file could not be created.
    #[error("cannot create the raft database directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },

    /// redb could not open or create the database file.
    #[error("cannot open the raft database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: redb::DatabaseError,
    },

    /// A redb transaction failed part way.
    #[error("raft log database failed to {op}: {source}")]
    Database {
        /// What the store was doing.
        op: &'static str,
        /// redb's error.
        source: redb::Error,
    },

    /// A log entry could not be encoded.
    #[error("cannot encode the log entry at index {index}: {source}")]
    EncodeEntry {
        /// Index of the entry.
        index: u64,
        /// postcard's error.
        source: postcard::Error,
    },

    /// A stored log entry could not be decoded.
    #[error("cannot decode the stored log entry at index {index}: {source}")]
    DecodeEntry {
        /// Index (table key) of the entry.
        index: u64,
        /// postcard's error.
        source: postcard::Error,
    },

    /// The log was written in an entry format this version does not know.
    #[error(
        "the raft log is in entry format {found}, written by a newer federator; this \
         version reads formats 1 and {ENTRY_FORMAT}"
    )]
    UnknownFormat {
        /// The stored format.
        found: u32,
    },

    /// A stored entry carries another index than the key it is stored under.
    #[error("the log entry stored at index {key} carries log id {log_id}")]
    MisplacedEntry {
        /// The table key.
        key: u64,
        /// The log id inside the entry.
        log_id: LogId,
    },

    /// An entry just listed by a read of the log table was gone when read again.
    #[error("the log entry at index {index} vanished while the log was purged")]
    MissingEntry {
        /// Index of the entry.
        index: u64,
    },

    /// A metadata value (vote, committed, last purged) could not be encoded.
    #[error("cannot encode the raft log metadata `{key}`: {source}")]
    EncodeMeta {
        /// Metadata key.
        key: &'static str,
        /// postcard's error.
        source: postcard::Error,
    },

    /// A stored metadata value could not be decoded.
    #[error("cannot decode the stored raft log metadata `{key}`: {source}")]
    DecodeMeta {
        /// Metadata key.
        key: &'static str,
        /// postcard's error.
        source: postcard::Error,
    },

    /// The blocking task running the transaction panicked or was cancelled.
    #[error("raft log storage task did not finish: {source}")]
    Task {
        /// tokio's error.
        source: tokio::task::JoinError,
    },

    /// The writer thread stopped (the store is being dropped).
    #[error("the raft log writer stopped")]
    WriterStopped,

    /// The writer's transaction failed. (The writer's error is part of the message, not
    /// a `source`: openraft would print it a second time.)
    #[error("the raft log writer failed: {error}")]
    Flush {
        /// The writer's error, shared by everyone who waited for that transaction.
        error: Arc<LogStoreError>,
    },

    /// The group-commit thread could not be started.
    #[error("cannot start the raft log flush thread: {source}")]
    Thread {
        /// The OS error.
        source: std::io::Error,
    },
}

/// Attaches what the store was doing to a redb error.
pub(crate) trait DuringOp<T> {
    /// Maps the error to [`LogStoreError::Database`] with `op` as the operation.
    fn during(self, op: &'static str) -> Result<T, LogStoreError>;
}

impl<T, E: Into<redb::Error>> DuringOp<T> for Result<T, E> {
    fn during(self, op: &'static str) -> Result<T, LogStoreError> {
        self.map_err(|error| LogStoreError::Database { op, source: error.into() })
    }
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
/// Purges do not wait either: openraft awaits `purge` inside its core loop, so a purge
/// that deleted thousands of entries there would stop heartbeats for as long as the
/// deletion took (long enough, under load, for the followers to elect a new leader). A
/// purge takes effect for readers at once (entries up to it are no longer returned) and
/// the writer deletes them in steps of at most [`PURGE_STEP_ENTRIES`] entries or about
/// [`PURGE_STEP_BYTES`] between batches of appends. Deleting a whole snapshot's worth at
/// once (~20,000 entries, a gigabyte under full load) held the writer — and with it every
/// append, which openraft's core awaits — for about a second.
///
/// The newest written entries stay in memory too (up to [`RECENT_BYTES`]): replication
/// reads what was just appended, and reading it from memory saves a trip to the blocking
/// pool, a redb read and a decode per AppendEntries.
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
}

/// Encoded bytes of written entries kept in memory for readers (see [`LogStore`]).
const RECENT_BYTES: usize = 8 << 20;

/// The log's tail in memory: the entries appended but not yet written, and the newest
/// written ones. Together they are the log from the first of them on, with no gap: entries
/// move from `pending` to `recent` in index order once written, `recent` loses only its
/// oldest, and a truncation drops the same suffix from both and from redb.
#[derive(Default)]
struct Tail {
    /// Appended, not yet written to redb, by index.
    pending: BTreeMap<u64, Entry>,
    /// Written to redb as well, by index, with their encoded size.
    recent: BTreeMap<u64, (Entry, usize)>,
    /// Sum of the sizes in `recent`.
    recent_bytes: usize,
}

impl Tail {
    /// The entries in `start..end` if the tail holds all the log has there, else `None`
    /// (the caller reads redb).
    fn entries(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let first =
            self.recent.keys().next().into_iter().chain(self.pending.keys().next()).min()?;
        if start < *first {
            return None;
        }
        let range = (Bound::Included(start), end.map_or(Bound::Unbounded, Bound::Excluded));
        let mut entries: BTreeMap<u64, Entry> =
            self.recent.range(range).map(|(i, (e, _))| (*i, e.clone())).collect();
        // A pending entry is newer than a written one at its index.
        entries.extend(self.pending.range(range).map(|(i, e)| (*i, e.clone())));
        Some(entries.into_values().collect())
    }

    /// Moves a written entry from `pending` to `recent`, unless a newer entry took its
    /// index meanwhile; then drops the oldest written entries beyond [`RECENT_BYTES`].
    fn written(&mut self, index: u64, log_id: &LogId, size: usize) {
        if self.pending.get(&index).is_some_and(|e| e.get_log_id() == log_id)
            && let Some(entry) = self.pending.remove(&index)
        {
            if let Some((_, old)) = self.recent.insert(index, (entry, size)) {
                self.recent_bytes -= old;
            }
            self.recent_bytes += size;
        }
        while self.recent_bytes > RECENT_BYTES
            && let Some((_, (_, size))) = self.recent.pop_first()
        {
            self.recent_bytes -= size;
        }
    }

    /// Drops every entry from `index` on.
    fn truncate(&mut self, index: u64) {
        self.pending.split_off(&index);
        for (_, (_, size)) in self.recent.split_off(&index) {
            self.recent_bytes -= size;
        }
    }

    /// Drops written entries up to `index`.
    fn purge(&mut self, index: u64) {
        while let Some(oldest) = self.recent.first_entry()
            && *oldest.key() <= index
        {
            self.recent_bytes -= oldest.remove().1;
        }
    }
}

/// Write access to the tail (the lock does not poison: nothing panics while holding it).
fn lock_tail(tail: &RwLock<Tail>) -> std::sync::RwLockWriteGuard<'_, Tail> {
    match tail.write() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Work for the writer thread, done in queue order.
enum WriterOp {
    /// Write these entries durably, then report `callback`.
    Append {
        /// (index, log id, postcard encoding) of each entry.
        entries: Vec<(u64, LogId, Vec<u8>)>,
        callback: LogFlushed<TypeConfig>,
        started: Instant,
    },
    /// Answer once everything queued before is written.
    Barrier(tokio::sync::oneshot::Sender<Result<(), Arc<LogStoreError>>>),
    /// Record this committed log id (postcard) with the next transaction; nobody waits.
    Committed(Vec<u8>),
    /// Delete the entries up to this log id, in steps between later batches, and record
    /// it as the last purged; nobody waits.
    Purge(LogId),
}

/// The group-commit writer: a thread that drains the queue, writes every queued append
/// in one durable transaction, and only then reports them flushed.
struct Writer {
    queue: Mutex<Option<std::sync::mpsc::Sender<WriterOp>>>,
    /// Joined on drop, so the database is closed when the store is.
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Where append latency (until durable) and batch sizes are observed.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "read by tests; the thread has its own handle")
    )]
    metrics: ConsensusMetrics,
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the queue ends the thread after it has written what it holds.
        if let Ok(mut queue) = self.queue.lock() {
            queue.take();
        }
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}

impl Writer {
    fn start(
        db: Arc<Database>,
        tail: Arc<RwLock<Tail>>,
        metrics: ConsensusMetrics,
    ) -> Result<Arc<Self>, LogStoreError> {
        let (tx, rx) = std::sync::mpsc::channel::<WriterOp>();
        let observed = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || {
                // The purge not finished yet: the writer deletes a step of it after each
                // batch, and while the queue is empty.
                let mut purge: Option<LogId> = None;
                // Ends when every LogStore clone (and so every sender) is gone.
                loop {
                    let first = if purge.is_some() {
                        match rx.try_recv() {
                            Ok(op) => Some(op),
                            Err(std::sync::mpsc::TryRecvError::Empty) => None,
                            Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
                        }
                    } else {
                        match rx.recv() {
                            Ok(op) => Some(op),
                            Err(std::sync::mpsc::RecvError) => break,
                        }
                    };
                    if let Some(first) = first {
                        let mut batch = vec![first];
                        batch.extend(rx.try_iter());
                        purge = purge.max(write_batch(&db, &tail, &observed, batch));
                    }
                    if let Some(upto) = purge {
                        purge = purge_step(&db, upto);
                    }
                }
                // Finish the purge (bounded by the log's length) and make the last
                // non-durable writes (committed hint, purge) durable.
                while let Some(upto) = purge {
                    purge = purge_step(&db, upto);
                }
                if let Err(error) = write_txn(&db, "close the log", |_| Ok(())) {
                    tracing::warn!(%error, "cannot make the last log writes durable");
                }
            })
            .map_err(|source| LogStoreError::Thread { source })?;
        Ok(Arc::new(Self {
            queue: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            metrics,
        }))
    }

    fn enqueue(&self, op: WriterOp) -> Result<(), WriterOp> {
        let Ok(queue) = self.queue.lock() else { return Err(op) };
        match queue.as_ref() {
            Some(queue) => queue.send(op).map_err(|e| e.0),
            None => Err(op),
        }
    }

    /// Waits until everything queued so far is written.
    async fn barrier(&self) -> Result<(), LogStoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.enqueue(WriterOp::Barrier(tx)).is_err() {
            return Err(LogStoreError::WriterStopped);
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(LogStoreError::Flush { error }),
            Err(_) => Err(LogStoreError::WriterStopped),
        }
    }
}

/// Writes one batch of queued work: every append in one durable transaction; then drops
/// the written entries from the pending ones of `tail` to its recent ones and answers
/// callbacks and barriers, in order.
/// A batch of committed-index hints alone is written without an fsync of its own: the
/// hint only speeds up a restart, and the next durable commit makes it durable.
/// Returns the newest purge the batch asks for (the caller deletes it in steps).
fn write_batch(
    db: &Database,
    tail: &RwLock<Tail>,
    metrics: &ConsensusMetrics,
    batch: Vec<WriterOp>,
) -> Option<LogId> {
    let durability =
        if batch.iter().all(|op| matches!(op, WriterOp::Committed(_) | WriterOp::Purge(..))) {
            Durability::None
        } else {
            Durability::Immediate
        };
    let result = injected(db, Point::LogAppend).and_then(|()| {
        write_txn_with(db, "append log entries", durability, |txn| {
            let mut table = txn.open_table(LOG).during("open the log table")?;
            let mut committed = None;
            for op in &batch {
                match op {
                    WriterOp::Append { entries, .. } => {
                        for (index, _, bytes) in entries {
                            table.insert(*index, bytes.as_slice()).during("append log entries")?;
                        }
                    }
                    WriterOp::Committed(bytes) => committed = Some(bytes),
                    WriterOp::Barrier(_) | WriterOp::Purge(..) => {}
                }
            }
            if let Some(bytes) = committed {
                let mut meta = txn.open_table(LOG_META).during("open the log metadata table")?;
                meta.insert(COMMITTED_KEY, bytes.as_slice()).during("record the committed id")?;
            }
            // An error here drops the transaction: nothing of the batch is written.
            injected(db, Point::LogCommit)
        })
    });
    // One error for every append and barrier of the batch.
    let result = result.map_err(Arc::new);
    if result.is_ok() {
        // Written entries are readable from redb now.
        let mut tail = lock_tail(tail);
        for op in &batch {
            if let WriterOp::Append { entries, .. } = op {
                for (index, log_id, bytes) in entries {
                    tail.written(*index, log_id, bytes.len());
                }
            }
        }
    }
    if result.is_ok() {
        let written: usize = batch
            .iter()
            .map(|op| match op {
                WriterOp::Append { entries, .. } => entries.len(),
                WriterOp::Barrier(_) | WriterOp::Committed(_) | WriterOp::Purge(..) => 0,
            })
            .sum();
        if written > 0 {
            metrics.append_batch_entries.observe(written as f64);
        }
    }
    let mut purge = None;
    for op in batch {
        match (op, &result) {
            (WriterOp::Append { callback, started, .. }, Ok(())) => {
                metrics.append_seconds.observe(started.elapsed().as_secs_f64());
                callback.log_io_completed(Ok(()));
            }
            (WriterOp::Append { callback, .. }, Err(error)) => {
                tracing::error!(%error, "raft log append failed");
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
            }
            (WriterOp::Barrier(tx), result) => {
                let _ = tx.send(result.clone());
            }
            (WriterOp::Committed(_), Ok(())) => {}
            (WriterOp::Committed(_), Err(error)) => {
                // Only a hint: a failed write is retried with the next commit.
                tracing::warn!(%error, "cannot record the committed log id");
            }
            (WriterOp::Purge(log_id), _) => purge = purge.max(Some(log_id)),
        }
    }
    purge
}

/// Most entries one purge step deletes (see [`LogStore`]).
const PURGE_STEP_ENTRIES: usize = 64;
/// Bytes of entries after which a purge step stops (it deletes at least one entry).
const PURGE_STEP_BYTES: usize = 4 << 20;

/// One step of a purge up to `upto`: deletes the oldest entries, at most
/// [`PURGE_STEP_ENTRIES`] or until [`PURGE_STEP_BYTES`], and records the last one deleted
/// (`upto` itself once none is left up to it) as the last purged, in one transaction, so a
/// crash never leaves a deleted prefix without its marker. The transaction is not made
/// durable on its own: the next append's fsync does that, and a crash before it keeps the
/// entries and the older marker, which agree.
///
/// Returns `upto` while entries up to it remain, `None` once the purge is done (or failed:
/// readers skip purged entries anyway, and the next purge deletes these too).
fn purge_step(db: &Database, upto: LogId) -> Option<LogId> {
    let started = Instant::now();
    let result = write_txn_with(db, "purge the log", Durability::None, |txn| {
        let mut table = txn.open_table(LOG).during("open the log table")?;
        let (mut last, mut count, mut bytes, mut more) = (None, 0, 0, false);
        for item in table.range(..=upto.index).during("read log entries")? {
            let (key, value) = item.during("read log entries")?;
            if count == PURGE_STEP_ENTRIES || bytes >= PURGE_STEP_BYTES {
                more = true;
                break;
            }
            (last, count, bytes) = (Some(key.value()), count + 1, bytes + value.value().len());
        }
        let marker = match last {
            Some(index) if more => {
                let value = table.get(index).during("read log entries")?;
                let value = value.ok_or(LogStoreError::MissingEntry { index })?;
                *decode_entry(index, value.value())?.get_log_id()
            }
            _ => upto,
        };
        if let Some(index) = last {
            table.retain_in(..=index, |_, _| false).during("purge the log")?;
        }
        let mut meta = txn.open_table(LOG_META).during("open the log metadata table")?;
        let recorded: Option<LogId> = get_meta(&meta, LAST_PURGED_KEY)?;
        if recorded.is_none_or(|recorded| recorded < marker) {
            let bytes = encode_meta(LAST_PURGED_KEY, &marker)?;
            meta.insert(LAST_PURGED_KEY, bytes.as_slice())
                .during("record the last purged log id")?;
        }
        Ok((count, marker, more))
    });
    match result {
        Ok((count, marker, more)) => {
            tracing::debug!(
                upto = upto.index,
                purged = marker.index,
                entries = count,
                elapsed = ?started.elapsed(),
                "purged a step of the log"
            );
            more.then_some(upto)
        }
        Err(error) => {
            tracing::warn!(%error, upto = upto.index, "cannot purge the log");
            None
        }
    }
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
        write_txn(&db, "create the log tables", |txn| {
            let mut log = txn.open_table(LOG).during("create the log table")?;
            let mut meta = txn.open_table(LOG_META).during("create the log metadata table")?;
            match get_meta::<u32>(&meta, ENTRY_FORMAT_KEY)? {
                Some(ENTRY_FORMAT) => return Ok(()),
                Some(found) => return Err(LogStoreError::UnknownFormat { found }),
                None => format_1::rewrite(&mut log)?,
            }
            let format = encode_meta(ENTRY_FORMAT_KEY, &ENTRY_FORMAT)?;
            meta.insert(ENTRY_FORMAT_KEY, format.as_slice()).during("record the entry format")?;
            Ok(())
        })
        .map_err(|error| StorageIOError::write_logs(&error))?;
        let tail = Arc::new(RwLock::new(Tail::default()));
        let writer = Writer::start(db.clone(), tail.clone(), metrics)
            .map_err(|error| StorageIOError::write_logs(&error))?;
        Ok(Self { db, tail, purged: Arc::new(RwLock::new(None)), writer })
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
        match self.tail.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
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

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        injected(&self.db, Point::VoteSave).map_err(|error| StorageIOError::write_vote(&error))?;
        self.write_meta(VOTE_KEY, vote)
            .await
            .map_err(|error| StorageIOError::write_vote(&error))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let vote =
            self.read_meta(VOTE_KEY).await.map_err(|error| StorageIOError::read_vote(&error))?;
        Ok(vote)
    }

    /// The committed index is a hint for a faster restart (openraft re-derives it), so it
    /// is queued for the writer, which records it with the next transaction: raft core
    /// neither waits for an fsync nor for a redb write lock the writer holds.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let bytes = encode_meta(COMMITTED_KEY, &committed)
            .map_err(|error| StorageIOError::write(&error))?;
        if self.writer.enqueue(WriterOp::Committed(bytes)).is_err() {
            return Err(StorageIOError::write(&LogStoreError::WriterStopped).into());
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> =
            self.read_meta(COMMITTED_KEY).await.map_err(|error| StorageIOError::read(&error))?;
        Ok(committed.flatten())
    }

    /// Queues `entries` for the writer — readable as soon as this returns, as openraft
    /// needs — which reports the flush to `callback` once they are durable.
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
        lock_tail(&self.tail)
            .pending
            .extend(entries.into_iter().map(|e| (e.get_log_id().index, e)));
        if let Err(op) =
            self.writer.enqueue(WriterOp::Append { entries: encoded, callback, started })
        {
            let error = LogStoreError::WriterStopped;
            if let WriterOp::Append { callback, .. } = op {
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
            }
            return Err(StorageIOError::write_logs(&error).into());
        }
        Ok(())
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

/// A storage fault injected at `point` (feature `failpoints`), else `Ok`.
#[cfg_attr(
    not(feature = "failpoints"),
    expect(clippy::unnecessary_wraps, reason = "a fault can only be injected with the feature")
)]
fn injected(db: &Database, point: Point) -> Result<(), LogStoreError> {
    #[cfg(feature = "failpoints")]
    crate::failpoints::check(db, point).map_err(|source| LogStoreError::Injected { source })?;
    #[cfg(not(feature = "failpoints"))]
    let _ = (db, point);
    Ok(())
}

/// Runs `f` in a write transaction committed with [`Durability::Immediate`]; an error of
/// `f` aborts the transaction. A durable commit also makes every earlier non-durable
/// commit durable. Every log append is one (see also [`crate::disk_check`], which times
/// them).
pub(crate) fn write_txn<T>(
    db: &Database,
    op: &'static str,
    f: impl FnOnce(&redb::WriteTransaction) -> Result<T, LogStoreError>,
) -> Result<T, LogStoreError> {
    write_txn_with(db, op, Durability::Immediate, f)
}

/// Runs `f` in a write transaction committed with `durability`.
fn write_txn_with<T>(
    db: &Database,
    op: &'static str,
    durability: Durability,
    f: impl FnOnce(&redb::WriteTransaction) -> Result<T, LogStoreError>,
) -> Result<T, LogStoreError> {
    let mut txn = db.begin_write().during(op)?;
    txn.set_durability(durability).during(op)?;
    let out = f(&txn)?;
    txn.commit().during(op)?;
    Ok(out)
}

/// Reads and decodes the metadata value under `key`.
fn get_meta<T: DeserializeOwned>(
    table: &impl redb::ReadableTable<&'static str, &'static [u8]>,
    key: &'static str,
) -> Result<Option<T>, LogStoreError> {
    let Some(value) = table.get(key).during("read log metadata")? else {
        return Ok(None);
    };
    postcard::from_bytes(value.value())
        .map(Some)
        .map_err(|source| LogStoreError::DecodeMeta { key, source })
}

/// Encodes a metadata value.
fn encode_meta<T: Serialize + ?Sized>(
    key: &'static str,
    value: &T,
) -> Result<Vec<u8>, LogStoreError> {
    postcard::to_allocvec(value).map_err(|source| LogStoreError::EncodeMeta { key, source })
}

/// Decodes the entry stored under `key` and checks it belongs there.
fn decode_entry(key: u64, bytes: &[u8]) -> Result<Entry, LogStoreError> {
    let entry: Entry = postcard::from_bytes(bytes)
        .map_err(|source| LogStoreError::DecodeEntry { index: key, source })?;
    if entry.get_log_id().index != key {
        return Err(LogStoreError::MisplacedEntry { key, log_id: *entry.get_log_id() });
    }
    Ok(entry)
}

/// Entries as format 1 stored them: a normal entry held exactly one command.
mod format_1 {
    use openraft::EntryPayload;
    use serde::Deserialize;

    use super::{DuringOp as _, LogStoreError};
    use crate::types::{Command, LogId, Membership};

    /// openraft's `Entry` with format 1's payload; postcard encodes struct fields and enum
    /// variants by position, so these decode what format 1 wrote.
    #[derive(Deserialize)]
    struct Entry {
        log_id: LogId,
        payload: Payload,
    }

    #[derive(Deserialize)]
    enum Payload {
        Blank,
        Normal(#[serde(with = "serde_bytes")] Vec<u8>),
        Membership(Membership),
    }

    /// Re-encodes every entry of `log` from format 1 to the current format (a normal
    /// entry becomes a batch of its one command), in the caller's transaction.
    pub(super) fn rewrite(log: &mut redb::Table<'_, u64, &[u8]>) -> Result<(), LogStoreError> {
        let mut rewritten = Vec::new();
        for item in redb::ReadableTable::iter(log).during("read the format 1 log")? {
            let (key, value) = item.during("read the format 1 log")?;
            let index = key.value();
            let old: Entry = postcard::from_bytes(value.value())
                .map_err(|source| LogStoreError::DecodeEntry { index, source })?;
            let payload = match old.payload {
                Payload::Blank => EntryPayload::Blank,
                Payload::Normal(command) => EntryPayload::Normal(Command::single(command)),
                Payload::Membership(membership) => EntryPayload::Membership(membership),
            };
            let entry = crate::types::Entry { log_id: old.log_id, payload };
            let bytes = postcard::to_allocvec(&entry)
                .map_err(|source| LogStoreError::EncodeEntry { index, source })?;
            rewritten.push((index, bytes));
        }
        if !rewritten.is_empty() {
            tracing::info!(entries = rewritten.len(), "rewriting the raft log to entry format 2");
        }
        for (index, bytes) in rewritten {
            log.insert(index, bytes.as_slice()).during("rewrite the log")?;
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

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 0), index)
    }

    fn normal(term: u64, index: u64, data: &[u8]) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Command::single(data.to_vec())),
        }
    }

    /// The Prometheus text exposition of `metrics`.
    fn exposition(metrics: &ConsensusMetrics) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode metrics");
        text
    }

    fn open(dir: &TempDir) -> LogStore {
        let db = open_database(&dir.path().join("raft.redb")).expect("open database");
        LogStore::new(db, ConsensusMetrics::default()).expect("open log store")
    }

    #[tokio::test]
    async fn a_format_1_log_is_rewritten_to_command_batches_on_open() {
        // What format 1 wrote: openraft's entry with a normal payload of one byte string.
        #[derive(Serialize)]
        struct OldEntry {
            log_id: LogId,
            payload: OldPayload,
        }
        #[derive(Serialize)]
        enum OldPayload {
            Blank,
            Normal(#[serde(with = "serde_bytes")] Vec<u8>),
            Membership(crate::types::Membership),
        }
        let membership = crate::types::Membership::new(vec![[1, 2, 3].into()], None);
        let old = [
            OldEntry { log_id: log_id(1, 1), payload: OldPayload::Blank },
            OldEntry { log_id: log_id(1, 2), payload: OldPayload::Membership(membership.clone()) },
            OldEntry { log_id: log_id(1, 3), payload: OldPayload::Normal(b"a=1".to_vec()) },
            OldEntry { log_id: log_id(2, 4), payload: OldPayload::Normal(Vec::new()) },
        ];
        let dir = TempDir::new().expect("tempdir");
        {
            let db = open_database(&dir.path().join("raft.redb")).expect("open database");
            write_txn(&db, "write a format 1 log", |txn| {
                let mut log = txn.open_table(LOG).during("open")?;
                for entry in &old {
                    let bytes = postcard::to_allocvec(entry).expect("encode");
                    log.insert(entry.log_id.index, bytes.as_slice()).during("insert")?;
                }
                txn.open_table(LOG_META).during("open")?;
                Ok(())
            })
            .expect("format 1 log written");
        }
        let expected = vec![
            Entry { log_id: log_id(1, 1), payload: EntryPayload::Blank },
            Entry { log_id: log_id(1, 2), payload: EntryPayload::Membership(membership) },
            normal(1, 3, b"a=1"),
            normal(2, 4, b""),
        ];
        let mut store = open(&dir);
        assert_eq!(store.try_get_log_entries(..).await.expect("read"), expected);
        drop(store);
        // Rewritten once: opening again reads the same entries.
        let mut store = open(&dir);
        assert_eq!(store.try_get_log_entries(..).await.expect("read"), expected);
    }

    #[tokio::test]
    async fn a_log_of_an_unknown_entry_format_is_refused() {
        let dir = TempDir::new().expect("tempdir");
        drop(open(&dir));
        let db = open_database(&dir.path().join("raft.redb")).expect("open database");
        write_txn(&db, "claim format 9", |txn| {
            let mut meta = txn.open_table(LOG_META).during("open")?;
            let nine = encode_meta(ENTRY_FORMAT_KEY, &9u32)?;
            meta.insert(ENTRY_FORMAT_KEY, nine.as_slice()).during("insert")?;
            Ok(())
        })
        .expect("written");
        let Err(error) = LogStore::new(db, ConsensusMetrics::default()) else {
            panic!("a log of format 9 must not open");
        };
        assert!(
            error.to_string().contains("entry format 9, written by a newer federator"),
            "{error}"
        );
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
    async fn a_long_purge_is_deleted_in_steps_each_recording_how_far_it_got() {
        let dir = TempDir::new().expect("tempdir");
        let mut store = open(&dir);
        let entries: Vec<Entry> = (1..=200).map(|i| normal(2, i, b"a=b")).collect();
        store.blocking_append(entries).await.expect("append");
        let marker = |db: &Database| -> Option<LogId> {
            let txn = db.begin_read().expect("read");
            get_meta(&txn.open_table(LOG_META).expect("meta"), LAST_PURGED_KEY).expect("marker")
        };
        let first = |db: &Database| -> Option<u64> {
            let txn = db.begin_read().expect("read");
            let table = txn.open_table(LOG).expect("log");
            table.first().expect("first").map(|(key, _)| key.value())
        };
        let upto = log_id(2, 150);
        assert_eq!(purge_step(&store.db, upto), Some(upto), "more than one step's worth");
        assert_eq!(first(&store.db), Some(PURGE_STEP_ENTRIES as u64 + 1));
        assert_eq!(
            marker(&store.db),
            Some(log_id(2, PURGE_STEP_ENTRIES as u64)),
            "a crash now keeps the marker and the entries after it in agreement"
        );
        let mut steps = 1;
        loop {
            steps += 1;
            if purge_step(&store.db, upto).is_none() {
                break;
            }
            assert!(steps < 10, "a purge of 150 entries ends");
        }
        assert_eq!(steps, 3, "64 + 64 + 22 entries");
        assert_eq!(first(&store.db), Some(151));
        assert_eq!(marker(&store.db), Some(upto));
        assert_eq!(purge_step(&store.db, upto), None, "nothing left: done at once");

        // Large entries: a step stops once it has deleted PURGE_STEP_BYTES.
        let big = vec![b'x'; PURGE_STEP_BYTES / 2 + 1];
        let entries: Vec<Entry> = (201..=206).map(|i| normal(2, i, &big)).collect();
        store.blocking_append(entries).await.expect("append");
        assert_eq!(purge_step(&store.db, log_id(2, 206)), Some(log_id(2, 206)));
        assert_eq!(first(&store.db), Some(203), "two entries of over half the budget each");
    }

    #[tokio::test]
    async fn the_writer_finishes_a_long_purge_and_a_reopen_sees_it_all() {
        let dir = TempDir::new().expect("tempdir");
        {
            let mut store = open(&dir);
            let entries: Vec<Entry> = (1..=300).map(|i| normal(3, i, b"k=v")).collect();
            store.blocking_append(entries).await.expect("append");
            store.purge(log_id(3, 290)).await.expect("purge");
            // Appends go on while the writer deletes in steps.
            store.blocking_append(vec![normal(3, 301, b"k=w")]).await.expect("append");
            let read = store.try_get_log_entries(0..1000).await.expect("read");
            assert_eq!(read.first().map(|e| e.log_id.index), Some(291));
            assert_eq!(read.len(), 11);
        }
        let mut store = open(&dir);
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(3, 290)));
        assert_eq!(state.last_log_id, Some(log_id(3, 301)));
        let read = store.try_get_log_entries(0..1000).await.expect("read");
        assert_eq!(
            read.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            (291..=301).collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_tail_keeps_the_newest_written_entries_and_no_gap() {
        let mut tail = Tail::default();
        assert_eq!(tail.entries(1, None), None, "empty: read redb");
        for i in 1..=4 {
            tail.pending.insert(i, normal(1, i, b"x"));
        }
        tail.written(1, &log_id(1, 1), RECENT_BYTES / 2);
        tail.written(2, &log_id(1, 2), RECENT_BYTES / 2);
        let indexes = |entries: Option<Vec<Entry>>| {
            entries.map(|e| e.iter().map(|e| e.log_id.index).collect::<Vec<_>>())
        };
        assert_eq!(indexes(tail.entries(1, None)), Some(vec![1, 2, 3, 4]));
        assert_eq!(indexes(tail.entries(2, Some(4))), Some(vec![2, 3]));
        // Over the budget: the oldest written entry leaves; reads before it go to redb.
        tail.written(3, &log_id(1, 3), 1);
        assert_eq!(tail.recent_bytes, RECENT_BYTES / 2 + 1);
        assert_eq!(tail.entries(1, None), None);
        assert_eq!(indexes(tail.entries(2, None)), Some(vec![2, 3, 4]));
        assert_eq!(indexes(tail.entries(9, None)), Some(vec![]), "nothing beyond the log");
        // A newer entry at a written index (after a truncation) is not replaced.
        tail.truncate(3);
        assert_eq!(tail.recent_bytes, RECENT_BYTES / 2);
        tail.pending.insert(3, normal(2, 3, b"y"));
        tail.written(3, &log_id(1, 3), 1);
        assert_eq!(tail.entries(3, None).expect("in memory")[0].log_id, log_id(2, 3));
        tail.purge(2);
        assert_eq!(tail.recent_bytes, 0);
        assert_eq!(indexes(tail.entries(3, None)), Some(vec![3]));
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
    async fn append_records_latency_and_batch_size() {
        let dir = TempDir::new().expect("tempdir");
        let mut store = open(&dir);
        let entries: Vec<Entry> = (1..=3).map(|i| normal(1, i, b"a=b")).collect();
        store.blocking_append(entries).await.expect("append");
        let text = exposition(&store.writer.metrics);
        assert!(text.contains("raft_append_batch_entries_count 1\n"), "{text}");
        assert!(text.contains("raft_append_batch_entries_sum 3.0\n"), "{text}");
        assert!(text.contains("raft_append_duration_seconds_count 1\n"), "{text}");
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
