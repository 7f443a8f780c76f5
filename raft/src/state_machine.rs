//! The application's state machine and its openraft storage: apply, snapshot build,
//! transfer, install and persistence.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, StorageIOError};
use redb::{Database, Durability, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde_bytes::ByteBuf;

use crate::metrics::ConsensusMetrics;
use crate::snapshot_files::{Checksum, CorruptFile, ReadError, SnapshotFiles};
use crate::types::{
    CommandResponse, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};

/// A deterministic replicated state machine supplied by the application.
///
/// Every replica applies the same committed commands in the same order; `apply` must
/// therefore depend only on the state and the command (take time from the command,
/// never from the clock). `Default` is the empty state an installed snapshot is decoded
/// into before it replaces the running one.
pub trait StateMachine: Default + Send + Sync + 'static {
    /// Applies one committed command at `log_index` and returns the response for the
    /// client that proposed it. An invalid command is answered with an error response;
    /// it must never panic.
    fn apply(&mut self, log_index: u64, command: &[u8]) -> Vec<u8>;

    /// Whether this build can apply `command` at all. A command it cannot — one a newer
    /// build proposed, whose kind or fields this build does not know — must never be
    /// skipped (answered with an error and nothing changed): the replicas that understand
    /// it change their state, so skipping it would leave this replica's state different
    /// from theirs at the same index. The replica stops applying instead: its raft core
    /// fail-stops with this error, at this entry, every time it is restarted, until it
    /// runs a build that knows the command. The default understands everything.
    ///
    /// # Errors
    /// Why the command cannot be applied, for the operator.
    fn check_applicable(&self, command: &[u8]) -> Result<(), NotApplicable> {
        let _ = command;
        Ok(())
    }

    /// The highest command-format version this build applies (see
    /// [`StateMachine::required_version`]); the default, 0, gates nothing.
    fn supported_version() -> u32 {
        0
    }

    /// The command-format version a replica must support to apply `command`: 0 for a
    /// command every build that may share a group with this one applies. A command that
    /// needs more is proposed only once every voter reports supporting it (the cluster
    /// version, as etcd keeps one): during a rolling upgrade a feature that needs a new
    /// kind of command waits, refused with [`ReplicaError::VersionGate`], until the last
    /// voter runs a build that knows it, instead of stopping the replicas that do not
    /// ([`StateMachine::check_applicable`]).
    ///
    /// [`ReplicaError::VersionGate`]: crate::ReplicaError::VersionGate
    fn required_version(command: &[u8]) -> u32 {
        let _ = command;
        0
    }

    /// Canonical encoding of the whole state, used for snapshots and the digest.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the whole state with a decoded snapshot.
    ///
    /// # Errors
    /// The snapshot does not decode; the error says why.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError>;

    /// Whether applying `command` costs about what reading its bytes does, as most
    /// commands do. Entries of such commands, 64 KiB in all at most, are applied on the
    /// raft task itself when no reader holds the state, instead of being handed to the
    /// blocking pool and back: two thread wake-ups less on every write's path, on every
    /// replica. A command that does far more than its size says (decoding a whole state,
    /// say) must answer `false`; so does the default.
    fn cheap_to_apply(command: &[u8]) -> bool {
        let _ = command;
        false
    }

    /// SHA-256 of the canonical encoding: equal states have equal digests.
    fn digest(&self) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(self.snapshot()).into()
    }
}

/// The current snapshot: its metadata under [`SNAPSHOT_META_KEY`] (postcard) and the
/// checksum of its data under [`SNAPSHOT_CHECKSUM_KEY`], both written by one transaction.
/// Its data (the state machine's own encoding) is a file named by the snapshot id
/// ([`SnapshotFiles`]), checked against the checksum whenever it is read; stores written
/// before data moved to files hold it here under [`SNAPSHOT_DATA_KEY`], read until the
/// next snapshot replaces it.
const SNAPSHOT: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("raft_snapshot");

