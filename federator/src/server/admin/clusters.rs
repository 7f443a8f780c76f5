//! The admin API's view of a member cluster: its bundle, lease, exports and policy, and
//! which members applied which sequence of a bundle (a rotation's progress).

use federator_proto::admin as pb;

use super::{policy, services};
use crate::state::{FederationState, Member};

pub(super) fn cluster_view(
    s: &FederationState,
    m: &Member,
    ages: &services::LeaseAges,
) -> pb::Cluster {
    let bundle = s.bundles.get(&m.trust_domain);
    let status = match bundle_status(s, &m.trust_domain) {
        Some(b) if !b.complete => {
            let applied = b.members.iter().filter(|a| a.applied_sequence >= b.sequence).count();
            format!(
                "rotating ({applied}/{} members applied sequence {})",
                b.members.len(),
                b.sequence
            )
        }
        _ => "active".to_string(),
    };
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    pb::Cluster {
        name: m.cluster.clone(),
        trust_domain: m.trust_domain.clone(),
        agent_id: m.agent_id.clone(),
        joined_at: m.joined_at,
        bundle_sequence: bundle.map_or(0, |b| b.bundle.sequence),
        bundle_digest: bundle.map(|b| b.digest.clone()).unwrap_or_default(),
        bundle_updated_at: bundle.map_or(0, |b| b.updated_at),
        x509_authorities: bundle.map_or(0, |b| count(b.bundle.x509_authorities.len())),
        jwt_authorities: bundle.map_or(0, |b| count(b.bundle.jwt_authorities.len())),
        status,
        lease: Some(services::lease_info(s, &m.cluster, ages)),
        exports: count(s.services.values().filter(|r| r.exports.contains_key(&m.cluster)).count()),
        policy: Some(policy::policy_to_proto(&m.cluster, &s.policy_of(&m.cluster))),
    }
}

/// Which members applied which sequence of `td`'s bundle, and whether all have the newest.
pub(super) fn bundle_status(s: &FederationState, td: &str) -> Option<pb::BundleStatusResponse> {
    let stored = s.bundles.get(td)?;
    let owner = s.member_by_trust_domain(td).map(|m| m.cluster.clone()).unwrap_or_default();
    let members: Vec<pb::MemberAck> = s
        .members
        .values()
        .filter(|m| m.cluster != owner)
        .map(|m| {
            let ack = stored.acks.get(&m.cluster);
            pb::MemberAck {
                cluster: m.cluster.clone(),
                applied_sequence: ack.map_or(0, |a| a.sequence),
                applied_at: ack.map_or(0, |a| a.at),
                lease_live: s.is_live(&m.cluster),
            }
        })
        .collect();
    let blocking: Vec<String> = members
        .iter()
        .filter(|m| m.applied_sequence < stored.bundle.sequence)
        .map(|m| m.cluster.clone())
        .collect();
    Some(pb::BundleStatusResponse {
        trust_domain: td.to_string(),
        owner,
        sequence: stored.bundle.sequence,
        updated_at: stored.updated_at,
        members,
        complete: blocking.is_empty(),
        blocking,
    })
}
