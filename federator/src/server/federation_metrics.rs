//! Prometheus metrics of the federation API and the replicated federation state:
//! watch streams, leases, members, services and endpoints.

use std::future::Future;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::FederationReplica;

/// How often the state gauges are refreshed.
const STATE_REFRESH: Duration = Duration::from_secs(2);

/// Labels of the per-member gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    cluster: String,
    trust_domain: String,
}

/// What the per-member gauges show for one member.
#[derive(Debug, PartialEq, Eq)]
struct MemberFigures {
    labels: MemberLabels,
    lease_live: bool,
    /// The earliest `not_after` among its bundle's X.509 authorities (unix seconds).
    ca_not_after: Option<i64>,
    /// Members that have not applied the newest sequence of its bundle.
    unacknowledged: usize,
}

/// The federation metrics of one replica (cheap to clone: shared counters).
#[derive(Clone, Debug, Default)]
pub struct FederationMetrics {
    /// Watch streams open on this replica.
    pub watch_streams: Gauge,
    /// Watch events sent by this replica.
    pub watch_events: Counter,
    /// Full resyncs sent to watchers that resumed from a compacted revision.
    pub watch_resyncs: Counter,
    /// Lease keep-alives answered by this replica's lessor (while leading).
    pub keepalives: Counter,
    /// Leases this replica expired (while leading).
    pub lease_expirations: Counter,
    members: Gauge,
    member_lease_live: Family<MemberLabels, Gauge>,
    member_ca_not_after: Family<MemberLabels, Gauge>,
    member_bundle_unacknowledged: Family<MemberLabels, Gauge>,
    removed_domains: Gauge,
    live_leases: Gauge,
    services: Gauge,
    exports: Gauge,
    endpoints: Gauge,
    revision: Gauge,
}

impl FederationMetrics {
    /// Registers every metric under `registry` (prefix it with `federator`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "watch_streams",
            "Watch streams open on this replica",
            self.watch_streams.clone(),
        );
        registry.register(
            "watch_events",
            "Watch events sent by this replica",
            self.watch_events.clone(),
        );
        registry.register(
            "watch_resyncs",
            "Full resyncs sent to watchers resuming from a compacted revision",
            self.watch_resyncs.clone(),
        );
        registry.register(
            "lease_keepalives",
            "Lease keep-alives answered by this replica while leading (never written to the log)",
            self.keepalives.clone(),
        );
        registry.register(
            "lease_expirations",
            "Member leases this replica expired while leading",
            self.lease_expirations.clone(),
        );
        registry.register("members", "Member clusters of the federation", self.members.clone());
        registry.register(
            "member_lease_live",
            "1 while the member's lease is live (its agent keeps it alive), by member",
            self.member_lease_live.clone(),
        );
        registry.register(
            "member_ca_expiry_timestamp_seconds",
            "When the earliest-expiring X.509 authority of the member's bundle expires (unix \
             seconds)",
            self.member_ca_not_after.clone(),
        );
        registry.register(
            "member_bundle_unacknowledged",
            "Members that have not applied the newest sequence of this member's bundle (a \
             rotation is safe to finish at 0)",
            self.member_bundle_unacknowledged.clone(),
        );
        registry.register(
            "removed_trust_domains",
            "Removed members' trust domains the bundle endpoint serves with no keys",
            self.removed_domains.clone(),
        );
        registry.register("live_leases", "Members whose lease is live", self.live_leases.clone());
        registry.register("services", "Exported services (namespace/name)", self.services.clone());
        registry.register(
            "exports",
            "Exports over all services and clusters",
            self.exports.clone(),
        );
        registry.register("endpoints", "Exported endpoints held", self.endpoints.clone());
        registry.register(
            "state_revision",
            "Revision of the federation state",
            self.revision.clone(),
        );
    }

    /// Refreshes the state gauges from `replica`'s applied state until `stop` resolves.
    pub async fn refresh(self, replica: FederationReplica, stop: impl Future<Output = ()>) {
        let work = async {
            loop {
                let now = crate::clock::unix_now();
                let members = replica.state().read(member_figures);
                // Removed members' series go: rebuilt whole each time.
                self.member_lease_live.clear();
                self.member_ca_not_after.clear();
                self.member_bundle_unacknowledged.clear();
                for m in members {
                    self.member_lease_live.get_or_create(&m.labels).set(i64::from(m.lease_live));
                    if let Some(at) = m.ca_not_after {
                        self.member_ca_not_after.get_or_create(&m.labels).set(at);
                    }
                    let pending = i64::try_from(m.unacknowledged).unwrap_or(i64::MAX);
                    self.member_bundle_unacknowledged.get_or_create(&m.labels).set(pending);
                }
                let figures = replica.state().read(|s| {
                    (
                        s.members.len(),
                        s.removed.values().filter(|r| r.serving(now)).count(),
                        s.leases.values().filter(|l| l.is_live()).count(),
                        s.services.len(),
                        s.services.values().map(|r| r.exports.len()).sum::<usize>(),
                        s.endpoint_count(),
                        s.changes.revision(),
                    )
                });
                let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
                self.members.set(gauge(figures.0));
                self.removed_domains.set(gauge(figures.1));
                self.live_leases.set(gauge(figures.2));
                self.services.set(gauge(figures.3));
                self.exports.set(gauge(figures.4));
                self.endpoints.set(gauge(figures.5));
                self.revision.set(i64::try_from(figures.6).unwrap_or(i64::MAX));
                tokio::time::sleep(STATE_REFRESH).await;
            }
        };
        tokio::select! {
            () = work => {}
            () = stop => {}
        }
    }
}

