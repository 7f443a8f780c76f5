//! What a replica checks before it proposes a command: the state machine's own rules,
//! applied read-only to the replica's current state.
//!
//! Nothing is proposed before it is authorized and validated: a command that the state
//! machine would refuse costs no log entry when the proposing replica can tell so
//! already. The state machine checks again when it applies the command (the replica's
//! state may be behind, or another write may come first), so these checks add a refusal
//! earlier and never an acceptance.

use super::{Command, CommandError, FederationState, MAX_LEASE_TTL_SECS, MIN_LEASE_TTL_SECS};

/// What the check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    /// Propose it.
    Propose,
    /// It would change nothing (e.g. an acknowledgement already stored): answer success
    /// without proposing.
    NoChange,
}

impl FederationState {
    /// Checks `command` as the state machine would apply it now, without changing
    /// anything.
    ///
    /// # Errors
    /// The refusal the state machine would answer.
    pub fn check(&self, command: &Command) -> Result<Checked, CommandError> {
        match command {
            Command::CreateToken { cluster, trust_domain, expires_at, now, .. } => {
                crate::token::validate_cluster_name(cluster)
                    .map_err(|e| CommandError::invalid("cluster", &e.to_string()))?;
                crate::identity::validate_trust_domain(trust_domain)
                    .map_err(|e| CommandError::invalid("trust_domain", &e.to_string()))?;
                if expires_at <= now {
                    return Err(CommandError::invalid("ttl", "must be positive"));
                }
                if let Some(other) = self.member_by_trust_domain(trust_domain)
                    && other.cluster != *cluster
                {
                    return Err(CommandError::AlreadyExists(format!(
                        "trust domain {trust_domain} is held by cluster {}; a trust domain \
                         belongs to one member",
                        other.cluster
                    )));
                }
            }
            Command::RevokeToken { secret_hash, .. } => {
                self.check_revoke_token(secret_hash)?;
            }
            Command::Join { secret_hash, cluster, trust_domain, agent_id, bundle_json, now } => {
                self.try_join(secret_hash, cluster, trust_domain, agent_id, bundle_json, *now)?;
            }
            Command::PublishBundle { cluster, bundle_json, agent_chain, force, now } => {
                let td = self.members.get(cluster).map(|m| m.trust_domain.as_str());
                self.try_publish(cluster, td, bundle_json, agent_chain, *force, *now)?;
            }
            Command::AckBundle { cluster, trust_domain, sequence, .. }
                if self.check_ack(cluster, trust_domain, *sequence)? =>
            {
                return Ok(Checked::NoChange);
            }
            Command::ExportService { cluster, export, .. } => {
                self.check_export(cluster, export)?;
            }
            Command::UnexportService { cluster, key, .. }
                if !self.services.get(key).is_some_and(|s| s.exports.contains_key(cluster)) =>
            {
                return Err(CommandError::NotFound(format!(
                    "export of {key} by cluster {cluster}"
                )));
            }
            Command::GrantLease { cluster, ttl_secs, .. } => {
                if !self.members.contains_key(cluster) {
                    return Err(CommandError::PermissionDenied(format!(
                        "{cluster} is not a member"
                    )));
                }
                if !(MIN_LEASE_TTL_SECS..=MAX_LEASE_TTL_SECS).contains(ttl_secs) {
                    return Err(CommandError::invalid(
                        "ttl_seconds",
                        &format!("must be {MIN_LEASE_TTL_SECS} to {MAX_LEASE_TTL_SECS}"),
                    ));
                }
            }
            Command::RevokeLease { cluster, lease_id, .. } => match self.leases.get(cluster) {
                Some(lease) if lease.id == *lease_id => {
                    if lease.ended_at.is_some() {
                        return Ok(Checked::NoChange);
                    }
                }
                _ => {
                    return Err(CommandError::NotFound(format!(
                        "lease {lease_id} of cluster {cluster}"
                    )));
                }
            },
            Command::UpdateMemberPolicy { cluster, update, .. } => {
                Self::check_policy_update(cluster, update)?;
            }
            _ => {}
        }
        Ok(Checked::Propose)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_support::{Cluster, apply, joined, now};

    #[test]
    fn an_unknown_token_is_refused_before_the_log() {
        let a = Cluster::new("a.test");
        let join = Command::Join {
            secret_hash: "not-a-token-hash".into(),
            cluster: "a".into(),
            trust_domain: a.td.clone(),
            agent_id: "spiffe://a.test/agent".into(),
            bundle_json: a.bundle(1),
            now: now(),
        };
        let err = FederationState::default().check(&join).expect_err("unknown token");
        assert!(matches!(err, CommandError::Token(_)), "{err}");
    }

    #[test]
    fn a_stored_acknowledgement_changes_nothing() {
        let a = Cluster::new("a.test");
        let b = Cluster::new("b.test");
        let mut state = joined(&[("a", &a), ("b", &b)]);
        let ack = |sequence| Command::AckBundle {
            cluster: "b".into(),
            trust_domain: a.td.clone(),
            sequence,
            now: now(),
        };
        assert_eq!(state.check(&ack(1)), Ok(Checked::Propose));
        apply(&mut state, 100, ack(1)).expect("ack");
        assert_eq!(state.check(&ack(1)), Ok(Checked::NoChange));
        assert!(state.check(&ack(99)).is_err(), "newer than the stored bundle");
    }

    #[test]
    fn a_trust_domain_held_by_another_member_gets_no_token() {
        let a = Cluster::new("a.test");
        let mut state = joined(&[("a", &a)]);
        let token = |cluster: &str| Command::CreateToken {
            secret_hash: format!("h-{cluster}"),
            cluster: cluster.into(),
            trust_domain: a.td.clone(),
            expires_at: now() + 60,
            now: now(),
        };
        let err = state.check(&token("intruder")).expect_err("held by a");
        assert!(err.to_string().contains("held by cluster a"), "{err}");
        assert!(apply(&mut state, 10, token("intruder")).is_err(), "the state machine agrees");
        assert_eq!(state.check(&token("a")), Ok(Checked::Propose), "rejoin of the same cluster");
    }

    #[test]
    fn another_members_lease_cannot_be_revoked() {
        let a = Cluster::new("a.test");
        let state = joined(&[("a", &a)]);
        let revoke = Command::RevokeLease { cluster: "b".into(), lease_id: 1, now: now() };
        assert!(state.check(&revoke).is_err());
    }
}
