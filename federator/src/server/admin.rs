//! The admin API of one replica (`federator.admin.v1.Admin`).
//!
//! Callers on the local unix socket are trusted by file permission; callers over mTLS
//! must present the federation's admin identity.

use std::collections::BTreeMap;
use std::time::Instant;

use federator_proto::admin as pb;
use federator_proto::admin::admin_server::Admin;
use federator_raft::{Consistency, ReplicaError};
use openraft::ServerState;
use tonic::{Request, Response, Status};

use super::FederationReplica;
use crate::config::ServerConfig;
use crate::identity::{admin_spiffe_id, peer_spiffe_id};
use crate::state::{Applied, Command, CommandError, command_result};

/// Admin API handler of one replica.
#[derive(Clone)]
pub struct AdminService {
    replica: FederationReplica,
    admin_id: String,
    raft_addr: String,
    api_addr: String,
    data_dir: String,
    started: Instant,
}

impl AdminService {
    /// A handler serving `replica`.
    #[must_use]
    pub fn new(replica: FederationReplica, config: &ServerConfig, started: Instant) -> Self {
        Self {
            replica,
            admin_id: admin_spiffe_id(&config.trust_domain),
            raft_addr: config.advertise_raft.clone(),
            api_addr: config.advertise_api.clone(),
            data_dir: config.data_dir.display().to_string(),
            started,
        }
    }

    /// Refuses callers that are neither on the admin socket nor the admin identity.
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if request
            .extensions()
            .get::<tonic::transport::server::UdsConnectInfo>()
            .is_some()
        {
            return Ok(());
        }
        let peer = request
            .extensions()
            .get::<federator_raft::tls::TlsConnectInfo>()
            .and_then(|info| info.peer_certificate.as_ref())
            .and_then(|cert| peer_spiffe_id(cert.der()));
        match peer {
            Some(id) if id == self.admin_id => Ok(()),
            Some(id) => Err(Status::permission_denied(format!(
                "admin API: caller {id} is not the admin identity {}",
                self.admin_id
            ))),
            None => Err(Status::unauthenticated(
                "admin API: a client certificate with the admin SPIFFE ID is required",
            )),
        }
    }

    fn status(&self) -> pb::ReplicaStatus {
        let m = self.replica.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let (replicas, (digest_index, digest)) = {
            let state = self.replica.state();
            (state.read(|s| s.replicas.clone()), state.digest())
        };
        let member = |id: u64, addr: &str| pb::MemberAddr {
            id,
            addr: addr.to_string(),
            api_addr: replicas
                .get(&id)
                .map(|r| r.api_addr.clone())
                .unwrap_or_default(),
        };
        let voters: Vec<_> = membership
            .voter_ids()
            .map(|id| member(id, membership.get_node(&id).map_or("", |n| n.addr.as_str())))
            .collect();
        let learners: Vec<_> = membership
            .learner_ids()
            .map(|id| member(id, membership.get_node(&id).map_or("", |n| n.addr.as_str())))
            .collect();
        let role = match m.state {
            ServerState::Leader => pb::Role::Leader,
            ServerState::Follower => pb::Role::Follower,
            ServerState::Candidate => pb::Role::Candidate,
            ServerState::Learner => pb::Role::Learner,
            ServerState::Shutdown => pb::Role::Shutdown,
        };
        let matched: BTreeMap<u64, u64> = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, log)| (*id, log.map_or(0, |l| l.index)))
                    .collect()
            })
            .unwrap_or_default();
        let applied = m.last_applied.map_or(0, |l| l.index);
        pb::ReplicaStatus {
            id: m.id,
            raft_addr: self.raft_addr.clone(),
            api_addr: self.api_addr.clone(),
            pid: std::process::id(),
            role: role.into(),
            term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            has_leader: m.current_leader.is_some(),
            last_log_index: m.last_log_index.unwrap_or(0),
            // On the leader, the commit index is the highest index a quorum matched; a
            // follower reports what it has applied (it trails commit by one apply batch).
            commit_index: if m.state == ServerState::Leader {
                quorum_index(&matched, membership.voter_ids().collect(), applied)
            } else {
                applied
            },
            applied_index: applied,
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            voters,
            learners,
            matched: matched.into_iter().collect(),
            state_digest: hex::encode(digest),
            digest_index: digest_index.map_or(0, |l| l.index),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            data_dir: self.data_dir.clone(),
        }
    }
}

