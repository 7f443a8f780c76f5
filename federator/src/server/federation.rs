//! The agent-facing federation API (`federator.federation.v1.Federation`).
//!
//! Every call is authenticated by the caller's X.509-SVID, verified against the bundle
//! the federation holds for the SVID's own trust domain — never a pooled root store —
//! and the SPIFFE ID must be the member's registered agent. Join is the exception: the
//! SVID is verified against the bundle presented with the token, and the token decides
//! which cluster and trust domain the caller becomes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use federator_proto::federation as pb;
use federator_proto::federation::federation_server::Federation;
use futures::StreamExt as _;
use tonic::{Request, Response, Status};

use super::FederationReplica;
use super::attempts::AttemptLimiter;
use super::grpc_status::{command_status, replica_status};
use super::leases::{LeaderRequest, LeaderResponse, call_leader};
use super::refusals::{RefusalRecorder, anonymous};
use crate::bundle::{ValidationPolicy, parse_spiffe_bundle};
use crate::clock::unix_now;
use crate::identity::{SpiffeId, svid_identity, verify_client_svid};
use crate::service::{ServiceKey, condition_to_proto, export_from_proto};
use crate::state::{Applied, Checked, Command, Member, command_result};
use crate::token::JoinToken;
pub use watch::Leaving;
use watch::{WatchShared, WatchStream, leaving_status, watch_stream};

mod watch;

/// Watch streams one member may hold open on one replica unless configured otherwise (an
/// agent holds one; a reconnecting one briefly two).
pub const DEFAULT_MAX_WATCHES_PER_MEMBER: usize = 8;

/// The federation API handler of one replica.
#[derive(Clone)]
pub struct FederationService {
    replica: FederationReplica,
    /// The state's revision, moving only when it changes: what watches wait on.
    revisions: tokio::sync::watch::Receiver<u64>,
    /// What every watch stream of this replica shares.
    watches: Arc<WatchShared>,
    /// Refusals on their way to the audit trail.
    refusals: Arc<RefusalRecorder>,
    /// Failed attempts of unverified callers.
    attempts: Arc<AttemptLimiter>,
    /// Open watch streams by member.
    watch_slots: Arc<WatchSlots>,
    /// Set once this replica stopped serving.
    leaving: Leaving,
}

/// Open watch streams per member, bounded.
#[derive(Debug)]
struct WatchSlots {
    open: Mutex<HashMap<String, usize>>,
    limit: usize,
}

/// One open watch stream of a member; frees its slot when dropped.
struct WatchSlot {
    slots: Arc<WatchSlots>,
    cluster: String,
}

impl WatchSlots {
    fn take(self: &Arc<Self>, cluster: &str) -> Option<WatchSlot> {
        let mut open = self.open.lock().ok()?;
        let count = open.entry(cluster.to_string()).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(WatchSlot { slots: Arc::clone(self), cluster: cluster.to_string() })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.slots.open.lock()
            && let Some(count) = open.get_mut(&self.cluster)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.cluster);
            }
        }
    }
}

/// An authenticated member caller.
struct MemberCaller {
    member: Member,
    chain: Vec<Vec<u8>>,
}

/// The address a request came from, when it came over TLS.
fn remote<T>(request: &Request<T>) -> Option<SocketAddr> {
    federator_raft::tls::connect_info(request).and_then(|info| info.remote_addr)
}

/// The certificate chain (leaf first) and SPIFFE ID the caller presented, unverified.
fn presented_svid<T>(request: &Request<T>) -> Result<(Vec<Vec<u8>>, SpiffeId), Status> {
    let chain: Vec<Vec<u8>> =
        federator_raft::tls::peer_chain(request).iter().map(|c| c.to_vec()).collect();
    let leaf =
        chain.first().ok_or_else(|| Status::unauthenticated("a client X.509-SVID is required"))?;
    let id = svid_identity(leaf)
        .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))?;
    Ok((chain, id))
}

