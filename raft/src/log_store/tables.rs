//! The log store's place in redb: its two tables and the keys of the small one, the
//! encoding of what they hold, the transactions that write them, and what can go wrong
//! doing so ([`LogStoreError`]).

use std::path::PathBuf;
use std::sync::Arc;

use openraft::RaftLogId as _;
use redb::{Database, Durability, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::failpoints::Point;
use crate::types::{Entry, LogId};

/// Log entries by index; values are postcard-encoded [`Entry`]s.
pub(super) const LOG: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("raft_log");

/// Vote, committed and last purged log id, by name; values are postcard-encoded.
pub(super) const LOG_META: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new("raft_log_meta");

/// [`LOG_META`] key of the vote.
pub(super) const VOTE_KEY: &str = "vote";
/// [`LOG_META`] key of the committed log id.
pub(super) const COMMITTED_KEY: &str = "committed";
/// [`LOG_META`] key of the last purged log id.
pub(super) const LAST_PURGED_KEY: &str = "last_purged";
/// [`LOG_META`] key of the redo id shared by this database and its redo file (see
/// [`super::wal`]).
pub(super) const WAL_ID_KEY: &str = "wal_id";
/// [`LOG_META`] key of the sequence number of the last append written to redb (see
/// [`super::wal`]).
pub(super) const WAL_SEQ_KEY: &str = "wal_seq";
/// [`LOG_META`] key of the encoding of stored entries ([`ENTRY_FORMAT`]).
pub(super) const ENTRY_FORMAT_KEY: &str = "entry_format";
/// Normal entries hold a batch of commands. Format 1 (no [`ENTRY_FORMAT_KEY`]) held one
/// command each; such a log is rewritten to this format when the store opens it.
pub(super) const ENTRY_FORMAT: u32 = 2;

/// What went wrong in the log store; wrapped into openraft's
/// [`StorageError`](crate::types::StorageError) with the subject (logs, vote, store) and
/// verb (read, write) of the failed operation.
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

    /// The log's redo file could not be opened, read or written.
    #[error("cannot {op} the raft log's redo file {path}: {source}")]
    Wal {
        /// What the store was doing.
        op: &'static str,
        /// The redo file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// The redo file's records do not continue the appends redb holds: appends were lost.
    #[error(
        "the raft log's redo file starts at append {first} but the database holds appends \
         only up to {durable}: the appends between are lost (a damaged or replaced redo \
         file); restore this replica from the others: remove it from the group (`federator \
         raft remove-member`), delete its data directory, and add it again (`federator raft \
         add-member`)"
    )]
    WalGap {
        /// The last append the database holds.
        durable: u64,
        /// The first append of the redo file after it.
        first: u64,
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

/// A storage fault injected at `point` (feature `failpoints`), else `Ok`.
#[cfg_attr(
    not(feature = "failpoints"),
    expect(clippy::unnecessary_wraps, reason = "a fault can only be injected with the feature")
)]
pub(super) fn injected(db: &Database, point: Point) -> Result<(), LogStoreError> {
    #[cfg(feature = "failpoints")]
    crate::failpoints::check(db, point).map_err(|source| LogStoreError::Injected { source })?;
    #[cfg(not(feature = "failpoints"))]
    let _ = (db, point);
    Ok(())
}

/// Waits while a hung disk is injected for `db` (feature `failpoints`,
/// [`Point::LogStall`]); returns at once otherwise.
pub(super) fn stall_injected(db: &Database) {
    #[cfg(feature = "failpoints")]
    while crate::failpoints::check(db, Point::LogStall).is_err() {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = db;
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
pub(super) fn write_txn_with<T>(
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
pub(super) fn get_meta<T: DeserializeOwned>(
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
pub(super) fn encode_meta<T: Serialize + ?Sized>(
    key: &'static str,
    value: &T,
) -> Result<Vec<u8>, LogStoreError> {
    postcard::to_allocvec(value).map_err(|source| LogStoreError::EncodeMeta { key, source })
}

/// Decodes the entry stored under `key` and checks it belongs there.
pub(super) fn decode_entry(key: u64, bytes: &[u8]) -> Result<Entry, LogStoreError> {
    let entry: Entry = postcard::from_bytes(bytes)
        .map_err(|source| LogStoreError::DecodeEntry { index: key, source })?;
    if entry.get_log_id().index != key {
        return Err(LogStoreError::MisplacedEntry { key, log_id: *entry.get_log_id() });
    }
    Ok(entry)
}
