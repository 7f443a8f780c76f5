//! The trust part of the federation state: members, their trust bundles, join tokens and
//! acknowledgements, and the rules that apply commands to them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::audit::AuditEvent;
use super::events::ChangeKind;
use super::{Applied, CommandError, CommandResult, FederationState};
use crate::bundle::{TrustBundle, ValidationPolicy, parse_spiffe_bundle};

/// How long a used or expired token is kept (to answer "already used" rather than
/// "unknown"), in seconds.
const TOKEN_RETENTION_SECS: i64 = 7 * 86_400;

/// A member cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Cluster name (DNS label), unique in the federation.
    pub cluster: String,
    /// The cluster's trust domain, bound at join.
    pub trust_domain: String,
    /// SPIFFE ID of the cluster's agent.
    pub agent_id: String,
    /// When it joined (unix seconds).
    pub joined_at: i64,
    /// Log index of the join.
    pub joined_index: u64,
}

/// A member's bundle as stored, with who has applied which sequence of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBundle {
    /// The validated bundle.
    pub bundle: TrustBundle,
    /// Hex SHA-256 of its SPIFFE encoding.
    pub digest: String,
    /// When it was published (unix seconds).
    pub updated_at: i64,
    /// Revision of the publication.
    pub revision: u64,
    /// Per member cluster: the newest sequence it has applied.
    pub acks: BTreeMap<String, BundleAck>,
}

/// A member's acknowledgement of a foreign bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleAck {
    /// Sequence applied.
    pub sequence: u64,
    /// When (unix seconds).
    pub at: i64,
}

/// A join token as stored: only the hash of its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Cluster it admits.
    pub cluster: String,
    /// Trust domain it binds.
    pub trust_domain: String,
    /// Expiry (unix seconds).
    pub expires_at: i64,
    /// When it was created.
    pub created_at: i64,
    /// When it was used, if it was.
    pub used_at: Option<i64>,
}

/// How a token is named to operators: the first 12 hex digits of its secret's hash
/// (the hash of a 256-bit random secret; the secret is never stored).
#[must_use]
pub fn short_hash(secret_hash: &str) -> String {
    secret_hash.chars().take(TOKEN_ID_LEN).collect()
}

/// Hex digits of a token id ([`short_hash`]).
pub const TOKEN_ID_LEN: usize = 12;

// === impl FederationState ===

impl FederationState {
    /// The member whose trust domain is `td`.
    #[must_use]
    pub fn member_by_trust_domain(&self, td: &str) -> Option<&Member> {
        self.members.values().find(|m| m.trust_domain == td)
    }

    /// The revision of the join that a retried [`Command::Join`] already made: its answer
    /// was lost, or its outcome was unknown across a leader change, and it committed. It
    /// is that join when its token was used by it: the member holds the token's cluster
    /// and trust domain, the same agent SPIFFE ID, joined when the token was used, and
    /// its stored bundle is the one presented (`bundle_digest`). Read-only: a retry is
    /// answered, never applied again. `None` for anything else (a reuse stays refused).
    #[must_use]
    pub fn joined_by(
        &self,
        secret_hash: &str,
        cluster: &str,
        trust_domain: &str,
        agent_id: &str,
        bundle_digest: &str,
    ) -> Option<u64> {
        let token = self.tokens.get(secret_hash)?;
        let member = self.members.get(cluster)?;
        let stored = self.bundles.get(trust_domain)?;
        let same = token.cluster == cluster
            && token.trust_domain == trust_domain
            && token.used_at == Some(member.joined_at)
            && member.trust_domain == trust_domain
            && member.agent_id == agent_id
            && stored.digest == bundle_digest;
        same.then_some(stored.revision)
    }

