//! What a chaos run records: client operations on keys ([`History`] of [`Op`]s) and the
//! event samples the other checkers read ([`WatchEvent`], [`DigestSample`],
//! [`LeaderSample`], [`SequenceSample`], [`CrossDomainAttempt`]).
//!
//! Times are nanoseconds since the start of the run. Everything is serde so that a
//! failing run can be saved as JSON and checked again offline.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifies an operation in a [`History`]: its index in [`History::ops`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OpId(pub u64);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A client issuing operations (one at a time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Process(pub u32);

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// What an operation does to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum OpKind {
    /// Sets the key to `value`.
    Write {
        /// The value written.
        value: u64,
    },
    /// Reads the key.
    Read,
}

/// How an operation ended, as the client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Outcome {
    /// Acknowledged: it took effect between invocation and completion.
    Ok {
        /// For reads, what was read (`None`: the key was absent); `None` for writes.
        read_value: Option<u64>,
    },
    /// Definitely did not happen (for example refused before reaching the log).
    Failed,
    /// Unknown (a timeout): it may take effect at any time after invocation, or never.
    Indeterminate,
}

/// One operation of a [`History`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Its identity.
    pub id: OpId,
    /// The client that issued it.
    pub process: Process,
    /// The key it acts on.
    pub key: String,
    /// Read or write.
    pub kind: OpKind,
    /// When the client issued it (ns since run start).
    pub invoke: u64,
    /// When the client saw its outcome; `None` while outstanding.
    pub complete: Option<u64>,
    /// The outcome; [`Outcome::Indeterminate`] until completed.
    pub outcome: Outcome,
}

impl Op {
    /// The completion time of an acknowledged operation: `Some` iff the outcome is
    /// [`Outcome::Ok`] and a completion time was recorded. An `Ok` without a completion
    /// time is treated as indeterminate by every checker.
    #[must_use]
    pub fn acked_at(&self) -> Option<u64> {
        match self.outcome {
            Outcome::Ok { .. } => self.complete,
            Outcome::Failed | Outcome::Indeterminate => None,
        }
    }

    /// The value this operation writes, if it is a write that may have happened (not
    /// [`Outcome::Failed`]).
    #[must_use]
    pub fn may_have_written(&self) -> Option<u64> {
        match (self.kind, self.outcome) {
            (_, Outcome::Failed) | (OpKind::Read, _) => None,
            (OpKind::Write { value }, _) => Some(value),
        }
    }
}

impl fmt::Display for Op {
    /// `#3 p1 read -> 7 [100, 250]`, `#4 p2 write 8 [120, ?) indeterminate`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ", self.id, self.process)?;
        match (self.kind, self.outcome) {
            (OpKind::Write { value }, _) => write!(f, "write {value}")?,
            (OpKind::Read, Outcome::Ok { read_value: Some(v) }) => write!(f, "read -> {v}")?,
            (OpKind::Read, Outcome::Ok { read_value: None }) => write!(f, "read -> absent")?,
            (OpKind::Read, _) => write!(f, "read")?,
        }
        match self.complete {
            Some(complete) => write!(f, " [{}, {complete}]", self.invoke)?,
            None => write!(f, " [{}, ?)", self.invoke)?,
        }
        match self.outcome {
            Outcome::Ok { .. } => Ok(()),
            Outcome::Failed => write!(f, " failed"),
            Outcome::Indeterminate => write!(f, " indeterminate"),
        }
    }
}

/// A recorded history of operations, in invocation order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Every operation; when built with [`History::invoke`], `ops[i].id == OpId(i)`.
    pub ops: Vec<Op>,
}

impl History {
    /// Records the invocation of an operation; it stays [`Outcome::Indeterminate`] until
    /// [`History::complete`]d.
    pub fn invoke(
        &mut self,
        process: Process,
        key: impl Into<String>,
        kind: OpKind,
        at: u64,
    ) -> OpId {
        let id = OpId(self.ops.len() as u64);
        self.ops.push(Op {
            id,
            process,
            key: key.into(),
            kind,
            invoke: at,
            complete: None,
            outcome: Outcome::Indeterminate,
        });
        id
    }

    /// Records the outcome of operation `id`, seen at `at`.
    ///
    /// # Panics
    /// `id` was not returned by [`History::invoke`] on this history.
    pub fn complete(&mut self, id: OpId, at: u64, outcome: Outcome) {
        let op = usize::try_from(id.0)
            .ok()
            .and_then(|index| self.ops.get_mut(index))
            .filter(|op| op.id == id)
            .unwrap_or_else(|| panic!("operation {id} was never invoked"));
        op.complete = Some(at);
        op.outcome = outcome;
    }

    /// The operations of each key, in invocation order.
    #[must_use]
    pub fn by_key(&self) -> BTreeMap<&str, Vec<&Op>> {
        let mut keys = BTreeMap::<&str, Vec<&Op>>::new();
        for op in &self.ops {
            keys.entry(op.key.as_str()).or_default().push(op);
        }
        keys
    }
}

/// One event a watcher received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// The watcher.
    pub watcher: u32,
    /// The revision of the change.
    pub revision: u64,
    /// The key that changed.
    pub key: String,
    /// The first event after a reconnect.
    pub resumed: bool,
}

/// A replica's state digest at an applied index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestSample {
    /// The replica.
    pub replica: u64,
    /// The log index its state machine had applied.
    pub applied_index: u64,
    /// The digest of its state at that index.
    pub digest: String,
}

/// A replica reporting itself leader for a term.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderSample {
    /// The replica.
    pub replica: u64,
    /// The term it leads.
    pub term: u64,
    /// When it was seen (ns since run start).
    pub at: u64,
}

/// A bundle sequence number a reader saw for a trust domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceSample {
    /// The reader (agent or client).
    pub reader: u32,
    /// The trust domain.
    pub trust_domain: String,
    /// The sequence number read.
    pub sequence: u64,
    /// When it was read (ns since run start).
    pub at: u64,
}

/// A write that claimed a trust domain its caller does not belong to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrossDomainAttempt {
    /// The attempt.
    pub op: OpId,
    /// The trust domain it claimed.
    pub trust_domain_claimed: String,
    /// Whether it was committed (it must never be).
    pub committed: bool,
}
