//! Per-key linearizability of a register whose initial value is absent.
//!
//! The search is Wing & Gong's, with Lowe's memoization as in porcupine: operations are
//! call and return entries in a doubly linked list ordered by time; the search
//! linearizes a call whenever the register allows it, backtracks when it meets a return
//! whose call is not linearized yet, and caches every visited (linearized set, value)
//! so that no configuration is explored twice. Keys are independent registers, so
//! each key is checked on its own (P-compositionality).
//!
//! Outcomes: failed operations did not happen and are dropped; indeterminate reads
//! tell nothing and are dropped; an indeterminate write may take effect at any time
//! after its invocation, or never: its return is at infinity and linearizing it is
//! optional. (One whose value no read returns is dropped: never applying it is always
//! a valid choice.)

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::history::{History, Op, OpId, OpKind, Outcome};

/// Limits of the search, so that it answers [`Verdict::Unknown`] instead of hanging.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Keys with more operations than this (after dropping) are not checked.
    pub max_ops_per_key: usize,
    /// Search steps (entries visited) allowed per key.
    pub max_steps: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self { max_ops_per_key: 50_000, max_steps: 20_000_000 }
    }
}

/// The result of checking one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// The key's history is linearizable.
    Ok,
    /// It is not.
    Violation {
        /// Which operation could not be placed, and why.
        explanation: String,
        /// The operations involved: the one that could not be placed first.
        ops: Vec<OpId>,
    },
    /// The search gave up.
    Unknown {
        /// Which limit was hit.
        reason: String,
    },
}

/// Checks every key of `history`.
#[must_use]
pub fn check(history: &History, config: &Config) -> BTreeMap<String, Verdict> {
    history
        .by_key()
        .into_iter()
        .map(|(key, ops)| (key.to_owned(), check_key(&ops, config)))
        .collect()
}

/// An operation the search places.
struct Call<'a> {
    op: &'a Op,
    effect: Effect,
    /// When it must have taken effect by; `None` for an optional (indeterminate) write.
    deadline: Option<u64>,
}

#[derive(Clone, Copy)]
enum Effect {
    Write(u64),
    Read(Option<u64>),
}

impl Effect {
    /// The register after this operation, if it may run on `value`.
    fn apply(self, value: Option<u64>) -> Option<Option<u64>> {
        match self {
            Self::Write(written) => Some(Some(written)),
            Self::Read(read) => (read == value).then_some(value),
        }
    }
}

/// Checks the operations of one key (all with the same key).
#[must_use]
pub fn check_key(ops: &[&Op], config: &Config) -> Verdict {
    let read_values: HashSet<Option<u64>> = ops
        .iter()
        .filter_map(|op| match (op.kind, op.outcome, op.acked_at()) {
            (OpKind::Read, Outcome::Ok { read_value }, Some(_)) => Some(read_value),
            _ => None,
        })
        .collect();
    let calls: Vec<Call<'_>> = ops
        .iter()
        .filter_map(|&op| {
            let deadline = op.acked_at();
            let effect = match (op.kind, op.outcome) {
                (_, Outcome::Failed) => return None,
                (OpKind::Read, Outcome::Ok { read_value }) if deadline.is_some() => {
                    Effect::Read(read_value)
                }
                (OpKind::Read, _) => return None,
                (OpKind::Write { value }, _)
                    if deadline.is_some() || read_values.contains(&Some(value)) =>
                {
                    Effect::Write(value)
                }
                (OpKind::Write { .. }, _) => return None,
            };
            Some(Call { op, effect, deadline: deadline.map(|at| at.max(op.invoke)) })
        })
        .collect();

    if let Some(call) = calls.iter().find(|call| match call.effect {
        Effect::Read(Some(read)) => !ops.iter().any(|op| op.may_have_written() == Some(read)),
        Effect::Read(None) | Effect::Write(_) => false,
    }) {
        return Verdict::Violation {
            explanation: format!(
                "{} read a value that no write which may have happened wrote",
                call.op
            ),
            ops: vec![call.op.id],
        };
    }
    if calls.len() > config.max_ops_per_key {
        return Verdict::Unknown {
            reason: format!(
                "{} operations, over the budget of {}",
                calls.len(),
                config.max_ops_per_key
            ),
        };
    }
    Search::new(&calls).run(config.max_steps)
}