/// The attempt-limiter keys of an unverified caller: its address and, if its certificate
/// names one, the SPIFFE ID it presents.
fn attempt_keys(remote: Option<SocketAddr>, presented: Option<&SpiffeId>) -> Vec<String> {
    let mut keys = vec![format!("ip:{}", remote.map(|a| a.ip().to_string()).unwrap_or_default())];
    if let Some(id) = presented {
        keys.push(format!("id:{id}"));
    }
    keys
}

/// Longest status message answered to a refused caller, in bytes.
const MAX_STATUS_MESSAGE: usize = 1024;

/// `status` with its message cut to [`MAX_STATUS_MESSAGE`] bytes.
fn capped(status: Status) -> Status {
    let message = status.message();
    if message.len() <= MAX_STATUS_MESSAGE {
        return status;
    }
    let mut end = MAX_STATUS_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut short =
        Status::new(status.code(), format!("{}…[+{} bytes]", &message[..end], message.len() - end));
    // Metadata (a refusal's kind) survives the cut.
    *short.metadata_mut() = status.metadata().clone();
    short
}

/// Whether a failed call is the caller's doing (a refusal), not the federation's
/// (no leader, a timeout): only refusals count against an unverified caller.
fn is_refusal(status: &Status) -> bool {
    !matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Internal
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
    )
}

impl FederationService {
    /// A handler serving `replica`, reporting refusals to `refusals`, allowing each member
    /// at most `max_watches_per_member` open watch streams on this replica; once `leaving`
    /// names a reason, watches end and new ones are refused with UNAVAILABLE.
    #[must_use]
    pub fn new(
        replica: FederationReplica,
        metrics: super::FederationMetrics,
        refusals: Arc<RefusalRecorder>,
        max_watches_per_member: usize,
        leaving: Leaving,
    ) -> Self {
        let (watches, revisions) = WatchShared::start(&replica, metrics, leaving.clone());
        Self {
            leaving,
            replica,
            revisions,
            watches,
            refusals,
            attempts: Arc::default(),
            watch_slots: Arc::new(WatchSlots {
                open: Mutex::default(),
                limit: max_watches_per_member.max(1),
            }),
        }
    }

    /// Counts a refusal for the audit trail and returns the status to answer with (its
    /// message capped: a refusal must not echo a caller's megabyte back).
    fn refuse(&self, actor: &str, action: &str, target: &str, status: Status) -> Status {
        self.refusals.record(actor, action, target, status.message());
        capped(status)
    }

    /// The caller's certificate chain (leaf first) and SPIFFE ID, unverified; a caller
    /// without a usable SVID is refused (and the refusal counted under its address).
    fn caller<T>(
        &self,
        request: &Request<T>,
        action: &str,
    ) -> Result<(Vec<Vec<u8>>, SpiffeId), Status> {
        presented_svid(request)
            .map_err(|status| self.refuse(&anonymous(remote(request)), action, "", status))
    }

    /// Authenticates a member: its SVID must verify against the stored bundle of its own
    /// trust domain and be the member's registered agent identity.
    /// A trust domain this replica does not know yet (a member that just joined through
    /// another replica) is looked up again once this replica has caught up with the
    /// leader, so that a fresh member is never refused for a replica's lag — unless the
    /// caller's address has failed too often, when the local state decides at once.
    async fn authenticate<T>(
        &self,
        request: &Request<T>,
        action: &str,
    ) -> Result<MemberCaller, Status> {
        let (chain, id) = self.caller(request, action)?;
        let remote = remote(request);
        let known =
            self.replica.state().read(|s| s.member_by_trust_domain(&id.trust_domain).is_some());
        let keys = attempt_keys(remote, None);
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        if !known && self.attempts.blocked(&keys, Instant::now()).is_none() {
            // Bounded by the replica's own timeouts; on failure the local state decides.
            let _ = self.replica.read(federator_raft::Consistency::Linearizable, |_| ()).await;
        }
        let result = self.authenticate_locally(chain, &id, remote, action);
        if result.is_err() {
            self.attempts.failed(&keys, Instant::now());
        }
        result
    }

