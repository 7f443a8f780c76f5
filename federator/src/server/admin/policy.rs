//! The admin API's member policies and federation settings: what the operator allows
//! each member (namespaces, locality) and the federation-wide switches.

use federator_proto::admin as pb;

use crate::service::Locality;
use crate::state::{FederationSettings, MemberPolicy, PolicyUpdate};

/// A policy update from an admin request (checked by the caller as the state machine
/// will check it).
#[must_use]
pub fn update_from_request(r: &pb::UpdateClusterPolicyRequest) -> (String, PolicyUpdate) {
    let update = PolicyUpdate {
        grant: r.grant.clone(),
        revoke: r.revoke.clone(),
        locality: r
            .set_locality
            .then(|| Locality { region: r.region.clone(), zone: r.zone.clone() }),
    };
    (r.cluster.clone(), update)
}

/// The update a token's creation carries: its namespaces and locality, if any.
#[must_use]
pub fn update_from_token(r: &pb::CreateTokenRequest) -> Option<PolicyUpdate> {
    let locality = (!r.region.is_empty() || !r.zone.is_empty())
        .then(|| Locality { region: r.region.clone(), zone: r.zone.clone() });
    (!r.namespaces.is_empty() || locality.is_some()).then(|| PolicyUpdate {
        grant: r.namespaces.clone(),
        revoke: Vec::new(),
        locality,
    })
}

/// A member's policy as the admin API shows it.
#[must_use]
pub fn policy_to_proto(cluster: &str, policy: &MemberPolicy) -> pb::ClusterPolicy {
    pb::ClusterPolicy {
        cluster: cluster.to_string(),
        namespaces: policy.namespaces.iter().cloned().collect(),
        region: policy.locality.region.clone(),
        zone: policy.locality.zone.clone(),
    }
}

/// The federation's settings as the admin API shows them.
#[must_use]
pub fn settings_to_proto(settings: &FederationSettings) -> pb::FederationSettings {
    pb::FederationSettings {
        open_exports: settings.open_exports,
        allow_loopback_endpoints: settings.allow_loopback_endpoints,
    }
}
