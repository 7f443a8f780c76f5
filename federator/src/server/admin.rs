//! The admin API of one replica (`federator.admin.v1.Admin`).
//!
//! Callers on the local unix socket are trusted by file permission; callers over mTLS
//! must present the federation's admin identity.

mod authorize;
mod backup;
pub(super) mod calls;
mod clusters;
mod policy;
mod services;
mod status;
mod tokens;

use std::time::Instant;

use federator_proto::admin as pb;
use federator_proto::admin::admin_server::Admin;
use federator_raft::{Consistency, ReplicaError};
use tonic::{Request, Response, Status};

use super::FederationReplica;
use super::config::ServerConfig;
use super::grpc_status::{command_status, replica_status};
use crate::identity::admin_spiffe_id;
use crate::service::ServiceKey;
use crate::state::{Applied, Command, command_result};
use clusters::{bundle_status, cluster_view};

/// Admin API handler of one replica.
#[derive(Clone)]
pub struct AdminService {
    replica: FederationReplica,
    federation_ca: std::path::PathBuf,
    ca_roots: std::sync::Arc<Vec<Vec<u8>>>,
    /// Admin chains verified recently (SHA-256 of the chain → when), so that a busy
    /// operator connection does not pay a signature check per call.
    verified: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<[u8; 32], Instant>>>,
    admin_id: String,
    raft_addr: String,
    api_addr: String,
    data_dir: String,
    started: Instant,
    /// The federation's own trust domain: no member may hold it.
    trust_domain: String,
    /// Refusals on their way to the audit trail.
    refusals: std::sync::Arc<super::RefusalRecorder>,
}

impl AdminService {
    /// A handler serving `replica`.
    #[must_use]
    pub fn new(
        replica: FederationReplica,
        config: &ServerConfig,
        ca_roots: Vec<Vec<u8>>,
        started: Instant,
        refusals: std::sync::Arc<super::RefusalRecorder>,
    ) -> Self {
        Self {
            trust_domain: config.trust_domain.clone(),
            refusals,
            ca_roots: std::sync::Arc::new(ca_roots),
            verified: std::sync::Arc::default(),
            replica,
            federation_ca: config.tls.ca.clone(),
            admin_id: admin_spiffe_id(&config.trust_domain),
            raft_addr: config.advertise_raft.clone(),
            api_addr: config.advertise_api.clone(),
            data_dir: config.data_dir.display().to_string(),
            started,
        }
    }
}

/// What an applied command's encoded `response` says, refusals as gRPC statuses.
fn applied(response: &[u8]) -> Result<Applied, Status> {
    command_result(response).map_err(command_status)?.map_err(command_status)
}