/// The per-member gauges' figures from the state.
fn member_figures(s: &crate::state::FederationState) -> Vec<MemberFigures> {
    s.members
        .values()
        .map(|m| {
            let bundle = s.bundles.get(&m.trust_domain);
            let ca_not_after =
                bundle.and_then(|b| b.bundle.x509_authorities.iter().map(|a| a.not_after).min());
            let unacknowledged = bundle.map_or(0, |b| {
                s.members
                    .keys()
                    .filter(|other| **other != m.cluster)
                    .filter(|other| {
                        b.acks.get(*other).is_none_or(|ack| ack.sequence < b.bundle.sequence)
                    })
                    .count()
            });
            MemberFigures {
                labels: MemberLabels {
                    cluster: m.cluster.clone(),
                    trust_domain: m.trust_domain.clone(),
                },
                lease_live: s.leases.get(&m.cluster).is_some_and(crate::state::Lease::is_live),
                ca_not_after,
                unacknowledged,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;
    use crate::state::test_support::{Cluster, apply, joined, now};

    #[test]
    fn member_gauges_follow_leases_acknowledgements_and_ca_expiry() {
        let a = Cluster::new("a.test");
        let b = Cluster::new("b.test");
        let mut state = joined(&[("a", &a), ("b", &b)]);
        let figures = member_figures(&state);
        assert_eq!(figures.len(), 2);
        let of = |figures: &[MemberFigures], cluster: &str| {
            figures
                .iter()
                .find(|f| f.labels.cluster == cluster)
                .map(|f| (f.lease_live, f.unacknowledged))
        };
        assert_eq!(of(&figures, "a"), Some((false, 1)), "b has not applied a's bundle; no lease");
        let expected = state.bundles["a.test"].bundle.x509_authorities[0].not_after;
        assert_eq!(figures[0].ca_not_after, Some(expected));
        let ack = Command::AckBundle {
            cluster: "b".into(),
            trust_domain: "a.test".into(),
            sequence: 1,
            now: now(),
        };
        apply(&mut state, 50, ack).expect("ack");
        assert_eq!(of(&member_figures(&state), "a"), Some((false, 0)));
    }
}
