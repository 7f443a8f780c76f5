//! The service part of the federation state: exports, the imports built from them, and
//! member leases.
//!
//! Leases work as etcd's do: granting, revoking and expiring go through the log;
//! keep-alives do not — the leader keeps the deadlines in memory and proposes
//! [`Command::ExpireLease`](super::Command::ExpireLease) when one passes. A member whose
//! lease is not live has every endpoint marked not ready in every import.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::audit::AuditEvent;
use super::events::ChangeKind;
use super::{Applied, CommandError, CommandResult, FederationState};
use crate::service::{
    ExporterView, Locality, ServiceExport, ServiceImport, ServiceKey, build_import, merge_ports,
};

/// Shortest lease TTL, in seconds: well above an election, so that a leader change never
/// expires a live member.
pub const MIN_LEASE_TTL_SECS: u32 = 2;
/// Longest lease TTL, in seconds.
pub const MAX_LEASE_TTL_SECS: u32 = 3_600;

/// One cluster's export of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRecord {
    /// The export.
    pub export: ServiceExport,
    /// When the cluster first exported the service (unix seconds).
    pub created_at: i64,
    /// Log index of the first export: the age that decides conflicts.
    pub created_index: u64,
    /// When it last changed.
    pub updated_at: i64,
    /// 1 at the first export, then +1 per update.
    pub generation: u64,
}

/// A service and every cluster's export of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Exports by cluster.
    #[serde(deserialize_with = "super::ordered_map::deserialize")]
    pub exports: BTreeMap<String, ExportRecord>,
    /// Revision of the last change (an export, or an exporter's lease).
    pub revision: u64,
}

impl ServiceRecord {
    /// The exports, oldest first.
    #[must_use]
    pub fn oldest_first(&self) -> Vec<(&str, &ExportRecord)> {
        let mut exports: Vec<(&str, &ExportRecord)> =
            self.exports.iter().map(|(c, r)| (c.as_str(), r)).collect();
        exports.sort_by_key(|(c, r)| (r.created_index, *c));
        exports
    }

    /// The `Conflict` condition of the service, if its exporters disagree on ports.
    #[must_use]
    pub fn conflict(&self) -> Option<crate::service::Condition> {
        merge_ports(self.oldest_first().into_iter().map(|(c, r)| (c, r.export.ports.as_slice())))
            .conflict
    }
}

/// A member's liveness lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Lease id: the log index of its grant.
    pub id: u64,
    /// Time to live without a keep-alive, seconds.
    pub ttl_secs: u32,
    /// When it was granted (unix seconds).
    pub granted_at: i64,
    /// When it expired or was revoked, if it did.
    pub ended_at: Option<i64>,
    /// Whether the member revoked it (rather than the leader expiring it).
    pub revoked: bool,
    /// The member's locality, declared at grant, for ordering its imports.
    pub locality: Locality,
}

impl Lease {
    /// Whether the lease is live.
    #[must_use]
    pub fn is_live(&self) -> bool {
        self.ended_at.is_none()
    }
}

// === impl FederationState ===

impl FederationState {
    /// Whether `cluster` holds a live lease.
    #[must_use]
    pub fn is_live(&self, cluster: &str) -> bool {
        self.leases.get(cluster).is_some_and(Lease::is_live)
    }

    /// The import `consumer` sees of service `key`, if any exporter admits it.
    #[must_use]
    pub fn import_for(&self, consumer: &str, key: &ServiceKey) -> Option<ServiceImport> {
        let record = self.services.get(key)?;
        self.build_import(consumer, key, record)
    }

    /// Every import `consumer` sees.
    #[must_use]
    pub fn imports_for(&self, consumer: &str) -> Vec<ServiceImport> {
        self.services
            .iter()
            .filter_map(|(key, record)| self.build_import(consumer, key, record))
            .collect()
    }

