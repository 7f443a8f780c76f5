//! The audit trail: every accepted and refused federation write, newest last, bounded.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// How many audit events the replicated state keeps.
pub const AUDIT_CAPACITY: usize = 2048;

/// One accepted or refused write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Position in the trail, from 1.
    pub seq: u64,
    /// When it was proposed (unix seconds).
    pub at: i64,
    /// Log index it was applied at.
    pub index: u64,
    /// Who: a cluster name, `admin`, or the SPIFFE ID of an unknown caller.
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

/// A bounded trail of audit events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditTrail {
    next_seq: u64,
    events: VecDeque<AuditEvent>,
}

impl AuditTrail {
    /// Appends an event, dropping the oldest beyond [`AUDIT_CAPACITY`].
    pub fn record(&mut self, mut event: AuditEvent) {
        self.next_seq += 1;
        event.seq = self.next_seq;
        if event.refused.is_some() {
            tracing::warn!(target: "audit", actor = %event.actor, action = %event.action, target_name = %event.target, reason = event.refused.as_deref().unwrap_or(""), "refused");
        } else {
            tracing::info!(target: "audit", actor = %event.actor, action = %event.action, target_name = %event.target, "accepted");
        }
        self.events.push_back(event);
        while self.events.len() > AUDIT_CAPACITY {
            self.events.pop_front();
        }
    }

    /// The newest `limit` events, oldest first.
    #[must_use]
    pub fn newest(&self, limit: usize) -> Vec<AuditEvent> {
        let skip = self.events.len().saturating_sub(limit);
        self.events.iter().skip(skip).cloned().collect()
    }
}
