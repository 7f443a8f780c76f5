//! What the operator decides about members, apart from what members say about
//! themselves: the namespaces each member may export into, where each member runs, and
//! the federation-wide settings that loosen those rules.
//!
//! A member's exports are checked against its policy: a namespace it was not granted is
//! refused (unless the federation runs with open exports, the MCS "namespace sameness"
//! mode), an endpoint that claims a region or zone outside the member's bound locality is
//! refused, and importers order failover by the exporter's bound locality — never by what
//! an exporter claims. A policy may be set before the member joins (with its token) and
//! goes with the member's removal.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::audit::AuditEvent;
use super::{Applied, CommandError, CommandResult, FederationState};
use crate::service::{Locality, ServiceKey, validate_label};

/// Most namespaces one member may be granted.
pub const MAX_GRANTED_NAMESPACES: usize = 1_000;

/// What the operator allows one member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberPolicy {
    /// Namespaces the member may export into.
    pub namespaces: BTreeSet<String>,
    /// Where the member runs (empty: not bound — its endpoints may claim no locality).
    pub locality: Locality,
}

/// Federation-wide settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationSettings {
    /// Any member may export into any namespace (MCS namespace sameness). Off by default:
    /// only granted namespaces.
    pub open_exports: bool,
    /// Endpoints and gateways at loopback addresses are accepted (single-machine
    /// development and tests). Off by default.
    pub allow_loopback_endpoints: bool,
}

/// A change to one member's policy (see `Command::UpdateMemberPolicy`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyUpdate {
    /// Namespaces to grant.
    pub grant: Vec<String>,
    /// Namespaces to revoke (the member's exports in them are withdrawn).
    pub revoke: Vec<String>,
    /// A new locality to bind, if any.
    pub locality: Option<Locality>,
}

// === impl FederationState ===

impl FederationState {
    /// The policy of `cluster` (empty when the operator set none).
    #[must_use]
    pub fn policy_of(&self, cluster: &str) -> MemberPolicy {
        self.policies.get(cluster).cloned().unwrap_or_default()
    }

    /// Checks a policy update without applying it.
    pub(super) fn check_policy_update(
        cluster: &str,
        update: &PolicyUpdate,
    ) -> Result<(), CommandError> {
        crate::token::validate_cluster_name(cluster)
            .map_err(|e| CommandError::invalid("cluster", &e.to_string()))?;
        if update.grant.len() + update.revoke.len() > MAX_GRANTED_NAMESPACES {
            return Err(CommandError::invalid(
                "namespaces",
                &format!("at most {MAX_GRANTED_NAMESPACES} in one change"),
            ));
        }
        for (field, names) in [("grant", &update.grant), ("revoke", &update.revoke)] {
            for (i, ns) in names.iter().enumerate() {
                validate_label(&format!("{field}[{i}]"), ns)
                    .map_err(|e| CommandError::Invalid { field: e.field, rule: e.rule })?;
            }
        }
        if let Some(locality) = &update.locality {
            validate_bound_locality(locality)?;
        }
        Ok(())
    }

