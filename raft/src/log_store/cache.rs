//! The log's tail in memory: entries appended and not yet written, readable at once as
//! openraft needs, and the newest written ones, which replication reads again right after
//! they are appended.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use openraft::RaftLogId as _;

use crate::types::{Entry, LogId};

/// Encoded bytes of written entries kept in memory for readers (see [`LogStore`](super::LogStore)).
pub(super) const RECENT_BYTES: usize = 8 << 20;

/// The log's tail in memory: the entries appended but not yet written, and the newest
/// written ones. Together they are the log from the first of them on, with no gap: entries
/// move from `pending` to `recent` in index order once written, `recent` loses only its
/// oldest, and a truncation drops the same suffix from both and from redb.
#[derive(Default)]
pub(super) struct Tail {
    /// Appended, not yet written to redb, by index.
    pub(super) pending: BTreeMap<u64, Entry>,
    /// Since when the writer has had entries pending without writing a batch: when the
    /// first of them was appended or the writer last wrote a batch, whichever is later.
    /// `None` while nothing is pending.
    pub(super) pending_since: Option<std::time::Instant>,
    /// Written to redb as well, by index, with their encoded size.
    recent: BTreeMap<u64, (Entry, usize)>,
    /// Sum of the sizes in `recent`.
    recent_bytes: usize,
}

impl Tail {
    /// The entries in `start..end` if the tail holds all the log has there, else `None`
    /// (the caller reads redb).
    pub(super) fn entries(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let first =
            self.recent.keys().next().into_iter().chain(self.pending.keys().next()).min()?;
        if start < *first {
            return None;
        }
        let range = (Bound::Included(start), end.map_or(Bound::Unbounded, Bound::Excluded));
        let mut entries: BTreeMap<u64, Entry> =
            self.recent.range(range).map(|(i, (e, _))| (*i, e.clone())).collect();
        // A pending entry is newer than a written one at its index.
        entries.extend(self.pending.range(range).map(|(i, e)| (*i, e.clone())));
        Some(entries.into_values().collect())
    }

    /// Moves a written entry from `pending` to `recent`, unless a newer entry took its
    /// index meanwhile; then drops the oldest written entries beyond [`RECENT_BYTES`].
    pub(super) fn written(&mut self, index: u64, log_id: &LogId, size: usize) {
        if self.pending.get(&index).is_some_and(|e| e.get_log_id() == log_id)
            && let Some(entry) = self.pending.remove(&index)
        {
            if let Some((_, old)) = self.recent.insert(index, (entry, size)) {
                self.recent_bytes -= old;
            }
            self.recent_bytes += size;
        }
        while self.recent_bytes > RECENT_BYTES
            && let Some((_, (_, size))) = self.recent.pop_first()
        {
            self.recent_bytes -= size;
        }
    }

    /// Drops every entry from `index` on.
    pub(super) fn truncate(&mut self, index: u64) {
        self.pending.split_off(&index);
        if self.pending.is_empty() {
            self.pending_since = None;
        }
        for (_, (_, size)) in self.recent.split_off(&index) {
            self.recent_bytes -= size;
        }
    }

    /// Drops written entries up to `index`.
    pub(super) fn purge(&mut self, index: u64) {
        while let Some(oldest) = self.recent.first_entry()
            && *oldest.key() <= index
        {
            self.recent_bytes -= oldest.remove().1;
        }
    }
}

/// Read access to the tail (the lock does not poison: nothing panics while holding it).
pub(super) fn read_tail(tail: &RwLock<Tail>) -> std::sync::RwLockReadGuard<'_, Tail> {
    match tail.read() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Write access to the tail (the lock does not poison: nothing panics while holding it).
pub(super) fn lock_tail(tail: &RwLock<Tail>) -> std::sync::RwLockWriteGuard<'_, Tail> {
    match tail.write() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_store::tests::{log_id, normal};

    #[test]
    fn the_tail_keeps_the_newest_written_entries_and_no_gap() {
        let mut tail = Tail::default();
        assert_eq!(tail.entries(1, None), None, "empty: read redb");
        for i in 1..=4 {
            tail.pending.insert(i, normal(1, i, b"x"));
        }
        tail.written(1, &log_id(1, 1), RECENT_BYTES / 2);
        tail.written(2, &log_id(1, 2), RECENT_BYTES / 2);
        let indexes = |entries: Option<Vec<Entry>>| {
            entries.map(|e| e.iter().map(|e| e.log_id.index).collect::<Vec<_>>())
        };
        assert_eq!(indexes(tail.entries(1, None)), Some(vec![1, 2, 3, 4]));
        assert_eq!(indexes(tail.entries(2, Some(4))), Some(vec![2, 3]));
        // Over the budget: the oldest written entry leaves; reads before it go to redb.
        tail.written(3, &log_id(1, 3), 1);
        assert_eq!(tail.recent_bytes, RECENT_BYTES / 2 + 1);
        assert_eq!(tail.entries(1, None), None);
        assert_eq!(indexes(tail.entries(2, None)), Some(vec![2, 3, 4]));
        assert_eq!(indexes(tail.entries(9, None)), Some(vec![]), "nothing beyond the log");
        // A newer entry at a written index (after a truncation) is not replaced.
        tail.truncate(3);
        assert_eq!(tail.recent_bytes, RECENT_BYTES / 2);
        tail.pending.insert(3, normal(2, 3, b"y"));
        tail.written(3, &log_id(1, 3), 1);
        assert_eq!(tail.entries(3, None).expect("in memory")[0].log_id, log_id(2, 3));
        tail.purge(2);
        assert_eq!(tail.recent_bytes, 0);
        assert_eq!(indexes(tail.entries(3, None)), Some(vec![3]));
    }
}
