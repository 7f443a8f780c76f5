//! The agent-facing federation API (`federator.federation.v1.Federation`).
//!
//! Every call is authenticated by the caller's X.509-SVID, verified against the bundle
//! the federation holds for the SVID's own trust domain — never a pooled root store —
//! and the SPIFFE ID must be the member's registered agent. Join is the exception: the
//! SVID is verified against the bundle presented with the token, and the token decides
//! which cluster and trust domain the caller becomes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use federator_proto::federation as pb;
use federator_proto::federation::federation_server::Federation;
use tonic::{Request, Response, Status};

use super::FederationReplica;
use super::admin::{command_status, replica_status};
use super::leases::{LeaderRequest, LeaderResponse, call_leader};
use crate::bundle::{ValidationPolicy, parse_spiffe_bundle};
use crate::identity::{SpiffeId, svid_identity, verify_client_svid};
use crate::service::{ServiceKey, condition_to_proto, export_from_proto};
use crate::state::{Applied, Command, Member, command_result};
use crate::token::JoinToken;
use watch::{WatchShared, WatchStream, watch_stream};

mod watch;

/// Unix time now, in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The federation API handler of one replica.
#[derive(Clone)]
pub struct FederationService {
    replica: FederationReplica,
    /// The state's revision, moving only when it changes: what watches wait on.
    revisions: tokio::sync::watch::Receiver<u64>,
    /// What every watch stream of this replica shares.
    watches: Arc<WatchShared>,
    refusals: Arc<Mutex<RefusalLimiter>>,
}

/// Bounds how many refusals reach the replicated audit trail: at most one per second per
/// actor, and at most [`RefusalLimiter::PER_SECOND`] in all (an attacker can make up
/// SPIFFE IDs). Every refusal is still logged.
#[derive(Debug, Default)]
struct RefusalLimiter {
    last_by_actor: HashMap<String, Instant>,
    window: Option<(Instant, u32)>,
}

impl RefusalLimiter {
    const PER_SECOND: u32 = 20;

    fn admit(&mut self, actor: &str, now: Instant) -> bool {
        let second = Duration::from_secs(1);
        if self.last_by_actor.get(actor).is_some_and(|t| now.duration_since(*t) < second) {
            return false;
        }
        let (start, count) = match self.window {
            Some((start, count)) if now.duration_since(start) < second => (start, count),
            _ => (now, 0),
        };
        if count >= Self::PER_SECOND {
            return false;
        }
        self.window = Some((start, count + 1));
        if self.last_by_actor.len() > 10_000 {
            self.last_by_actor.clear();
        }
        self.last_by_actor.insert(actor.to_string(), now);
        true
    }
}

/// An authenticated member caller.
struct MemberCaller {
    member: Member,
    chain: Vec<Vec<u8>>,
}

impl FederationService {
    /// A handler serving `replica`.
    #[must_use]
    pub fn new(replica: FederationReplica, metrics: super::FederationMetrics) -> Self {
        let (watches, revisions) = WatchShared::start(&replica, metrics);
        Self { replica, revisions, watches, refusals: Arc::default() }
    }