    pub(super) fn apply_policy_update(
        &mut self,
        index: u64,
        cluster: &str,
        update: PolicyUpdate,
        now: i64,
    ) -> CommandResult {
        let target = cluster.to_string();
        if let Err(error) = Self::check_policy_update(cluster, &update) {
            self.audit.record(AuditEvent::new(
                now,
                index,
                "admin",
                "update_policy",
                target,
                Some(error.to_string()),
            ));
            return Err(error);
        }
        let policy = self.policies.entry(cluster.to_string()).or_default();
        let granted = policy.namespaces.len() + update.grant.len();
        if granted > MAX_GRANTED_NAMESPACES {
            return Err(CommandError::invalid(
                "grant",
                &format!("a member holds at most {MAX_GRANTED_NAMESPACES} namespaces"),
            ));
        }
        policy.namespaces.extend(update.grant.iter().cloned());
        for ns in &update.revoke {
            policy.namespaces.remove(ns);
        }
        let locality_changed =
            update.locality.as_ref().is_some_and(|locality| *locality != policy.locality);
        if let Some(locality) = update.locality.clone() {
            policy.locality = locality;
        }
        let mut summary = Vec::new();
        if !update.grant.is_empty() {
            summary.push(format!("grant {}", update.grant.join(",")));
        }
        if !update.revoke.is_empty() {
            summary.push(format!("revoke {}", update.revoke.join(",")));
        }
        if let Some(l) = &update.locality {
            summary.push(format!("locality {}/{}", l.region, l.zone));
        }
        self.audit.record(AuditEvent::new(
            now,
            index,
            "admin",
            "update_policy",
            format!("{cluster}: {}", summary.join("; ")),
            None,
        ));
        // Exports in revoked namespaces are withdrawn; a new locality reorders every
        // import of the member's services (and its own imports).
        let revoked: BTreeSet<&String> = update.revoke.iter().collect();
        let mut touched: Vec<ServiceKey> = Vec::new();
        for (key, record) in &mut self.services {
            let exports_here = record.exports.contains_key(cluster);
            if exports_here && revoked.contains(&key.namespace) {
                record.exports.remove(cluster);
                touched.push(key.clone());
            } else if locality_changed {
                touched.push(key.clone());
            }
        }
        if touched.is_empty() {
            return Ok(Applied::Done);
        }
        let revision = self.touch_services(&touched);
        self.drop_empty_services();
        Ok(Applied::Revision { revision })
    }

    pub(super) fn apply_settings(
        &mut self,
        index: u64,
        open_exports: Option<bool>,
        allow_loopback_endpoints: Option<bool>,
        now: i64,
    ) -> CommandResult {
        if let Some(open) = open_exports {
            self.settings.open_exports = open;
        }
        if let Some(allow) = allow_loopback_endpoints {
            self.settings.allow_loopback_endpoints = allow;
        }
        self.audit.record(AuditEvent::new(
            now,
            index,
            "admin",
            "update_settings",
            format!(
                "open_exports={} allow_loopback_endpoints={}",
                self.settings.open_exports, self.settings.allow_loopback_endpoints
            ),
            None,
        ));
        Ok(Applied::Done)
    }

    /// Whether `cluster`'s policy lets it export `export`: a granted namespace (or open
    /// exports), endpoints within its bound locality, addresses the federation accepts.
    pub(super) fn check_export_policy(
        &self,
        cluster: &str,
        export: &crate::service::ServiceExport,
    ) -> Result<(), CommandError> {
        let policy = self.policies.get(cluster);
        let ns = &export.key.namespace;
        let granted = policy.is_some_and(|p| p.namespaces.contains(ns));
        if !granted && !self.settings.open_exports {
            return Err(CommandError::PermissionDenied(format!(
                "cluster {cluster} may not export into namespace {ns}; the operator grants it \
                 with `federator cluster grant {cluster} --namespace {ns}`"
            )));
        }
        let bound = policy.map(|p| &p.locality).cloned().unwrap_or_default();
        for (i, endpoint) in export.endpoints.iter().enumerate() {
            let outside = |claimed: &str, own: &str| !claimed.is_empty() && claimed != own;
            if outside(&endpoint.region, &bound.region) {
                return Err(CommandError::PermissionDenied(format!(
                    "endpoints[{i}].region: {:?} is outside cluster {cluster}'s region {:?} \
                     (bound by the operator; leave it empty to use it)",
                    endpoint.region, bound.region
                )));
            }
            if !bound.zone.is_empty() && outside(&endpoint.zone, &bound.zone) {
                return Err(CommandError::PermissionDenied(format!(
                    "endpoints[{i}].zone: {:?} is outside cluster {cluster}'s zone {:?}",
                    endpoint.zone, bound.zone
                )));
            }
            if bound.region.is_empty() && !endpoint.zone.is_empty() {
                return Err(CommandError::PermissionDenied(format!(
                    "endpoints[{i}].zone: cluster {cluster} has no locality bound by the \
                     operator, so its endpoints may claim none (`federator cluster locality`)"
                )));
            }
        }
        export
            .check_addresses(self.settings.allow_loopback_endpoints)
            .map_err(|e| CommandError::PermissionDenied(e.to_string()))
    }

