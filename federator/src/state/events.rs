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
}

/// A change at a revision.
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

    /// Records a change at the next revision and returns it.
    pub fn push(&mut self, kind: ChangeKind) -> u64 {
        self.revision += 1;
        self.window.push_back(Change { revision: self.revision, kind });
        while self.window.len() > EVENT_WINDOW {
            self.window.pop_front();
        }
        self.revision
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
