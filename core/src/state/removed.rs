//! Trust domains of removed members, kept for a while so that the bundle endpoint can
//! answer for them.
//!
//! A SPIFFE bundle consumer (a SPIRE server federating through Federator, go-spiffe's
//! `federation.FetchBundle`) keeps the last bundle it fetched when the endpoint fails: a
//! `404` for a removed member would leave its CA trusted everywhere until each consumer's
//! operator deletes the relationship by hand. So for a retention period the endpoint
//! serves a removed trust domain as a bundle with no keys and a higher sequence: a
//! consumer replaces what it held with nothing, and stops trusting the removed CA within
//! its refresh hint. Joining the trust domain again ends the record.

use serde::{Deserialize, Serialize};

use super::FederationState;

/// How long a removed member's trust domain is served as an empty bundle, in seconds:
/// long enough for every consumer that polls at all (the refresh hint is minutes) to have
/// fetched it, including one that was down for days.
pub const REMOVED_RETENTION_SECS: i64 = 7 * 86_400;

/// Most removed trust domains kept; the oldest removal is forgotten first.
pub const MAX_REMOVED_DOMAINS: usize = 1024;

/// A removed member's trust domain, served as an empty bundle until `serve_until`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedDomain {
    /// The trust domain.
    pub trust_domain: String,
    /// The member that held it.
    pub cluster: String,
    /// The sequence of the empty bundle: one past the member's last.
    pub sequence: u64,
    /// When the member was removed (unix seconds).
    pub removed_at: i64,
    /// Until when the empty bundle is served (unix seconds).
    pub serve_until: i64,
}

impl RemovedDomain {
    /// Whether the record still stands at `now` (unix seconds).
    #[must_use]
    pub fn serving(&self, now: i64) -> bool {
        now < self.serve_until
    }

    /// The SPIFFE bundle document served for it: no keys, its sequence, `refresh_hint`.
    #[must_use]
    pub fn to_served_json(&self, refresh_hint_secs: u64) -> String {
        format!(
            "{{\"keys\":[],\"spiffe_sequence\":{},\"spiffe_refresh_hint\":{refresh_hint_secs}}}",
            self.sequence
        )
    }
}

impl FederationState {
    /// Records `record`, forgetting the records that ended by its removal time and, past
    /// [`MAX_REMOVED_DOMAINS`], the oldest.
    pub(super) fn record_removed(&mut self, record: RemovedDomain) {
        let now = record.removed_at;
        self.removed.retain(|_, r| r.serving(now));
        self.removed.insert(record.trust_domain.clone(), record);
        while self.removed.len() > MAX_REMOVED_DOMAINS {
            let oldest = self
                .removed
                .values()
                .min_by_key(|r| (r.removed_at, r.trust_domain.clone()))
                .map(|r| r.trust_domain.clone());
            let Some(oldest) = oldest else { break };
            self.removed.remove(&oldest);
        }
    }

    /// The removed trust domain `td` if it is still served at `now`.
    #[must_use]
    pub fn removed_domain(&self, td: &str, now: i64) -> Option<&RemovedDomain> {
        self.removed.get(td).filter(|r| r.serving(now))
    }
}

#[cfg(test)]
mod tests {
    use federator_raft::StateMachine as _;

    use super::*;
    use crate::state::Command;
    use crate::state::test_support::{Cluster, apply, joined, now};

    fn remove(state: &mut FederationState, index: u64, cluster: &str, at: i64, until: i64) {
        let command = Command::RemoveMemberServingEmpty {
            cluster: cluster.into(),
            actor: "admin".into(),
            now: at,
            serve_until: until,
        };
        apply(state, index, command).expect("removed");
    }