/// The highest index matched by a majority of `voters`.
fn quorum_index(matched: &BTreeMap<u64, u64>, voters: Vec<u64>, fallback: u64) -> u64 {
    if voters.is_empty() {
        return fallback;
    }
    let mut indexes: Vec<u64> = voters
        .iter()
        .map(|id| matched.get(id).copied().unwrap_or(0))
        .collect();
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    indexes[voters.len() / 2]
}

/// Maps a replica error to the gRPC status an operator should see.
pub fn replica_status(error: ReplicaError) -> Status {
    match error {
        ReplicaError::NotLeader {
            leader_id,
            ref leader_addr,
            ..
        } => {
            let mut status = Status::failed_precondition(error.to_string());
            if let Ok(v) = leader_id.to_string().parse() {
                status.metadata_mut().insert("x-leader-id", v);
            }
            if let Ok(v) = leader_addr.parse() {
                status.metadata_mut().insert("x-leader-addr", v);
            }
            status
        }
        ReplicaError::NoLeader | ReplicaError::Forward { .. } => {
            Status::unavailable(error.to_string())
        }
        ReplicaError::NotInitialized => Status::failed_precondition(error.to_string()),
        ReplicaError::Timeout(..) => Status::deadline_exceeded(error.to_string()),
        ReplicaError::Membership(_) | ReplicaError::Config(_) => {
            Status::failed_precondition(error.to_string())
        }
        _ => Status::internal(error.to_string()),
    }
}

fn command_status(error: CommandError) -> Status {
    match error {
        CommandError::Invalid { .. } => Status::invalid_argument(error.to_string()),
        _ => Status::internal(error.to_string()),
    }
}

fn consistency(value: i32) -> Consistency {
    match pb::Consistency::try_from(value) {
        Ok(pb::Consistency::Stale) => Consistency::Stale,
        _ => Consistency::Linearizable,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
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
        let members = request
            .into_inner()
            .members
            .into_iter()
            .map(|m| (m.id, m.addr))
            .collect();
        self.replica
            .initialize(members)
            .await
            .map_err(replica_status)?;
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
        if r.addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "addr: {:?} is not an IP:port address",
                r.addr
            )));
        }
        let index = self
            .replica
            .add_member(r.id, r.addr, r.learner_only)
            .await
            .map_err(replica_status)?;
        Ok(Response::new(self.membership_response(index)))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.authorize(&request)?;
        let id = request.into_inner().id;
        let index = self
            .replica
            .remove_member(id)
            .await
            .map_err(replica_status)?;
        if let Err(error) = self
            .replica
            .write(Command::UnregisterReplica { id }.encode())
            .await
        {
            tracing::warn!(%error, replica = id, "removed replica stays registered");
        }
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
            .write(
                Command::PutProbe {
                    key: r.key,
                    value: r.value,
                }
                .encode(),
            )
            .await
            .map_err(replica_status)?;
        match command_result(&outcome.response).map_err(command_status)? {
            Ok(Applied::Probe { version }) => Ok(Response::new(pb::PutResponse {
                index: outcome.index,
                version,
            })),
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
            .read(consistency(r.consistency), |s| {
                s.probes.get(&r.key).cloned()
            })
            .await
            .map_err(replica_status)?;
        Ok(Response::new(match value {
            Some(v) => pb::GetResponse {
                found: true,
                value: v.value,
                version: v.version,
                applied_index,
            },
            None => pb::GetResponse {
                found: false,
                applied_index,
                ..Default::default()
            },
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
        Ok(Response::new(pb::ListProbesResponse {
            entries,
            applied_index,
        }))
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
        let snapshot_index = self
            .replica
            .snapshot_now(purge)
            .await
            .map_err(replica_status)?;
        Ok(Response::new(pb::TriggerSnapshotResponse {
            snapshot_index,
        }))
    }
}

impl AdminService {
    fn membership_response(&self, log_index: u64) -> pb::MembershipResponse {
        let status = self.status();
        pb::MembershipResponse {
            voters: status.voters,
            learners: status.learners,
            log_index,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_index_is_the_majority_match() {
        let matched = BTreeMap::from([(1, 10), (2, 7), (3, 3)]);
        assert_eq!(quorum_index(&matched, vec![1, 2, 3], 0), 7);
        let matched = BTreeMap::from([(1, 10), (2, 9), (3, 3), (4, 2), (5, 1)]);
        assert_eq!(quorum_index(&matched, vec![1, 2, 3, 4, 5], 0), 3);
    }
}