    fn build_import(
        &self,
        consumer: &str,
        key: &ServiceKey,
        record: &ServiceRecord,
    ) -> Option<ServiceImport> {
        // Where the consumer is: its bound region (with the zone its agent declared within
        // it, unless the operator bound one), or — none bound — what its agent declared:
        // either way it orders only its own view.
        let declared = self.leases.get(consumer).map(|l| l.locality.clone()).unwrap_or_default();
        let bound = self.policies.get(consumer).map(|p| &p.locality);
        let locality = match bound {
            Some(bound) if !bound.region.is_empty() => {
                let zone = if bound.zone.is_empty() && declared.region == bound.region {
                    declared.zone
                } else {
                    bound.zone.clone()
                };
                Locality { region: bound.region.clone(), zone }
            }
            _ => declared,
        };
        let bound: Vec<Locality> = record
            .oldest_first()
            .into_iter()
            .map(|(cluster, _)| {
                self.policies.get(cluster).map(|p| p.locality.clone()).unwrap_or_default()
            })
            .collect();
        let exporters: Vec<ExporterView<'_>> = record
            .oldest_first()
            .into_iter()
            .zip(&bound)
            .map(|((cluster, r), locality)| ExporterView {
                cluster,
                trust_domain: self.members.get(cluster).map_or("", |m| m.trust_domain.as_str()),
                live: self.is_live(cluster),
                export: &r.export,
                locality,
            })
            .collect();
        build_import(key, record.revision, consumer, &locality, &exporters)
    }

    /// Number of endpoints held over all exports.
    #[must_use]
    pub fn endpoint_count(&self) -> usize {
        self.services
            .values()
            .flat_map(|s| s.exports.values())
            .map(|r| r.export.endpoints.len())
            .sum()
    }

    /// Services exported by `cluster`.
    fn services_of(&self, cluster: &str) -> Vec<ServiceKey> {
        self.services
            .iter()
            .filter(|(_, s)| s.exports.contains_key(cluster))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Marks every service in `keys` changed at one new revision.
    pub(super) fn touch_services(&mut self, keys: &[ServiceKey]) -> u64 {
        let revision = self.changes.push_all(
            keys.iter().map(|key| ChangeKind::ServiceChanged { key: key.clone() }).collect(),
        );
        for key in keys {
            if let Some(record) = self.services.get_mut(key) {
                record.revision = revision;
            }
        }
        revision
    }

    pub(super) fn apply_export(
        &mut self,
        index: u64,
        cluster: &str,
        export: ServiceExport,
        now: i64,
    ) -> CommandResult {
        let key = export.key.clone();
        let result = self.check_export(cluster, &export);
        self.audit.record(AuditEvent::new(
            now,
            index,
            cluster.to_string(),
            "export_service",
            key.to_string(),
            result.as_ref().err().map(ToString::to_string),
        ));
        result?;
        let record = self.services.entry(key.clone()).or_default();
        let generation = match record.exports.get_mut(cluster) {
            Some(existing) => {
                existing.export = export;
                existing.updated_at = now;
                existing.generation += 1;
                existing.generation
            }
            None => {
                record.exports.insert(
                    cluster.to_string(),
                    ExportRecord {
                        export,
                        created_at: now,
                        created_index: index,
                        updated_at: now,
                        generation: 1,
                    },
                );
                1
            }
        };
        let conditions = record.conflict().into_iter().collect();
        let revision = self.touch_services(&[key]);
        Ok(Applied::Export { revision, generation, conditions })
    }

    pub(super) fn check_export(
        &self,
        cluster: &str,
        export: &ServiceExport,
    ) -> Result<(), CommandError> {
        let member = self
            .members
            .get(cluster)
            .ok_or_else(|| CommandError::PermissionDenied(format!("{cluster} is not a member")))?;
        if export.claims_foreign_identity(&member.trust_domain) {
            return Err(CommandError::PermissionDenied(format!(
                "cluster {cluster} may export only workloads of its own trust domain {}: {}",
                member.trust_domain,
                export
                    .validate(&member.trust_domain)
                    .err()
                    .map_or_else(String::new, |e| e.to_string())
            )));
        }
        export
            .validate(&member.trust_domain)
            .map_err(|e| CommandError::Invalid { field: e.field, rule: e.rule })?;
        self.check_export_policy(cluster, export)
    }

    pub(super) fn apply_unexport(
        &mut self,
        index: u64,
        cluster: &str,
        key: &ServiceKey,
        now: i64,
    ) -> CommandResult {
        let found = self.services.get_mut(key).and_then(|s| s.exports.remove(cluster)).is_some();
        self.audit.record(AuditEvent::new(
            now,
            index,
            cluster.to_string(),
            "unexport_service",
            key.to_string(),
            (!found).then(|| "not exported by this cluster".to_string()),
        ));
        if !found {
            return Err(CommandError::NotFound(format!("export of {key} by cluster {cluster}")));
        }
        let revision = self.touch_services(std::slice::from_ref(key));
        if self.services.get(key).is_some_and(|s| s.exports.is_empty()) {
            self.services.remove(key);
        }
        Ok(Applied::Revision { revision })
    }

    /// Drops every export of a removed member; returns the services it touched.
    pub(super) fn drop_exports_of(&mut self, cluster: &str) -> Vec<ServiceKey> {
        let keys = self.services_of(cluster);
        for key in &keys {
            if let Some(record) = self.services.get_mut(key) {
                record.exports.remove(cluster);
            }
        }
        keys
    }

    /// Forgets services that lost their last exporter.
    pub(super) fn drop_empty_services(&mut self) {
        self.services.retain(|_, s| !s.exports.is_empty());
    }

    pub(super) fn apply_grant_lease(
        &mut self,
        index: u64,
        cluster: &str,
        ttl_secs: u32,
        locality: Locality,
        now: i64,
    ) -> CommandResult {
        if !self.members.contains_key(cluster) {
            return Err(CommandError::PermissionDenied(format!("{cluster} is not a member")));
        }
        if !(MIN_LEASE_TTL_SECS..=MAX_LEASE_TTL_SECS).contains(&ttl_secs) {
            return Err(CommandError::invalid(
                "ttl_seconds",
                &format!("must be {MIN_LEASE_TTL_SECS} to {MAX_LEASE_TTL_SECS}"),
            ));
        }
        for (field, value) in
            [("locality.region", &locality.region), ("locality.zone", &locality.zone)]
        {
            if value.len() > 63 || !value.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(CommandError::invalid(
                    field,
                    "at most 63 printable characters without spaces",
                ));
            }
        }
        let was_live = self.is_live(cluster);
        let previous = self.leases.get(cluster);
        let locality_changed = previous.is_some_and(|l| l.locality != locality);
        // The log index names the lease; grants batched into one entry share an index,
        // so a cluster's ids also stay above its previous lease's: a holder of an older
        // lease can never end or renew a newer one.
        let id = previous.map_or(index, |l| index.max(l.id + 1));
        self.leases.insert(
            cluster.to_string(),
            Lease { id, ttl_secs, granted_at: now, ended_at: None, revoked: false, locality },
        );
        if !was_live {
            self.audit.record(AuditEvent::new(
                now,
                index,
                cluster.to_string(),
                "grant_lease",
                format!("lease {id}, ttl {ttl_secs}s"),
                None,
            ));
        }
        // Readiness of its endpoints changes everywhere; its own imports are reordered
        // when its locality moved.
        let keys = if locality_changed {
            self.services.keys().cloned().collect()
        } else if was_live {
            Vec::new()
        } else {
            self.services_of(cluster)
        };
        if !keys.is_empty() {
            self.touch_services(&keys);
        }
        Ok(Applied::Lease { id, ttl_secs })
    }

