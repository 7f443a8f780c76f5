//! No acknowledged write is lost, and replicas agree.
//!
//! Given every replica's final state after healing, for each key with an acknowledged
//! write, take the acknowledged write `W` invoked last. The key's final value must not
//! be absent, nor the value of writes that were all acknowledged before `W` was invoked
//! (an older write overwriting `W` means `W` was lost), nor a value no write that may
//! have happened wrote. Replicas at the same applied index must hold the same values.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::history::History;
use super::{Violation, ViolationKind};

/// A replica's key-value state after healing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalState {
    /// The replica.
    pub replica: u64,
    /// The log index its state reflects.
    pub applied_index: u64,
    /// Every key present and its value (absent keys are missing).
    pub values: BTreeMap<String, u64>,
}

/// Checks that no acknowledged write of `history` is lost from any of `finals`, and
/// that replicas at equal applied index agree (reported as
/// [`ViolationKind::DigestMismatch`]).
#[must_use]
pub fn check(history: &History, finals: &[FinalState]) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (key, ops) in history.by_key() {
        let Some(last) = ops
            .iter()
            .filter(|op| op.may_have_written().is_some() && op.acked_at().is_some())
            .max_by_key(|op| op.invoke)
        else {
            continue;
        };
        for state in finals {
            let place = format!(
                "key {key} on replica {} at applied index {}",
                state.replica, state.applied_index
            );
            let Some(&value) = state.values.get(key) else {
                violations.push(lost(format!("{place} is absent, but {last} was acknowledged")));
                continue;
            };
            let writers: Vec<_> =
                ops.iter().filter(|op| op.may_have_written() == Some(value)).collect();
            if writers.is_empty() {
                violations.push(lost(format!(
                    "{place} holds {value}, which no write that may have happened wrote; {last} was acknowledged"
                )));
            } else if writers.iter().all(|w| w.acked_at().is_some_and(|at| at < last.invoke)) {
                violations.push(lost(format!(
                    "{place} holds {value} from {}, acknowledged before {last} was invoked: {last} was lost",
                    writers[0]
                )));
            }
        }
    }

    let mut by_index = BTreeMap::<u64, Vec<&FinalState>>::new();
    for state in finals {
        by_index.entry(state.applied_index).or_default().push(state);
    }
    for (index, states) in by_index {
        let first = states[0];
        for other in &states[1..] {
            let differing: Vec<String> = first
                .values
                .keys()
                .chain(other.values.keys())
                .filter(|key| first.values.get(*key) != other.values.get(*key))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .take(5)
                .map(|key| {
                    format!(
                        "{key} ({} vs {})",
                        shown(first.values.get(key)),
                        shown(other.values.get(key))
                    )
                })
                .collect();
            if !differing.is_empty() {
                violations.push(Violation::new(
                    ViolationKind::DigestMismatch,
                    format!(
                        "replicas {} and {} disagree at applied index {index} on {}",
                        first.replica,
                        other.replica,
                        differing.join(", ")
                    ),
                ));
            }
        }
    }
    violations
}

fn lost(message: String) -> Violation {
    Violation::new(ViolationKind::LostWrite, message)
}

fn shown(value: Option<&u64>) -> String {
    value.map_or_else(|| "absent".to_owned(), ToString::to_string)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{lost_track, write};
    use super::*;

    fn state(replica: u64, applied_index: u64, values: &[(&str, u64)]) -> FinalState {
        FinalState {
            replica,
            applied_index,
            values: values.iter().map(|&(k, v)| (k.to_owned(), v)).collect(),
        }
    }

    fn history() -> History {
        let mut h = History::default();
        write(&mut h, 0, "a", 1, 0, 10);
        write(&mut h, 1, "a", 2, 20, 30);
        write(&mut h, 0, "b", 7, 0, 10);
        h
    }

    #[test]
    fn surviving_writes_pass() {
        let finals = [state(1, 9, &[("a", 2), ("b", 7)]), state(2, 9, &[("a", 2), ("b", 7)])];
        assert_eq!(check(&history(), &finals), vec![]);
    }

    #[test]
    fn absent_key_is_a_lost_write() {
        let violations = check(&history(), &[state(1, 9, &[("a", 2)])]);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].kind, ViolationKind::LostWrite);
        assert!(violations[0].message.contains("key b on replica 1"), "{}", violations[0]);
    }

    #[test]
    fn overwrite_by_an_older_write_is_a_lost_write() {
        let violations = check(&history(), &[state(1, 9, &[("a", 1), ("b", 7)])]);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].kind, ViolationKind::LostWrite);
        assert!(violations[0].message.contains("#1 p1 write 2"), "{}", violations[0]);
    }

    #[test]
    fn value_never_written_is_a_lost_write() {
        let violations = check(&history(), &[state(1, 9, &[("a", 99), ("b", 7)])]);
        assert_eq!(
            violations.iter().map(|v| v.kind).collect::<Vec<_>>(),
            vec![ViolationKind::LostWrite]
        );
    }

    #[test]
    fn concurrent_or_indeterminate_last_writes_pass() {
        let mut h = history();
        // Concurrent with the last acknowledged write: either may win.
        write(&mut h, 2, "a", 3, 25, 40);
        // Timed out, may land at any time later.
        lost_track(&mut h, 3, "b", 8, 50, 60);
        let finals = [state(1, 9, &[("a", 2), ("b", 8)]), state(2, 10, &[("a", 3), ("b", 7)])];
        assert_eq!(check(&h, &finals), vec![]);
    }

    #[test]
    fn replicas_disagreeing_at_one_index_are_flagged() {
        let finals =
            [state(1, 9, &[("a", 2), ("b", 7)]), state(3, 9, &[("a", 2), ("b", 7), ("c", 4)])];
        let violations = check(&history(), &finals);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].kind, ViolationKind::DigestMismatch);
        assert!(violations[0].message.contains("c (absent vs 4)"), "{}", violations[0]);
    }
}
