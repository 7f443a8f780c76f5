//! Watchers see every committed revision once, in order, across resumes.
//!
//! Per watcher, in the order received: an event is a duplicate if the same (revision,
//! key) came before, a regression if its revision is below one already seen (several
//! keys may share one revision: a revision equal to the highest is not a regression).
//! Every committed revision between the first and the last revision the watcher saw
//! must have been seen, or there is a gap.

use std::collections::{BTreeMap, BTreeSet};

use super::history::WatchEvent;
use super::{Violation, ViolationKind};

/// Per watcher, the committed changes touching what it watches: revision → key.
pub type Committed = BTreeMap<u32, BTreeMap<u64, String>>;

/// Checks `events` (in received order) against `committed`. Watchers missing from
/// `committed` are only checked for order and duplicates.
#[must_use]
pub fn check(events: &[WatchEvent], committed: &Committed) -> Vec<Violation> {
    let mut by_watcher = BTreeMap::<u32, Vec<&WatchEvent>>::new();
    for event in events {
        by_watcher.entry(event.watcher).or_default().push(event);
    }
    let mut violations = Vec::new();
    for (watcher, events) in by_watcher {
        let mut seen = BTreeSet::<(u64, &str)>::new();
        let mut highest: Option<u64> = None;
        for event in &events {
            let resumed = if event.resumed { " (first event after a resume)" } else { "" };
            if !seen.insert((event.revision, event.key.as_str())) {
                violations.push(Violation::new(
                    ViolationKind::WatchDuplicate,
                    format!(
                        "watcher {watcher} received {} at revision {} again{resumed}",
                        event.key, event.revision
                    ),
                ));
            } else if let Some(high) = highest.filter(|&high| event.revision < high) {
                violations.push(Violation::new(
                    ViolationKind::RevisionRegression,
                    format!(
                        "watcher {watcher} went back from revision {high} to {} ({}){resumed}",
                        event.revision, event.key
                    ),
                ));
            }
            highest = highest.max(Some(event.revision));
        }

        let revisions: BTreeSet<u64> = seen.iter().map(|&(revision, _)| revision).collect();
        let (Some(committed), Some(&first), Some(&last)) =
            (committed.get(&watcher), revisions.first(), revisions.last())
        else {
            continue;
        };
        // A change is covered by an event of its key at its revision or a later one up
        // to the last seen (a watch delivers the latest state of a key: changes of one
        // key within one batch arrive as one event, at the newest of them).
        let covered = |revision: u64, key: &str| {
            seen.iter().any(|&(r, k)| k == key && r >= revision && r <= last)
        };
        // Missing changes, grouped by the seen revisions around them.
        let mut gaps = BTreeMap::<(u64, u64), Vec<(u64, &str)>>::new();
        for (&missing, key) in committed.range(first..=last) {
            if covered(missing, key) {
                continue;
            }
            let before = revisions.range(..missing).next_back().copied().unwrap_or(first);
            let after = revisions.range(missing..).next().copied().unwrap_or(last);
            gaps.entry((before, after)).or_default().push((missing, key.as_str()));
        }
        for ((before, after), missing) in gaps {
            let resumed = events.iter().any(|e| e.revision == after && e.resumed);
            violations.push(Violation::new(
                ViolationKind::WatchGap,
                format!(
                    "watcher {watcher} missed committed changes {missing:?} between revisions {before} and {after}{}",
                    if resumed { " (across a resume)" } else { "" }
                ),
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(watcher: u32, revision: u64, key: &str, resumed: bool) -> WatchEvent {
        WatchEvent { watcher, revision, key: key.to_owned(), resumed }
    }

    fn committed(
        watcher: u32,
        changes: impl IntoIterator<Item = (u64, &'static str)>,
    ) -> Committed {
        BTreeMap::from([(watcher, changes.into_iter().map(|(r, k)| (r, k.to_owned())).collect())])
    }

    fn kinds(violations: &[Violation]) -> Vec<ViolationKind> {
        violations.iter().map(|v| v.kind).collect()
    }

    #[test]
    fn in_order_events_across_a_resume_pass() {
        let events = [
            event(1, 3, "a", false),
            event(1, 4, "a", false),
            event(1, 4, "b", false),
            event(1, 6, "b", true),
            event(2, 5, "a", false),
        ];
        // 2 is before watcher 1 started, 5 touches only what watcher 2 watches.
        let mut committed = committed(1, [(2, "a"), (3, "a"), (4, "b"), (6, "b")]);
        committed.insert(2, BTreeMap::from([(5, "a".to_owned())]));
        assert_eq!(check(&events, &committed), vec![]);
    }

    #[test]
    fn duplicate_event_is_flagged() {
        let events = [event(1, 3, "a", false), event(1, 4, "a", false), event(1, 4, "a", true)];
        let violations = check(&events, &committed(1, [(3, "a"), (4, "a")]));
        assert_eq!(kinds(&violations), vec![ViolationKind::WatchDuplicate]);
        assert!(violations[0].message.contains("revision 4 again"), "{}", violations[0]);
    }

    #[test]
    fn gap_after_resume_is_flagged() {
        let events = [
            event(1, 3, "a", false),
            event(1, 4, "a", false),
            event(1, 7, "a", true),
            event(1, 8, "a", false),
        ];
        let changes = [(3, "a"), (4, "a"), (5, "b"), (6, "b"), (7, "a"), (8, "a")];
        let violations = check(&events, &committed(1, changes));
        assert_eq!(kinds(&violations), vec![ViolationKind::WatchGap]);
        assert!(
            violations[0]
                .message
                .contains(r#"[(5, "b"), (6, "b")] between revisions 4 and 7 (across a resume)"#),
            "{}",
            violations[0]
        );
    }

    #[test]
    fn changes_of_one_key_coalesced_into_a_later_event_are_no_gap() {
        // 5 and 6 changed "b" again before 7 delivered its newest state.
        let events = [event(1, 4, "a", false), event(1, 7, "b", false), event(1, 8, "a", false)];
        let changes = [(4, "a"), (5, "b"), (6, "b"), (7, "b"), (8, "a")];
        assert_eq!(check(&events, &committed(1, changes)), vec![]);
        // But a change of "a" at 5 is not covered by a later "b".
        let changes = [(4, "a"), (5, "a"), (7, "b"), (8, "b")];
        let events = [event(1, 4, "a", false), event(1, 7, "b", false), event(1, 8, "b", false)];
        assert_eq!(kinds(&check(&events, &committed(1, changes))), vec![ViolationKind::WatchGap]);
    }

    #[test]
    fn revision_going_back_is_flagged() {
        let events = [event(1, 5, "a", false), event(1, 6, "b", false), event(1, 4, "c", true)];
        let violations = check(&events, &BTreeMap::new());
        assert_eq!(kinds(&violations), vec![ViolationKind::RevisionRegression]);
        assert!(violations[0].message.contains("from revision 6 to 4"), "{}", violations[0]);
    }
}