/// [`SNAPSHOT`] key of the snapshot metadata.
const SNAPSHOT_META_KEY: &str = "meta";
/// [`SNAPSHOT`] key of the snapshot data of stores from before [`SnapshotFiles`].
const SNAPSHOT_DATA_KEY: &str = "data";
/// [`SNAPSHOT`] key of the current snapshot's [`StoredChecksum`] (postcard). Absent in
/// stores from before checksums; an earlier version that made a snapshot current after
/// an upgrade and a rollback leaves the checksum of an older snapshot, which names
/// another id. Either way the current snapshot is legacy: read unchecked.
const SNAPSHOT_CHECKSUM_KEY: &str = "checksum";

/// What [`SNAPSHOT_CHECKSUM_KEY`] holds: the checksum and the snapshot it belongs to.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StoredChecksum {
    /// Id of the snapshot whose data it describes.
    snapshot_id: String,
    /// Its data's checksum.
    checksum: Checksum,
}

/// What an operator does about a replica whose current snapshot is corrupt.
const CORRUPT_SNAPSHOT_REMEDY: &str = "it is neither restored nor sent, and this replica \
    cannot repair it in place (the log it covers may be purged): remove the replica from \
    the group (`federator raft remove-member ID` on the leader), delete its data directory \
    (the raft database and the snapshot directory) and add it again (`federator raft \
    add-member ID ADDR`); the leader then sends it a whole snapshot";

/// What went wrong in the state machine store; wrapped into openraft's [`StorageError`]
/// with the subject (snapshot, state machine) and verb of the failed operation.
#[derive(Debug, thiserror::Error)]
enum SnapshotStoreError {
    /// A fault injected for a test (feature `failpoints`).
    #[cfg(feature = "failpoints")]
    #[error("{source}")]
    Injected {
        /// The injected error.
        source: std::io::Error,
    },

    /// A redb transaction failed part way.
    #[error("snapshot database failed to {op}: {source}")]
    Database {
        /// What the store was doing.
        op: &'static str,
        /// redb's error.
        source: redb::Error,
    },

    /// Snapshot metadata could not be encoded.
    #[error("cannot encode the metadata of snapshot {snapshot_id}: {source}")]
    EncodeMeta {
        /// Id of the snapshot.
        snapshot_id: String,
        /// postcard's error.
        source: postcard::Error,
    },

    /// The stored snapshot metadata could not be decoded.
    #[error("cannot decode the stored snapshot metadata: {source}")]
    DecodeMeta {
        /// postcard's error.
        source: postcard::Error,
    },

    /// The stored snapshot checksum could not be decoded.
    #[error("cannot decode the stored snapshot checksum: {source}")]
    DecodeChecksum {
        /// postcard's error.
        source: postcard::Error,
    },

    /// The snapshot checksum could not be encoded.
    #[error("cannot encode the checksum of snapshot {snapshot_id}: {source}")]
    EncodeChecksum {
        /// Id of the snapshot.
        snapshot_id: String,
        /// postcard's error.
        source: postcard::Error,
    },

    /// The current snapshot's file does not match the checksum stored with its metadata.
    /// (The file's error is part of the message, not a `source`: openraft would print it
    /// a second time.)
    #[error("current snapshot {snapshot_id}: {corrupt}; {CORRUPT_SNAPSHOT_REMEDY}")]
    Corrupt {
        /// Id of the snapshot.
        snapshot_id: String,
        /// The file, and what it should and does hold (boxed: it is large, and this path
        /// is cold).
        corrupt: Box<CorruptFile>,
    },

