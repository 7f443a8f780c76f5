//! The application's state machine as openraft storage: the state in memory behind one
//! lock, committed entries applied to it (on the raft task when cheap, else on the
//! blocking pool), snapshots built from it and installed into it, and digests of it.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, StorageIOError};
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use redb::Database;
use serde_bytes::ByteBuf;

use super::snapshot_store::{Loaded, SnapshotStore, SnapshotStoreError};
use super::{NotApplicable, StateMachine};
use crate::log_store::LogDurability;
use crate::metrics::ConsensusMetrics;
use crate::snapshot_files::SnapshotFiles;
use crate::timeline::{Step, span};
use crate::types::{
    CommandResponse, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};

/// The state machine with what openraft needs to know of it, all behind one lock so they
/// always agree.
struct Applied<S> {
    /// The application's state.
    sm: S,
    /// Id of the last entry applied to `sm`.
    last_applied: Option<LogId>,
    /// The last membership applied to `sm`.
    last_membership: StoredMembership,
}

/// A state digest: the applied log id it was computed at, the digest, and when.
type CachedDigest = (Option<LogId>, [u8; 32], Instant);

/// Shared part of a [`StateMachineStore`].
struct Shared<S> {
    /// The current snapshot on disk.
    snapshots: SnapshotStore,
    /// The in-memory state.
    applied: RwLock<Applied<S>>,
    /// Suffix of snapshot ids; starts at the wall clock in milliseconds so ids stay unique
    /// across restarts.
    snapshot_seq: AtomicU64,
    /// Where apply latency and snapshot counts are observed.
    metrics: ConsensusMetrics,
    /// The last digest computed, the applied log id it was computed at and when: equal
    /// applied log ids mean equal states, so an unchanged state is not encoded again.
    digest_cache: std::sync::Mutex<Option<CachedDigest>>,
    /// A background refresh of `digest_cache` runs ([`StateMachineStore::digest_cached`]).
    digest_refreshing: std::sync::atomic::AtomicBool,
    /// The index of the last applied entry, for readers that wait for the state to move
    /// (a cheaper signal than openraft's metrics, which change on every core-loop turn).
    applied_index: tokio::sync::watch::Sender<u64>,
    /// How far the replica's log is durable, when entries must not be applied before
    /// ([`StateMachineStore::apply_only_durable`]).
    log_durability: std::sync::OnceLock<LogDurability>,
}

/// The application's state machine as openraft storage: applies committed entries in
/// memory and persists snapshots in redb.
///
/// The state is rebuilt on restart from the persisted snapshot, then openraft re-applies
/// the committed log after it. Clones share the state.
pub struct StateMachineStore<S: StateMachine> {
    /// The state, its database and metrics.
    shared: Arc<Shared<S>>,
}

/// Command bytes of the entries one `apply` call may apply on the raft task itself (see
/// [`StateMachine::cheap_to_apply`]): a fraction of a millisecond of work at most.
const INLINE_APPLY_BYTES: usize = 64 * 1024;

/// Whether `entries` may be applied on the raft task: every command cheap to apply, and
/// [`INLINE_APPLY_BYTES`] of them at most.
fn applies_inline<S: StateMachine>(entries: &[Entry]) -> bool {
    let mut bytes = 0;
    entries.iter().all(|entry| match &entry.payload {
        EntryPayload::Blank | EntryPayload::Membership(_) => true,
        EntryPayload::Normal(command) => {
            bytes += command.len_bytes();
            bytes <= INLINE_APPLY_BYTES && command.commands().all(S::cheap_to_apply)
        }
    })
}

impl<S: StateMachine> Clone for StateMachineStore<S> {
    fn clone(&self) -> Self {
        Self { shared: Arc::clone(&self.shared) }
    }
}

// === impl StateMachineStore ===

