//! How far the log is durable, for whatever must not run ahead of the disk.
//!
//! A leader reports its own appends flushed before the writer has made them durable (see
//! [`LogStore`](super::LogStore)): it replicates an entry while its own disk writes it,
//! and it may count itself towards a commit before its copy is on disk. A commit counted
//! so must not be acted on until the leader's copy is durable too, or a crash of the
//! leader could lose an entry that the client, or a follower's state machine, already
//! saw. [`LogDurability`] is what the state machine waits on before it applies an entry
//! and what the transport consults before it tells a follower an index is committed.

use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use super::cache::{Tail, read_tail};
use super::tables::LogStoreError;

/// What the writer has done so far: how many batches it wrote, or the error that stopped
/// it for good.
#[derive(Clone, Debug, Default)]
pub(super) struct WriterProgress {
    /// Batches with appends written so far (only its changes matter).
    pub(super) batches: u64,
    /// The error of the append batch that failed: nothing is written after it, so nothing
    /// after it ever becomes durable.
    pub(super) failed: Option<Arc<LogStoreError>>,
}

/// A view of how far the log is durable. Cheap to clone; clones share the log's tail.
#[derive(Clone)]
pub struct LogDurability {
    /// The log's tail: an entry is durable once it has left `pending`.
    tail: Arc<RwLock<Tail>>,
    /// Changes whenever the writer has written a batch, or failed.
    progress: watch::Receiver<WriterProgress>,
    /// Whether appends are made durable by the log's redo file.
    redo_file: bool,
}

impl std::fmt::Debug for LogDurability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogDurability").field("durable_through", &self.durable_through()).finish()
    }
}

impl LogDurability {
    pub(super) fn new(
        tail: Arc<RwLock<Tail>>,
        progress: watch::Receiver<WriterProgress>,
        redo_file: bool,
    ) -> Self {
        Self { tail, progress, redo_file }
    }

    /// Whether appends are made durable by the log's redo file: false when the store was
    /// opened without one, or found no room to create it (a full disk at start), and makes
    /// every append a durable database commit instead. That is as safe and slower; a
    /// restart with room for the file ends it.
    #[must_use]
    pub fn redo_file(&self) -> bool {
        self.redo_file
    }

    /// The highest index through which every entry of the log is durable: the one before
    /// the oldest entry not yet written, or `u64::MAX` when every entry is written.
    #[must_use]
    pub fn durable_through(&self) -> u64 {
        let tail = read_tail(&self.tail);
        tail.pending.keys().next().map_or(u64::MAX, |oldest| oldest.saturating_sub(1))
    }

    /// How long entries have been waiting for the writer without it writing a batch, or
    /// `None` when nothing waits. A disk that hangs shows here: the leader's own appends
    /// are reported flushed at once, so its raft core goes on (heartbeats included) while
    /// nothing it commits can be applied.
    #[must_use]
    pub fn stalled_for(&self) -> Option<std::time::Duration> {
        read_tail(&self.tail).pending_since.map(|since| since.elapsed())
    }

    /// The error that stopped the writer, if one did.
    pub(crate) fn failed(&self) -> Option<LogStoreError> {
        let error = self.progress.borrow().failed.clone()?;
        Some(LogStoreError::Flush { error })
    }

    /// Waits until every entry of the log up to `index` is durable.
    ///
    /// # Errors
    /// The writer failed before it got there: those entries will never be durable
    /// (the store refuses every later append too).
    pub(crate) async fn wait_through(&self, index: u64) -> Result<(), LogStoreError> {
        let mut progress = self.progress.clone();
        loop {
            // Seen before the tail is read: a batch written after the read changes it.
            let failed = progress.borrow_and_update().failed.clone();
            if self.durable_through() >= index {
                return Ok(());
            }
            if let Some(error) = failed {
                return Err(LogStoreError::Flush { error });
            }
            if progress.changed().await.is_err() {
                return Err(LogStoreError::WriterStopped);
            }
        }
    }
}