    /// The caller's certificate chain (leaf first) and SPIFFE ID, unverified.
    fn caller<T>(request: &Request<T>) -> Result<(Vec<Vec<u8>>, SpiffeId), Status> {
        let chain: Vec<Vec<u8>> =
            federator_raft::tls::peer_chain(request).iter().map(|c| c.to_vec()).collect();
        let leaf = chain
            .first()
            .ok_or_else(|| Status::unauthenticated("a client X.509-SVID is required"))?;
        let id = svid_identity(leaf)
            .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))?;
        Ok((chain, id))
    }

    /// Authenticates a member: its SVID must verify against the stored bundle of its own
    /// trust domain and be the member's registered agent identity.
    /// A trust domain this replica does not know yet (a member that just joined through
    /// another replica) is looked up again once this replica has caught up with the
    /// leader, so that a fresh member is never refused for a replica's lag.
    async fn authenticate<T>(
        &self,
        request: &Request<T>,
        action: &str,
    ) -> Result<MemberCaller, Status> {
        let (chain, id) = Self::caller(request)?;
        let known =
            self.replica.state().read(|s| s.member_by_trust_domain(&id.trust_domain).is_some());
        if !known {
            // Bounded by the replica's own timeouts; on failure the local state decides.
            let _ = self.replica.read(federator_raft::Consistency::Linearizable, |_| ()).await;
        }
        self.authenticate_locally(chain, id, action)
    }

    fn authenticate_locally(
        &self,
        chain: Vec<Vec<u8>>,
        id: SpiffeId,
        action: &str,
    ) -> Result<MemberCaller, Status> {
        let td = id.trust_domain.clone();
        let found = self.replica.state().read(|s| {
            let member = s.member_by_trust_domain(&td).cloned();
            let roots: Vec<Vec<u8>> = s
                .bundles
                .get(&td)
                .map(|b| b.bundle.x509_roots_der().iter().map(|r| r.to_vec()).collect())
                .unwrap_or_default();
            (member, roots)
        });
        let (Some(member), roots) = found else {
            let reason = format!("trust domain {td} is not a member of the federation");
            self.record_refusal(&id.to_string(), action, &td, &reason);
            return Err(Status::permission_denied(reason));
        };
        let roots: Vec<&[u8]> = roots.iter().map(Vec::as_slice).collect();
        if let Err(error) = verify_client_svid(&chain, &roots, unix_now()) {
            let reason = format!("SVID {id} does not verify against the bundle of {td}: {error}");
            self.record_refusal(&id.to_string(), action, &td, &reason);
            return Err(Status::permission_denied(reason));
        }
        if id.to_string() != member.agent_id {
            let reason = format!(
                "{id} is not the agent of cluster {} ({})",
                member.cluster, member.agent_id
            );
            self.record_refusal(&id.to_string(), action, &td, &reason);
            return Err(Status::permission_denied(reason));
        }
        Ok(MemberCaller { member, chain })
    }

    /// Records a refusal decided before the log in the replicated audit trail, at most
    /// once per second per actor so that a misbehaving caller cannot flood the log.
    fn record_refusal(&self, actor: &str, action: &str, target: &str, reason: &str) {
        tracing::warn!(target: "audit", actor, action, target_name = target, reason, "refused");
        if !self.refusals.lock().is_ok_and(|mut limiter| limiter.admit(actor, Instant::now())) {
            return;
        }
        let command = Command::RecordRefusal {
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            reason: reason.to_string(),
            now: unix_now(),
        };
        let replica = self.replica.clone();
        tokio::spawn(async move {
            if let Err(error) = replica.write(command.encode()).await {
                tracing::debug!(%error, "refusal not recorded in the audit trail");
            }
        });
    }

    async fn propose(&self, command: Command) -> Result<Applied, Status> {
        let outcome = self.replica.write(command.encode()).await.map_err(replica_status)?;
        command_result(&outcome.response).map_err(command_status)?.map_err(command_status)
    }
}

/// Fills the request span's `cluster` and `trust_domain` fields once the caller is known.
fn record_member(cluster: &str, trust_domain: &str) {
    let span = tracing::Span::current();
    span.record("cluster", cluster);
    span.record("trust_domain", trust_domain);
}