impl<S: StateMachine> StateMachineStore<S> {
    /// Opens the store: loads the persisted snapshot (if any) named in `db`, its data from
    /// `snapshot_dir`, and restores `sm` from it; removes snapshot files a crash left
    /// behind.
    ///
    /// This does blocking IO; call it before serving, not on a busy async worker.
    ///
    /// # Errors
    /// The snapshot table cannot be created or read, the snapshot directory cannot be
    /// created or read, the stored snapshot does not decode, its file does not match the
    /// checksum stored with it (the error names the file, both checksums and what to do:
    /// the replica must not start from it), or `sm` rejects its data.
    #[expect(
        clippy::result_large_err,
        reason = "openraft's storage API speaks StorageError; callers pass it on unchanged"
    )]
    pub fn open(
        db: Arc<Database>,
        snapshot_dir: &std::path::Path,
        sm: S,
        metrics: ConsensusMetrics,
    ) -> Result<Self, StorageError> {
        let read_error = |error: SnapshotStoreError| StorageIOError::read_snapshot(None, &error);
        let snapshots = SnapshotStore::open(db, snapshot_dir).map_err(read_error)?;

        let mut applied =
            Applied { sm, last_applied: None, last_membership: StoredMembership::default() };
        let loaded = snapshots.load().map_err(read_error)?;
        let current = loaded.as_ref().map(|loaded| loaded.meta.snapshot_id.clone());
        let removed = snapshots.remove_all_but(current.as_deref()).map_err(read_error)?;
        if removed > 0 {
            tracing::info!(removed, dir = %snapshots.files.dir().display(), "removed snapshot files no metadata names");
        }
        if let Some(Loaded { meta, data, verified }) = loaded {
            if !verified {
                tracing::info!(
                    snapshot_id = %meta.snapshot_id,
                    "the current snapshot was stored without a checksum (by an earlier version): \
                     restoring it unchecked; the next snapshot carries one"
                );
            }
            restore(&mut applied.sm, &meta, &data)
                .map_err(|error| StorageIOError::read_snapshot(Some(meta.signature()), &error))?;
            tracing::info!(
                snapshot_id = %meta.snapshot_id,
                last_log_id = ?meta.last_log_id,
                verified,
                "restored state machine from snapshot"
            );
            applied.last_applied = meta.last_log_id;
            applied.last_membership = meta.last_membership;
        }

        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let (applied_index, _) =
            tokio::sync::watch::channel(applied.last_applied.map_or(0, |id| id.index));
        Ok(Self {
            shared: Arc::new(Shared {
                snapshots,
                applied: RwLock::new(applied),
                snapshot_seq: AtomicU64::new(u64::try_from(now_ms).unwrap_or(u64::MAX)),
                metrics,
                digest_cache: std::sync::Mutex::new(None),
                digest_refreshing: std::sync::atomic::AtomicBool::new(false),
                applied_index,
                log_durability: std::sync::OnceLock::new(),
            }),
        })
    }

    /// From now on applies an entry only once the replica's log holds it durably: a
    /// leader's log store may report its own appends flushed before they are (see
    /// [`crate::log_store::LogStore`]), and an entry applied — answered to a client,
    /// taken into a snapshot — must survive a crash of this replica. Only the first
    /// call counts.
    pub fn apply_only_durable(&self, durability: LogDurability) {
        let _ = self.shared.log_durability.set(durability);
    }

    /// A receiver that changes whenever entries are applied or a snapshot is installed;
    /// its value is the last applied index.
    #[must_use]
    pub fn subscribe_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.applied_index.subscribe()
    }

    /// Runs `f` on the state under a read lock.
    pub fn read<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&self.lock_read().sm)
    }

    /// Runs `f` on the state under a read lock and returns its result with the index of
    /// the last applied entry (0 before any), taken under the same lock.
    pub fn read_with_applied<R>(&self, f: impl FnOnce(&S) -> R) -> (R, u64) {
        let applied = self.lock_read();
        let index = applied.last_applied.map_or(0, |id| id.index);
        (f(&applied.sm), index)
    }

    /// Last applied log id.
    pub fn applied(&self) -> Option<LogId> {
        self.lock_read().last_applied
    }

    /// (applied log id, sm digest) taken under one lock so they are consistent. A digest
    /// already computed at that applied log id is reused (equal ids, equal states); the
    /// cache's lock is held only to read and to store it, never while encoding.
    pub fn digest(&self) -> (Option<LogId>, [u8; 32]) {
        let cached = *self.shared.digest_cache.lock().unwrap_or_else(PoisonError::into_inner);
        let (at, digest) = {
            let applied = self.lock_read();
            let at = applied.last_applied;
            match cached {
                Some((cached_at, digest, _)) if cached_at == at => (at, digest),
                _ => (at, applied.sm.digest()),
            }
        };
        *self.shared.digest_cache.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((at, digest, Instant::now()));
        (at, digest)
    }

    /// The digest last computed, with the applied log id it was computed at, and never
    /// an encoding of the state on the caller's thread: when it is older than `max_age`
    /// (or there is none yet), one refresh runs on the blocking pool and later calls see
    /// its result. For status polling: encoding a large state takes tens of
    /// milliseconds under the state's read lock, which a status answer should not wait
    /// for (nor hold a runtime worker through).
    pub fn digest_cached(&self, max_age: Duration) -> Option<(Option<LogId>, [u8; 32])> {
        use std::sync::atomic::Ordering;
        let cached = *self.shared.digest_cache.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = cached.is_some_and(|(_, _, computed)| computed.elapsed() < max_age);
        if !fresh
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
            && !self.shared.digest_refreshing.swap(true, Ordering::AcqRel)
        {
            let store = self.clone();
            runtime.spawn_blocking(move || {
                store.digest();
                store.shared.digest_refreshing.store(false, Ordering::Release);
            });
        }
        cached.map(|(at, digest, _)| (at, digest))
    }

    /// Read access to the state. Taken even while a writer waits (`read_recursive`): the
    /// readers run on the runtime's workers (status, metrics, lease and watch loops), and
    /// with a writer-first lock every one of them would wait for as long as a snapshot
    /// build holds the state to encode it, leaving no worker for the transport and the
    /// raft core. Readers hold the lock briefly; the snapshot encoding that holds it long
    /// runs on the blocking pool, as does `apply`, the only writer besides an install.
    fn lock_read(&self) -> RwLockReadGuard<'_, Applied<S>> {
        self.shared.applied.read_recursive()
    }

    /// Write access to the state. (The lock does not poison: `StateMachine::apply` must
    /// not panic, and if it did, failing every later read would not help.)
    fn lock_write(&self) -> RwLockWriteGuard<'_, Applied<S>> {
        self.shared.applied.write()
    }

    /// Applies `entries` in order and returns a response per entry; blocks while a reader
    /// holds the state.
    fn apply_now(&self, entries: Vec<Entry>) -> Result<Vec<CommandResponse>, Unapplicable> {
        self.apply_locked(&mut self.lock_write(), entries)
    }

    /// Applies `entries` to the state `applied` holds locked.
    ///
    /// # Errors
    /// An entry holds a command this build cannot apply
    /// ([`StateMachine::check_applicable`]): the entries before it are applied, it and
    /// the rest are not, and openraft stops the raft core on the error.
    fn apply_locked(
        &self,
        applied: &mut Applied<S>,
        entries: Vec<Entry>,
    ) -> Result<Vec<CommandResponse>, Unapplicable> {
        let started = Instant::now();
        let marked = span(&entries, |e| e.log_id.index);
        self.shared.metrics.timeline.mark_at(Step::Applying, marked.clone(), started);
        let mut responses = Vec::new();
        let mut refused = None;
        for entry in entries {
            let response = match entry.payload {
                EntryPayload::Blank => CommandResponse::default(),
                EntryPayload::Normal(command) => {
                    if let Some(reason) =
                        command.commands().find_map(|c| applied.sm.check_applicable(c).err())
                    {
                        refused = Some((entry.log_id, reason));
                        break;
                    }
                    CommandResponse(
                        command
                            .commands()
                            .map(|c| ByteBuf::from(applied.sm.apply(entry.log_id.index, c)))
                            .collect(),
                    )
                }
                EntryPayload::Membership(membership) => {
                    applied.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    CommandResponse::default()
                }
            };
            applied.last_applied = Some(entry.log_id);
            responses.push(response);
        }
        let index = applied.last_applied.map_or(0, |id| id.index);
        self.shared.applied_index.send_replace(index);
        self.shared.metrics.apply_seconds.observe(started.elapsed().as_secs_f64());
        self.shared.metrics.timeline.mark(Step::Applied, marked);
        if let Some((log_id, reason)) = refused {
            tracing::error!(
                index = log_id.index,
                %reason,
                "cannot apply a committed entry: this replica stops rather than skip it; run \
                 a build that knows it (upgrade this replica)"
            );
            return Err(Unapplicable { log_id, reason });
        }
        Ok(responses)
    }

    /// The snapshots' files, where the replica transport writes a snapshot as it streams in.
    pub(crate) fn snapshot_files(&self) -> SnapshotFiles {
        self.shared.snapshots.files.clone()
    }
}