    /// A received snapshot's file, read back before it became the snapshot's file, does not
    /// hold the data received.
    #[error(
        "received snapshot {snapshot_id} is refused: {corrupt} (the disk changed it after it \
         was written); nothing was installed"
    )]
    CorruptReceived {
        /// Id of the snapshot.
        snapshot_id: String,
        /// The file, and what it should and does hold (boxed: it is large, and this path
        /// is cold).
        corrupt: Box<CorruptFile>,
    },

    /// Snapshot metadata is stored without its data.
    #[error("snapshot {snapshot_id} has metadata but no data file {}", path.display())]
    MissingData {
        /// Id of the snapshot.
        snapshot_id: String,
        /// Where its data should be.
        path: std::path::PathBuf,
    },

    /// A snapshot file could not be written, read or removed.
    #[error("snapshot file {} failed to {op}: {source}", path.display())]
    File {
        /// What the store was doing.
        op: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },

    /// The state machine rejected the snapshot data. (Its error is part of the message,
    /// not a `source`: openraft would print it a second time.)
    #[error("state machine cannot restore snapshot {snapshot_id}: {reason}")]
    Restore {
        /// Id of the snapshot.
        snapshot_id: String,
        /// The state machine's explanation.
        reason: RestoreError,
    },

    /// The blocking task running the transaction panicked or was cancelled.
    #[error("snapshot storage task did not finish: {source}")]
    Task {
        /// tokio's error.
        source: tokio::task::JoinError,
    },
}

/// Attaches what the store was doing to a redb error.
trait DuringOp<T> {
    /// Maps the error to [`SnapshotStoreError::Database`] with `op` as the operation.
    fn during(self, op: &'static str) -> Result<T, SnapshotStoreError>;
}

impl<T, E: Into<redb::Error>> DuringOp<T> for Result<T, E> {
    fn during(self, op: &'static str) -> Result<T, SnapshotStoreError> {
        self.map_err(|error| SnapshotStoreError::Database { op, source: error.into() })
    }
}

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
    /// The replica's database, shared with the log store; names the current snapshot.
    db: Arc<Database>,
    /// The snapshots' data.
    files: SnapshotFiles,
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
        write_txn(&db, "create the snapshot table", |txn| {
            txn.open_table(SNAPSHOT).during("create the snapshot table")?;
            Ok(())
        })
        .map_err(read_error)?;
        let files = SnapshotFiles::open(snapshot_dir)
            .map_err(|source| file_error("create the directory", snapshot_dir, source))
            .map_err(read_error)?;