    pub(super) fn apply_create_token(
        &mut self,
        secret_hash: String,
        cluster: String,
        trust_domain: String,
        expires_at: i64,
        now: i64,
    ) -> CommandResult {
        crate::token::validate_cluster_name(&cluster)
            .map_err(|e| CommandError::invalid("cluster", &e.to_string()))?;
        crate::identity::validate_trust_domain(&trust_domain)
            .map_err(|e| CommandError::invalid("trust_domain", &e.to_string()))?;
        if expires_at <= now {
            return Err(CommandError::invalid("ttl", "must be positive"));
        }
        if let Some(other) = self.member_by_trust_domain(&trust_domain)
            && other.cluster != cluster
        {
            return Err(CommandError::AlreadyExists(format!(
                "trust domain {trust_domain} is held by cluster {}; a trust domain belongs to one \
                 member",
                other.cluster
            )));
        }
        if self.tokens.contains_key(&secret_hash) {
            return Err(CommandError::AlreadyExists("a token with this secret exists".into()));
        }
        self.tokens
            .retain(|_, t| t.expires_at.max(t.used_at.unwrap_or(0)) + TOKEN_RETENTION_SECS > now);
        self.tokens.insert(
            secret_hash,
            TokenRecord { cluster, trust_domain, expires_at, created_at: now, used_at: None },
        );
        Ok(Applied::Done)
    }

    /// The token with this secret hash, if it may be revoked: it exists and was not used.
    pub(super) fn check_revoke_token(
        &self,
        secret_hash: &str,
    ) -> Result<&TokenRecord, CommandError> {
        let token = self.tokens.get(secret_hash).ok_or_else(|| {
            CommandError::NotFound(
                "token (never created, revoked already, or expired long ago)".into(),
            )
        })?;
        if let Some(used_at) = token.used_at {
            return Err(CommandError::invalid(
                "token",
                &format!(
                    "used at {used_at} by cluster {}: revoking it changes nothing; remove the \
                     member instead (`federator cluster remove {}`)",
                    token.cluster, token.cluster
                ),
            ));
        }
        Ok(token)
    }

    pub(super) fn apply_revoke_token(
        &mut self,
        index: u64,
        secret_hash: &str,
        actor: String,
        now: i64,
    ) -> CommandResult {
        let checked = self
            .check_revoke_token(secret_hash)
            .map(|t| format!("{} ({})", t.cluster, t.trust_domain));
        let (target, refused) = match &checked {
            Ok(target) => (target.clone(), None),
            Err(error) => (short_hash(secret_hash), Some(error.to_string())),
        };
        self.audit.record(AuditEvent::new(now, index, actor, "revoke_token", target, refused));
        checked?;
        self.tokens.remove(secret_hash);
        Ok(Applied::Done)
    }

    #[expect(clippy::too_many_arguments, reason = "the fields of one command")]
    pub(super) fn apply_join(
        &mut self,
        index: u64,
        secret_hash: &str,
        cluster: String,
        trust_domain: String,
        agent_id: String,
        bundle_json: &[u8],
        now: i64,
    ) -> CommandResult {
        let result =
            self.try_join(secret_hash, &cluster, &trust_domain, &agent_id, bundle_json, now);
        let refused = result.as_ref().err().map(ToString::to_string);
        self.audit.record(AuditEvent::new(
            now,
            index,
            cluster.clone(),
            "join",
            trust_domain.clone(),
            refused,
        ));
        let bundle = result?;
        if let Some(token) = self.tokens.get_mut(secret_hash) {
            token.used_at = Some(now);
        }
        self.members.insert(
            cluster.clone(),
            Member {
                cluster,
                trust_domain: trust_domain.clone(),
                agent_id,
                joined_at: now,
                joined_index: index,
            },
        );
        // A trust domain that joins again is its member's, not served empty any more.
        self.removed.remove(&trust_domain);
        let revision =
            self.changes.push(ChangeKind::BundlePut { trust_domain: trust_domain.clone() });
        let sequence = bundle.sequence;
        self.bundles.insert(
            trust_domain,
            StoredBundle {
                digest: bundle.digest(),
                bundle,
                updated_at: now,
                revision,
                acks: BTreeMap::new(),
            },
        );
        Ok(Applied::Bundle { sequence, revision })
    }

