//! The current snapshot on disk: its metadata and the checksum of its data in the
//! replica's redb database, its data in a file beside it ([`SnapshotFiles`]); stored in two
//! steps (the file, then the metadata that makes it current), read back checked against
//! the checksum.

use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase as _, ReadableTable as _, TableDefinition};

use super::RestoreError;
use crate::snapshot_files::{Checksum, CorruptFile, ReadError, SnapshotFiles};
use crate::types::SnapshotMeta;

/// The current snapshot: its metadata under [`SNAPSHOT_META_KEY`] (postcard) and the
/// checksum of its data under [`SNAPSHOT_CHECKSUM_KEY`], both written by one transaction.
/// Its data (the state machine's own encoding) is a file named by the snapshot id
/// ([`SnapshotFiles`]), checked against the checksum whenever it is read; stores written
/// before data moved to files hold it here under [`SNAPSHOT_DATA_KEY`], read until the
/// next snapshot replaces it.
pub(super) const SNAPSHOT: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new("raft_snapshot");

/// [`SNAPSHOT`] key of the snapshot metadata.
pub(super) const SNAPSHOT_META_KEY: &str = "meta";
/// [`SNAPSHOT`] key of the snapshot data of stores from before [`SnapshotFiles`].
pub(super) const SNAPSHOT_DATA_KEY: &str = "data";
/// [`SNAPSHOT`] key of the current snapshot's [`StoredChecksum`] (postcard). Absent in
/// stores from before checksums; an earlier version that made a snapshot current after
/// an upgrade and a rollback leaves the checksum of an older snapshot, which names
/// another id. Either way the current snapshot is legacy: read unchecked.
pub(super) const SNAPSHOT_CHECKSUM_KEY: &str = "checksum";

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

/// What went wrong in the state machine store; wrapped into openraft's
/// [`StorageError`](crate::types::StorageError) with the subject (snapshot, state machine)
/// and verb of the failed operation.
#[derive(Debug, thiserror::Error)]
pub(super) enum SnapshotStoreError {
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
pub(super) trait DuringOp<T> {
    /// Maps the error to [`SnapshotStoreError::Database`] with `op` as the operation.
    fn during(self, op: &'static str) -> Result<T, SnapshotStoreError>;
}

impl<T, E: Into<redb::Error>> DuringOp<T> for Result<T, E> {
    fn during(self, op: &'static str) -> Result<T, SnapshotStoreError> {
        self.map_err(|error| SnapshotStoreError::Database { op, source: error.into() })
    }
}

/// Where the current snapshot is kept: the database names it, its data is a file. Clones
/// share both.
#[derive(Clone)]
pub(super) struct SnapshotStore {
    /// The replica's database, shared with the log store; names the current snapshot.
    pub(super) db: Arc<Database>,
    /// The snapshots' data.
    pub(super) files: SnapshotFiles,
}

impl SnapshotStore {
    /// Opens the snapshot table in `db` (creating it in a new database) and the snapshot
    /// directory `dir` (creating it if missing). Blocking IO.
    ///
    /// # Errors
    /// The table or the directory cannot be created.
    pub(super) fn open(
        db: Arc<Database>,
        dir: &std::path::Path,
    ) -> Result<Self, SnapshotStoreError> {
        write_txn(&db, "create the snapshot table", |txn| {
            txn.open_table(SNAPSHOT).during("create the snapshot table")?;
            Ok(())
        })?;
        let files = SnapshotFiles::open(dir)
            .map_err(|source| file_error("create the directory", dir, source))?;
        Ok(Self { db, files })
    }

    /// Reads the current snapshot, if one is stored (see [`load`]). Blocking IO.
    pub(super) fn load(&self) -> Result<Option<Loaded>, SnapshotStoreError> {
        load(&self.db, &self.files)
    }

    /// Reads the current snapshot while snapshots may be stored (see [`load_current`]).
    /// Blocking IO.
    pub(super) fn load_current(&self) -> Result<Option<Loaded>, SnapshotStoreError> {
        load_current(&self.db, &self.files)
    }

    /// Removes every snapshot file but `current`'s (what a crash left behind); returns how
    /// many. Blocking IO.
    pub(super) fn remove_all_but(
        &self,
        current: Option<&str>,
    ) -> Result<usize, SnapshotStoreError> {
        self.files
            .remove_all_but(current)
            .map_err(|source| file_error("remove leftovers", self.files.dir(), source))
    }

    /// Durably stores `meta` and `data` as the current snapshot unless the stored one is
    /// newer; returns whether it was stored.
    pub(super) async fn persist(
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
    pub(super) async fn write_file(
        &self,
        meta: &SnapshotMeta,
        data: Arc<Vec<u8>>,
    ) -> Result<Checksum, SnapshotStoreError> {
        #[cfg(feature = "failpoints")]
        crate::failpoints::check(&self.db, crate::failpoints::Point::SnapshotStore)
            .map_err(|source| SnapshotStoreError::Injected { source })?;
        let files = self.files.clone();
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
    pub(super) async fn make_current(
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
        let (db, files) = (Arc::clone(&self.db), self.files.clone());
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

/// The current snapshot as read from the store.
pub(super) struct Loaded {
    /// Its metadata.
    pub(super) meta: SnapshotMeta,
    /// Its data.
    pub(super) data: Vec<u8>,
    /// Whether `data` was checked against a stored checksum (`false`: a legacy snapshot,
    /// stored without one).
    pub(super) verified: bool,
}

/// Reads the current snapshot, if one is stored: its metadata from `db`, its data from
/// its file (or, in a store from before snapshot files, from `db`), checked against the
/// checksum stored with the metadata when there is one.
///
/// # Errors
/// Besides the database's and the file's errors: [`SnapshotStoreError::Corrupt`] when
/// the file does not match its checksum.
fn load(db: &Database, files: &SnapshotFiles) -> Result<Option<Loaded>, SnapshotStoreError> {
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

/// [`load`] while snapshots may be stored: a newer snapshot made current (and
/// its predecessor's file removed) between reading the metadata and opening the file is
/// read again.
fn load_current(
    db: &Database,
    files: &SnapshotFiles,
) -> Result<Option<Loaded>, SnapshotStoreError> {
    let mut attempts = 0;
    loop {
        match load(db, files) {
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
pub(super) fn write_txn<T>(
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
