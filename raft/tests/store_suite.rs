//! openraft's storage conformance suite against the redb log store (with its redo file, as
//! a replica opens it, and without) and the state machine store, each build on a fresh
//! database in its own temporary directory.

use std::collections::BTreeMap;

use federator_raft::log_store::{LogStore, open_database};
use federator_raft::metrics::ConsensusMetrics;
use federator_raft::state_machine::StateMachineStore;
use federator_raft::types::{StorageError, TypeConfig};
use federator_raft::{RestoreError, StateMachine};
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

/// A key-value map whose commands are `key=value` bytes.
#[derive(Default)]
struct KvState {
    /// The map.
    entries: BTreeMap<String, String>,
}

impl StateMachine for KvState {
    fn apply(&mut self, _log_index: u64, command: &[u8]) -> Vec<u8> {
        let Some((key, value)) = std::str::from_utf8(command).ok().and_then(|c| c.split_once('='))
        else {
            return b"error: command is not key=value".to_vec();
        };
        self.entries.insert(key.to_owned(), value.to_owned()).unwrap_or_default().into_bytes()
    }

    fn snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(&self.entries).unwrap_or_default()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        self.entries = postcard::from_bytes(snapshot).map_err(RestoreError::new)?;
        Ok(())
    }
}

/// Builds both stores on one fresh database; the [`TempDir`] guard removes it. With
/// `redo_file`, the log store has its redo file, as a replica opens it.
struct RedbStoreBuilder {
    redo_file: bool,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore<KvState>, TempDir> for RedbStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore<KvState>), StorageError> {
        let dir = TempDir::new().map_err(|e| openraft::StorageIOError::write(&e))?;
        let db = open_database(&dir.path().join("raft.redb"))?;
        let metrics = ConsensusMetrics::default();
        let log = if self.redo_file {
            LogStore::with_redo_file(db.clone(), &dir.path().join("raft.wal"), metrics.clone())?
        } else {
            LogStore::new(db.clone(), metrics.clone())?
        };
        let sm = StateMachineStore::open(
            db,
            &dir.path().join("snapshots"),
            KvState::default(),
            metrics,
        )?;
        Ok((dir, log, sm))
    }
}

#[test]
fn redb_stores_pass_the_openraft_storage_suite() -> anyhow::Result<()> {
    Suite::test_all(RedbStoreBuilder { redo_file: true })?;
    Suite::test_all(RedbStoreBuilder { redo_file: false })?;
    Ok(())
}
