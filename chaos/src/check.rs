//! The chaos suite's history and checkers: pure data and algorithms, no processes.
//!
//! A run records a [`history::History`] of client operations and samples of watch
//! events, digests, leaders and sequences; the checkers hold them against the promises
//! of `SECURITY.md` ("What it promises under faults"):
//!
//! - [`linearizability`]: every key behaves as a linearizable register.
//! - [`durability`]: no acknowledged write is lost; replicas agree at equal index.
//! - [`watch`]: watchers see revisions in order, without duplicates or gaps.
//! - [`replicas`]: equal digests at equal index, one leader per term, sequences
//!   never go back, no committed cross-domain write.
//!
//! [`check_all`] runs them all over [`Inputs`] and collects a [`Report`].

pub mod durability;
pub mod history;
pub mod linearizability;
pub mod replicas;
pub mod watch;

use std::fmt;

use serde::{Deserialize, Serialize};

use self::durability::FinalState;
use self::history::{
    CrossDomainAttempt, DigestSample, History, LeaderSample, SequenceSample, WatchEvent,
};
use self::linearizability::Verdict;

/// Which promise a [`Violation`] breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ViolationKind {
    /// A key's history is not linearizable.
    Linearizability,
    /// An acknowledged write was lost.
    LostWrite,
    /// A watcher missed a committed revision.
    WatchGap,
    /// A watcher received the same event twice.
    WatchDuplicate,
    /// A watcher's revisions went backwards.
    RevisionRegression,
    /// Replicas disagree at the same applied index.
    DigestMismatch,
    /// Two replicas led the same term.
    TwoLeaders,
    /// A reader's sequence number for a trust domain went backwards.
    SequenceRegression,
    /// A write claiming another trust domain was committed.
    CrossDomainCommit,
    /// A dead member's endpoints were still reported ready past its lease TTL (plus a
    /// margin), or turned ready again while it was down.
    StaleMemberReady,
    /// A restarted member's endpoints were not ready again within the bound.
    MemberNotRecovered,
    /// After healing, a member's agent did not catch up with the federation in bounded
    /// time (revision, bundles, imports, or its own published bundle).
    AgentNotConverged,
    /// Writes were not acknowledged within the scenario's availability promise, or a
    /// replica asked to stop (or made to, by a full disk) did not exit in time.
    Unavailable,
    /// A replica restored or kept serving a damaged snapshot file instead of refusing it.
    CorruptionServed,
    /// A replica left by a panic or a signal instead of a clean exit (0 when asked to
    /// stop, 1 on a storage error).
    UncleanExit,
    /// A check could not run on what it needs (the replicas' final states): the run
    /// proves nothing about it, so it fails.
    Unverifiable,
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Linearizability => "linearizability",
            Self::LostWrite => "lost-write",
            Self::WatchGap => "watch-gap",
            Self::WatchDuplicate => "watch-duplicate",
            Self::RevisionRegression => "revision-regression",
            Self::DigestMismatch => "digest-mismatch",
            Self::TwoLeaders => "two-leaders",
            Self::SequenceRegression => "sequence-regression",
            Self::CrossDomainCommit => "cross-domain-commit",
            Self::StaleMemberReady => "stale-member-ready",
            Self::MemberNotRecovered => "member-not-recovered",
            Self::AgentNotConverged => "agent-not-converged",
            Self::Unavailable => "unavailable",
            Self::Unverifiable => "unverifiable",
            Self::UncleanExit => "unclean-exit",
            Self::CorruptionServed => "corruption-served",
        })
    }
}

/// One broken promise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Which promise.
    pub kind: ViolationKind,
    /// What happened, for a human.
    pub message: String,
}

impl Violation {
    /// A violation of `kind`.
    #[must_use]
    pub fn new(kind: ViolationKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.kind, self.message)
    }
}

/// Everything a run recorded, as the checkers take it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Inputs {
    /// Client operations.
    pub history: History,
    /// Every replica's final state after healing.
    pub final_states: Vec<FinalState>,
    /// Watch events, in the order each watcher received them.
    pub watch_events: Vec<WatchEvent>,
    /// Per watcher, the committed changes (revision → key) touching what it watches.
    pub watch_committed: watch::Committed,
    /// State digests.
    pub digests: Vec<DigestSample>,
    /// Leadership reports.
    pub leaders: Vec<LeaderSample>,
    /// Sequence numbers read.
    pub sequences: Vec<SequenceSample>,
    /// Cross-domain write attempts.
    pub cross_domain: Vec<CrossDomainAttempt>,
    /// Limits of the linearizability search.
    pub linearizability: linearizability::Config,
}

/// What [`check_all`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Every broken promise.
    pub violations: Vec<Violation>,
    /// Checks that could not decide (a linearizability search over its budget).
    pub inconclusive: Vec<String>,
}

