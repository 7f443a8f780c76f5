//! The admin API's view of services, imports and member leases.

use std::collections::BTreeMap;
use std::time::Duration;

use federator_proto::admin as pb;

use super::super::FederationReplica;
use super::super::leases::{LeaderRequest, LeaderResponse, call_leader};
use crate::service::{
    ServiceKey, condition_to_proto, export_to_proto, import_to_proto, port_to_proto,
};
use crate::state::{FederationState, ServiceRecord};

/// Per cluster: lease id and milliseconds since the leader last heard a keep-alive.
pub type LeaseAges = BTreeMap<String, (u64, Option<u64>)>;

/// Asks the leader how fresh each lease is; empty when it cannot be reached in a second
/// (the rest of the answer does not wait on it).
pub async fn lease_ages(replica: &FederationReplica) -> LeaseAges {
    let asked = tokio::time::timeout(
        Duration::from_secs(1),
        call_leader(replica, &LeaderRequest::LeaseAges),
    )
    .await;
    match asked {
        Ok(Ok(LeaderResponse::Ages(ages))) => ages,
        _ => LeaseAges::new(),
    }
}

/// The lease of `cluster` as operators see it.
pub fn lease_info(s: &FederationState, cluster: &str, ages: &LeaseAges) -> pb::LeaseInfo {
    let Some(lease) = s.leases.get(cluster) else {
        return pb::LeaseInfo { state: "none".into(), last_keepalive_ms: -1, ..Default::default() };
    };
    let state = match (lease.ended_at, lease.revoked) {
        (None, _) => "live",
        (Some(_), true) => "revoked",
        (Some(_), false) => "expired",
    };
    let age = ages
        .get(cluster)
        .filter(|(id, _)| *id == lease.id)
        .and_then(|(_, age)| *age)
        .map_or(-1, |ms| i64::try_from(ms).unwrap_or(i64::MAX));
    pb::LeaseInfo {
        state: state.into(),
        id: lease.id,
        ttl_seconds: lease.ttl_secs,
        granted_at: lease.granted_at,
        ended_at: lease.ended_at.unwrap_or(0),
        last_keepalive_ms: age,
        region: lease.locality.region.clone(),
        zone: lease.locality.zone.clone(),
    }
}

/// A service with every export of it, oldest first.
pub fn service_view(s: &FederationState, key: &ServiceKey, record: &ServiceRecord) -> pb::Service {
    let conflict = record.conflict();
    let merged = crate::service::merge_ports(
        record.oldest_first().into_iter().map(|(c, r)| (c, r.export.ports.as_slice())),
    );
    let exports = record
        .oldest_first()
        .into_iter()
        .map(|(cluster, r)| pb::Export {
            cluster: cluster.to_string(),
            trust_domain: s
                .members
                .get(cluster)
                .map(|m| m.trust_domain.clone())
                .unwrap_or_default(),
            generation: r.generation,
            created_at: r.created_at,
            updated_at: r.updated_at,
            export: Some(export_to_proto(&r.export)),
            ready_endpoints: u32::try_from(r.export.endpoints.iter().filter(|e| e.ready).count())
                .unwrap_or(u32::MAX),
            live: s.is_live(cluster),
            conflicting: conflict.as_ref().is_some_and(|c| c.clusters.iter().any(|l| l == cluster)),
        })
        .collect();
    pb::Service {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        hostname: key.hostname(),
        exports,
        ports: merged.ports.iter().map(port_to_proto).collect(),
        conditions: conflict.iter().map(condition_to_proto).collect(),
        revision: record.revision,
    }
}

/// Every service, or those `cluster` exports.
pub fn list_services(s: &FederationState, cluster: &str) -> Vec<pb::Service> {
    s.services
        .iter()
        .filter(|(_, r)| cluster.is_empty() || r.exports.contains_key(cluster))
        .map(|(k, r)| service_view(s, k, r))
        .collect()
}

/// Every import of `cluster`, with its lease.
pub fn list_imports(
    s: &FederationState,
    cluster: &str,
    ages: &LeaseAges,
) -> Option<pb::ListImportsResponse> {
    s.members.get(cluster)?;
    Some(pb::ListImportsResponse {
        imports: s.imports_for(cluster).iter().map(import_to_proto).collect(),
        revision: s.changes.revision(),
        lease: Some(lease_info(s, cluster, ages)),
    })
}
