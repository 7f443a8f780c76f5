//! Storage fault injection for tests and the chaos suite. Arming needs the cargo feature
//! `failpoints`; without it only [`Point`] exists and the storage paths check nothing.
//!
//! A fault is armed for one replica's database, named by its file path, at one
//! [`Point`]; while armed, the storage operation at that point fails with an I/O error
//! before anything of it is written — as a full disk or a failing fsync would make it
//! fail. What the replica does then is what it does on a real disk error: openraft stops
//! its core (fail-stop) and the rest of the group carries on.

#[cfg(feature = "failpoints")]
use std::collections::{BTreeMap, BTreeSet};
#[cfg(feature = "failpoints")]
use std::path::{Path, PathBuf};
#[cfg(feature = "failpoints")]
use std::sync::{Mutex, PoisonError};

/// A storage operation that can be made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Point {
    /// Before a batch of log entries is written.
    LogAppend,
    /// After the entries are staged, when the transaction commits (fsync).
    LogCommit,
    /// When the vote is saved.
    VoteSave,
    /// When a built or received snapshot is stored.
    SnapshotStore,
    /// Before a batch of log entries is written, the writer waits while this is armed, as
    /// on a disk that hangs (nothing fails).
    LogStall,
}

#[cfg(feature = "failpoints")]
/// Armed faults by database path.
static ARMED: Mutex<BTreeMap<PathBuf, BTreeSet<Point>>> = Mutex::new(BTreeMap::new());

#[cfg(feature = "failpoints")]
/// Every open database's path, by the address of its handle.
static PATHS: Mutex<BTreeMap<usize, PathBuf>> = Mutex::new(BTreeMap::new());

#[cfg(feature = "failpoints")]
/// Makes `point` fail for the database at `db_path` until [`heal`].
pub fn arm(db_path: &Path, point: Point) {
    let mut armed = ARMED.lock().unwrap_or_else(PoisonError::into_inner);
    armed.entry(db_path.to_path_buf()).or_default().insert(point);
}

#[cfg(feature = "failpoints")]
/// Disarms every fault of the database at `db_path`.
pub fn heal(db_path: &Path) {
    ARMED.lock().unwrap_or_else(PoisonError::into_inner).remove(db_path);
}

#[cfg(feature = "failpoints")]
/// Records where the database behind `db` lives.
pub(crate) fn register(db: &redb::Database, path: &Path) {
    let key = std::ptr::from_ref(db) as usize;
    PATHS.lock().unwrap_or_else(PoisonError::into_inner).insert(key, path.to_path_buf());
}

#[cfg(feature = "failpoints")]
/// Fails when `point` is armed for `db`.
pub(crate) fn check(db: &redb::Database, point: Point) -> std::io::Result<()> {
    let key = std::ptr::from_ref(db) as usize;
    let Some(path) = PATHS.lock().unwrap_or_else(PoisonError::into_inner).get(&key).cloned() else {
        return Ok(());
    };
    let armed = ARMED.lock().unwrap_or_else(PoisonError::into_inner);
    if armed.get(&path).is_some_and(|points| points.contains(&point)) {
        return Err(std::io::Error::other(format!(
            "injected storage fault at {point:?} of {}",
            path.display()
        )));
    }
    Ok(())
}
