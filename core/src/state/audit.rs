//! The audit trail: every accepted federation write and every refusal, newest last, in
//! two bounded parts.
//!
//! Accepted changes and refusals are kept apart so that no flood of refusals can push
//! the record of accepted changes out: each part has its own capacity. Refusals are
//! coalesced — the same actor refused the same way for the same target is one record with
//! a count and the times of its first and last occurrence — and every field is capped at
//! [`MAX_AUDIT_FIELD`] bytes with a mark saying how much was cut, so that neither a large
//! request nor a stream of repeats can grow the replicated state.
//!
//! Who is recorded as the actor is decided by the caller of [`AuditTrail::record`] and
//! [`AuditTrail::record_refusal`]: always an identity the federation verified (a member's
//! cluster, a verified SPIFFE ID, `admin`) or, for callers it could not verify, their
//! source address — never a name the caller wrote.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// How many accepted changes the replicated state keeps.
pub const AUDIT_CAPACITY: usize = 2048;

/// How many (coalesced) refusals the replicated state keeps, apart from accepted changes.
pub const REFUSAL_CAPACITY: usize = 1024;

/// The longest audit field kept, in bytes; longer ones are cut with a mark.
pub const MAX_AUDIT_FIELD: usize = 256;

/// One accepted or refused write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Position in the trail, from 1.
    pub seq: u64,
    /// When it was proposed (unix seconds).
    pub at: i64,
    /// Log index it was applied at.
    pub index: u64,
    /// Who: a cluster name, `admin`, a verified SPIFFE ID, or `anonymous@ADDRESS` for a
    /// caller the federation could not verify.
    pub actor: String,
    /// What: `join`, `publish_bundle`, `remove_member`, `create_token`, `ack`, …
    pub action: String,
    /// On what: a trust domain or cluster.
    pub target: String,
    /// `None` when accepted; the reason when refused.
    pub refused: Option<String>,
}

impl AuditEvent {
    /// An event to record; `refused` is `None` when the write was accepted.
    #[must_use]
    pub fn new(
        at: i64,
        index: u64,
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
        refused: Option<String>,
    ) -> Self {
        Self {
            seq: 0,
            at,
            index,
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            refused,
        }
    }
}

/// One or more identical refusals: the same actor refused the same action on the same
/// target for the same reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Position in the trail of its last occurrence (shared with accepted events).
    pub seq: u64,
    /// First occurrence (unix seconds).
    pub first_at: i64,
    /// Last occurrence (unix seconds).
    pub last_at: i64,
    /// Log index its last occurrence was recorded at.
    pub index: u64,
    /// Who (see [`AuditEvent::actor`]).
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// Why it was refused.
    pub reason: String,
    /// How many times.
    pub count: u64,
}

/// Refusals reported by a replica for the audit trail, counted before they were
/// proposed (see `Command::RecordRefusals`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalReport {
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// Why.
    pub reason: String,
    /// How many times since the last report (at least 1).
    pub count: u64,
    /// First occurrence (unix seconds).
    pub first_at: i64,
    /// Last occurrence (unix seconds).
    pub last_at: i64,
}

/// The bounded, two-part audit trail.
///
/// Encoded in two places of a snapshot: the accepted events where the trail always was
/// (format 3 and before), the refusals after the staged restore (format 4).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditTrail {
    next_seq: u64,
    /// Accepted changes (and, in states decoded from format 3 or older snapshots until
    /// [`AuditTrail::separate_refusals`] ran, refusals too).
    events: VecDeque<AuditEvent>,
    /// Coalesced refusals, oldest first.
    #[serde(skip)]
    refusals: VecDeque<Refusal>,
}

/// Cuts `text` to at most [`MAX_AUDIT_FIELD`] bytes at a character boundary, marking the
/// cut with how many bytes were dropped.
#[must_use]
pub fn cap_field(mut text: String) -> String {
    if text.len() <= MAX_AUDIT_FIELD {
        return text;
    }
    let dropped_total = text.len();
    // Room for the mark: "…[+NNNNNNNNNN bytes]" is at most 32 bytes.
    let mut keep = MAX_AUDIT_FIELD - 32;
    while !text.is_char_boundary(keep) {
        keep -= 1;
    }
    text.truncate(keep);
    text.push_str(&format!("…[+{} bytes]", dropped_total - keep));
    text
}