/// The consistency a read asked for (linearizable unless it asked for stale).
fn consistency(value: i32) -> Consistency {
    match pb::Consistency::try_from(value) {
        Ok(pb::Consistency::Stale) => Consistency::Stale,
        _ => Consistency::Linearizable,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    type SaveSnapshotStream = backup::SnapshotStream;

    async fn save_snapshot(
        &self,
        request: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        self.authorize(&request)?;
        let consistency = consistency(request.into_inner().consistency);
        backup::save(&self.replica, consistency).await.map(Response::new)
    }

    async fn restore_snapshot(
        &self,
        request: Request<tonic::Streaming<pb::RestoreSnapshotRequest>>,
    ) -> Result<Response<pb::RestoreSnapshotResponse>, Status> {
        self.authorize(&request)?;
        backup::restore(&self.replica, request.into_inner()).await.map(Response::new)
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::ReplicaStatus>, Status> {
        self.authorize(&request)?;
        Ok(Response::new(self.status()))
    }

    async fn initialize(
        &self,
        request: Request<pb::InitializeRequest>,
    ) -> Result<Response<pb::InitializeResponse>, Status> {
        self.authorize(&request)?;
        if self.replica.is_initialized().await.map_err(replica_status)? {
            return Err(Status::already_exists(
                "this replica already belongs to a group (its log is not empty): there is \
                 nothing to initialize; add replicas with `federator raft add-member`",
            ));
        }
        let members = request.into_inner().members.into_iter().map(|m| (m.id, m.addr)).collect();
        self.replica.initialize(members).await.map_err(replica_status)?;
        Ok(Response::new(pb::InitializeResponse {}))
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        if r.id == 0 {
            return Err(Status::invalid_argument("id: must be a positive integer"));
        }
        // A DNS name too: in Kubernetes the replicas' raft addresses are their pods'
        // stable names (`federator-1.federator-headless.<namespace>.svc...:7001`).
        if let Err(rule) = crate::token::check_endpoint(&r.addr) {
            return Err(Status::invalid_argument(format!(
                "addr: {:?}: {rule} (the replica's raft address, HOST:PORT)",
                r.addr
            )));
        }
        let index =
            self.replica.add_member(r.id, r.addr, r.learner_only).await.map_err(replica_status)?;
        Ok(Response::new(self.membership_response(index)))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.authorize(&request)?;
        let id = request.into_inner().id;
        // Unregister while the replica is still a member: once removed, a replica that led
        // the group can no longer commit anything. Readers also filter the registry by the
        // current membership, so a stale registration is harmless.
        if let Err(error) = self.replica.write(Command::UnregisterReplica { id }.encode()).await {
            tracing::warn!(%error, replica = id, "replica stays registered");
        }
        let index = self.replica.remove_member(id).await.map_err(replica_status)?;
        Ok(Response::new(self.membership_response(index)))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        crate::state::validate_probe_key(&r.key).map_err(command_status)?;
        let outcome = self
            .replica
            .write(Command::PutProbe { key: r.key, value: r.value }.encode())
            .await
            .map_err(replica_status)?;
        match command_result(&outcome.response).map_err(command_status)? {
            Ok(Applied::Probe { version }) => {
                Ok(Response::new(pb::PutResponse { index: outcome.index, version }))
            }
            Ok(other) => Err(Status::internal(format!("unexpected result {other:?}"))),
            Err(error) => Err(command_status(error)),
        }
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let (value, applied_index) = self
            .replica
            .read(consistency(r.consistency), |s| s.probes.get(&r.key).cloned())
            .await
            .map_err(replica_status)?;
        Ok(Response::new(match value {
            Some(v) => {
                pb::GetResponse { found: true, value: v.value, version: v.version, applied_index }
            }
            None => pb::GetResponse { found: false, applied_index, ..Default::default() },
        }))
    }

    async fn list_probes(
        &self,
        request: Request<pb::ListProbesRequest>,
    ) -> Result<Response<pb::ListProbesResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let (entries, applied_index) = self
            .replica
            .read(consistency(r.consistency), |s| {
                s.probes
                    .range(r.prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&r.prefix))
                    .map(|(k, v)| pb::ProbeEntry {
                        key: k.clone(),
                        value: v.value.clone(),
                        version: v.version,
                    })
                    .collect()
            })
            .await
            .map_err(replica_status)?;
        Ok(Response::new(pb::ListProbesResponse { entries, applied_index }))
    }

    async fn digest(
        &self,
        request: Request<pb::DigestRequest>,
    ) -> Result<Response<pb::DigestResponse>, Status> {
        self.authorize(&request)?;
        let (applied, digest) = self.replica.state().digest();
        Ok(Response::new(pb::DigestResponse {
            digest: hex::encode(digest),
            applied_index: applied.map_or(0, |l| l.index),
        }))
    }

    async fn trigger_snapshot(
        &self,
        request: Request<pb::TriggerSnapshotRequest>,
    ) -> Result<Response<pb::TriggerSnapshotResponse>, Status> {
        self.authorize(&request)?;
        let purge = request.into_inner().purge;
        let snapshot_index = self.replica.snapshot_now(purge).await.map_err(replica_status)?;
        Ok(Response::new(pb::TriggerSnapshotResponse { snapshot_index }))
    }
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        calls::record_target(&r.cluster, Some(&r.trust_domain));
        crate::token::validate_cluster_name(&r.cluster)
            .map_err(|e| Status::invalid_argument(format!("cluster: {e}")))?;
        crate::identity::validate_trust_domain(&r.trust_domain)
            .map_err(|e| Status::invalid_argument(format!("trust_domain: {e}")))?;
        if r.trust_domain == self.trust_domain {
            return Err(Status::invalid_argument(format!(
                "trust_domain: {} is the federation's own trust domain (its replicas and \
                 administrators); give the cluster its own",
                r.trust_domain
            )));
        }
        let ttl = if r.ttl_seconds == 0 { 3600 } else { r.ttl_seconds };
        if ttl > MAX_TOKEN_TTL_SECS {
            return Err(Status::invalid_argument(format!(
                "ttl: at most {} days",
                MAX_TOKEN_TTL_SECS / 86_400
            )));
        }
        let members: std::collections::BTreeSet<u64> = {
            let m = self.replica.metrics().borrow().membership_config.clone();
            m.membership().nodes().map(|(id, _)| *id).collect()
        };
        let (endpoints, member, holder) = self.replica.state().read(|s| {
            (
                s.replicas
                    .iter()
                    .filter(|(id, _)| members.contains(id))
                    .map(|(_, r)| r.api_addr.clone())
                    .collect::<Vec<_>>(),
                s.members.contains_key(&r.cluster),
                s.member_by_trust_domain(&r.trust_domain).map(|m| m.cluster.clone()),
            )
        });
        if member {
            return Err(Status::already_exists(format!(
                "cluster {} is already a member; remove it first",
                r.cluster
            )));
        }
        if let Some(holder) = holder
            && holder != r.cluster
        {
            return Err(Status::already_exists(format!(
                "trust_domain: {} is held by cluster {holder}; a trust domain belongs to one \
                 member",
                r.trust_domain
            )));
        }
        let ca_pem = std::fs::read_to_string(&self.federation_ca).map_err(|e| {
            Status::internal(format!(
                "reading the federation CA {}: {e}",
                self.federation_ca.display()
            ))
        })?;
        let now = crate::clock::unix_now();
        let expires_at = now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX / 2));
        let token = crate::token::JoinToken::generate(
            r.cluster.clone(),
            r.trust_domain.clone(),
            endpoints.clone(),
            ca_pem,
            expires_at,
        );
        // The grants and locality go in first: a token never admits a member before what
        // it is allowed is recorded.
        if let Some(update) = policy::update_from_token(&r) {
            let command = Command::UpdateMemberPolicy { cluster: r.cluster.clone(), update, now };
            self.replica.state().read(|s| s.check(&command)).map_err(command_status)?;
            self.propose(command).await?;
        }
        self.propose(Command::CreateToken {
            secret_hash: token.secret_hash(),
            cluster: r.cluster,
            trust_domain: r.trust_domain,
            expires_at,
            now,
        })
        .await?;
        Ok(Response::new(pb::CreateTokenResponse { token: token.encode(), expires_at, endpoints }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.authorize(&request)?;
        let c = consistency(request.into_inner().consistency);
        let now = crate::clock::unix_now();
        let (tokens, _) =
            self.replica.read(c, |s| tokens::list(s, now)).await.map_err(replica_status)?;
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let now = crate::clock::unix_now();
        // Resolved on a linearizable read, checked as the state machine will check it,
        // then proposed: a command the cluster version does not allow yet is refused
        // before it reaches the log (FailedPrecondition, naming the replicas behind).
        let (named, _) = self
            .replica
            .read(Consistency::Linearizable, |s| {
                tokens::resolve(s, &r, now).map(|hashes| {
                    let info = |h: &String| s.tokens.get(h).map(|t| tokens::info(s, h, t, now));
                    hashes.into_iter().map(|h| (info(&h), h)).collect::<Vec<_>>()
                })
            })
            .await
            .map_err(replica_status)?;
        let mut revoked = Vec::new();
        for (listed, secret_hash) in named? {
            let command = Command::RevokeToken { secret_hash, actor: "admin".into(), now };
            self.replica.state().read(|s| s.check(&command)).map_err(command_status)?;
            self.propose(command).await?;
            revoked.extend(listed);
        }
        Ok(Response::new(pb::RevokeTokenResponse { revoked }))
    }

    async fn update_cluster_policy(
        &self,
        request: Request<pb::UpdateClusterPolicyRequest>,
    ) -> Result<Response<pb::ClusterPolicy>, Status> {
        self.authorize(&request)?;
        let (cluster, update) = policy::update_from_request(request.get_ref());
        calls::record_target(&cluster, None);
        let command = Command::UpdateMemberPolicy {
            cluster: cluster.clone(),
            update,
            now: crate::clock::unix_now(),
        };
        self.replica.state().read(|s| s.check(&command)).map_err(command_status)?;
        self.propose(command).await?;
        let policy = self.replica.state().read(|s| s.policy_of(&cluster));
        Ok(Response::new(policy::policy_to_proto(&cluster, &policy)))
    }

    async fn get_settings(
        &self,
        request: Request<pb::GetSettingsRequest>,
    ) -> Result<Response<pb::FederationSettings>, Status> {
        self.authorize(&request)?;
        let c = consistency(request.into_inner().consistency);
        let (settings, _) =
            self.replica.read(c, |s| s.settings.clone()).await.map_err(replica_status)?;
        Ok(Response::new(policy::settings_to_proto(&settings)))
    }

    async fn update_settings(
        &self,
        request: Request<pb::UpdateSettingsRequest>,
    ) -> Result<Response<pb::FederationSettings>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        self.propose(Command::UpdateSettings {
            open_exports: r.open_exports,
            allow_loopback_endpoints: r.allow_loopback_endpoints,
            now: crate::clock::unix_now(),
        })
        .await?;
        let settings = self.replica.state().read(|s| s.settings.clone());
        Ok(Response::new(policy::settings_to_proto(&settings)))
    }

    async fn list_clusters(
        &self,
        request: Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ListClustersResponse>, Status> {
        self.authorize(&request)?;
        let c = consistency(request.into_inner().consistency);
        let ages = services::lease_ages(&self.replica).await;
        let ((clusters, revision), _) = self
            .replica
            .read(c, |s| {
                (
                    s.members.values().map(|m| cluster_view(s, m, &ages)).collect(),
                    s.changes.revision(),
                )
            })
            .await
            .map_err(replica_status)?;
        Ok(Response::new(pb::ListClustersResponse { clusters, revision }))
    }

    async fn get_cluster(
        &self,
        request: Request<pb::GetClusterRequest>,
    ) -> Result<Response<pb::Cluster>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        calls::record_target(&r.name, None);
        let ages = services::lease_ages(&self.replica).await;
        let (cluster, _) = self
            .replica
            .read(consistency(r.consistency), |s| {
                s.members.get(&r.name).map(|m| cluster_view(s, m, &ages))
            })
            .await
            .map_err(replica_status)?;
        cluster
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("cluster {} is not a member", r.name)))
    }

    async fn remove_cluster(
        &self,
        request: Request<pb::RemoveClusterRequest>,
    ) -> Result<Response<pb::RemoveClusterResponse>, Status> {
        self.authorize(&request)?;
        let cluster = request.into_inner().name;
        calls::record_target(&cluster, None);
        let trust_domain = self
            .replica
            .state()
            .read(|s| s.members.get(&cluster).map(|m| m.trust_domain.clone()))
            .unwrap_or_default();
        let now = crate::clock::unix_now();
        let serve_until = now.saturating_add(crate::state::REMOVED_RETENTION_SECS);
        let serving = Command::RemoveMemberServingEmpty {
            cluster: cluster.clone(),
            actor: "admin".into(),
            now,
            serve_until,
        };
        // A voter of a build before removed trust domains were kept cannot apply that:
        // remove the member the old way (its trust domain answers 404 at once).
        let (applied, served_empty_until) = match self.replica.write(serving.encode()).await {
            Err(ReplicaError::VersionGate { .. }) => {
                let plain = Command::RemoveMember { cluster, actor: "admin".into(), now };
                (self.propose(plain).await?, 0)
            }
            written => (applied(&written.map_err(replica_status)?.response)?, serve_until),
        };
        let revision = match applied {
            Applied::Revision { revision } => revision,
            _ => 0,
        };
        Ok(Response::new(pb::RemoveClusterResponse { revision, served_empty_until, trust_domain }))
    }

    async fn get_bundle(
        &self,
        request: Request<pb::GetBundleRequest>,
    ) -> Result<Response<pb::GetBundleResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        calls::record_target("", Some(&r.trust_domain));
        let format = pb::BundleFormat::try_from(r.format).unwrap_or(pb::BundleFormat::Spiffe);
        let (found, _) = self
            .replica
            .read(consistency(r.consistency), |s| s.bundles.get(&r.trust_domain).cloned())
            .await
            .map_err(replica_status)?;
        let stored = found.ok_or_else(|| {
            Status::not_found(format!("no bundle for trust domain {}", r.trust_domain))
        })?;
        let document = match format {
            pb::BundleFormat::Pem => stored.bundle.to_pem(),
            pb::BundleFormat::Spiffe => stored.bundle.to_spiffe_json(),
        };
        Ok(Response::new(pb::GetBundleResponse {
            trust_domain: r.trust_domain,
            sequence: stored.bundle.sequence,
            digest: stored.digest,
            document,
            updated_at: stored.updated_at,
            refresh_hint_seconds: stored.bundle.refresh_hint_secs.unwrap_or(0),
        }))
    }

    async fn bundle_status(
        &self,
        request: Request<pb::BundleStatusRequest>,
    ) -> Result<Response<pb::BundleStatusResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        calls::record_target("", Some(&r.trust_domain));
        let (status, _) = self
            .replica
            .read(consistency(r.consistency), |s| bundle_status(s, &r.trust_domain))
            .await
            .map_err(replica_status)?;
        status.map(Response::new).ok_or_else(|| {
            Status::not_found(format!("no bundle for trust domain {}", r.trust_domain))
        })
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let limit = match r.limit {
            0 => 100,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let filter = pb::AuditFilter::try_from(r.filter).unwrap_or(pb::AuditFilter::All);
        let ((accepted, refused), _) = self
            .replica
            .read(Consistency::Linearizable, |s| {
                let accepted = match filter {
                    pb::AuditFilter::Refused => Vec::new(),
                    _ => s.audit.newest(limit),
                };
                let refused = match filter {
                    pb::AuditFilter::Accepted => Vec::new(),
                    _ => s.audit.newest_refusals(limit),
                };
                (accepted, refused)
            })
            .await
            .map_err(replica_status)?;
        let mut events: Vec<pb::AuditEvent> = accepted
            .into_iter()
            .map(|e| pb::AuditEvent {
                seq: e.seq,
                at: e.at,
                index: e.index,
                actor: e.actor,
                action: e.action,
                target: e.target,
                accepted: e.refused.is_none(),
                reason: e.refused.unwrap_or_default(),
                count: 1,
                first_at: e.at,
            })
            .chain(refused.into_iter().map(|r| pb::AuditEvent {
                seq: r.seq,
                at: r.last_at,
                index: r.index,
                actor: r.actor,
                action: r.action,
                target: r.target,
                accepted: false,
                reason: r.reason,
                count: r.count,
                first_at: r.first_at,
            }))
            .collect();
        events.sort_by_key(|e| e.seq);
        let skip = events.len().saturating_sub(limit);
        events.drain(..skip);
        Ok(Response::new(pb::ListAuditResponse { events }))
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let ((services, revision), _) = self
            .replica
            .read(consistency(r.consistency), |s| {
                (services::list_services(s, &r.cluster), s.changes.revision())
            })
            .await
            .map_err(replica_status)?;
        Ok(Response::new(pb::ListServicesResponse { services, revision }))
    }

    async fn get_service(
        &self,
        request: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let key = ServiceKey::new(r.namespace, r.name);
        key.validate().map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (service, _) = self
            .replica
            .read(consistency(r.consistency), |s| {
                s.services.get(&key).map(|record| services::service_view(s, &key, record))
            })
            .await
            .map_err(replica_status)?;
        service
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no cluster exports service {key}")))
    }

    async fn list_imports(
        &self,
        request: Request<pb::ListImportsRequest>,
    ) -> Result<Response<pb::ListImportsResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let ages = services::lease_ages(&self.replica).await;
        let (imports, _) = self
            .replica
            .read(consistency(r.consistency), |s| services::list_imports(s, &r.cluster, &ages))
            .await
            .map_err(replica_status)?;
        imports
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("cluster {} is not a member", r.cluster)))
    }
}

/// Longest validity of a join token.
const MAX_TOKEN_TTL_SECS: u64 = 30 * 86_400;

impl AdminService {
    async fn propose(&self, command: Command) -> Result<Applied, Status> {
        let outcome = self.replica.write(command.encode()).await.map_err(replica_status)?;
        applied(&outcome.response)
    }
}