/// The Wing–Gong–Lowe search over a doubly linked list of entries: node 0 is the head,
/// the last node the tail, and the nodes between are the calls and returns in order.
/// The calls before the first return (the window) are those that may go next.
///
/// Two orderings keep it fast without losing completeness: a read the register allows
/// is linearized at once and alone (reads change nothing, so if any order works, one
/// starting with that read does), and required writes are tried before optional ones.
struct Search<'c, 'a> {
    calls: &'c [Call<'a>],
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each node: the call it belongs to.
    call_of: Vec<usize>,
    /// For a call node: its return node; for a return node: `None`.
    return_of: Vec<Option<usize>>,
    /// The calls linearized, as a bitset.
    linearized: Vec<u64>,
    /// The register.
    value: Option<u64>,
    /// Every configuration visited (all failed: the search stops at the first success).
    cache: HashSet<(Vec<u64>, Option<u64>)>,
    /// The calls linearized, in order.
    stack: Vec<Frame>,
}

/// A linearized call.
struct Frame {
    node: usize,
    return_node: usize,
    /// The register before it.
    before: Option<u64>,
    /// Where its configuration's scan resumes on backtracking; `None` for a forced read,
    /// whose failure is its configuration's.
    resume: Option<Pass>,
}

/// Which writes a scan of the window tries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Required,
    Optional,
}

/// The deepest point the search reached before it had to backtrack.
struct Stuck {
    /// How many calls were linearized.
    depth: usize,
    /// The call whose return came before it could be linearized.
    call: usize,
    /// The register then.
    value: Option<u64>,
    /// The call that wrote `value`, if any.
    writer: Option<usize>,
}

