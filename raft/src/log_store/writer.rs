//! The group-commit writer: one thread that writes every append queued so far in one
//! redb transaction, makes it durable (one record in the redo file, or a durable commit)
//! and only then reports the appends flushed (unless an append was reported flushed
//! already, see [`LogStore`](super::LogStore)); it records the committed-index hint,
//! makes the redo file's checkpoints, and deletes purged entries in steps between
//! batches. Once a batch of appends fails it writes nothing more: a later batch would
//! leave a gap. A follower's append may be written on the caller's thread instead, with
//! the writer's state held ([`Writer::write_inline`]).

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::RaftLogId as _;
use openraft::storage::LogFlushed;
use redb::{Database, Durability, ReadableTable as _};

use super::cache::{Tail, lock_tail};
use super::durable::WriterProgress;
use super::tables::{
    COMMITTED_KEY, DuringOp as _, LAST_PURGED_KEY, LOG, LOG_META, LogStoreError, WAL_SEQ_KEY,
    decode_entry, encode_meta, get_meta, injected, stall_injected, write_txn, write_txn_with,
};
use super::wal::Wal;
use crate::failpoints::Point;
use crate::metrics::ConsensusMetrics;
use crate::timeline::{Step, span};
use crate::types::{LogId, TypeConfig};

/// Work for the writer thread, done in queue order.
pub(super) enum WriterOp {
    /// Write these entries durably, then report `callback` (`None`: reported already).
    Append {
        /// (index, log id, postcard encoding) of each entry.
        entries: Vec<(u64, LogId, Vec<u8>)>,
        callback: Option<LogFlushed<TypeConfig>>,
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
/// in one transaction, makes it durable, and only then reports them flushed.
pub(super) struct Writer {
    queue: Mutex<Option<std::sync::mpsc::Sender<WriterOp>>>,
    /// Joined on drop, so the database is closed when the store is.
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// What the thread shares with appends written inline ([`Writer::write_inline`]).
    shared: Arc<Shared>,
}

/// What the writer thread and an append written inline share.
struct Shared {
    db: Arc<Database>,
    tail: Arc<RwLock<Tail>>,
    /// Where append latency (until durable), batch sizes and steps are observed.
    metrics: ConsensusMetrics,
    progress: tokio::sync::watch::Sender<WriterProgress>,
    /// Held while a batch is written, by the thread or inline: one writer at a time.
    state: Mutex<WriterState>,
}

/// The writer's own state, under [`Shared::state`].
struct WriterState {
    /// The newest committed-index hint not written yet: it goes with the next append, or
    /// alone once none has come for `HINT_WAIT`.
    hint: Option<Vec<u8>>,
    wal: Option<Wal>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        // The state is left whole between batches: a panic in one leaves nothing half-set.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A checkpoint made while the queue is empty, with the state held; one that fails
    /// stops the writer (redb refuses further writes after a failed durable commit).
    fn idle_checkpoint(&self, state: &mut WriterState) {
        let Some(redo) = state.wal.as_mut() else { return };
        if let Err(error) = checkpoint(&self.db, redo, &mut state.hint) {
            fail(&self.progress, &mut state.wal, &Arc::new(error));
        }
    }

    /// Writes `batch` with the state held.
    fn write(&self, state: &mut WriterState, batch: Vec<WriterOp>) -> Option<LogId> {
        write_batch(
            &self.db,
            &self.tail,
            &self.metrics,
            batch,
            &mut state.hint,
            &mut state.wal,
            &self.progress,
        )
    }
}

/// How long an idle writer with a redo file sleeps at most before it looks again whether
/// a checkpoint is due (appends written inline add records it did not see).
const IDLE_RECHECK: Duration = Duration::from_secs(1);

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
    /// Starts the thread; it tells `progress` of every batch of appends it writes, and of
    /// the error that stops it.
    ///
    /// With a redo file (`wal`) appends are committed to redb without an fsync and made
    /// durable by a record in the file; the writer makes a checkpoint (a durable redb
    /// commit, after which the file is written from its start) when the file is full,
    /// and when one is due ([`Wal::checkpoint_due`]) and nothing waits. Without one every
    /// batch of appends is a durable redb commit.
    pub(super) fn start(
        db: Arc<Database>,
        tail: Arc<RwLock<Tail>>,
        metrics: ConsensusMetrics,
        progress: tokio::sync::watch::Sender<WriterProgress>,
        wal: Option<Wal>,
    ) -> Result<Arc<Self>, LogStoreError> {
        let (tx, rx) = std::sync::mpsc::channel::<WriterOp>();
        let shared = Arc::new(Shared {
            db,
            tail,
            metrics,
            progress,
            state: Mutex::new(WriterState { hint: None, wal }),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || run(&thread_shared, &rx))
            .map_err(|source| LogStoreError::Thread { source })?;
        Ok(Arc::new(Self { queue: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)), shared }))
    }