    pub(super) fn try_join(
        &self,
        secret_hash: &str,
        cluster: &str,
        trust_domain: &str,
        agent_id: &str,
        bundle_json: &[u8],
        now: i64,
    ) -> Result<TrustBundle, CommandError> {
        let token = self.tokens.get(secret_hash).ok_or_else(|| {
            CommandError::Token(
                "unknown token (never created here, revoked, or expired long ago)".into(),
            )
        })?;
        if let Some(used_at) = token.used_at {
            return Err(CommandError::Token(format!(
                "already used at {used_at}; tokens are single-use"
            )));
        }
        if token.expires_at <= now {
            return Err(CommandError::Token(format!("expired at {}", token.expires_at)));
        }
        if token.cluster != cluster || token.trust_domain != trust_domain {
            return Err(CommandError::Token(format!(
                "issued for cluster {} with trust domain {}, not {cluster} with {trust_domain}",
                token.cluster, token.trust_domain
            )));
        }
        if self.members.contains_key(cluster) {
            return Err(CommandError::AlreadyExists(format!(
                "cluster {cluster} is already a member; remove it first"
            )));
        }
        if let Some(other) = self.member_by_trust_domain(trust_domain) {
            return Err(CommandError::AlreadyExists(format!(
                "trust domain {trust_domain} is already bound to cluster {}",
                other.cluster
            )));
        }
        if !agent_id.starts_with(&format!("spiffe://{trust_domain}/")) {
            return Err(CommandError::PermissionDenied(format!(
                "agent {agent_id} is not in trust domain {trust_domain}"
            )));
        }
        let bundle = parse_spiffe_bundle(trust_domain, bundle_json, &ValidationPolicy::at(now))
            .map_err(CommandError::Bundle)?;
        self.check_keys_unique(&bundle)?;
        Ok(bundle)
    }

    /// Refuses a bundle holding a key that another trust domain's bundle holds.
    fn check_keys_unique(&self, bundle: &TrustBundle) -> Result<(), CommandError> {
        for (td, stored) in &self.bundles {
            if *td == bundle.trust_domain {
                continue;
            }
            for fingerprint in bundle.fingerprints() {
                if stored.bundle.fingerprints().any(|f| f == fingerprint) {
                    return Err(CommandError::Bundle(crate::bundle::BundleError::Invalid {
                        field: "keys".into(),
                        rule: format!(
                            "key {fingerprint} is already in the bundle of trust domain {td}"
                        ),
                    }));
                }
            }
        }
        Ok(())
    }

    pub(super) fn apply_publish_bundle(
        &mut self,
        index: u64,
        cluster: &str,
        bundle_json: &[u8],
        agent_chain: &[Vec<u8>],
        force: bool,
        now: i64,
    ) -> CommandResult {
        let td = self.members.get(cluster).map(|m| m.trust_domain.clone());
        let result = self.try_publish(cluster, td.as_deref(), bundle_json, agent_chain, force, now);
        self.audit.record(AuditEvent::new(
            now,
            index,
            cluster.to_string(),
            if force { "publish_bundle (forced)" } else { "publish_bundle" },
            td.clone().unwrap_or_default(),
            result.as_ref().err().map(ToString::to_string),
        ));
        let bundle = result?;
        let td = bundle.trust_domain.clone();
        let revision = self.changes.push(ChangeKind::BundlePut { trust_domain: td.clone() });
        let sequence = bundle.sequence;
        let acks = self.bundles.remove(&td).map(|b| b.acks).unwrap_or_default();
        self.bundles.insert(
            td,
            StoredBundle { digest: bundle.digest(), bundle, updated_at: now, revision, acks },
        );
        Ok(Applied::Bundle { sequence, revision })
    }

    pub(super) fn try_publish(
        &self,
        cluster: &str,
        td: Option<&str>,
        bundle_json: &[u8],
        agent_chain: &[Vec<u8>],
        force: bool,
        now: i64,
    ) -> Result<TrustBundle, CommandError> {
        let td =
            td.ok_or_else(|| CommandError::PermissionDenied(format!("{cluster} is not a member")))?;
        let bundle = parse_spiffe_bundle(td, bundle_json, &ValidationPolicy::at(now))
            .map_err(CommandError::Bundle)?;
        if let Some(stored) = self.bundles.get(td)
            && bundle.sequence <= stored.bundle.sequence
        {
            return Err(CommandError::Bundle(crate::bundle::BundleError::Invalid {
                field: "spiffe_sequence".into(),
                rule: format!(
                    "{} is not greater than the stored sequence {} (replay)",
                    bundle.sequence, stored.bundle.sequence
                ),
            }));
        }
        self.check_keys_unique(&bundle)?;
        if !force && !agent_chain.is_empty() {
            let roots = bundle.x509_roots_der();
            if let Err(error) = crate::identity::verify_client_svid(agent_chain, &roots, now) {
                return Err(CommandError::Bundle(crate::bundle::BundleError::Invalid {
                    field: "keys".into(),
                    rule: format!(
                        "the new bundle no longer certifies the publishing agent's own SVID ({error}); \
                         it would lock the agent out — publish with force to do it anyway"
                    ),
                }));
            }
        }
        Ok(bundle)
    }