#[tonic::async_trait]
impl Federation for FederationService {
    #[tracing::instrument(skip_all, fields(cluster, trust_domain))]
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let (chain, id) = Self::caller(&request)?;
        let r = request.into_inner();
        let token = JoinToken::decode(&r.token)
            .map_err(|e| Status::invalid_argument(format!("token: {e}")))?;
        record_member(&token.cluster, &token.trust_domain);
        if id.trust_domain != token.trust_domain {
            let reason = format!(
                "the caller's SVID {id} is not in the token's trust domain {}",
                token.trust_domain
            );
            self.record_refusal(&id.to_string(), "join", &token.trust_domain, &reason);
            return Err(Status::permission_denied(reason));
        }
        let bundle = r.bundle.ok_or_else(|| Status::invalid_argument("bundle: required"))?;
        if !bundle.trust_domain.is_empty() && bundle.trust_domain != token.trust_domain {
            return Err(Status::permission_denied(format!(
                "bundle.trust_domain {} is not the token's trust domain {}",
                bundle.trust_domain, token.trust_domain
            )));
        }
        let now = unix_now();
        let parsed = parse_spiffe_bundle(
            &token.trust_domain,
            bundle.spiffe_bundle_json.as_bytes(),
            &ValidationPolicy::at(now),
        )
        .map_err(|e| Status::invalid_argument(format!("bundle: {e}")))?;
        let roots = parsed.x509_roots_der();
        verify_client_svid(&chain, &roots, now).map_err(|e| {
            Status::permission_denied(format!(
                "proof of possession: the caller's SVID does not chain to the presented bundle: {e}"
            ))
        })?;
        let applied = self
            .propose(Command::Join {
                secret_hash: token.secret_hash(),
                cluster: token.cluster.clone(),
                trust_domain: token.trust_domain.clone(),
                agent_id: id.to_string(),
                bundle_json: bundle.spiffe_bundle_json.into_bytes(),
                now,
            })
            .await?;
        let revision = match applied {
            Applied::Bundle { revision, .. } | Applied::Revision { revision } => revision,
            _ => 0,
        };
        tracing::info!(agent = %id, revision, "cluster joined");
        Ok(Response::new(pb::JoinResponse {
            cluster: token.cluster,
            trust_domain: token.trust_domain,
            agent_id: id.to_string(),
            revision,
        }))
    }

    #[tracing::instrument(skip_all, fields(cluster, trust_domain))]
    async fn publish_bundle(
        &self,
        request: Request<pb::PublishBundleRequest>,
    ) -> Result<Response<pb::PublishBundleResponse>, Status> {
        let caller = self.authenticate(&request, "publish_bundle").await?;
        record_member(&caller.member.cluster, &caller.member.trust_domain);
        let r = request.into_inner();
        let bundle = r.bundle.ok_or_else(|| Status::invalid_argument("bundle: required"))?;
        if !bundle.trust_domain.is_empty() && bundle.trust_domain != caller.member.trust_domain {
            let reason = format!(
                "cluster {} may publish only the bundle of its own trust domain {}, not {}",
                caller.member.cluster, caller.member.trust_domain, bundle.trust_domain
            );
            self.record_refusal(
                &caller.member.cluster,
                "publish_bundle",
                &bundle.trust_domain,
                &reason,
            );
            return Err(Status::permission_denied(reason));
        }
        let applied = self
            .propose(Command::PublishBundle {
                cluster: caller.member.cluster.clone(),
                bundle_json: bundle.spiffe_bundle_json.into_bytes(),
                agent_chain: caller.chain,
                force: r.force,
                now: unix_now(),
            })
            .await?;
        match applied {
            Applied::Bundle { sequence, revision } => {
                tracing::info!(sequence, revision, "bundle published");
                Ok(Response::new(pb::PublishBundleResponse { sequence, revision }))
            }
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }

    type WatchStream = WatchStream;

    #[tracing::instrument(skip_all, fields(cluster, trust_domain))]
    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = self.authenticate(&request, "watch").await?;
        record_member(&caller.member.cluster, &caller.member.trust_domain);
        let after = request.into_inner().after_revision;
        Ok(Response::new(watch_stream(
            self.watches.clone(),
            self.revisions.clone(),
            caller.member,
            after,
        )))
    }

    #[tracing::instrument(skip_all, fields(cluster, trust_domain))]
    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        let caller = self.authenticate(&request, "ack").await?;
        record_member(&caller.member.cluster, &caller.member.trust_domain);
        let r = request.into_inner();
        self.propose(Command::AckBundle {
            cluster: caller.member.cluster,
            trust_domain: r.trust_domain,
            sequence: r.sequence,
            now: unix_now(),
        })
        .await?;
        Ok(Response::new(pb::AckResponse {}))
    }

    #[tracing::instrument(skip_all, fields(cluster, trust_domain, service))]
    async fn export_service(
        &self,
        request: Request<pb::ExportServiceRequest>,
    ) -> Result<Response<pb::ExportServiceResponse>, Status> {
        let caller = self.authenticate(&request, "export_service").await?;
        record_member(&caller.member.cluster, &caller.member.trust_domain);
        let message = request
            .into_inner()
            .export
            .ok_or_else(|| Status::invalid_argument("export: required"))?;
        let export = export_from_proto(message)
            .map_err(|e| Status::invalid_argument(format!("export.{e}")))?;
        tracing::Span::current().record("service", export.key.to_string());
        if export.claims_foreign_identity(&caller.member.trust_domain) {
            let reason = format!(
                "cluster {} may export only workloads of its own trust domain {}; {} names \
                 another trust domain's SPIFFE ID",
                caller.member.cluster, caller.member.trust_domain, export.key
            );
            self.record_refusal(
                &caller.member.cluster,
                "export_service",
                &export.key.to_string(),
                &reason,
            );
            return Err(Status::permission_denied(reason));
        }
        let applied = self
            .propose(Command::ExportService {
                cluster: caller.member.cluster,
                export,
                now: unix_now(),
            })
            .await?;
        match applied {
            Applied::Export { revision, generation, conditions } => {
                tracing::info!(revision, generation, "service exported");
                Ok(Response::new(pb::ExportServiceResponse {
                    revision,
                    generation,
                    conditions: conditions.iter().map(condition_to_proto).collect(),
                }))
            }
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }

    #[tracing::instrument(skip_all, fields(cluster, trust_domain, service))]
    async fn unexport_service(
        &self,
        request: Request<pb::UnexportServiceRequest>,
    ) -> Result<Response<pb::UnexportServiceResponse>, Status> {
        let caller = self.authenticate(&request, "unexport_service").await?;
        record_member(&caller.member.cluster, &caller.member.trust_domain);
        let r = request.into_inner();
        let key = ServiceKey::new(r.namespace, r.name);
        key.validate().map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::Span::current().record("service", key.to_string());
        let applied = self
            .propose(Command::UnexportService {
                cluster: caller.member.cluster,
                key,
                now: unix_now(),
            })
            .await?;
        let Applied::Revision { revision } = applied else {
            return Err(Status::internal(format!("unexpected result {applied:?}")));
        };
        tracing::info!(revision, "service unexported");
        Ok(Response::new(pb::UnexportServiceResponse { revision }))
    }

    #[tracing::instrument(skip_all, fields(cluster, trust_domain))]
    async fn grant_lease(
        &self,
        request: Request<pb::GrantLeaseRequest>,
    ) -> Result<Response<pb::GrantLeaseResponse>, Status> {
        let caller = self.authenticate(&request, "grant_lease").await?;
        record_member(&caller.member.cluster, &caller.member.trust_domain);
        let r = request.into_inner();
        let applied = self
            .propose(Command::GrantLease {
                cluster: caller.member.cluster,
                ttl_secs: r.ttl_seconds,
                locality: crate::service::Locality { region: r.region, zone: r.zone },
                now: unix_now(),
            })
            .await?;
        let Applied::Lease { id, ttl_secs } = applied else {
            return Err(Status::internal(format!("unexpected result {applied:?}")));
        };
        tracing::info!(lease_id = id, ttl_secs, "lease granted");
        Ok(Response::new(pb::GrantLeaseResponse { lease_id: id, ttl_seconds: ttl_secs }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(cluster, trust_domain))]
    async fn keep_alive(
        &self,
        request: Request<pb::KeepAliveRequest>,
    ) -> Result<Response<pb::KeepAliveResponse>, Status> {
        let caller = self.authenticate(&request, "keep_alive").await?;
        record_member(&caller.member.cluster, &caller.member.trust_domain);
        let lease_id = request.into_inner().lease_id;
        let answer = call_leader(
            &self.replica,
            &LeaderRequest::KeepAlive { cluster: caller.member.cluster, lease_id },
        )
        .await
        .map_err(Status::unavailable)?;
        match answer {
            LeaderResponse::KeptAlive { ttl_secs } => {
                Ok(Response::new(pb::KeepAliveResponse { ttl_seconds: ttl_secs }))
            }
            LeaderResponse::NotLive(reason) => Err(Status::not_found(reason)),
            other => Err(Status::internal(format!("unexpected leader answer {other:?}"))),
        }
    }

    #[tracing::instrument(skip_all, fields(cluster, trust_domain))]
    async fn revoke_lease(
        &self,
        request: Request<pb::RevokeLeaseRequest>,
    ) -> Result<Response<pb::RevokeLeaseResponse>, Status> {
        let caller = self.authenticate(&request, "revoke_lease").await?;
        record_member(&caller.member.cluster, &caller.member.trust_domain);
        self.propose(Command::RevokeLease {
            cluster: caller.member.cluster,
            lease_id: request.into_inner().lease_id,
            now: unix_now(),
        })
        .await?;
        Ok(Response::new(pb::RevokeLeaseResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_limited_per_actor_and_in_all() {
        let mut limiter = RefusalLimiter::default();
        let t0 = Instant::now();
        assert!(limiter.admit("a", t0));
        assert!(!limiter.admit("a", t0), "one per second per actor");
        let admitted = (0..100).filter(|i| limiter.admit(&format!("made-up-{i}"), t0)).count();
        assert_eq!(admitted, usize::try_from(RefusalLimiter::PER_SECOND).expect("small") - 1);
        let later = t0 + Duration::from_millis(1100);
        assert!(limiter.admit("a", later));
        assert!(limiter.admit("fresh", later));
    }
}