    /// Writes `op`, an append nobody has reported flushed, on the calling thread and
    /// reports it, instead of queuing it for the writer thread: a follower's raft core
    /// waits for its append anyway, and this spares it two wake-ups after an idle stretch
    /// (the writer thread's, then its own). Only on a multi-thread runtime, where
    /// [`tokio::task::block_in_place`] lets the worker's other tasks move to another
    /// thread meanwhile; only when the writer holds nothing unwritten
    /// (`nothing_pending`: the store had no entry waiting for the writer) and is writing
    /// nothing now, so appends stay in order; and only with a redo file that needs no
    /// checkpoint first, so the caller never waits for one. Otherwise `op` is handed back
    /// to be queued.
    pub(super) fn write_inline(&self, op: WriterOp, nothing_pending: bool) -> Result<(), WriterOp> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let multi_thread = Handle::try_current()
            .is_ok_and(|handle| handle.runtime_flavor() == RuntimeFlavor::MultiThread);
        if !nothing_pending || !multi_thread {
            return Err(op);
        }
        let Ok(mut state) = self.shared.state.try_lock() else { return Err(op) };
        if state.wal.as_ref().is_none_or(Wal::checkpoint_due) {
            return Err(op);
        }
        tokio::task::block_in_place(|| {
            // A batch of one append asks for no purge.
            let _ = self.shared.write(&mut state, vec![op]);
        });
        self.shared.metrics.log_appends_inline.inc();
        Ok(())
    }

    pub(super) fn enqueue(&self, op: WriterOp) -> Result<(), WriterOp> {
        let Ok(queue) = self.queue.lock() else { return Err(op) };
        match queue.as_ref() {
            Some(queue) => queue.send(op).map_err(|e| e.0),
            None => Err(op),
        }
    }

    /// Waits until everything queued so far is written.
    pub(super) async fn barrier(&self) -> Result<(), LogStoreError> {
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

/// The writer thread: waits for work, writes each batch of it with the state held, makes
/// checkpoints and writes a lone hint while idle, and deletes purges in steps. Ends once
/// every sender is gone, after finishing the purge and a durable commit.
fn run(shared: &Shared, rx: &std::sync::mpsc::Receiver<WriterOp>) {
    use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
    let db = &shared.db;
    // The purge not finished yet: the writer deletes a step of it after each batch, and
    // while the queue is empty.
    let mut purge: Option<LogId> = None;
    loop {
        let (checkpoint_due, wait) = {
            let state = shared.lock();
            let wait = idle_wait(state.hint.is_some(), state.wal.as_ref());
            (state.wal.as_ref().is_some_and(Wal::checkpoint_due), wait)
        };
        let first = if purge.is_some() || checkpoint_due {
            match rx.try_recv() {
                Ok(op) => Some(op),
                Err(TryRecvError::Empty) => {
                    if checkpoint_due {
                        shared.idle_checkpoint(&mut shared.lock());
                    }
                    None
                }
                Err(TryRecvError::Disconnected) => break,
            }
        } else if let Some(wait) = wait {
            match rx.recv_timeout(wait) {
                Ok(op) => Some(op),
                Err(RecvTimeoutError::Timeout) => {
                    let mut state = shared.lock();
                    if state.wal.as_ref().is_some_and(Wal::checkpoint_due) {
                        shared.idle_checkpoint(&mut state);
                    } else if state.hint.is_some() {
                        write_hint_alone(db, &mut state.hint);
                    }
                    None
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(op) => Some(op),
                Err(std::sync::mpsc::RecvError) => break,
            }
        };
        if let Some(first) = first {
            let mut state = shared.lock();
            let mut batch = vec![first];
            batch.extend(rx.try_iter());
            purge = purge.max(shared.write(&mut state, batch));
        }
        if let Some(upto) = purge {
            purge = purge_step(db, upto);
        }
    }
    // Finish the purge (bounded by the log's length) and make the last non-durable writes
    // (committed hint, purge) durable.
    while let Some(upto) = purge {
        purge = purge_step(db, upto);
    }
    // A durable commit: a restart replays nothing from the redo file.
    let hint = shared.lock().hint.take();
    if let Err(error) = write_txn(db, "close the log", |txn| record_hint(txn, &hint)) {
        tracing::warn!(%error, "cannot make the last log writes durable");
    }
}

/// How long a committed-index hint waits for an append to be written with before it is
/// written alone.
const HINT_WAIT: Duration = Duration::from_millis(100);

/// How long the writer waits for work before it writes a waiting `hint` alone or makes a
/// checkpoint the redo file (`wal`) will be due for, and with a redo file at most
/// [`IDLE_RECHECK`] (appends written inline add records the writer did not see); `None`:
/// nothing waits and there is no redo file.
fn idle_wait(hint: bool, wal: Option<&Wal>) -> Option<Duration> {
    let checkpoint = wal.map(|wal| wal.checkpoint_in().unwrap_or(IDLE_RECHECK));
    match (hint, checkpoint) {
        (true, Some(checkpoint)) => Some(checkpoint.min(HINT_WAIT)),
        (true, None) => Some(HINT_WAIT),
        (false, checkpoint) => checkpoint,
    }
}

/// Writes one batch of queued work: every append in one transaction made durable, with the
/// newest committed-index hint not written yet (`hint`); then drops the written entries
/// from the pending ones of `tail` to its recent ones, tells `progress`, and answers
/// callbacks and barriers, in order.
///
/// A batch of hints (and purges) alone writes nothing: its newest hint waits in `hint`
/// for the next append. The hint only speeds up a restart, and a transaction of
/// its own between two appends made the next append's commit write its pages too —
/// 0.13–0.16 ms more per durable append in a database of a replica's size (BENCHMARKS.md,
/// "The single-client write, step by step").
///
/// Once a batch has failed (`progress` holds its error) no later one is written: its
/// appends and barriers get that error. An append reported flushed before it was written
/// may be in the failed batch, and a later batch written after it would leave a gap in
/// the log. Returns the newest purge the batch asks for (the caller deletes it in steps).
fn write_batch(
    db: &Database,
    tail: &RwLock<Tail>,
    metrics: &ConsensusMetrics,
    batch: Vec<WriterOp>,
    hint: &mut Option<Vec<u8>>,
    wal: &mut Option<Wal>,
    progress: &tokio::sync::watch::Sender<WriterProgress>,
) -> Option<LogId> {
    let failed = progress.borrow().failed.clone();
    // After a failure a hint could name an entry that was never written.
    if failed.is_none()
        && let Some(newest) = batch.iter().rev().find_map(|op| match op {
            WriterOp::Committed(bytes) => Some(bytes),
            _ => None,
        })
    {
        *hint = Some(newest.clone());
    }
    if batch.iter().all(|op| matches!(op, WriterOp::Committed(_) | WriterOp::Purge(..))) {
        return batch
            .into_iter()
            .filter_map(|op| match op {
                WriterOp::Purge(log_id) => Some(log_id),
                _ => None,
            })
            .max();
    }
    for op in &batch {
        if let WriterOp::Append { entries, .. } = op {
            metrics.timeline.mark(Step::Writing, span(entries, |e| e.0));
        }
    }
    let result = match failed {
        Some(failed) => Err(failed),
        None => write_appends(db, &batch, hint, wal.as_mut()).map_err(Arc::new),
    };
    match &result {
        Ok(()) => {
            // Written entries are readable from redb now.
            let mut tail = lock_tail(tail);
            let mut written = 0;
            for op in &batch {
                if let WriterOp::Append { entries, .. } = op {
                    for (index, log_id, bytes) in entries {
                        tail.written(*index, log_id, bytes.len());
                    }
                    written += entries.len();
                }
            }
            tail.pending_since = (!tail.pending.is_empty()).then(Instant::now);
            drop(tail);
            if written > 0 {
                metrics.append_batch_entries.observe(written as f64);
                progress.send_modify(|progress| progress.batches += 1);
            }
        }
        Err(error) => fail(progress, wal, error),
    }
    let mut purge = None;
    for op in batch {
        match (op, &result) {
            (WriterOp::Append { callback, started, entries }, Ok(())) => {
                metrics.append_seconds.observe(started.elapsed().as_secs_f64());
                metrics.timeline.mark(Step::Durable, span(&entries, |e| e.0));
                if let Some(callback) = callback {
                    callback.log_io_completed(Ok(()));
                }
            }
            (WriterOp::Append { callback, .. }, Err(error)) => {
                if let Some(callback) = callback {
                    callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                }
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

/// Records `error` as the one that stopped the writer (the first only): nothing more is
/// written, to redb or to the redo file.
fn fail(
    progress: &tokio::sync::watch::Sender<WriterProgress>,
    wal: &mut Option<Wal>,
    error: &Arc<LogStoreError>,
) {
    *wal = None;
    progress.send_if_modified(|progress| {
        let first = progress.failed.is_none();
        if first {
            tracing::error!(%error, "raft log append failed: this log store writes nothing more");
            progress.failed = Some(Arc::clone(error));
        }
        first
    });
}

/// Writes the appends of `batch` and the newest committed-index `hint` (taken) to redb
/// and makes them durable: by a record in the redo file (`wal`) when there is one and the
/// record fits in it (making a checkpoint first when the file is full), else by a durable
/// redb commit.
fn write_appends(
    db: &Database,
    batch: &[WriterOp],
    hint: &mut Option<Vec<u8>>,
    wal: Option<&mut Wal>,
) -> Result<(), LogStoreError> {
    stall_injected(db);
    injected(db, Point::LogAppend)?;
    let Some(wal) = wal else {
        return commit_appends(db, batch, hint, Durability::Immediate, None);
    };
    let record = wal.encode(
        batch
            .iter()
            .filter_map(|op| match op {
                WriterOp::Append { entries, .. } => Some(entries),
                _ => None,
            })
            .flatten()
            .map(|(index, _, bytes)| (*index, bytes.as_slice())),
    );
    if !wal.fits(record.len()) && wal.fits_at_all(record.len()) {
        checkpoint(db, wal, hint)?;
    }
    let seq = wal.next_seq;
    if wal.fits(record.len()) {
        commit_appends(db, batch, hint, Durability::None, Some(seq))?;
        wal.write(&record)
    } else {
        // Larger than the whole redo file: redb makes it durable itself.
        let started = Instant::now();
        commit_appends(db, batch, hint, Durability::Immediate, Some(seq))?;
        wal.next_seq += 1;
        wal.checkpointed(started.elapsed());
        Ok(())
    }
}

/// One writer's appends made as the log writer makes them — a redb commit without an
/// fsync and a record in a redo file, made durable — for [`crate::disk_check`], which
/// times them.
pub(crate) struct AppendPath {
    db: Database,
    wal: Option<Wal>,
}

impl AppendPath {
    /// Creates a database at `db_path` with the log's tables, and its redo file at
    /// `redo_file` (without one when it cannot be created, as the log store does).
    pub(crate) fn create(db_path: &Path, redo_file: &Path) -> Result<Self, LogStoreError> {
        let db = Database::create(db_path)
            .map_err(|source| LogStoreError::Open { path: db_path.to_path_buf(), source })?;
        write_txn(&db, "create the log tables", |txn| {
            txn.open_table(LOG).during("create the log table")?;
            txn.open_table(LOG_META).during("create the log metadata table")?;
            Ok(())
        })?;
        let wal = super::wal::replay(&db, redo_file)?;
        Ok(Self { db, wal })
    }

    /// Appends `entry` at `index` and waits until it is durable.
    pub(crate) fn append(&mut self, index: u64, entry: &[u8]) -> Result<(), LogStoreError> {
        let log_id = LogId::new(openraft::CommittedLeaderId::new(0, 0), index);
        let op = WriterOp::Append {
            entries: vec![(index, log_id, entry.to_vec())],
            callback: None,
            started: Instant::now(),
        };
        write_appends(&self.db, &[op], &mut None, self.wal.as_mut())
    }
}

/// Commits the appends of `batch`, the committed-index `hint` (taken) and, with a redo
/// file, the append's sequence number `seq` in one redb transaction with `durability`.
fn commit_appends(
    db: &Database,
    batch: &[WriterOp],
    hint: &mut Option<Vec<u8>>,
    durability: Durability,
    seq: Option<u64>,
) -> Result<(), LogStoreError> {
    let written_hint = hint.take();
    let seq = seq.map(|seq| encode_meta(WAL_SEQ_KEY, &seq)).transpose()?;
    write_txn_with(db, "append log entries", durability, |txn| {
        let mut table = txn.open_table(LOG).during("open the log table")?;
        for op in batch {
            if let WriterOp::Append { entries, .. } = op {
                for (index, _, bytes) in entries {
                    table.insert(*index, bytes.as_slice()).during("append log entries")?;
                }
            }
        }
        drop(table);
        record_hint(txn, &written_hint)?;
        if let Some(seq) = &seq {
            let mut meta = txn.open_table(LOG_META).during("open the log metadata table")?;
            meta.insert(WAL_SEQ_KEY, seq.as_slice()).during("record the append's number")?;
        }
        // An error here drops the transaction: nothing of the batch is written.
        injected(db, Point::LogCommit)
    })
}

/// A checkpoint: a durable redb commit (with the committed-index `hint`, taken), after
/// which redb holds durably everything in the redo file, so it is written from its start.
fn checkpoint(
    db: &Database,
    wal: &mut Wal,
    hint: &mut Option<Vec<u8>>,
) -> Result<(), LogStoreError> {
    let started = Instant::now();
    let written_hint = hint.take();
    // The last append's number again, so the commit is never an empty one.
    let seq = encode_meta(WAL_SEQ_KEY, &wal.next_seq.saturating_sub(1))?;
    write_txn(db, "checkpoint the log", |txn| {
        record_hint(txn, &written_hint)?;
        let mut meta = txn.open_table(LOG_META).during("open the log metadata table")?;
        meta.insert(WAL_SEQ_KEY, seq.as_slice()).during("record the append's number")?;
        Ok(())
    })?;
    wal.checkpointed(started.elapsed());
    Ok(())
}

/// Records the committed-index `hint` (postcard), if any, in `txn`.
fn record_hint(txn: &redb::WriteTransaction, hint: &Option<Vec<u8>>) -> Result<(), LogStoreError> {
    if let Some(bytes) = hint {
        let mut meta = txn.open_table(LOG_META).during("open the log metadata table")?;
        meta.insert(COMMITTED_KEY, bytes.as_slice()).during("record the committed id")?;
    }
    Ok(())
}

/// Writes the committed-index hint that no append came to take along, without an fsync
/// of its own (the next durable commit makes it durable).
fn write_hint_alone(db: &Database, hint: &mut Option<Vec<u8>>) {
    let result = write_txn_with(db, "record the committed id", Durability::None, |txn| {
        record_hint(txn, hint)
    });
    if let Err(error) = result {
        // Only a hint: the next commit brings a newer one.
        tracing::warn!(%error, "cannot record the committed log id");
    }
    *hint = None;
}

/// Most entries one purge step deletes (see [`LogStore`](super::LogStore)).
pub(super) const PURGE_STEP_ENTRIES: usize = 64;
/// Bytes of entries after which a purge step stops (it deletes at least one entry).
pub(super) const PURGE_STEP_BYTES: usize = 4 << 20;

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

#[cfg(test)]
mod tests {
    use openraft::RaftLogReader as _;
    use openraft::storage::{RaftLogStorage as _, RaftLogStorageExt as _};
    use redb::{ReadableDatabase as _, ReadableTable as _};
    use tempfile::TempDir;

    use super::*;
    use crate::log_store::tests::{log_id, normal, open};
    use crate::types::Entry;

    /// The Prometheus text exposition of `metrics`.
    fn exposition(metrics: &ConsensusMetrics) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode metrics");
        text
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

    #[tokio::test]
    async fn append_records_latency_and_batch_size() {
        let dir = TempDir::new().expect("tempdir");
        let mut store = open(&dir);
        let entries: Vec<Entry> = (1..=3).map(|i| normal(1, i, b"a=b")).collect();
        store.blocking_append(entries).await.expect("append");
        let text = exposition(&store.writer.shared.metrics);
        assert!(text.contains("raft_append_batch_entries_count 1\n"), "{text}");
        assert!(text.contains("raft_append_batch_entries_sum 3.0\n"), "{text}");
        assert!(text.contains("raft_append_duration_seconds_count 1\n"), "{text}");
    }
}