impl<S: StateMachine> RaftStateMachine<TypeConfig> for StateMachineStore<S> {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.lock_read();
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    /// Waits first, when told to ([`StateMachineStore::apply_only_durable`]), until the
    /// log holds the entries durably.
    ///
    /// Applies on tokio's blocking pool: the state machine's work, and the wait for the
    /// state's write lock while a snapshot or a digest encodes the state, must not hold
    /// one of the runtime's workers — the transport and the raft core run there, and a
    /// runtime with every worker waiting misses heartbeats long enough for an election.
    /// Small entries of commands the state machine calls cheap are the exception: when
    /// the lock is free at once they are applied here ([`applies_inline`]).
    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let (Some(durability), Some(last)) = (self.shared.log_durability.get(), entries.last()) {
            durability
                .wait_through(last.log_id.index)
                .await
                .map_err(|error| StorageError::from(StorageIOError::apply(last.log_id, &error)))?;
        }
        if applies_inline::<S>(&entries)
            && let Some(mut applied) = self.shared.applied.try_write()
        {
            self.shared.metrics.applies_inline.inc();
            return self.apply_locked(&mut applied, entries).map_err(Unapplicable::into_storage);
        }
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.apply_now(entries))
            .await
            .map_err(|error| StorageError::from(StorageIOError::write_state_machine(&error)))?
            .map_err(Unapplicable::into_storage)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = Arc::new(snapshot.into_inner());
        let bytes = data.len();
        // The state machine restores while the data file is written; the snapshot becomes
        // the one a restart loads, and the state readers see, only once both are done: a
        // snapshot the state machine rejects, or whose received file the disk changed,
        // never does, and no reader sees a state a crash could take back. Decoding a large
        // snapshot takes a while: on the blocking pool.
        let installing = meta.clone();
        let started = std::time::Instant::now();
        let restoring = Arc::clone(&data);
        // Decoded into a state of its own, outside the lock: readers go on meanwhile.
        let restore = async {
            let restored = tokio::task::spawn_blocking(move || {
                let mut sm = S::default();
                restore(&mut sm, &installing, &restoring).map(|()| sm)
            })
            .await
            .map_err(|source| SnapshotStoreError::Task { source })
            .and_then(|restored| restored);
            (restored, started.elapsed())
        };
        let ((restored, restore_time), written) =
            tokio::join!(restore, self.shared.snapshots.write_file(meta, data));
        let write_error = |error: SnapshotStoreError| {
            StorageIOError::write_snapshot(Some(meta.signature()), &error)
        };
        let sm = match restored {
            Ok(sm) => sm,
            Err(error) => {
                if written.is_ok()
                    && let Err(remove) = self.shared.snapshots.files.remove(&meta.snapshot_id)
                {
                    tracing::warn!(snapshot_id = %meta.snapshot_id, error = %remove, "cannot remove the data of a rejected snapshot; it goes at the next start");
                }
                return Err(write_error(error).into());
            }
        };
        let checksum = written.map_err(write_error)?;
        self.shared.snapshots.make_current(meta, checksum).await.map_err(write_error)?;
        // Only now, durable, does the state become the one readers see.
        let replaced = {
            let mut applied = self.lock_write();
            applied.last_applied = meta.last_log_id;
            applied.last_membership = meta.last_membership.clone();
            self.shared.applied_index.send_replace(meta.last_log_id.map_or(0, |id| id.index));
            std::mem::replace(&mut applied.sm, sm)
        };
        // Dropping a large state takes a while: not under the lock.
        drop(replaced);
        self.shared.metrics.snapshots_installed.inc();
        self.shared.metrics.snapshot_install_seconds.observe(started.elapsed().as_secs_f64());
        tracing::info!(
            snapshot_id = %meta.snapshot_id,
            last_log_id = ?meta.last_log_id,
            bytes,
            restore_ms = restore_time.as_millis(),
            total_ms = started.elapsed().as_millis(),
            "installed snapshot"
        );
        Ok(())
    }

    /// The current snapshot, its file checked against its checksum: a leader never sends
    /// a damaged file to a follower (the error stops the raft core, as any storage error
    /// does, and the group goes on without this replica).
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let snapshots = self.shared.snapshots.clone();
        let loaded = tokio::task::spawn_blocking(move || snapshots.load_current())
            .await
            .map_err(|source| SnapshotStoreError::Task { source })
            .and_then(|loaded| loaded)
            .map_err(|error| StorageIOError::read_snapshot(None, &error))?;
        Ok(loaded.map(|Loaded { meta, data, verified }| {
            if !verified {
                tracing::debug!(snapshot_id = %meta.snapshot_id, "reading a snapshot stored without a checksum");
            }
            Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }
        }))
    }
}