        let mut applied =
            Applied { sm, last_applied: None, last_membership: StoredMembership::default() };
        let loaded = load_snapshot(&db, &files).map_err(read_error)?;
        let current = loaded.as_ref().map(|loaded| loaded.meta.snapshot_id.clone());
        let removed = files
            .remove_all_but(current.as_deref())
            .map_err(|source| file_error("remove leftovers", files.dir(), source))
            .map_err(read_error)?;
        if removed > 0 {
            tracing::info!(removed, dir = %files.dir().display(), "removed snapshot files no metadata names");
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
                db,
                files,
                applied: RwLock::new(applied),
                snapshot_seq: AtomicU64::new(u64::try_from(now_ms).unwrap_or(u64::MAX)),
                metrics,
                digest_cache: std::sync::Mutex::new(None),
                digest_refreshing: std::sync::atomic::AtomicBool::new(false),
                applied_index,
            }),
        })
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
        self.shared.files.clone()
    }

    /// Durably stores `meta` and `data` as the current snapshot unless the stored one is
    /// newer; returns whether it was stored.
    async fn persist(
        &self,
        meta: &SnapshotMeta,
        data: Arc<Vec<u8>>,
    ) -> Result<bool, SnapshotStoreError> {
        let checksum = self.write_file(meta, data).await?;
        self.make_current(meta, checksum).await
    }

    /// Step 1 of storing a snapshot: its data file, whole and durable, not yet current.
    /// Returns the data's checksum, which step 2 stores with the metadata.
    ///
    /// A file received as the snapshot streamed in is taken only if, read back, it holds
    /// exactly `data`; if it does not, the snapshot is refused
    /// ([`SnapshotStoreError::CorruptReceived`]) and the file removed.
    async fn write_file(
        &self,
        meta: &SnapshotMeta,
        data: Arc<Vec<u8>>,
    ) -> Result<Checksum, SnapshotStoreError> {
        #[cfg(feature = "failpoints")]
        crate::failpoints::check(&self.shared.db, crate::failpoints::Point::SnapshotStore)
            .map_err(|source| SnapshotStoreError::Injected { source })?;
        let files = self.shared.files.clone();
        let id = meta.snapshot_id.clone();
        tokio::task::spawn_blocking(move || {
            let checksum = Checksum::of(&data);
            // A snapshot sent by the leader was written as it streamed in: only its last
            // flush is left, a check that the disk holds what was received, and a rename.
            match files.take_received(&id, &checksum) {
                Ok(true) => return Ok(checksum),
                Ok(false) => {}
                Err(corrupt) => {
                    return Err(SnapshotStoreError::CorruptReceived {
                        snapshot_id: id,
                        corrupt: Box::new(corrupt),
                    });
                }
            }
            files
                .write(&id, &data)
                .map_err(|source| file_error("write", &files.path(&id), source))?;
            Ok(checksum)
        })
        .await
        .map_err(|source| SnapshotStoreError::Task { source })?
    }

    /// Step 2: makes the snapshot whose file is written the current one, with `checksum`
    /// of its data, unless the stored one is newer (a snapshot built from an older state
    /// can finish after a newer one was installed; the newer one stays); then removes the
    /// file that is no longer current. Returns whether `meta` became current.
    async fn make_current(
        &self,
        meta: &SnapshotMeta,
        checksum: Checksum,
    ) -> Result<bool, SnapshotStoreError> {
        let meta_bytes = postcard::to_allocvec(meta).map_err(|source| {
            SnapshotStoreError::EncodeMeta { snapshot_id: meta.snapshot_id.clone(), source }
        })?;
        let stored_checksum = StoredChecksum { snapshot_id: meta.snapshot_id.clone(), checksum };
        let checksum_bytes = postcard::to_allocvec(&stored_checksum).map_err(|source| {
            SnapshotStoreError::EncodeChecksum { snapshot_id: meta.snapshot_id.clone(), source }
        })?;
        let (db, files) = (Arc::clone(&self.shared.db), self.shared.files.clone());
        let (id, last_log_id) = (meta.snapshot_id.clone(), meta.last_log_id);
        tokio::task::spawn_blocking(move || {
            let (current, previous) = write_txn(&db, "store the snapshot", |txn| {
                let mut table = txn.open_table(SNAPSHOT).during("open the snapshot table")?;
                let stored =
                    match table.get(SNAPSHOT_META_KEY).during("read the snapshot metadata")? {
                        Some(stored) => Some(
                            postcard::from_bytes::<SnapshotMeta>(stored.value())
                                .map_err(|source| SnapshotStoreError::DecodeMeta { source })?,
                        ),
                        None => None,
                    };
                if let Some(stored) = stored.as_ref().filter(|s| s.last_log_id > last_log_id) {
                    return Ok((false, Some(stored.snapshot_id.clone())));
                }
                table
                    .insert(SNAPSHOT_META_KEY, meta_bytes.as_slice())
                    .during("store the snapshot metadata")?;
                table
                    .insert(SNAPSHOT_CHECKSUM_KEY, checksum_bytes.as_slice())
                    .during("store the snapshot checksum")?;
                table.remove(SNAPSHOT_DATA_KEY).during("remove the data stored in the database")?;
                Ok((true, stored.map(|s| s.snapshot_id)))
            })?;
            // The file that is not current now: ours if it lost, else the previous one's.
            let (stale, keep) = if current { (previous, Some(id)) } else { (Some(id), previous) };
            if let Some(stale) = stale.filter(|stale| Some(stale) != keep.as_ref()) {
                files
                    .remove(&stale)
                    .map_err(|source| file_error("remove", &files.path(&stale), source))?;
            }
            Ok(current)
        })
        .await
        .map_err(|source| SnapshotStoreError::Task { source })?
    }
}