impl<'c, 'a> Search<'c, 'a> {
    fn new(calls: &'c [Call<'a>]) -> Self {
        // (is at infinity, time, is a return): calls before returns at equal times, so
        // that touching intervals count as concurrent (the permissive reading).
        let mut entries: Vec<((bool, u64, bool), usize)> = Vec::with_capacity(2 * calls.len());
        for (index, call) in calls.iter().enumerate() {
            entries.push(((false, call.op.invoke, false), index));
            entries
                .push(((call.deadline.is_none(), call.deadline.unwrap_or(u64::MAX), true), index));
        }
        entries.sort_unstable();
        let nodes = entries.len() + 2;
        let mut call_of = vec![usize::MAX; nodes];
        let mut return_of = vec![None; nodes];
        let mut call_node = vec![0; calls.len()];
        for (position, &((_, _, is_return), index)) in entries.iter().enumerate() {
            let node = position + 1;
            call_of[node] = index;
            if is_return {
                return_of[call_node[index]] = Some(node);
            } else {
                call_node[index] = node;
            }
        }
        Self {
            calls,
            next: (1..=nodes).collect(),
            prev: (0..nodes).map(|node| node.saturating_sub(1)).collect(),
            call_of,
            return_of,
            linearized: vec![0; calls.len().div_ceil(64)],
            value: None,
            cache: HashSet::new(),
            stack: Vec::new(),
        }
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    /// Undoes [`Search::unlink`] (in the reverse order of unlinking).
    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        self.prev[next] = node;
    }

    fn flip(&mut self, call: usize) {
        self.linearized[call / 64] ^= 1 << (call % 64);
    }

    /// Linearizes the call at `node` if the register allows it and the configuration
    /// it leads to is new.
    fn push(&mut self, node: usize, return_node: usize, resume: Option<Pass>) -> bool {
        let call = self.call_of[node];
        let Some(after) = self.calls[call].effect.apply(self.value) else {
            return false;
        };
        self.flip(call);
        if !self.cache.insert((self.linearized.clone(), after)) {
            self.flip(call);
            return false;
        }
        self.stack.push(Frame { node, return_node, before: self.value, resume });
        self.value = after;
        self.unlink(node);
        self.unlink(return_node);
        true
    }

    /// Undoes linearizations up to the last one that was a choice, and returns where the
    /// scan of its configuration resumes; `None` when there is nothing left to undo.
    fn backtrack(&mut self) -> Option<(usize, Pass)> {
        loop {
            let frame = self.stack.pop()?;
            self.flip(self.call_of[frame.node]);
            self.value = frame.before;
            self.relink(frame.return_node);
            self.relink(frame.node);
            if let Some(pass) = frame.resume {
                return Some((self.next[frame.node], pass));
            }
        }
    }

    fn run(mut self, max_steps: u64) -> Verdict {
        let tail = self.next.len() - 1;
        let mut stuck: Option<Stuck> = None;
        let mut steps = 0_u64;
        // Where the scan of the current configuration is; `None` when just entered.
        let mut cursor: Option<(usize, Pass)> = None;
        loop {
            steps += 1;
            if steps > max_steps {
                return Verdict::Unknown {
                    reason: format!(
                        "search exceeded {max_steps} steps over {} operations",
                        self.calls.len()
                    ),
                };
            }
            let Some((node, pass)) = cursor else {
                // A new configuration: force a read the register allows, if any.
                let mut node = self.next[0];
                while let Some(return_node) = self.return_of[node] {
                    if let Effect::Read(read) = self.calls[self.call_of[node]].effect
                        && read == self.value
                    {
                        if self.push(node, return_node, None) {
                            break;
                        }
                        // Visited before, so failed: and so does this configuration.
                        cursor = self.backtrack();
                        if cursor.is_none() {
                            return self.violation(stuck);
                        }
                        break;
                    }
                    node = self.next[node];
                }
                if self.return_of[node].is_some() {
                    continue;
                }
                if node == tail || self.calls[self.call_of[node]].deadline.is_none() {
                    // Only optional returns (at infinity) are left: every required call is placed.
                    return Verdict::Ok;
                }
                cursor = Some((self.next[0], Pass::Required));
                continue;
            };
            if let Some(return_node) = self.return_of[node] {
                let call = &self.calls[self.call_of[node]];
                let eligible = matches!(call.effect, Effect::Write(_))
                    && (call.deadline.is_some() == (pass == Pass::Required));
                cursor = if eligible && self.push(node, return_node, Some(pass)) {
                    None
                } else {
                    Some((self.next[node], pass))
                };
            } else if pass == Pass::Required {
                cursor = Some((self.next[0], Pass::Optional));
            } else {
                // A required return before its call could be linearized: this configuration fails.
                if stuck.as_ref().is_none_or(|deepest| self.stack.len() > deepest.depth) {
                    stuck = Some(Stuck {
                        depth: self.stack.len(),
                        call: self.call_of[node],
                        value: self.value,
                        writer: self.writer(),
                    });
                }
                cursor = self.backtrack();
                if cursor.is_none() {
                    return self.violation(stuck);
                }
            }
        }
    }

    /// The last write linearized.
    fn writer(&self) -> Option<usize> {
        self.stack
            .iter()
            .rev()
            .map(|frame| self.call_of[frame.node])
            .find(|&call| matches!(self.calls[call].effect, Effect::Write(_)))
    }

    fn violation(&self, stuck: Option<Stuck>) -> Verdict {
        let Some(stuck) = stuck else {
            return Verdict::Violation {
                explanation: "no linearization exists".to_owned(),
                ops: Vec::new(),
            };
        };
        let op = self.calls[stuck.call].op;
        let held = match (stuck.value, stuck.writer) {
            (Some(value), Some(writer)) => {
                format!("{value} (written by {})", self.calls[writer].op)
            }
            (Some(value), None) => value.to_string(),
            (None, _) => "nothing (the key absent)".to_owned(),
        };
        let mut explanation = format!(
            "{op} cannot be linearized: the longest linearizable prefix has {} of {} operations \
             and leaves the register holding {held}",
            stuck.depth,
            self.calls.len()
        );
        let mut ops = vec![op.id];
        ops.extend(stuck.writer.map(|writer| self.calls[writer].op.id));
        if let Effect::Read(Some(read)) = self.calls[stuck.call].effect {
            let writes: Vec<&Op> = self
                .calls
                .iter()
                .map(|call| call.op)
                .filter(|w| w.may_have_written() == Some(read))
                .take(4)
                .collect();
            let listed: Vec<String> = writes.iter().map(ToString::to_string).collect();
            explanation.push_str(&format!("; writes of {read}: {}", listed.join(", ")));
            ops.extend(
                writes.iter().map(|w| w.id).filter(|id| !ops.contains(id)).collect::<Vec<_>>(),
            );
        }
        Verdict::Violation { explanation, ops }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::history::Process;
    use super::super::testing::{lost_track, read, write};
    use super::*;

    fn verdict(history: &History, key: &str) -> Verdict {
        check(history, &Config::default()).remove(key).expect("the key has operations")
    }

    fn assert_violation(history: &History, key: &str, culprit: OpId) -> String {
        match verdict(history, key) {
            Verdict::Violation { explanation, ops } => {
                assert_eq!(ops[0], culprit, "{explanation}");
                explanation
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn sequential_history_passes() {
        let mut h = History::default();
        read(&mut h, 0, "k", None, 0, 5);
        write(&mut h, 0, "k", 1, 10, 20);
        read(&mut h, 1, "k", Some(1), 30, 40);
        write(&mut h, 1, "k", 2, 50, 60);
        read(&mut h, 0, "k", Some(2), 70, 80);
        assert_eq!(verdict(&h, "k"), Verdict::Ok);
    }

    #[test]
    fn concurrent_reads_may_see_either_value() {
        let mut h = History::default();
        write(&mut h, 0, "k", 1, 0, 10);
        write(&mut h, 1, "k", 2, 20, 60);
        read(&mut h, 2, "k", Some(2), 25, 30);
        // Concurrent with the write of 2, but after a read saw 2: it must see 2 too.
        read(&mut h, 3, "k", Some(2), 40, 50);
        read(&mut h, 4, "k", Some(1), 15, 28);
        assert_eq!(verdict(&h, "k"), Verdict::Ok);
    }

    #[test]
    fn stale_read_is_flagged() {
        let mut h = History::default();
        write(&mut h, 0, "k", 1, 0, 10);
        write(&mut h, 0, "k", 2, 20, 30);
        let stale = read(&mut h, 1, "k", Some(1), 40, 50);
        let explanation = assert_violation(&h, "k", stale);
        assert!(
            explanation.contains("holding 2 (written by #1 p0 write 2 [20, 30])"),
            "{explanation}"
        );
        assert!(explanation.contains("writes of 1: #0 p0 write 1 [0, 10]"), "{explanation}");
    }

    #[test]
    fn new_value_then_old_value_is_flagged() {
        let mut h = History::default();
        write(&mut h, 0, "k", 1, 0, 10);
        write(&mut h, 1, "k", 2, 20, 100);
        read(&mut h, 2, "k", Some(2), 30, 40);
        let old = read(&mut h, 3, "k", Some(1), 50, 60);
        assert_violation(&h, "k", old);
    }

    #[test]
    fn read_of_a_value_never_written_is_flagged() {
        let mut h = History::default();
        write(&mut h, 0, "k", 1, 0, 10);
        let bogus = read(&mut h, 1, "k", Some(7), 20, 30);
        let explanation = assert_violation(&h, "k", bogus);
        assert!(explanation.contains("no write"), "{explanation}");
    }

    #[test]
    fn read_of_a_failed_write_is_flagged() {
        let mut h = History::default();
        let refused = h.invoke(Process(0), "k", OpKind::Write { value: 1 }, 0);
        h.complete(refused, 10, Outcome::Failed);
        let bogus = read(&mut h, 1, "k", Some(1), 20, 30);
        assert_violation(&h, "k", bogus);
    }

    #[test]
    fn absent_after_an_acknowledged_write_is_flagged() {
        let mut h = History::default();
        write(&mut h, 0, "k", 1, 0, 10);
        let absent = read(&mut h, 1, "k", None, 20, 30);
        assert_violation(&h, "k", absent);
    }

    #[test]
    fn indeterminate_write_seen_later_passes() {
        let mut h = History::default();
        write(&mut h, 0, "k", 1, 0, 10);
        lost_track(&mut h, 1, "k", 2, 20, 30);
        read(&mut h, 2, "k", Some(1), 40, 50);
        read(&mut h, 2, "k", Some(2), 1_000, 1_010);
        // Never completed at all.
        h.invoke(Process(3), "k", OpKind::Write { value: 3 }, 1_020);
        read(&mut h, 2, "k", Some(3), 5_000, 5_010);
        assert_eq!(verdict(&h, "k"), Verdict::Ok);
    }

    #[test]
    fn indeterminate_write_never_seen_passes() {
        let mut h = History::default();
        write(&mut h, 0, "k", 1, 0, 10);
        lost_track(&mut h, 1, "k", 2, 20, 30);
        read(&mut h, 2, "k", Some(1), 40, 50);
        read(&mut h, 2, "k", Some(1), 60, 70);
        assert_eq!(verdict(&h, "k"), Verdict::Ok);
    }

    #[test]
    fn indeterminate_write_cannot_act_before_its_invocation() {
        let mut h = History::default();
        let early = read(&mut h, 0, "k", Some(2), 0, 10);
        lost_track(&mut h, 1, "k", 2, 20, 30);
        assert_violation(&h, "k", early);
    }

    #[test]
    fn indeterminate_and_failed_reads_are_ignored() {
        let mut h = History::default();
        write(&mut h, 0, "k", 1, 0, 10);
        let timed_out = h.invoke(Process(1), "k", OpKind::Read, 20);
        h.complete(timed_out, 30, Outcome::Indeterminate);
        let refused = h.invoke(Process(1), "k", OpKind::Read, 40);
        h.complete(refused, 50, Outcome::Failed);
        assert_eq!(verdict(&h, "k"), Verdict::Ok);
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut h = History::default();
        write(&mut h, 0, "a", 1, 0, 10);
        write(&mut h, 0, "b", 1, 0, 10);
        read(&mut h, 1, "a", Some(1), 20, 30);
        read(&mut h, 1, "b", None, 20, 30);
        let verdicts = check(&h, &Config::default());
        assert_eq!(verdicts["a"], Verdict::Ok);
        assert!(matches!(verdicts["b"], Verdict::Violation { .. }), "{verdicts:?}");
    }

    #[test]
    fn budgets_give_unknown() {
        let mut h = History::default();
        for i in 0..10 {
            write(&mut h, i, "k", u64::from(i), 0, 100);
        }
        let tight = Config { max_ops_per_key: 100, max_steps: 5 };
        assert!(matches!(check(&h, &tight)["k"], Verdict::Unknown { .. }));
        let few = Config { max_ops_per_key: 5, max_steps: 1_000 };
        assert!(matches!(check(&h, &few)["k"], Verdict::Unknown { .. }));
    }

    /// One step of a generated sequential execution.
    #[derive(Clone, Debug)]
    struct Step {
        process: u32,
        key: usize,
        write: bool,
        /// Where the invocation falls between the process's last completion and the step.
        invoke: u8,
        /// Where the completion falls between the step and the process's next step.
        complete: u8,
        /// 0–1: indeterminate; 2: a write that never happened (failed or lost); else ok.
        fate: u8,
    }

    /// A linearizable history by construction: step `i` takes effect at `100 (i + 1)`,
    /// inside its interval, and each process's intervals do not overlap.
    fn linearizable(steps: &[Step]) -> History {
        let point = |i: usize| 100 * (i as u64 + 1);
        let mut history = History::default();
        let mut registers = [None; 3];
        let mut free_from = BTreeMap::<u32, u64>::new();
        for (i, step) in steps.iter().enumerate() {
            let at = point(i);
            let lo = free_from.get(&step.process).map_or(0, |&t| t + 1);
            let hi = steps[i + 1..]
                .iter()
                .position(|next| next.process == step.process)
                .map_or(at + 1_000, |offset| point(i + 1 + offset) - 1);
            let invoke = lo + (at - lo) * u64::from(step.invoke) / 255;
            let complete = at + (hi - at) * u64::from(step.complete) / 255;
            free_from.insert(step.process, complete);
            let key = format!("k{}", step.key);
            let kind =
                if step.write { OpKind::Write { value: i as u64 + 1 } } else { OpKind::Read };
            let id = history.invoke(Process(step.process), key, kind, invoke);
            let outcome = match (step.write, step.fate) {
                (true, 2) => {
                    let outcome =
                        if step.invoke % 2 == 0 { Outcome::Failed } else { Outcome::Indeterminate };
                    history.complete(id, complete, outcome);
                    continue;
                }
                (_, 0 | 1) => Outcome::Indeterminate,
                (true, _) => Outcome::Ok { read_value: None },
                (false, _) => Outcome::Ok { read_value: registers[step.key] },
            };
            if step.write {
                registers[step.key] = Some(i as u64 + 1);
            }
            history.complete(id, complete, outcome);
        }
        history
    }

    fn steps(max_len: usize) -> impl Strategy<Value = Vec<Step>> {
        (1_u32..=5, 1_usize..=3).prop_flat_map(move |(processes, keys)| {
            prop::collection::vec(
                (0..processes, 0..keys, any::<bool>(), any::<u8>(), any::<u8>(), 0_u8..10)
                    .prop_map(|(process, key, write, invoke, complete, fate)| Step {
                        process,
                        key,
                        write,
                        invoke,
                        complete,
                        fate,
                    }),
                1..max_len,
            )
        })
    }

    /// The acknowledged reads of `history`.
    fn acked_reads(history: &History) -> Vec<usize> {
        (0..history.ops.len())
            .filter(|&i| history.ops[i].kind == OpKind::Read && history.ops[i].acked_at().is_some())
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn linearizable_histories_pass(steps in steps(60)) {
            let history = linearizable(&steps);
            for (key, verdict) in check(&history, &Config::default()) {
                prop_assert_eq!(verdict, Verdict::Ok, "key {}", key);
            }
        }

        #[test]
        fn a_read_of_an_unwritten_value_is_flagged(steps in steps(60), pick in any::<prop::sample::Index>()) {
            let mut history = linearizable(&steps);
            let reads = acked_reads(&history);
            prop_assume!(!reads.is_empty());
            let op = &mut history.ops[reads[pick.index(reads.len())]];
            op.outcome = Outcome::Ok { read_value: Some(u64::MAX) };
            let (key, id) = (op.key.clone(), op.id);
            let verdict = verdict(&history, &key);
            prop_assert!(matches!(&verdict, Verdict::Violation { ops, .. } if ops[0] == id), "{:?}", verdict);
        }

        #[test]
        fn a_read_missing_an_earlier_write_is_flagged(steps in steps(60), pick in any::<prop::sample::Index>()) {
            let mut history = linearizable(&steps);
            let reads: Vec<usize> = acked_reads(&history)
                .into_iter()
                .filter(|&r| {
                    let read = &history.ops[r];
                    history.ops.iter().any(|w| {
                        w.key == read.key
                            && matches!(w.kind, OpKind::Write { .. })
                            && w.acked_at().is_some_and(|at| at < read.invoke)
                    })
                })
                .collect();
            prop_assume!(!reads.is_empty());
            let op = &mut history.ops[reads[pick.index(reads.len())]];
            op.outcome = Outcome::Ok { read_value: None };
            let key = op.key.clone();
            let verdict = verdict(&history, &key);
            prop_assert!(matches!(verdict, Verdict::Violation { .. }), "{:?}", verdict);
        }
    }

    /// Linearizability by exhaustive search, for small histories.
    fn brute_force(ops: &[Op]) -> bool {
        // (invoke, deadline, write, value); optional writes have no deadline.
        let calls: Vec<(u64, Option<u64>, bool, Option<u64>)> = ops
            .iter()
            .filter_map(|op| match (op.kind, op.outcome, op.complete) {
                (_, Outcome::Failed, _) => None,
                (OpKind::Write { value }, Outcome::Ok { .. }, Some(at)) => {
                    Some((op.invoke, Some(at), true, Some(value)))
                }
                (OpKind::Write { value }, _, _) => Some((op.invoke, None, true, Some(value))),
                (OpKind::Read, Outcome::Ok { read_value }, Some(at)) => {
                    Some((op.invoke, Some(at), false, read_value))
                }
                (OpKind::Read, _, _) => None,
            })
            .collect();
        fn search(
            calls: &[(u64, Option<u64>, bool, Option<u64>)],
            done: u32,
            value: Option<u64>,
        ) -> bool {
            let pending = |i: usize| done & (1 << i) == 0;
            if (0..calls.len()).all(|i| !pending(i) || calls[i].1.is_none()) {
                return true;
            }
            (0..calls.len()).filter(|&i| pending(i)).any(|i| {
                let (invoke, _, write, v) = calls[i];
                let blocked = (0..calls.len())
                    .any(|j| j != i && pending(j) && calls[j].1.is_some_and(|d| d < invoke));
                !blocked
                    && (write || v == value)
                    && search(calls, done | 1 << i, if write { v } else { value })
            })
        }
        search(&calls, 0, None)
    }

    /// Small arbitrary histories on one key: values 1–3, reads of 0 read absent.
    fn arbitrary() -> impl Strategy<Value = History> {
        prop::collection::vec((any::<bool>(), 0_u64..=3, 0_u64..20, 0_u64..20, 0_u8..4), 1..=8)
            .prop_map(|ops| {
                let mut history = History::default();
                for (i, (write, value, invoke, length, outcome)) in ops.into_iter().enumerate() {
                    let kind =
                        if write { OpKind::Write { value: value.max(1) } } else { OpKind::Read };
                    let id = history.invoke(Process(i as u32), "k", kind, invoke);
                    let outcome = match outcome {
                        0 => Outcome::Indeterminate,
                        1 => Outcome::Failed,
                        _ => Outcome::Ok { read_value: (!write && value > 0).then_some(value) },
                    };
                    history.complete(id, invoke + length, outcome);
                }
                history
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn agrees_with_brute_force(history in arbitrary()) {
            let verdict = verdict(&history, "k");
            prop_assert_eq!(verdict == Verdict::Ok, brute_force(&history.ops), "{:?}", verdict);
        }
    }

    #[test]
    fn a_long_concurrent_history_checks_quickly() {
        // 2,000 operations of 16 processes on one key, each spanning up to 16 steps.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let steps: Vec<Step> = (0..2_000_u32)
            .map(|i| {
                let r = random();
                Step {
                    process: i % 16,
                    key: 0,
                    write: r % 3 == 0,
                    invoke: (r >> 8) as u8,
                    complete: (r >> 16) as u8,
                    fate: (r >> 24) as u8 % 40,
                }
            })
            .collect();
        let history = linearizable(&steps);
        let start = std::time::Instant::now();
        assert_eq!(verdict(&history, "k0"), Verdict::Ok);
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "took {:?}", start.elapsed());
    }
}
