//! The change log watchers read: every change to what watchers see gets the next
//! revision. A bounded window of recent changes is kept; a watcher that resumes from a
//! revision older than the window gets an explicit full resync.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// How many changes are kept for resuming watchers.
pub const EVENT_WINDOW: usize = 8192;

/// One change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    /// The bundle of a trust domain was created or replaced.
    BundlePut {
        /// The trust domain.
        trust_domain: String,
    },
    /// The bundle of a trust domain was removed (its member left).
    BundleRemoved {
        /// The trust domain.
        trust_domain: String,
    },
    /// A service's exports, or the liveness of one of its exporters, changed: every
    /// consumer's import of it may have changed.
    ServiceChanged {
        /// The service.
        key: crate::service::ServiceKey,
    },
}

/// A change at a revision (one command's changes share a revision).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Revision of the change.
    pub revision: u64,
    /// What changed.
    pub kind: ChangeKind,
}

/// Revision counter and the window of recent changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeLog {
    revision: u64,
    window: VecDeque<Change>,
}

impl ChangeLog {
    /// The current revision (0 before any change).
    #[must_use]
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// A log at `revision` that keeps no change: every watcher behind it resyncs.
    #[must_use]
    pub fn starting_at(revision: u64) -> Self {
        Self { revision, window: VecDeque::new() }
    }

    /// Records a change at the next revision and returns it.
    pub fn push(&mut self, kind: ChangeKind) -> u64 {
        self.push_all(vec![kind])
    }

    /// Records `kinds` together at the next revision and returns it. The window drops
    /// whole revisions only, so a resuming watcher never gets half of one.
    pub fn push_all(&mut self, kinds: Vec<ChangeKind>) -> u64 {
        self.revision += 1;
        let revision = self.revision;
        self.window.extend(kinds.into_iter().map(|kind| Change { revision, kind }));
        while self.window.len() > EVENT_WINDOW {
            let Some(dropped) = self.window.pop_front() else { break };
            while self.window.front().is_some_and(|c| c.revision == dropped.revision) {
                self.window.pop_front();
            }
        }
        revision
    }

    /// Oldest revision a watcher can resume after without a resync.
    #[must_use]
    pub fn oldest_resumable(&self) -> u64 {
        self.window.front().map_or(self.revision, |c| c.revision - 1)
    }

    /// Changes after `revision`, or `None` when some of them are no longer kept (the
    /// watcher must resync).
    #[must_use]
    pub fn since(&self, revision: u64) -> Option<Vec<Change>> {
        if revision >= self.revision {
            return Some(Vec::new());
        }
        let oldest = self.window.front().map_or(self.revision + 1, |c| c.revision);
        if revision + 1 < oldest {
            return None;
        }
        Some(self.window.iter().filter(|c| c.revision > revision).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(td: &str) -> ChangeKind {
        ChangeKind::BundlePut { trust_domain: td.into() }
    }

    #[test]
    fn resume_gets_exactly_the_later_changes() {
        let mut log = ChangeLog::default();
        for i in 0..5 {
            log.push(put(&format!("td{i}")));
        }
        let since = log.since(2).expect("kept");
        assert_eq!(since.iter().map(|c| c.revision).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(log.since(5), Some(Vec::new()));
        assert_eq!(log.since(9), Some(Vec::new()));
    }

    #[test]
    fn the_window_drops_whole_revisions() {
        let mut log = ChangeLog::default();
        log.push_all((0..EVENT_WINDOW - 1).map(|_| put("a")).collect());
        log.push_all(vec![put("b"), put("c")]);
        // The first revision no longer fits whole: it is gone entirely.
        assert!(log.since(0).is_none());
        assert_eq!(log.since(1).map(|c| c.len()), Some(2));
        assert_eq!(log.oldest_resumable(), 1);
    }

    #[test]
    fn a_compacted_revision_asks_for_resync() {
        let mut log = ChangeLog::default();
        for _ in 0..EVENT_WINDOW + 10 {
            log.push(put("a"));
        }
        assert!(log.since(5).is_none());
        assert!(log.since(0).is_none());
        assert_eq!(log.since(10).map(|c| c.len()), Some(EVENT_WINDOW));
    }
}