impl<S: StateMachine> RaftStateMachine<TypeConfig> for StateMachineStore<S> {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.lock_read();
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

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
            tokio::join!(restore, self.write_file(meta, data));
        let write_error = |error: SnapshotStoreError| {
            StorageIOError::write_snapshot(Some(meta.signature()), &error)
        };
        let sm = match restored {
            Ok(sm) => sm,
            Err(error) => {
                if written.is_ok()
                    && let Err(remove) = self.shared.files.remove(&meta.snapshot_id)
                {
                    tracing::warn!(snapshot_id = %meta.snapshot_id, error = %remove, "cannot remove the data of a rejected snapshot; it goes at the next start");
                }
                return Err(write_error(error).into());
            }
        };
        let checksum = written.map_err(write_error)?;
        self.make_current(meta, checksum).await.map_err(write_error)?;
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
        let (db, files) = (Arc::clone(&self.shared.db), self.shared.files.clone());
        let loaded = tokio::task::spawn_blocking(move || load_current_snapshot(&db, &files))
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

/// The current snapshot as read from the store.
struct Loaded {
    /// Its metadata.
    meta: SnapshotMeta,
    /// Its data.
    data: Vec<u8>,
    /// Whether `data` was checked against a stored checksum (`false`: a legacy snapshot,
    /// stored without one).
    verified: bool,
}

/// Reads the current snapshot, if one is stored: its metadata from `db`, its data from
/// its file (or, in a store from before snapshot files, from `db`), checked against the
/// checksum stored with the metadata when there is one.
///
/// # Errors
/// Besides the database's and the file's errors: [`SnapshotStoreError::Corrupt`] when
/// the file does not match its checksum.
fn load_snapshot(
    db: &Database,
    files: &SnapshotFiles,
) -> Result<Option<Loaded>, SnapshotStoreError> {
    let txn = db.begin_read().during("begin a read transaction")?;
    let table = txn.open_table(SNAPSHOT).during("open the snapshot table")?;
    let Some(meta) = table.get(SNAPSHOT_META_KEY).during("read the snapshot metadata")? else {
        return Ok(None);
    };
    let meta: SnapshotMeta = postcard::from_bytes(meta.value())
        .map_err(|source| SnapshotStoreError::DecodeMeta { source })?;
    if let Some(data) = table.get(SNAPSHOT_DATA_KEY).during("read the snapshot data")? {
        return Ok(Some(Loaded { meta, data: data.value().to_vec(), verified: false }));
    }
    let checksum = match table.get(SNAPSHOT_CHECKSUM_KEY).during("read the snapshot checksum")? {
        Some(stored) => Some(
            postcard::from_bytes::<StoredChecksum>(stored.value())
                .map_err(|source| SnapshotStoreError::DecodeChecksum { source })?,
        ),
        None => None,
    }
    .filter(|stored| stored.snapshot_id == meta.snapshot_id)
    .map(|stored| stored.checksum);
    match files.read(&meta.snapshot_id, checksum.as_ref()) {
        Ok(Some(data)) => Ok(Some(Loaded { meta, data, verified: checksum.is_some() })),
        Ok(None) => {
            let path = files.path(&meta.snapshot_id);
            Err(SnapshotStoreError::MissingData { snapshot_id: meta.snapshot_id, path })
        }
        Err(ReadError::Io { path, source }) => Err(file_error("read", &path, source)),
        Err(ReadError::Corrupt(corrupt)) => Err(SnapshotStoreError::Corrupt {
            snapshot_id: meta.snapshot_id,
            corrupt: Box::new(corrupt),
        }),
    }
}

/// [`load_snapshot`] while snapshots may be stored: a newer snapshot made current (and
/// its predecessor's file removed) between reading the metadata and opening the file is
/// read again.
fn load_current_snapshot(
    db: &Database,
    files: &SnapshotFiles,
) -> Result<Option<Loaded>, SnapshotStoreError> {
    let mut attempts = 0;
    loop {
        match load_snapshot(db, files) {
            Err(SnapshotStoreError::MissingData { .. }) if attempts < 3 => attempts += 1,
            loaded => return loaded,
        }
    }
}

fn file_error(
    op: &'static str,
    path: &std::path::Path,
    source: std::io::Error,
) -> SnapshotStoreError {
    SnapshotStoreError::File { op, path: path.to_path_buf(), source }
}

/// Runs `f` in a write transaction committed with [`Durability::Immediate`]; an error of
/// `f` aborts the transaction.
fn write_txn<T>(
    db: &Database,
    op: &'static str,
    f: impl FnOnce(&redb::WriteTransaction) -> Result<T, SnapshotStoreError>,
) -> Result<T, SnapshotStoreError> {
    let mut txn = db.begin_write().during(op)?;
    txn.set_durability(Durability::Immediate).during(op)?;
    let out = f(&txn)?;
    txn.commit().during(op)?;
    Ok(out)
}

/// Why a state machine cannot restore a snapshot ([`StateMachine::restore`]): the
/// application's own error (or message), shown as it is.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct RestoreError(Box<dyn std::error::Error + Send + Sync>);

impl RestoreError {
    /// The application's reason: an error of its own, or a message (`&str`, `String`).
    pub fn new(reason: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(reason.into())
    }
}

/// Why a state machine cannot apply a committed command ([`StateMachine::check_applicable`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotApplicable(pub String);

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
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{CommittedLeaderId, Membership};
    use tempfile::TempDir;