impl<S: StateMachine> RaftSnapshotBuilder<TypeConfig> for StateMachineStore<S> {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        // Encoding a large state takes a while: on the blocking pool, not a runtime worker.
        let store = self.clone();
        let started = std::time::Instant::now();
        let (data, last_log_id, last_membership) = tokio::task::spawn_blocking(move || {
            let applied = store.lock_read();
            (applied.sm.snapshot(), applied.last_applied, applied.last_membership.clone())
        })
        .await
        .map_err(|error| StorageIOError::read_state_machine(&error))?;
        let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_log_id {
            Some(id) => format!("{}-{}-{seq}", id.leader_id.term, id.index),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
        let encoded = started.elapsed();
        let data = Arc::new(data);
        let stored = self
            .shared
            .snapshots
            .persist(&meta, Arc::clone(&data))
            .await
            .map_err(|error| StorageIOError::write_snapshot(Some(meta.signature()), &error))?;
        let data = Arc::try_unwrap(data).unwrap_or_else(|shared| shared.as_ref().clone());
        self.shared.metrics.snapshots_built.inc();
        self.shared.metrics.snapshot_build_seconds.observe(started.elapsed().as_secs_f64());
        tracing::info!(
            snapshot_id = %meta.snapshot_id,
            bytes = data.len(),
            stored,
            encode_ms = encoded.as_millis(),
            persist_ms = (started.elapsed() - encoded).as_millis(),
            "built snapshot"
        );
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

/// Replaces the state of `sm` with snapshot `data`.
fn restore<S: StateMachine>(
    sm: &mut S,
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<(), SnapshotStoreError> {
    sm.restore(data).map_err(|reason| SnapshotStoreError::Restore {
        snapshot_id: meta.snapshot_id.clone(),
        reason,
    })
}

/// A committed entry this build cannot apply ([`StateMachine::check_applicable`]).
#[derive(Debug)]
struct Unapplicable {
    log_id: LogId,
    reason: NotApplicable,
}

impl Unapplicable {
    /// The storage error that stops the raft core.
    fn into_storage(self) -> StorageError {
        let error = std::io::Error::other(format!(
            "entry {}: {}; upgrade this replica to a build that knows it",
            self.log_id.index, self.reason
        ));
        StorageIOError::apply(self.log_id, &error).into()
    }
}

#[cfg(test)]
mod tests;