impl AuditTrail {
    /// Appends an event: an accepted change to the accepted part (dropping the oldest
    /// beyond [`AUDIT_CAPACITY`]), a refusal coalesced into the refusal part.
    pub fn record(&mut self, event: AuditEvent) {
        match event.refused {
            Some(reason) => self.record_refusal(
                RefusalReport {
                    actor: event.actor,
                    action: event.action,
                    target: event.target,
                    reason,
                    count: 1,
                    first_at: event.at,
                    last_at: event.at,
                },
                event.index,
            ),
            None => {
                self.next_seq = self.next_seq.saturating_add(1);
                let event = AuditEvent {
                    seq: self.next_seq,
                    actor: cap_field(event.actor),
                    action: cap_field(event.action),
                    target: cap_field(event.target),
                    ..event
                };
                tracing::info!(target: "audit", actor = %event.actor, action = %event.action, target_name = %event.target, "accepted");
                self.events.push_back(event);
                while self.events.len() > AUDIT_CAPACITY {
                    self.events.pop_front();
                }
            }
        }
    }

    /// Records `report.count` refusals at log index `index`: added to an identical
    /// refusal already in the trail (which becomes the newest), or as a new one, dropping
    /// the oldest refusal beyond [`REFUSAL_CAPACITY`].
    pub fn record_refusal(&mut self, report: RefusalReport, index: u64) {
        let actor = cap_field(report.actor);
        let action = cap_field(report.action);
        let target = cap_field(report.target);
        let reason = cap_field(report.reason);
        let count = report.count.max(1);
        self.next_seq = self.next_seq.saturating_add(1);
        let seq = self.next_seq;
        let found = self.refusals.iter().rposition(|r| {
            r.actor == actor && r.action == action && r.target == target && r.reason == reason
        });
        let refusal = match found.and_then(|i| self.refusals.remove(i)) {
            Some(mut known) => {
                known.count = known.count.saturating_add(count);
                known.last_at = known.last_at.max(report.last_at);
                known.first_at = known.first_at.min(report.first_at);
                known.index = index;
                known.seq = seq;
                known
            }
            None => Refusal {
                seq,
                first_at: report.first_at,
                last_at: report.last_at,
                index,
                actor,
                action,
                target,
                reason,
                count,
            },
        };
        // At debug: every replica applies this, again when it replays its log, and the
        // replica that decided a refusal before the log has logged it at WARN already.
        tracing::debug!(target: "audit", actor = %refusal.actor, action = %refusal.action, target_name = %refusal.target, reason = %refusal.reason, count, "refusal recorded");
        self.refusals.push_back(refusal);
        while self.refusals.len() > REFUSAL_CAPACITY {
            self.refusals.pop_front();
        }
    }

    /// The newest `limit` accepted changes, oldest first.
    #[must_use]
    pub fn newest(&self, limit: usize) -> Vec<AuditEvent> {
        let skip = self.events.len().saturating_sub(limit);
        self.events.iter().skip(skip).cloned().collect()
    }

    /// The newest `limit` refusals, oldest first.
    #[must_use]
    pub fn newest_refusals(&self, limit: usize) -> Vec<Refusal> {
        let skip = self.refusals.len().saturating_sub(limit);
        self.refusals.iter().skip(skip).cloned().collect()
    }

    /// Appends `other`'s accepted changes and refusals after this trail's, in `other`'s
    /// order (a restore keeps the running group's trail after the restored one).
    pub fn append(&mut self, other: &Self) {
        let mut accepted = other.events.iter().map(|e| (e.seq, Some(e), None));
        let mut refused = other.refusals.iter().map(|r| (r.seq, None, Some(r)));
        let mut merged: Vec<_> = accepted.by_ref().chain(refused.by_ref()).collect();
        merged.sort_by_key(|(seq, _, _)| *seq);
        for (_, event, refusal) in merged {
            if let Some(event) = event {
                self.record(AuditEvent { seq: 0, ..event.clone() });
            }
            if let Some(r) = refusal {
                self.record_refusal(
                    RefusalReport {
                        actor: r.actor.clone(),
                        action: r.action.clone(),
                        target: r.target.clone(),
                        reason: r.reason.clone(),
                        count: r.count,
                        first_at: r.first_at,
                        last_at: r.last_at,
                    },
                    r.index,
                );
            }
        }
    }

    /// Moves refused events out of the accepted part into the refusal part: a trail
    /// decoded from a snapshot of format 3 or older held both in one list.
    pub(super) fn separate_refusals(&mut self) {
        if self.events.iter().all(|e| e.refused.is_none()) {
            return;
        }
        let events = std::mem::take(&mut self.events);
        let next_seq = self.next_seq;
        for event in events {
            match event.refused.clone() {
                None => self.events.push_back(event),
                Some(reason) => self.refusals.push_back(Refusal {
                    seq: event.seq,
                    first_at: event.at,
                    last_at: event.at,
                    index: event.index,
                    actor: cap_field(event.actor),
                    action: cap_field(event.action),
                    target: cap_field(event.target),
                    reason: cap_field(reason),
                    count: 1,
                }),
            }
        }
        self.next_seq = next_seq;
    }