    use super::*;
    use crate::log_store::open_database;
    use crate::types::Command;

    /// A key-value map whose commands are `key=value` bytes.
    #[derive(Default, Clone, Debug, PartialEq, Eq)]
    struct Kv(BTreeMap<String, String>);

    impl StateMachine for Kv {
        fn apply(&mut self, _log_index: u64, command: &[u8]) -> Vec<u8> {
            APPLIED_ON
                .lock()
                .expect("record")
                .push((command.to_vec(), std::thread::current().id()));
            let Some((key, value)) =
                std::str::from_utf8(command).ok().and_then(|c| c.split_once('='))
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
        StateMachineStore::open(
            db(dir),
            &snapshots(dir),
            Kv::default(),
            ConsensusMetrics::default(),
        )
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
        assert!(store.persist(&meta(5, "new"), Arc::new(b"new".to_vec())).await.expect("persist"));
        assert!(!store.persist(&meta(4, "old"), Arc::new(b"old".to_vec())).await.expect("persist"));
        let current = store.get_current_snapshot().await.expect("read").expect("a snapshot");
        assert_eq!(current.meta.snapshot_id, "new");
        assert_eq!(current.snapshot.into_inner(), b"new");
        assert_eq!(files_in(&dir), [store.shared.files.path("new")], "the loser's file is gone");
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
                .persist(&snapshot_meta(5, "1-5-1"), Arc::new(first.clone()))
                .await
                .expect("persist")
        );
        let path = store.shared.files.path("1-5-1");
        assert_eq!(std::fs::read(&path).expect("the data file"), first);
        assert!(
            store
                .persist(&snapshot_meta(8, "1-8-2"), Arc::new(kv_bytes(&[("b", "2")])))
                .await
                .expect("persist")
        );
        assert_eq!(
            files_in(&dir),
            [store.shared.files.path("1-8-2")],
            "the replaced one is removed"
        );
        // The database holds the metadata only.
        let txn = store.shared.db.begin_read().expect("read");
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
                    .persist(&snapshot_meta(5, "1-5-1"), Arc::new(current.clone()))
                    .await
                    .expect("persist")
            );
            // Step 1 of a newer snapshot done, the process dies before step 2; and a file
            // it was still writing.
            store.shared.files.write("1-9-2", &kv_bytes(&[("b", "2")])).expect("write");
            std::fs::write(snapshots(&dir).join("snapshot-3a.tmp"), b"half").expect("half a file");
        }
        let mut store = open(&dir);
        assert_eq!(store.read(|kv| kv.snapshot()), current, "the previous snapshot is current");
        let loaded = store.get_current_snapshot().await.expect("read").expect("a snapshot");
        assert_eq!(loaded.meta.snapshot_id, "1-5-1");
        assert_eq!(files_in(&dir), [store.shared.files.path("1-5-1")], "the leftovers are removed");
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
                .persist(&snapshot_meta(7, "1-7-2"), Arc::new(kv_bytes(&[("b", "2")])))
                .await
                .expect("persist")
        );
        let txn = store.shared.db.begin_read().expect("read");
        let table = txn.open_table(SNAPSHOT).expect("table");
        assert!(table.get(SNAPSHOT_DATA_KEY).expect("get").is_none(), "the old data is dropped");
        drop((table, txn));
        assert_eq!(files_in(&dir), [store.shared.files.path("1-7-2")]);
    }

    #[tokio::test]
    async fn a_snapshot_whose_file_is_gone_fails_open_naming_the_file() {
        let dir = TempDir::new().expect("tempdir");
        {
            let store = open(&dir);
            assert!(
                store
                    .persist(&snapshot_meta(5, "1-5-1"), Arc::new(kv_bytes(&[("a", "1")])))
                    .await
                    .expect("persist")
            );
            std::fs::remove_file(store.shared.files.path("1-5-1")).expect("an operator's mistake");
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
        store.persist(&meta, Arc::new(vec![0xff; 3])).await.expect("persist garbage");
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
            let path = store.shared.files.path(&built.meta.snapshot_id);
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
                    .persist(&snapshot_meta(5, "1-5-1"), Arc::new(data.clone()))
                    .await
                    .expect("persist")
            );
            // An earlier version wrote the same file and metadata, and no checksum.
            write_txn(&store.shared.db, "forget the checksum", |txn| {
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
        assert!(store.persist(&snapshot_meta(9, "1-9-2"), Arc::new(newer)).await.expect("persist"));
        flip_a_digit(&store.shared.files.path("1-9-2"));
        assert!(store.get_current_snapshot().await.is_err(), "checked again");
    }

    #[tokio::test]
    async fn a_checksum_of_another_snapshot_leaves_the_current_one_legacy() {
        let dir = TempDir::new().expect("tempdir");
        let store = open(&dir);
        let first = kv_bytes(&[("a", "1")]);
        assert!(store.persist(&snapshot_meta(5, "1-5-1"), Arc::new(first)).await.expect("persist"));
        // Rolled back, an earlier version makes a newer snapshot current: metadata and
        // file, but the checksum it does not know of stays that of the first one.
        let newer = kv_bytes(&[("balance", "1000")]);
        store.shared.files.write("1-8-2", &newer).expect("write");
        write_txn(&store.shared.db, "an earlier version's step 2", |txn| {
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
        leader
            .apply([membership(1, 1, &[1, 2]), normal(1, 2, "balance=1000")])
            .await
            .expect("apply");
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
        follower
            .install_snapshot(&snapshot.meta, Box::new(Cursor::new(data)))
            .await
            .expect("install");
        assert_eq!(follower.read(|kv| kv.0.get("balance").cloned()), Some("1000".to_owned()));
        drop(follower);
        let follower = open(&dir);
        assert_eq!(follower.read(|kv| kv.0.get("balance").cloned()), Some("1000".to_owned()));
    }
}