impl Report {
    /// No violation was found (some checks may be [`Report::inconclusive`]).
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for violation in &self.violations {
            writeln!(f, "{violation}")?;
        }
        for reason in &self.inconclusive {
            writeln!(f, "[inconclusive] {reason}")?;
        }
        Ok(())
    }
}

/// Runs every checker over `inputs`.
#[must_use]
pub fn check_all(inputs: &Inputs) -> Report {
    let mut report = Report::default();
    for (key, verdict) in linearizability::check(&inputs.history, &inputs.linearizability) {
        match verdict {
            Verdict::Ok => {}
            Verdict::Violation { explanation, .. } => report.violations.push(Violation::new(
                ViolationKind::Linearizability,
                format!("key {key}: {explanation}"),
            )),
            Verdict::Unknown { reason } => report.inconclusive.push(format!("key {key}: {reason}")),
        }
    }
    report.violations.extend(durability::check(&inputs.history, &inputs.final_states));
    report.violations.extend(watch::check(&inputs.watch_events, &inputs.watch_committed));
    report.violations.extend(replicas::check_digests(&inputs.digests));
    report.violations.extend(replicas::check_leaders(&inputs.leaders));
    report.violations.extend(replicas::check_sequences(&inputs.sequences));
    report.violations.extend(replicas::check_cross_domain(&inputs.cross_domain));
    report
}

#[cfg(test)]
pub(crate) mod testing {
    //! Shorthands for building histories in tests.

    use super::history::{History, OpId, OpKind, Outcome, Process};

    /// An acknowledged write of `value` to `key` by `process` over `[invoke, complete]`.
    pub(crate) fn write(
        h: &mut History,
        process: u32,
        key: &str,
        value: u64,
        invoke: u64,
        complete: u64,
    ) -> OpId {
        let id = h.invoke(Process(process), key, OpKind::Write { value }, invoke);
        h.complete(id, complete, Outcome::Ok { read_value: None });
        id
    }

    /// A write of `value` that timed out at `gave_up`.
    pub(crate) fn lost_track(
        h: &mut History,
        process: u32,
        key: &str,
        value: u64,
        invoke: u64,
        gave_up: u64,
    ) -> OpId {
        let id = h.invoke(Process(process), key, OpKind::Write { value }, invoke);
        h.complete(id, gave_up, Outcome::Indeterminate);
        id
    }

    /// A read of `key` returning `value` over `[invoke, complete]`.
    pub(crate) fn read(
        h: &mut History,
        process: u32,
        key: &str,
        value: Option<u64>,
        invoke: u64,
        complete: u64,
    ) -> OpId {
        let id = h.invoke(Process(process), key, OpKind::Read, invoke);
        h.complete(id, complete, Outcome::Ok { read_value: value });
        id
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::testing::{read, write};
    use super::*;

    #[test]
    fn check_all_collects_every_kind_and_round_trips_as_json() {
        let mut inputs = Inputs::default();
        write(&mut inputs.history, 0, "k", 1, 0, 10);
        read(&mut inputs.history, 1, "k", Some(9), 20, 30);
        inputs.final_states.push(FinalState {
            replica: 1,
            applied_index: 5,
            values: BTreeMap::new(),
        });
        inputs.leaders = vec![
            LeaderSample { replica: 1, term: 2, at: 0 },
            LeaderSample { replica: 2, term: 2, at: 5 },
        ];
        let report = check_all(&inputs);
        let kinds: BTreeSet<_> = report.violations.iter().map(|v| v.kind).collect();
        assert_eq!(
            kinds,
            BTreeSet::from([
                ViolationKind::Linearizability,
                ViolationKind::LostWrite,
                ViolationKind::TwoLeaders
            ]),
            "{report}"
        );
        let json = serde_json::to_string(&report).expect("serializes");
        assert!(json.contains("\"kind\":\"lost-write\""), "{json}");
        assert_eq!(serde_json::from_str::<Report>(&json).expect("parses"), report);
        let inputs_json = serde_json::to_string(&inputs).expect("serializes");
        let back: Inputs = serde_json::from_str(&inputs_json).expect("parses");
        assert_eq!(back.history, inputs.history);
    }

    #[test]
    fn clean_inputs_pass() {
        let mut inputs = Inputs::default();
        write(&mut inputs.history, 0, "k", 1, 0, 10);
        read(&mut inputs.history, 1, "k", Some(1), 20, 30);
        inputs.final_states.push(FinalState {
            replica: 1,
            applied_index: 5,
            values: BTreeMap::from([("k".to_owned(), 1)]),
        });
        let report = check_all(&inputs);
        assert!(report.is_ok() && report.inconclusive.is_empty(), "{report}");
    }
}