    pub(super) fn apply_remove_member(
        &mut self,
        index: u64,
        cluster: &str,
        actor: String,
        now: i64,
        serve_empty_until: Option<i64>,
    ) -> CommandResult {
        let Some(member) = self.members.remove(cluster) else {
            self.audit.record(AuditEvent::new(
                now,
                index,
                actor,
                "remove_member",
                cluster.to_string(),
                Some("not a member".into()),
            ));
            return Err(CommandError::NotFound(format!("cluster {cluster}")));
        };
        let removed = self.bundles.remove(&member.trust_domain);
        if let Some(serve_until) = serve_empty_until {
            self.record_removed(super::RemovedDomain {
                trust_domain: member.trust_domain.clone(),
                cluster: cluster.to_string(),
                sequence: removed.map_or(1, |b| b.bundle.sequence.saturating_add(1)),
                removed_at: now,
                serve_until,
            });
        }
        for bundle in self.bundles.values_mut() {
            bundle.acks.remove(cluster);
        }
        self.tokens.retain(|_, t| t.cluster != cluster || t.used_at.is_some());
        self.forget_policy(cluster);
        let services = self.drop_exports_of(cluster);
        self.leases.remove(cluster);
        self.audit.record(AuditEvent::new(
            now,
            index,
            actor,
            "remove_member",
            cluster.to_string(),
            None,
        ));
        let mut changes = vec![ChangeKind::BundleRemoved { trust_domain: member.trust_domain }];
        changes.extend(services.iter().map(|key| ChangeKind::ServiceChanged { key: key.clone() }));
        let revision = self.changes.push_all(changes);
        for key in &services {
            if let Some(record) = self.services.get_mut(key) {
                record.revision = revision;
            }
        }
        self.drop_empty_services();
        Ok(Applied::Revision { revision })
    }

    /// Whether `cluster` may acknowledge `sequence` of `td`'s bundle; `Ok(true)` when
    /// that is already its stored acknowledgement (nothing to write).
    pub(super) fn check_ack(
        &self,
        cluster: &str,
        td: &str,
        sequence: u64,
    ) -> Result<bool, CommandError> {
        if !self.members.contains_key(cluster) {
            return Err(CommandError::PermissionDenied(format!("{cluster} is not a member")));
        }
        let stored = self
            .bundles
            .get(td)
            .ok_or_else(|| CommandError::NotFound(format!("bundle of {td}")))?;
        if sequence > stored.bundle.sequence {
            return Err(CommandError::invalid(
                "sequence",
                &format!("{sequence} is newer than the stored sequence {}", stored.bundle.sequence),
            ));
        }
        Ok(stored.acks.get(cluster).is_some_and(|ack| ack.sequence >= sequence))
    }