    /// Drops the policy of a removed member.
    pub(super) fn forget_policy(&mut self, cluster: &str) {
        self.policies.remove(cluster);
    }
}

/// Checks a locality an operator binds: each part at most 63 printable characters, and a
/// zone only within a region.
fn validate_bound_locality(locality: &Locality) -> Result<(), CommandError> {
    for (field, value) in [("region", &locality.region), ("zone", &locality.zone)] {
        if value.len() > 63 || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CommandError::invalid(
                field,
                "at most 63 printable characters without spaces",
            ));
        }
    }
    if locality.region.is_empty() && !locality.zone.is_empty() {
        return Err(CommandError::invalid("zone", "a zone is bound only within a region"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use federator_raft::StateMachine as _;

    use super::*;
    use crate::service::{Endpoint, ExportMode, ExportScope, Protocol, ServiceExport, ServicePort};
    use crate::state::Command;
    use crate::state::test_support::{Cluster, apply, now};

    /// A state with cluster `a` joined under the secure defaults (no grant, no locality).
    fn strict() -> (FederationState, Cluster) {
        let a = Cluster::new("a.test");
        let mut state = crate::state::test_support::joined(&[("a", &a)]);
        state.settings = FederationSettings::default();
        state.policies.clear();
        (state, a)
    }

    fn export(ns: &str, address: &str, region: &str, zone: &str) -> ServiceExport {
        ServiceExport {
            key: ServiceKey::new(ns, "echo"),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                protocol: Protocol::Tcp,
                app_protocol: String::new(),
            }],
            endpoints: vec![Endpoint {
                address: address.parse::<IpAddr>().expect("address"),
                ports: Vec::new(),
                zone: zone.into(),
                region: region.into(),
                weight: 1,
                ready: true,
            }],
            identities: vec!["spiffe://a.test/ns/demo/sa/echo".into()],
            scope: ExportScope::AllMembers,
            mode: ExportMode::Direct,
        }
    }

    fn do_export(state: &mut FederationState, index: u64, e: ServiceExport) -> CommandResult {
        apply(state, index, Command::ExportService { cluster: "a".into(), export: e, now: now() })
    }

    fn update(state: &mut FederationState, index: u64, update: PolicyUpdate) -> CommandResult {
        apply(state, index, Command::UpdateMemberPolicy { cluster: "a".into(), update, now: now() })
    }

    fn grant(ns: &str) -> PolicyUpdate {
        PolicyUpdate { grant: vec![ns.into()], ..PolicyUpdate::default() }
    }

    #[test]
    fn only_granted_namespaces_take_exports_unless_exports_are_open() {
        let (mut state, _a) = strict();
        let err =
            do_export(&mut state, 10, export("demo", "192.0.2.1", "", "")).expect_err("ungranted");
        assert!(err.to_string().contains("federator cluster grant a --namespace demo"), "{err}");
        update(&mut state, 11, grant("demo")).expect("grant");
        do_export(&mut state, 12, export("demo", "192.0.2.1", "", "")).expect("granted");
        assert!(do_export(&mut state, 13, export("other", "192.0.2.1", "", "")).is_err());
        state.settings.open_exports = true;
        do_export(&mut state, 14, export("other", "192.0.2.1", "", "")).expect("open exports");
    }

    #[test]
    fn revoking_a_namespace_withdraws_its_exports_at_a_new_revision() {
        let (mut state, _a) = strict();
        update(&mut state, 10, grant("demo")).expect("grant");
        do_export(&mut state, 11, export("demo", "192.0.2.1", "", "")).expect("export");
        let before = state.changes.revision();
        let revoke = PolicyUpdate { revoke: vec!["demo".into()], ..PolicyUpdate::default() };
        let applied = update(&mut state, 12, revoke).expect("revoke");
        assert!(matches!(applied, Applied::Revision { revision } if revision > before));
        assert!(state.services.is_empty(), "the export went with the grant");
        assert!(state.policy_of("a").namespaces.is_empty());
    }

    #[test]
    fn endpoints_claim_no_locality_outside_the_bound_one() {
        let (mut state, _a) = strict();
        update(&mut state, 10, grant("demo")).expect("grant");
        let err =
            do_export(&mut state, 11, export("demo", "192.0.2.1", "r1", "")).expect_err("unbound");
        assert!(err.to_string().contains("endpoints[0].region"), "{err}");
        let err =
            do_export(&mut state, 12, export("demo", "192.0.2.1", "", "z1")).expect_err("unbound");
        assert!(err.to_string().contains("endpoints[0].zone"), "{err}");
        let bind = |region: &str, zone: &str| PolicyUpdate {
            locality: Some(Locality { region: region.into(), zone: zone.into() }),
            ..PolicyUpdate::default()
        };
        update(&mut state, 13, bind("r1", "")).expect("region");
        do_export(&mut state, 14, export("demo", "192.0.2.1", "r1", "any-zone")).expect("within");
        assert!(do_export(&mut state, 15, export("demo", "192.0.2.1", "r2", "")).is_err());
        update(&mut state, 16, bind("r1", "z1")).expect("zone");
        assert!(do_export(&mut state, 17, export("demo", "192.0.2.1", "r1", "z2")).is_err());
        do_export(&mut state, 18, export("demo", "192.0.2.1", "", "z1")).expect("its zone");
        assert!(update(&mut state, 19, bind("", "z1")).is_err(), "a zone needs a region");
    }

    #[test]
    fn loopback_endpoints_need_the_setting_and_metadata_addresses_never_pass() {
        let (mut state, _a) = strict();
        update(&mut state, 10, grant("demo")).expect("grant");
        assert!(do_export(&mut state, 11, export("demo", "127.0.0.1", "", "")).is_err());
        assert!(do_export(&mut state, 12, export("demo", "169.254.169.254", "", "")).is_err());
        state.settings.allow_loopback_endpoints = true;
        do_export(&mut state, 13, export("demo", "127.0.0.1", "", "")).expect("allowed");
        assert!(do_export(&mut state, 14, export("demo", "169.254.169.254", "", "")).is_err());
    }

    #[test]
    fn a_removed_member_loses_its_policy() {
        let (mut state, _a) = strict();
        update(&mut state, 10, grant("demo")).expect("grant");
        let remove =
            Command::RemoveMember { cluster: "a".into(), actor: "admin".into(), now: now() };
        apply(&mut state, 11, remove).expect("remove");
        assert!(!state.policies.contains_key("a"));
    }

    #[test]
    fn policy_updates_are_validated_and_named() {
        let (mut state, _a) = strict();
        let bad = PolicyUpdate { grant: vec!["Not_A_Label".into()], ..PolicyUpdate::default() };
        let err = update(&mut state, 10, bad).expect_err("bad namespace");
        assert!(err.to_string().contains("grant[0]"), "{err}");
        let many = PolicyUpdate {
            grant: (0..=MAX_GRANTED_NAMESPACES).map(|i| format!("ns-{i}")).collect(),
            ..PolicyUpdate::default()
        };
        assert!(update(&mut state, 11, many).is_err());
        assert!(state.policies.get("a").is_none_or(|p| p.namespaces.is_empty()));
    }

    #[test]
    fn policies_and_settings_survive_a_snapshot() {
        let (mut state, _a) = strict();
        update(&mut state, 10, grant("demo")).expect("grant");
        let settings = Command::UpdateSettings {
            open_exports: Some(true),
            allow_loopback_endpoints: None,
            now: now(),
        };
        apply(&mut state, 11, settings).expect("settings");
        let mut restored = FederationState::default();
        restored.restore(&state.snapshot()).expect("restore");
        assert_eq!(restored.policies, state.policies);
        assert_eq!(restored.settings, state.settings);
        assert!(restored.settings.open_exports && !restored.settings.allow_loopback_endpoints);
        assert_eq!(restored.digest(), state.digest());
    }
}