    fn authenticate_locally(
        &self,
        chain: Vec<Vec<u8>>,
        id: &SpiffeId,
        remote: Option<SocketAddr>,
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
        let anonymous = anonymous(remote);
        let (Some(member), roots) = found else {
            let reason = format!("{id}: trust domain {td} is not a member of the federation");
            return Err(self.refuse(&anonymous, action, &td, Status::permission_denied(reason)));
        };
        let roots: Vec<&[u8]> = roots.iter().map(Vec::as_slice).collect();
        if let Err(error) = verify_client_svid(&chain, &roots, unix_now()) {
            let reason = format!("SVID {id} does not verify against the bundle of {td}: {error}");
            return Err(self.refuse(&anonymous, action, &td, Status::permission_denied(reason)));
        }
        if id.to_string() != member.agent_id {
            // Verified against the trust domain's bundle: a workload of that member.
            let reason = format!(
                "{id} is not the agent of cluster {} ({})",
                member.cluster, member.agent_id
            );
            return Err(self.refuse(
                &id.to_string(),
                action,
                &member.cluster,
                Status::permission_denied(reason),
            ));
        }
        Ok(MemberCaller { member, chain })
    }

    /// Checks `command` against this replica's state (catching up with the leader first
    /// when that refuses it: the replica may be behind) and proposes it if the state
    /// machine would accept it. `None`: accepted without a write (nothing would change).
    /// A refusal is counted for the audit trail under `actor`; it costs no log entry.
    async fn check_and_propose(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        command: Command,
    ) -> Result<Option<Applied>, Status> {
        match self.check(&command).await {
            Ok(Checked::NoChange) => Ok(None),
            Ok(Checked::Propose) => self.propose(command).await.map(Some),
            Err(error) => Err(self.refuse(actor, action, target, command_status(error))),
        }
    }

    /// Checks `command` against this replica's state; when that refuses it, catches up
    /// with the leader first (the replica may be behind: a token or member created
    /// through another replica) and checks again.
    async fn check(&self, command: &Command) -> Result<Checked, crate::state::CommandError> {
        let checked = self.replica.state().read(|s| s.check(command));
        if checked.is_ok() {
            return checked;
        }
        // Bounded by the replica's own timeouts; on failure the local state decides.
        let _ = self.replica.read(federator_raft::Consistency::Linearizable, |_| ()).await;
        self.replica.state().read(|s| s.check(command))
    }

    async fn propose(&self, command: Command) -> Result<Applied, Status> {
        let outcome = self.replica.write(command.encode()).await.map_err(replica_status)?;
        command_result(&outcome.response).map_err(command_status)?.map_err(command_status)
    }