    pub(super) fn apply_ack(
        &mut self,
        cluster: &str,
        td: &str,
        sequence: u64,
        now: i64,
    ) -> CommandResult {
        self.check_ack(cluster, td, sequence)?;
        let Some(stored) = self.bundles.get_mut(td) else {
            return Err(CommandError::NotFound(format!("bundle of {td}")));
        };
        let ack =
            stored.acks.entry(cluster.to_string()).or_insert(BundleAck { sequence: 0, at: now });
        // Acknowledgements only move forward: a late, older ack must not hide a newer one.
        if sequence >= ack.sequence {
            *ack = BundleAck { sequence, at: now };
        }
        Ok(Applied::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;
    use crate::state::test_support::{Cluster, apply, joined, now};

    const NOW: i64 = 1_900_000_000;

    #[test]
    fn a_key_of_another_trust_domain_is_refused() {
        let a = Cluster::new("a.test");
        let b = Cluster::new("b.test");
        let mut state = joined(&[("a", &a), ("b", &b)]);
        // Plant A's key in B's stored bundle, as if B had published it.
        let mut planted = state.bundles["a.test"].bundle.clone();
        planted.trust_domain = "b.test".into();
        state.bundles.get_mut("b.test").expect("b").bundle = planted;
        let before = state.clone();
        let err = apply(
            &mut state,
            10,
            Command::PublishBundle {
                cluster: "a".into(),
                bundle_json: a.bundle(2),
                agent_chain: a.agent_chain(),
                force: false,
                now: now(),
            },
        )
        .expect_err("refused");
        assert!(err.to_string().contains("already in the bundle of trust domain b.test"), "{err}");
        assert_eq!(state.bundles, before.bundles, "nothing committed");
        assert_eq!(state.audit.newest_refusals(1)[0].reason, err.to_string());
    }

    #[test]
    fn sequence_must_increase_and_time_comes_from_the_command() {
        let a = Cluster::new("a.test");
        let mut state = joined(&[("a", &a)]);
        let publish = |sequence, now| Command::PublishBundle {
            cluster: "a".into(),
            bundle_json: a.bundle(sequence),
            agent_chain: a.agent_chain(),
            force: false,
            now,
        };
        let err = apply(&mut state, 5, publish(1, now())).expect_err("replay");
        assert!(err.to_string().contains("spiffe_sequence"), "{err}");
        assert_eq!(
            apply(&mut state, 6, publish(2, now())),
            Ok(Applied::Bundle { sequence: 2, revision: 2 })
        );
        // Far in the future the CA has expired: the same bytes are refused, deterministically.
        let err = apply(&mut state, 7, publish(3, NOW * 2)).expect_err("expired");
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn tokens_are_single_use_scoped_and_expiring() {
        let a = Cluster::new("a.test");
        let mut state = FederationState::default();
        let token = |hash: &str, expires_at| Command::CreateToken {
            secret_hash: hash.into(),
            cluster: "a".into(),
            trust_domain: "a.test".into(),
            expires_at,
            now: now(),
        };
        let join = |hash: &str, cluster: &str, now| Command::Join {
            secret_hash: hash.into(),
            cluster: cluster.into(),
            trust_domain: "a.test".into(),
            agent_id: "spiffe://a.test/agent".into(),
            bundle_json: a.bundle(1),
            now,
        };
        apply(&mut state, 1, token("t1", now() + 60)).expect("token");
        apply(&mut state, 2, token("t2", now() + 60)).expect("token");
        let err = apply(&mut state, 3, join("t1", "other", now())).expect_err("wrong cluster");
        assert!(matches!(err, CommandError::Token(_)), "{err}");
        let err = apply(&mut state, 4, join("t1", "a", now() + 61)).expect_err("expired");
        assert!(err.to_string().contains("expired"), "{err}");
        let err = apply(&mut state, 5, join("nope", "a", now())).expect_err("unknown");
        assert!(err.to_string().contains("unknown"), "{err}");
        assert!(state.members.is_empty());
        apply(&mut state, 6, join("t1", "a", now())).expect("join");
        let digest = state.bundles["a.test"].digest.clone();
        let revision = state.bundles["a.test"].revision;
        // A retry of that very join is recognised (and answered by the handler, never
        // applied); anything else that reuses the token is not.
        assert_eq!(
            state.joined_by("t1", "a", "a.test", "spiffe://a.test/agent", &digest),
            Some(revision)
        );
        assert_eq!(state.joined_by("t1", "a", "a.test", "spiffe://a.test/other", &digest), None);
        assert_eq!(state.joined_by("t1", "a", "a.test", "spiffe://a.test/agent", "00"), None);
        assert_eq!(state.joined_by("t2", "a", "a.test", "spiffe://a.test/agent", &digest), None);
        let err = apply(&mut state, 7, join("t1", "a", now())).expect_err("reuse");
        assert!(err.to_string().contains("already used"), "{err}");
        let err = apply(&mut state, 8, join("t2", "a", now())).expect_err("already a member");
        assert!(matches!(err, CommandError::AlreadyExists(_)), "{err}");
    }

    #[test]
    fn a_revoked_token_admits_nobody_and_a_used_one_cannot_be_revoked() {
        let a = Cluster::new("a.test");
        let mut state = FederationState::default();
        let token = |hash: &str| Command::CreateToken {
            secret_hash: hash.into(),
            cluster: "a".into(),
            trust_domain: "a.test".into(),
            expires_at: now() + 60,
            now: now(),
        };
        let join = |hash: &str| Command::Join {
            secret_hash: hash.into(),
            cluster: "a".into(),
            trust_domain: "a.test".into(),
            agent_id: "spiffe://a.test/agent".into(),
            bundle_json: a.bundle(1),
            now: now(),
        };
        let revoke = |hash: &str| Command::RevokeToken {
            secret_hash: hash.into(),
            actor: "admin".into(),
            now: now(),
        };
        apply(&mut state, 1, token("t1")).expect("token");
        apply(&mut state, 2, token("t2")).expect("token");
        assert_eq!(state.check(&revoke("t1")).map(|_| ()), Ok(()));
        apply(&mut state, 3, revoke("t1")).expect("revoked");
        let err = apply(&mut state, 4, join("t1")).expect_err("revoked token");
        assert!(err.to_string().contains("unknown token"), "{err}");
        let err = apply(&mut state, 5, revoke("t1")).expect_err("twice");
        assert!(matches!(err, CommandError::NotFound(_)), "{err}");

        apply(&mut state, 6, join("t2")).expect("join");
        let err = state.check(&revoke("t2")).expect_err("used");
        assert!(err.to_string().contains("federator cluster remove a"), "{err}");
        apply(&mut state, 7, revoke("t2")).expect_err("used");
        assert!(state.tokens.contains_key("t2"), "a used token stays on record");

        let accepted: Vec<_> =
            state.audit.newest(10).into_iter().filter(|e| e.action == "revoke_token").collect();
        assert_eq!(accepted.len(), 1, "{accepted:?}");
        assert_eq!(
            (accepted[0].actor.as_str(), accepted[0].target.as_str()),
            ("admin", "a (a.test)")
        );
        let refused: Vec<_> = state
            .audit
            .newest_refusals(10)
            .into_iter()
            .filter(|r| r.action == "revoke_token")
            .collect();
        assert_eq!(refused.len(), 2, "{refused:?}");
    }

    #[test]
    fn removal_drops_bundle_acks_and_emits_a_change() {
        let a = Cluster::new("a.test");
        let b = Cluster::new("b.test");
        let mut state = joined(&[("a", &a), ("b", &b)]);
        apply(
            &mut state,
            10,
            Command::AckBundle {
                cluster: "a".into(),
                trust_domain: "b.test".into(),
                sequence: 1,
                now: now(),
            },
        )
        .expect("ack");
        assert_eq!(state.bundles["b.test"].acks["a"].sequence, 1);
        let revision = state.changes.revision();
        apply(
            &mut state,
            11,
            Command::RemoveMember { cluster: "a".into(), actor: "admin".into(), now: now() },
        )
        .expect("remove");
        assert!(!state.bundles.contains_key("a.test"));
        assert!(state.bundles["b.test"].acks.is_empty());
        let changes = state.changes.since(revision).expect("kept");
        assert_eq!(
            changes[0].kind,
            crate::state::ChangeKind::BundleRemoved { trust_domain: "a.test".into() }
        );
        let err = apply(
            &mut state,
            12,
            Command::AckBundle {
                cluster: "a".into(),
                trust_domain: "b.test".into(),
                sequence: 1,
                now: now(),
            },
        )
        .expect_err("removed members cannot ack");
        assert!(matches!(err, CommandError::PermissionDenied(_)), "{err}");
    }

    #[test]
    fn a_bundle_that_locks_the_agent_out_needs_force() {
        let a = Cluster::new("a.test");
        let mut state = joined(&[("a", &a)]);
        let other = Cluster::new("a.test");
        let publish = |force| Command::PublishBundle {
            cluster: "a".into(),
            bundle_json: other.bundle(5),
            agent_chain: a.agent_chain(),
            force,
            now: now(),
        };
        let err = apply(&mut state, 5, publish(false)).expect_err("lock-out");
        assert!(err.to_string().contains("lock the agent out"), "{err}");
        assert_eq!(
            apply(&mut state, 6, publish(true)),
            Ok(Applied::Bundle { sequence: 5, revision: 2 })
        );
    }
}