    /// The refusal part, for the snapshot encoding.
    pub(super) fn refusals(&self) -> &VecDeque<Refusal> {
        &self.refusals
    }

    /// Sets the refusal part, from the snapshot encoding.
    pub(super) fn set_refusals(&mut self, refusals: VecDeque<Refusal>) {
        self.refusals = refusals;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(actor: &str, reason: &str, at: i64) -> AuditEvent {
        AuditEvent::new(at, 1, actor, "join", "a.test", Some(reason.to_string()))
    }

    #[test]
    fn a_flood_of_refusals_never_evicts_accepted_changes() {
        let mut trail = AuditTrail::default();
        trail.record(AuditEvent::new(1, 1, "admin", "create_token", "a (a.test)", None));
        for i in 0..(REFUSAL_CAPACITY * 3) {
            trail.record(refusal(&format!("anonymous@127.0.0.{}", i % 250), &format!("r{i}"), 2));
        }
        assert_eq!(trail.newest(10).len(), 1, "the accepted change is still there");
        assert_eq!(trail.newest_refusals(usize::MAX).len(), REFUSAL_CAPACITY);
    }

    #[test]
    fn identical_refusals_are_coalesced_into_a_count() {
        let mut trail = AuditTrail::default();
        for at in 10..110 {
            trail.record(refusal("anonymous@127.0.0.2", "unknown token", at));
        }
        trail.record(refusal("anonymous@127.0.0.3", "unknown token", 200));
        trail.record(refusal("anonymous@127.0.0.2", "unknown token", 300));
        let refusals = trail.newest_refusals(10);
        assert_eq!(refusals.len(), 2);
        let newest = &refusals[1];
        assert_eq!((newest.actor.as_str(), newest.count), ("anonymous@127.0.0.2", 101));
        assert_eq!((newest.first_at, newest.last_at), (10, 300));
        assert!(newest.seq > refusals[0].seq, "a repeat makes the record the newest");
    }

    #[test]
    fn long_fields_are_cut_with_a_mark() {
        let mut trail = AuditTrail::default();
        let huge = "x".repeat(1 << 20);
        trail.record(AuditEvent::new(1, 1, huge.clone(), "export_service", huge.clone(), None));
        trail.record(refusal(&huge, &huge, 1));
        let accepted = &trail.newest(1)[0];
        let refused = &trail.newest_refusals(1)[0];
        for field in [&accepted.actor, &accepted.target, &refused.actor, &refused.reason] {
            assert!(field.len() <= MAX_AUDIT_FIELD, "{}", field.len());
            assert!(field.ends_with(&format!("…[+{} bytes]", (1 << 20) - (MAX_AUDIT_FIELD - 32))));
        }
    }

    #[test]
    fn cutting_respects_character_boundaries() {
        for len in [1, 2, 3, 4] {
            let text =
                "é".repeat(300).chars().take(200).collect::<String>() + &"€".repeat(len * 40);
            let cut = cap_field(text);
            assert!(cut.len() <= MAX_AUDIT_FIELD);
        }
        assert_eq!(cap_field("short".into()), "short");
    }

    #[test]
    fn refused_events_of_an_old_trail_move_to_the_refusal_part() {
        let mut old = AuditTrail { next_seq: 3, ..AuditTrail::default() };
        old.events
            .push_back(AuditEvent { seq: 1, ..AuditEvent::new(1, 1, "admin", "x", "t", None) });
        old.events.push_back(AuditEvent { seq: 2, ..refusal("b", "why", 2) });
        old.events
            .push_back(AuditEvent { seq: 3, ..AuditEvent::new(3, 3, "admin", "y", "t", None) });
        old.separate_refusals();
        assert_eq!(old.newest(10).iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(old.newest_refusals(10)[0].seq, 2);
        old.record(AuditEvent::new(4, 4, "admin", "z", "t", None));
        assert_eq!(old.newest(1)[0].seq, 4, "numbering goes on");
    }

    proptest::proptest! {
        #[test]
        fn capped_fields_are_bounded_and_short_ones_kept(text in ".{0,400}") {
            let cut = cap_field(text.clone());
            proptest::prop_assert!(cut.len() <= MAX_AUDIT_FIELD);
            if text.len() <= MAX_AUDIT_FIELD {
                proptest::prop_assert_eq!(cut, text);
            } else {
                proptest::prop_assert!(text.starts_with(cut.split('…').next().unwrap_or("")));
            }
        }
    }
}