    /// Join, once the caller is past the attempt limiter. Refusals are counted by the
    /// caller of this function.
    async fn join_checked(
        &self,
        request: Request<pb::JoinRequest>,
        target: &mut String,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let (chain, id) = presented_svid(&request)?;
        let r = request.into_inner();
        let token = JoinToken::decode(&r.token)
            .map_err(|e| Status::invalid_argument(format!("token: {e}")))?;
        target.clone_from(&token.trust_domain);
        record_member(&token.cluster, &token.trust_domain);
        if id.trust_domain != token.trust_domain {
            return Err(Status::permission_denied(format!(
                "the caller's SVID {id} is not in the token's trust domain {}",
                token.trust_domain
            )));
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
        let command = Command::Join {
            secret_hash: token.secret_hash(),
            cluster: token.cluster.clone(),
            trust_domain: token.trust_domain.clone(),
            agent_id: id.to_string(),
            bundle_json: bundle.spiffe_bundle_json.into_bytes(),
            now,
        };
        // Counted as a refusal by the caller of this function, not here.
        if let Err(refused) = self.check(&command).await {
            // A retry of a join that committed (its answer lost, or its outcome unknown
            // across a leader change) is answered as that join; the caller proved it
            // holds the agent's key above, and nothing is proposed.
            let digest = parsed.digest();
            let joined = self.replica.state().read(|s| {
                s.joined_by(
                    &token.secret_hash(),
                    &token.cluster,
                    &token.trust_domain,
                    &id.to_string(),
                    &digest,
                )
            });
            let Some(revision) = joined else { return Err(command_status(refused)) };
            tracing::info!(agent = %id, revision, "join retried after it took effect: answered as that join");
            return Ok(Response::new(pb::JoinResponse {
                cluster: token.cluster,
                trust_domain: token.trust_domain,
                agent_id: id.to_string(),
                revision,
            }));
        }
        let applied = self.propose(command).await?;
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
}

/// Fills the request span's `cluster` and `trust_domain` fields once the caller is known.
fn record_member(cluster: &str, trust_domain: &str) {
    let span = tracing::Span::current();
    span.record("cluster", cluster);
    span.record("trust_domain", trust_domain);
}

#[tonic::async_trait]
impl Federation for FederationService {
    /// Nothing reaches the log before the caller is past the attempt limiter, holds the
    /// key of an SVID that chains to the bundle it presents, and presents a token that
    /// this replica (caught up with the leader if need be) knows as unused, unexpired and
    /// bound to this cluster and trust domain. Every refusal is counted under the caller's
    /// address and takes one from its allowance of failures.
    #[tracing::instrument(skip_all, fields(cluster, trust_domain))]
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let remote = remote(&request);
        let actor = anonymous(remote);
        let presented = presented_svid(&request).ok().map(|(_, id)| id);
        let keys = attempt_keys(remote, presented.as_ref());
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        if let Some(wait) = self.attempts.blocked(&keys, Instant::now()) {
            // One reason for the audit trail (so that repeats coalesce); the wait for the
            // caller.
            let reason = "too many failed join attempts from this address or identity";
            self.refusals.record(&actor, "join", "", reason);
            return Err(Status::resource_exhausted(format!(
                "{reason}; retry in {} ms",
                wait.as_millis().max(1)
            )));
        }
        let mut target = String::new();
        let result = self.join_checked(request, &mut target).await;
        match result {
            Err(status) if is_refusal(&status) => {
                self.attempts.failed(&keys, Instant::now());
                Err(self.refuse(&actor, "join", &target, status))
            }
            other => other,
        }
    }

    #[tracing::instrument(skip_all, fields(cluster, trust_domain))]
    async fn publish_bundle(
        &self,
        request: Request<pb::PublishBundleRequest>,
    ) -> Result<Response<pb::PublishBundleResponse>, Status> {
        let caller = self.authenticate(&request, "publish_bundle").await?;
        let (cluster, td) = (caller.member.cluster.clone(), caller.member.trust_domain.clone());
        record_member(&cluster, &td);
        let r = request.into_inner();
        let Some(bundle) = r.bundle else {
            let status = Status::invalid_argument("bundle: required");
            return Err(self.refuse(&cluster, "publish_bundle", &td, status));
        };
        if !bundle.trust_domain.is_empty() && bundle.trust_domain != td {
            let reason = format!(
                "cluster {cluster} may publish only the bundle of its own trust domain {td}, \
                 not {}",
                bundle.trust_domain
            );
            return Err(self.refuse(
                &cluster,
                "publish_bundle",
                &bundle.trust_domain,
                Status::permission_denied(reason),
            ));
        }
        let action = if r.force { "publish_bundle (forced)" } else { "publish_bundle" };
        let command = Command::PublishBundle {
            cluster: cluster.clone(),
            bundle_json: bundle.spiffe_bundle_json.into_bytes(),
            agent_chain: caller.chain,
            force: r.force,
            now: unix_now(),
        };
        match self.check_and_propose(&cluster, action, &td, command).await? {
            Some(Applied::Bundle { sequence, revision }) => {
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
        if let Some(reason) = self.leaving.borrow().clone() {
            return Err(leaving_status(&reason));
        }
        let caller = self.authenticate(&request, "watch").await?;
        let cluster = caller.member.cluster.clone();
        record_member(&cluster, &caller.member.trust_domain);
        let after = request.into_inner().after_revision;
        let mut revision = self.replica.state().read(|s| s.changes.revision());
        if after > revision {
            // Another replica may be ahead of this one: catch up before deciding.
            let _ = self.replica.read(federator_raft::Consistency::Linearizable, |_| ()).await;
            revision = self.replica.state().read(|s| s.changes.revision());
        }
        if after > revision {
            let status = Status::out_of_range(format!(
                "after_revision {after} is beyond the federation's revision {revision}; watch \
                 from a revision this federation gave you (0 for everything)"
            ));
            return Err(self.refuse(&cluster, "watch", "", status));
        }
        let Some(slot) = self.watch_slots.take(&cluster) else {
            let status = Status::resource_exhausted(format!(
                "cluster {cluster} already holds {} watch streams on this replica; close one \
                 (an agent needs one)",
                self.watch_slots.limit
            ));
            return Err(self.refuse(&cluster, "watch", "", status));
        };
        let stream =
            watch_stream(self.watches.clone(), self.revisions.clone(), caller.member, after);
        // The slot lives as long as the stream.
        let stream: WatchStream = Box::pin(stream.map(move |event| {
            let _ = &slot;
            event
        }));
        Ok(Response::new(stream))
    }

    #[tracing::instrument(skip_all, fields(cluster, trust_domain))]
    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        let caller = self.authenticate(&request, "ack").await?;
        let cluster = caller.member.cluster;
        record_member(&cluster, &caller.member.trust_domain);
        let r = request.into_inner();
        let target = r.trust_domain.clone();
        let command = Command::AckBundle {
            cluster: cluster.clone(),
            trust_domain: r.trust_domain,
            sequence: r.sequence,
            now: unix_now(),
        };
        self.check_and_propose(&cluster, "ack", &target, command).await?;
        Ok(Response::new(pb::AckResponse {}))
    }

    #[tracing::instrument(skip_all, fields(cluster, trust_domain, service))]
    async fn export_service(
        &self,
        request: Request<pb::ExportServiceRequest>,
    ) -> Result<Response<pb::ExportServiceResponse>, Status> {
        let caller = self.authenticate(&request, "export_service").await?;
        let cluster = caller.member.cluster;
        record_member(&cluster, &caller.member.trust_domain);
        let Some(message) = request.into_inner().export else {
            let status = Status::invalid_argument("export: required");
            return Err(self.refuse(&cluster, "export_service", "", status));
        };
        let target = format!("{}/{}", message.namespace, message.name);
        let export = export_from_proto(message).map_err(|e| {
            let status = Status::invalid_argument(format!("export.{e}"));
            self.refuse(&cluster, "export_service", &target, status)
        })?;
        tracing::Span::current().record("service", export.key.to_string());
        let command = Command::ExportService { cluster: cluster.clone(), export, now: unix_now() };
        match self.check_and_propose(&cluster, "export_service", &target, command).await? {
            Some(Applied::Export { revision, generation, conditions }) => {
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
        let cluster = caller.member.cluster;
        record_member(&cluster, &caller.member.trust_domain);
        let r = request.into_inner();
        let key = ServiceKey::new(r.namespace, r.name);
        let target = key.to_string();
        key.validate().map_err(|e| {
            self.refuse(
                &cluster,
                "unexport_service",
                &target,
                Status::invalid_argument(e.to_string()),
            )
        })?;
        tracing::Span::current().record("service", key.to_string());
        let command = Command::UnexportService { cluster: cluster.clone(), key, now: unix_now() };
        let applied =
            self.check_and_propose(&cluster, "unexport_service", &target, command).await?;
        let Some(Applied::Revision { revision }) = applied else {
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
        let cluster = caller.member.cluster;
        record_member(&cluster, &caller.member.trust_domain);
        let r = request.into_inner();
        let command = Command::GrantLease {
            cluster: cluster.clone(),
            ttl_secs: r.ttl_seconds,
            locality: crate::service::Locality { region: r.region, zone: r.zone },
            now: unix_now(),
        };
        let applied = self.check_and_propose(&cluster, "grant_lease", &cluster, command).await?;
        let Some(Applied::Lease { id, ttl_secs }) = applied else {
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
        let cluster = caller.member.cluster;
        record_member(&cluster, &caller.member.trust_domain);
        let lease_id = request.into_inner().lease_id;
        let answer = call_leader(
            &self.replica,
            &LeaderRequest::KeepAlive { cluster: cluster.clone(), lease_id },
        )
        .await
        .map_err(|error| Status::unavailable(error.to_string()))?;
        match answer {
            LeaderResponse::KeptAlive { ttl_secs } => {
                Ok(Response::new(pb::KeepAliveResponse { ttl_seconds: ttl_secs }))
            }
            LeaderResponse::NotLive(reason) => Err(self.refuse(
                &cluster,
                "keep_alive",
                &format!("lease {lease_id}"),
                Status::not_found(reason),
            )),
            other => Err(Status::internal(format!("unexpected leader answer {other:?}"))),
        }
    }

    #[tracing::instrument(skip_all, fields(cluster, trust_domain))]
    async fn revoke_lease(
        &self,
        request: Request<pb::RevokeLeaseRequest>,
    ) -> Result<Response<pb::RevokeLeaseResponse>, Status> {
        let caller = self.authenticate(&request, "revoke_lease").await?;
        let cluster = caller.member.cluster;
        record_member(&cluster, &caller.member.trust_domain);
        let lease_id = request.into_inner().lease_id;
        let command = Command::RevokeLease { cluster: cluster.clone(), lease_id, now: unix_now() };
        let target = format!("lease {lease_id}");
        self.check_and_propose(&cluster, "revoke_lease", &target, command).await?;
        Ok(Response::new(pb::RevokeLeaseResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_holds_at_most_its_watch_slots_and_gets_them_back() {
        let slots = Arc::new(WatchSlots { open: Mutex::default(), limit: 2 });
        let first = slots.take("a").expect("first");
        let second = slots.take("a").expect("second");
        assert!(slots.take("a").is_none(), "over the limit");
        assert!(slots.take("b").is_some(), "another member has its own");
        drop(first);
        let third = slots.take("a").expect("a slot came back");
        drop((second, third));
        assert!(slots.open.lock().expect("lock").is_empty(), "nothing left counted");
    }

    #[test]
    fn refusal_messages_are_capped() {
        let long = Status::invalid_argument("é".repeat(4000));
        let cut = capped(long);
        assert!(cut.message().len() <= MAX_STATUS_MESSAGE + 32);
        assert_eq!(cut.code(), tonic::Code::InvalidArgument);
        assert_eq!(capped(Status::not_found("short")).message(), "short");
    }

    #[test]
    fn a_replayed_sequence_is_refused_with_its_kind_even_when_the_message_is_cut() {
        let replay = crate::state::CommandError::Bundle(crate::bundle::BundleError::Invalid {
            field: "spiffe_sequence".into(),
            rule: format!(
                "{} is not greater than the stored sequence 4 (replay)",
                "3".repeat(2000)
            ),
        });
        let status = capped(super::super::grpc_status::command_status(replay));
        assert!(status.message().len() <= MAX_STATUS_MESSAGE + 32);
        assert_eq!(
            status
                .metadata()
                .get(crate::bundle::REFUSAL_METADATA_KEY)
                .and_then(|v| v.to_str().ok()),
            Some(crate::bundle::REFUSAL_SEQUENCE_REPLAY)
        );
        let other = crate::state::CommandError::Bundle(crate::bundle::BundleError::Invalid {
            field: "spiffe_sequence".into(),
            rule: "not a number".into(),
        });
        let status = super::super::grpc_status::command_status(other);
        assert!(status.metadata().get(crate::bundle::REFUSAL_METADATA_KEY).is_none());
    }

    #[test]
    fn unavailability_is_not_held_against_a_caller() {
        assert!(is_refusal(&Status::permission_denied("no")));
        assert!(is_refusal(&Status::invalid_argument("no")));
        assert!(!is_refusal(&Status::unavailable("no leader")));
        assert!(!is_refusal(&Status::deadline_exceeded("slow")));
    }
}
