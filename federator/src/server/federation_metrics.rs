//! Prometheus metrics of the federation API and the replicated federation state:
//! watch streams, leases, members, services and endpoints.

use std::future::Future;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::FederationReplica;

/// How often the state gauges are refreshed.
const STATE_REFRESH: Duration = Duration::from_secs(2);

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
                let now = super::federation::unix_now();
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