    /// Ends `cluster`'s lease `lease_id` (`revoked`: by the member; otherwise expired by
    /// the leader). A lease that was replaced or already ended is left alone.
    pub(super) fn apply_end_lease(
        &mut self,
        index: u64,
        cluster: &str,
        lease_id: u64,
        revoked: bool,
        now: i64,
    ) -> CommandResult {
        let Some(lease) = self.leases.get_mut(cluster).filter(|l| l.id == lease_id) else {
            return Err(CommandError::NotFound(format!("lease {lease_id} of cluster {cluster}")));
        };
        if lease.ended_at.is_some() {
            return Ok(Applied::Done);
        }
        lease.ended_at = Some(now);
        lease.revoked = revoked;
        self.audit.record(AuditEvent::new(
            now,
            index,
            if revoked { cluster.to_string() } else { "leader".to_string() },
            if revoked { "revoke_lease" } else { "expire_lease" },
            format!("{cluster} lease {lease_id}"),
            None,
        ));
        let keys = self.services_of(cluster);
        let revision = self.touch_services(&keys);
        Ok(Applied::Revision { revision })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::{IpAddr, Ipv4Addr};

    use federator_raft::StateMachine as _;

    use super::*;
    use crate::service::{Endpoint, ExportMode, ExportScope, Protocol, ServicePort};
    use crate::state::test_support::{Cluster, apply, joined, now};
    use crate::state::{ChangeKind, Command, Member};

    fn export(td: &str, port: u16, hosts: &[u8]) -> ServiceExport {
        ServiceExport {
            key: ServiceKey::new("shop", "cart"),
            ports: vec![ServicePort {
                name: "http".into(),
                port,
                protocol: Protocol::Tcp,
                app_protocol: String::new(),
            }],
            endpoints: hosts
                .iter()
                .map(|h| Endpoint {
                    address: IpAddr::V4(Ipv4Addr::new(127, 0, 2, *h)),
                    ports: Vec::new(),
                    zone: "z1".into(),
                    region: "r1".into(),
                    weight: 1,
                    ready: true,
                })
                .collect(),
            identities: vec![format!("spiffe://{td}/ns/shop/sa/cart")],
            scope: ExportScope::AllMembers,
            mode: ExportMode::Direct,
        }
    }

    fn do_export(
        state: &mut FederationState,
        index: u64,
        cluster: &str,
        e: ServiceExport,
    ) -> CommandResult {
        apply(
            state,
            index,
            Command::ExportService { cluster: cluster.into(), export: e, now: now() },
        )
    }

    fn grant(state: &mut FederationState, index: u64, cluster: &str) -> u64 {
        let applied = apply(
            state,
            index,
            Command::GrantLease {
                cluster: cluster.into(),
                ttl_secs: 5,
                locality: Locality { region: "r1".into(), zone: "z1".into() },
                now: now(),
            },
        )
        .expect("grant");
        let Applied::Lease { id, .. } = applied else { panic!("{applied:?}") };
        id
    }

    fn three() -> (Cluster, Cluster, Cluster) {
        (Cluster::new("a.test"), Cluster::new("b.test"), Cluster::new("c.test"))
    }

    fn key() -> ServiceKey {
        ServiceKey::new("shop", "cart")
    }

    #[test]
    fn export_update_unexport() {
        let (a, b, c) = three();
        let mut s = joined(&[("a", &a), ("b", &b), ("c", &c)]);
        grant(&mut s, 10, "a");
        let Ok(Applied::Export { revision: r1, generation: 1, conditions }) =
            do_export(&mut s, 11, "a", export("a.test", 80, &[1, 2]))
        else {
            panic!("first export")
        };
        assert!(conditions.is_empty());
        let import = s.import_for("b", &key()).expect("b imports");
        assert_eq!(import.ready_endpoints(), 2);
        assert_eq!(import.clusters[0].trust_domain, "a.test");
        assert_eq!(import.revision, r1);
        let Ok(Applied::Export { revision: r2, generation: 2, .. }) =
            do_export(&mut s, 12, "a", export("a.test", 80, &[3]))
        else {
            panic!("update")
        };
        assert!(r2 > r1);
        assert_eq!(s.import_for("c", &key()).expect("c").total_endpoints(), 1);
        let unexport = Command::UnexportService { cluster: "a".into(), key: key(), now: now() };
        apply(&mut s, 13, unexport.clone()).expect("unexport");
        assert!(s.services.is_empty());
        assert!(s.import_for("b", &key()).is_none());
        let err = apply(&mut s, 14, unexport).expect_err("nothing to unexport");
        assert!(matches!(err, CommandError::NotFound(_)), "{err}");
    }

    #[test]
    fn exports_of_foreign_identities_or_by_strangers_are_refused_and_audited() {
        let (a, b, _) = three();
        let mut s = joined(&[("a", &a), ("b", &b)]);
        let before = s.services.clone();
        let mut e = export("a.test", 80, &[1]);
        e.identities.push("spiffe://b.test/ns/shop/sa/cart".into());
        let err = do_export(&mut s, 10, "a", e).expect_err("foreign identity");
        assert!(matches!(err, CommandError::PermissionDenied(_)), "{err}");
        assert!(err.to_string().contains("identities[1]"), "{err}");
        let err = do_export(&mut s, 11, "z", export("a.test", 80, &[1])).expect_err("stranger");
        assert!(matches!(err, CommandError::PermissionDenied(_)), "{err}");
        let mut bad = export("a.test", 80, &[1]);
        bad.ports[0].port = 0;
        let err = do_export(&mut s, 12, "a", bad).expect_err("invalid");
        assert_eq!(err, CommandError::invalid("ports[0].port", "must be 1 to 65535"));
        assert_eq!(s.services, before, "nothing committed");
        let audit = s.audit.newest_refusals(3);
        assert_eq!(audit.len(), 3);
        assert!(audit.iter().all(|e| e.action == "export_service"));
    }

    #[test]
    fn the_oldest_export_wins_and_every_exporter_sees_the_conflict() {
        let (a, b, c) = three();
        let mut s = joined(&[("a", &a), ("b", &b), ("c", &c)]);
        do_export(&mut s, 10, "b", export("b.test", 80, &[1])).expect("b first");
        let Ok(Applied::Export { conditions, .. }) =
            do_export(&mut s, 11, "a", export("a.test", 8080, &[2]))
        else {
            panic!("a second")
        };
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].clusters, vec!["a".to_string()]);
        for consumer in ["a", "b", "c"] {
            let import = s.import_for(consumer, &key()).expect("import");
            assert_eq!(import.ports[0].port, 80, "oldest (b) wins for {consumer}");
            assert_eq!(import.conditions, conditions, "{consumer} sees the conflict");
        }
        // An update does not make an export younger.
        do_export(&mut s, 12, "b", export("b.test", 80, &[1, 3])).expect("b update");
        assert_eq!(s.import_for("c", &key()).expect("c").ports[0].port, 80);
        // When the loser agrees, the condition clears.
        do_export(&mut s, 13, "a", export("a.test", 80, &[2])).expect("a fixes");
        assert!(s.import_for("c", &key()).expect("c").conditions.is_empty());
    }

    #[test]
    fn an_allowlist_scopes_the_import() {
        let (a, b, c) = three();
        let mut s = joined(&[("a", &a), ("b", &b), ("c", &c)]);
        let mut e = export("a.test", 80, &[1]);
        e.scope = ExportScope::Clusters(BTreeSet::from(["b".to_string()]));
        do_export(&mut s, 10, "a", e).expect("export");
        assert!(s.import_for("b", &key()).is_some());
        assert!(s.import_for("c", &key()).is_none());
        assert!(s.imports_for("c").is_empty());
    }

    #[test]
    fn grants_in_one_entry_get_distinct_lease_ids() {
        // Batched writes share a log index; a cluster's lease ids still never repeat, so
        // the holder of the first grant cannot end the second.
        let (a, b, _) = three();
        let mut s = joined(&[("a", &a), ("b", &b)]);
        let first = grant(&mut s, 20, "a");
        let second = grant(&mut s, 20, "a");
        let other = grant(&mut s, 20, "b");
        assert_eq!((first, second, other), (20, 21, 20));
        let err = apply(
            &mut s,
            21,
            Command::ExpireLease { cluster: "a".into(), lease_id: first, now: now() },
        )
        .expect_err("the first lease was replaced");
        assert!(matches!(err, CommandError::NotFound(_)));
        // A later grant at a lower-looking index stays above the previous id too.
        assert_eq!(grant(&mut s, 21, "a"), 22);
        assert_eq!(grant(&mut s, 30, "a"), 30);
    }

    #[test]
    fn leases_decide_readiness_and_each_change_is_a_revision() {
        let (a, b, _) = three();
        let mut s = joined(&[("a", &a), ("b", &b)]);
        do_export(&mut s, 10, "a", export("a.test", 80, &[1, 2])).expect("export");
        assert_eq!(s.import_for("b", &key()).expect("b").ready_endpoints(), 0, "no lease yet");
        let lease = grant(&mut s, 11, "a");
        assert_eq!(s.import_for("b", &key()).expect("b").ready_endpoints(), 2);
        let before = s.changes.revision();
        let err = apply(
            &mut s,
            12,
            Command::ExpireLease { cluster: "a".into(), lease_id: lease + 1, now: now() },
        )
        .expect_err("another lease");
        assert!(matches!(err, CommandError::NotFound(_)));
        apply(
            &mut s,
            13,
            Command::ExpireLease { cluster: "a".into(), lease_id: lease, now: now() },
        )
        .expect("expire");
        assert!(!s.is_live("a"));
        let import = s.import_for("b", &key()).expect("b");
        assert_eq!(import.ready_endpoints(), 0);
        assert!(!import.clusters[0].live);
        let changes = s.changes.since(before).expect("kept");
        assert_eq!(
            changes,
            vec![crate::state::Change {
                revision: before + 1,
                kind: ChangeKind::ServiceChanged { key: key() },
            }]
        );
        // Expiring twice is a no-op; a keep-alive of the old lease cannot revive it.
        assert_eq!(
            apply(
                &mut s,
                14,
                Command::ExpireLease { cluster: "a".into(), lease_id: lease, now: now() }
            ),
            Ok(Applied::Done)
        );
        grant(&mut s, 15, "a");
        assert_eq!(s.import_for("b", &key()).expect("b").ready_endpoints(), 2, "back");
        let err = apply(
            &mut s,
            16,
            Command::GrantLease {
                cluster: "a".into(),
                ttl_secs: 1,
                locality: Locality::default(),
                now: now(),
            },
        )
        .expect_err("ttl too short");
        assert!(err.to_string().contains("ttl_seconds"), "{err}");
    }

    #[test]
    fn removing_a_member_drops_its_exports_and_lease() {
        let (a, b, _) = three();
        let mut s = joined(&[("a", &a), ("b", &b)]);
        grant(&mut s, 9, "a");
        do_export(&mut s, 10, "a", export("a.test", 80, &[1])).expect("a");
        do_export(&mut s, 11, "b", export("b.test", 80, &[2])).expect("b");
        let before = s.changes.revision();
        apply(
            &mut s,
            12,
            Command::RemoveMember { cluster: "a".into(), actor: "admin".into(), now: now() },
        )
        .expect("remove");
        assert!(!s.leases.contains_key("a"));
        let import = s.import_for("b", &key()).expect("b's own export remains");
        assert_eq!(import.clusters.len(), 1);
        let changes = s.changes.since(before).expect("kept");
        assert!(changes.iter().all(|c| c.revision == before + 1), "one revision");
        assert!(changes.iter().any(|c| c.kind == ChangeKind::ServiceChanged { key: key() }));
        apply(
            &mut s,
            13,
            Command::RemoveMember { cluster: "b".into(), actor: "admin".into(), now: now() },
        )
        .expect("remove b");
        assert!(s.services.is_empty());
    }

    /// 1,000 members × 10 services × 10 endpoints: held, snapshotted and restored to the
    /// same digest. Prints the snapshot size per endpoint (a figure, not an assertion).
    #[test]
    fn a_thousand_members_with_a_hundred_thousand_endpoints_snapshot_and_restore() {
        let mut s = FederationState::default();
        s.settings.allow_loopback_endpoints = true;
        for m in 0..1_000u32 {
            let cluster = format!("c{m}");
            let update = crate::state::PolicyUpdate {
                grant: vec!["bench".into()],
                revoke: Vec::new(),
                locality: Some(Locality { region: "r1".into(), zone: String::new() }),
            };
            s.policies.insert(cluster.clone(), crate::state::MemberPolicy::default());
            apply(
                &mut s,
                1,
                Command::UpdateMemberPolicy { cluster: cluster.clone(), update, now: now() },
            )
            .expect("policy");
            s.members.insert(
                cluster.clone(),
                Member {
                    cluster: cluster.clone(),
                    trust_domain: format!("c{m}.test"),
                    agent_id: format!("spiffe://c{m}.test/agent"),
                    joined_at: now(),
                    joined_index: u64::from(m),
                },
            );
        }
        let mut index = 10_000;
        for m in 0..1_000u32 {
            let cluster = format!("c{m}");
            index += 1;
            grant(&mut s, index, &cluster);
            for svc in 0..10u8 {
                let [_, _, hi, lo] = m.to_be_bytes();
                let mut e = export(&format!("c{m}.test"), 80, &[]);
                e.key = ServiceKey::new("bench", format!("svc-{svc}"));
                e.endpoints = (0..10u8)
                    .map(|i| Endpoint {
                        address: IpAddr::V4(Ipv4Addr::new(127, hi, lo, svc * 10 + i)),
                        ports: Vec::new(),
                        zone: format!("z{}", i % 3),
                        region: "r1".into(),
                        weight: 1,
                        ready: true,
                    })
                    .collect();
                index += 1;
                do_export(&mut s, index, &cluster, e).expect("export");
            }
        }
        assert_eq!(s.endpoint_count(), 100_000);
        let snapshot = s.snapshot();
        let mut restored = FederationState::default();
        restored.restore(&snapshot).expect("restore");
        assert_eq!(restored.digest(), s.digest());
        let import = restored.import_for("c0", &ServiceKey::new("bench", "svc-3")).expect("import");
        assert_eq!(import.clusters.len(), 1_000);
        assert_eq!(import.ready_endpoints(), 10_000);
        println!(
            "scale: 100000 endpoints, snapshot {} bytes ({} B/endpoint)",
            snapshot.len(),
            snapshot.len() / 100_000
        );
    }
}