    #[test]
    fn a_removed_trust_domain_is_served_empty_one_sequence_on_until_its_time() {
        let a = Cluster::new("a.test");
        let b = Cluster::new("b.test");
        let mut state = joined(&[("a", &a), ("b", &b)]);
        let last = state.bundles["b.test"].bundle.sequence;
        let at = now();
        remove(&mut state, 20, "b", at, at + 60);
        assert!(!state.bundles.contains_key("b.test"), "the member's bundle is gone");
        let removed = state.removed_domain("b.test", at).expect("served");
        assert_eq!((removed.cluster.as_str(), removed.sequence), ("b", last + 1));
        let document: serde_json::Value =
            serde_json::from_str(&removed.to_served_json(300)).expect("JSON");
        assert_eq!(
            document,
            serde_json::json!({"keys": [], "spiffe_sequence": last + 1, "spiffe_refresh_hint": 300})
        );
        assert!(state.removed_domain("b.test", at + 59).is_some());
        assert!(state.removed_domain("b.test", at + 60).is_none(), "ends at serve_until");
        assert!(state.removed_domain("a.test", at).is_none(), "a member is not removed");
    }

    #[test]
    fn the_plain_removal_keeps_no_record() {
        let a = Cluster::new("a.test");
        let mut state = joined(&[("a", &a)]);
        let command =
            Command::RemoveMember { cluster: "a".into(), actor: "admin".into(), now: now() };
        apply(&mut state, 20, command).expect("removed");
        assert!(state.removed.is_empty(), "builds before the gate applied it so");
    }

    #[test]
    fn joining_again_ends_the_record_and_a_removal_forgets_ended_ones() {
        let a = Cluster::new("a.test");
        let b = Cluster::new("b.test");
        let mut state = joined(&[("a", &a), ("b", &b)]);
        let at = now();
        remove(&mut state, 20, "a", at, at + 10);
        assert!(state.removed_domain("a.test", at).is_some());
        let hash = "hash-again".to_string();
        apply(
            &mut state,
            21,
            Command::CreateToken {
                secret_hash: hash.clone(),
                cluster: "a".into(),
                trust_domain: "a.test".into(),
                expires_at: at + 3600,
                now: at,
            },
        )
        .expect("token");
        apply(
            &mut state,
            22,
            Command::Join {
                secret_hash: hash,
                cluster: "a".into(),
                trust_domain: "a.test".into(),
                agent_id: "spiffe://a.test/agent".into(),
                bundle_json: a.bundle(1),
                now: at,
            },
        )
        .expect("join again");
        assert!(state.removed.is_empty(), "a member's trust domain is its own again");
        // A record that ended is forgotten by the next removal.
        remove(&mut state, 23, "a", at, at + 10);
        remove(&mut state, 24, "b", at + 11, at + 100);
        assert_eq!(state.removed.keys().collect::<Vec<_>>(), ["b.test"]);
    }

    #[test]
    fn records_are_bounded_oldest_removal_first() {
        let mut state = FederationState::default();
        let at = now();
        for i in 0..=MAX_REMOVED_DOMAINS {
            let offset = i64::try_from(i).expect("small");
            state.record_removed(RemovedDomain {
                trust_domain: format!("td-{i:05}.test"),
                cluster: format!("c{i}"),
                sequence: 1,
                removed_at: at + offset,
                serve_until: at + 1_000_000,
            });
        }
        assert_eq!(state.removed.len(), MAX_REMOVED_DOMAINS);
        assert!(!state.removed.contains_key("td-00000.test"), "the oldest went");
        assert!(state.removed.contains_key(&format!("td-{MAX_REMOVED_DOMAINS:05}.test")));
    }

    #[test]
    fn snapshots_carry_the_records_and_are_format_4_without_any() {
        let a = Cluster::new("a.test");
        let b = Cluster::new("b.test");
        let mut state = joined(&[("a", &a), ("b", &b)]);
        let plain = state.snapshot();
        assert_eq!(plain[0], 4, "nothing removed: the format the build before reads");
        let at = now();
        remove(&mut state, 20, "b", at, at + 60);
        let bytes = state.snapshot();
        assert_eq!(bytes[0], 5);
        let mut restored = FederationState::default();
        restored.restore(&bytes).expect("format 5 decodes");
        assert_eq!(restored.removed, state.removed);
        assert_eq!(restored.digest(), state.digest());
        let mut from_plain = FederationState::default();
        from_plain.restore(&plain).expect("format 4 decodes");
        assert!(from_plain.removed.is_empty());
        // Format 4 with bytes after its end is not a state.
        let mut trailing = plain.clone();
        trailing.push(0);
        assert!(FederationState::default().restore(&trailing).is_err());
    }
}
