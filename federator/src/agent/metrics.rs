//! The agent's Prometheus metrics, served on `listen_metrics` at `/metrics`.
//!
//! Most gauges mirror [`AgentStatus`] (what `federator agent status` shows); the counters
//! count what the status does not keep; `federator_agent_propagation_seconds` measures,
//! per source trust domain, how long a change took from the replica that applied it to
//! every sink of this agent.
//!
//! Propagation is measured from `WatchEvent.applied_at_ms` (the serving replica's wall
//! clock when it first saw the revision applied) to this agent's wall clock once every
//! sink holds the view that carries the change: clock skew between the hosts adds to
//! (or, clamped at 0, hides) the figure. A change committed while a sink fails is
//! observed when a later retry succeeds in every sink, so the figure includes the
//! outage. Changes known only from a snapshot (`applied_at_ms` 0: a fresh watch, a
//! resync, or a revision the replica no longer remembers) are not observed.

use std::collections::{BTreeMap, BTreeSet};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::status::AgentStatus;
use crate::service::{ImportedCluster, ServiceImport};

/// What kind of change propagated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A federated bundle was put or removed.
    Bundle,
    /// An import of this cluster changed or was removed.
    Import,
}

impl ChangeKind {
    /// The `kind` label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bundle => "bundle",
            Self::Import => "import",
        }
    }
}

/// One change received from the federation, waiting to reach every sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Propagation {
    /// Bundle or import.
    pub kind: ChangeKind,
    /// The trust domain the change came from.
    pub source_trust_domain: String,
    /// When the serving replica applied it (unix milliseconds, never 0).
    pub applied_at_ms: i64,
}

impl Propagation {
    /// How long it took to reach `now_ms`, in seconds (0 if the clocks disagree).
    #[must_use]
    pub fn seconds_at(&self, now_ms: i64) -> f64 {
        // Milliseconds of any realistic delay are exact in an f64.
        #[allow(clippy::cast_precision_loss)]
        let millis = now_ms.saturating_sub(self.applied_at_ms).max(0) as f64;
        millis / 1000.0
    }
}

/// Labels of `federator_agent_propagation_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PropagationLabels {
    kind: &'static str,
    source_trust_domain: String,
}

/// Labels of the per-sink gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

/// Labels of the per-sink apply counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkApplyLabels {
    sink: String,
    result: &'static str,
}

/// Labels of `federator_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildInfo {
    version: &'static str,
}

/// Histogram buckets of the propagation: 1 ms doubling to about 33 s.
fn propagation_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The constructor type of the propagation family.
type HistogramConstructor = fn() -> Histogram;

/// The agent's metrics (cheap to clone: shared values).
#[derive(Clone, Debug)]
pub struct AgentMetrics {
    connected: Gauge,
    /// Sessions established with a replica.
    pub connections: Counter,
    /// Sessions that failed (connect, join, lease, publish, watch…).
    pub session_failures: Counter,
    applied_revision: Gauge,
    received_revision: Gauge,
    propagation: Family<PropagationLabels, Histogram, HistogramConstructor>,
    sink_healthy: Family<SinkLabels, Gauge>,
    sink_applies: Family<SinkApplyLabels, Counter>,
    export_source_problems: Gauge,
    exports: Gauge,
    exports_published: Gauge,
    bundles: Gauge,
    imports: Gauge,
    /// Full resyncs the federation asked for.
    pub resyncs: Counter,
    /// Bundle acknowledgements the federation accepted.
    pub acks: Counter,
    /// Lease keep-alives that failed.
    pub keepalive_failures: Counter,
    /// Replicas left for the next one after a connected session ended.
    pub failovers: Counter,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self {
            connected: Gauge::default(),
            connections: Counter::default(),
            session_failures: Counter::default(),
            applied_revision: Gauge::default(),
            received_revision: Gauge::default(),
            propagation: Family::new_with_constructor(propagation_histogram),
            sink_healthy: Family::default(),
            sink_applies: Family::default(),
            export_source_problems: Gauge::default(),
            exports: Gauge::default(),
            exports_published: Gauge::default(),
            bundles: Gauge::default(),
            imports: Gauge::default(),
            resyncs: Counter::default(),
            acks: Counter::default(),
            keepalive_failures: Counter::default(),
            failovers: Counter::default(),
        }
    }
}

/// A count as a gauge value.
fn gauge<T: TryInto<i64>>(n: T) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

impl AgentMetrics {
    /// A registry holding every metric (`federator_agent_*` and `federator_build_info`).
    #[must_use]
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        self.register(&mut registry);
        registry
    }

    /// Readiness for `/readyz`: a session with a replica is up. An agent without one
    /// still serves its last applied view (static stability) but is not current.
    #[must_use]
    pub fn readiness(&self) -> crate::metrics_http::Readiness {
        let connected = self.connected.clone();
        std::sync::Arc::new(move || {
            if connected.get() == 1 {
                Ok(())
            } else {
                Err(crate::metrics_http::NotReady(
                    "no session with a replica: serving the last applied view \
                     (`federator agent status`)"
                        .into(),
                ))
            }
        })
    }

    /// Registers every metric under `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let build = Family::<BuildInfo, Gauge>::default();
        build.get_or_create(&BuildInfo { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("federator_build_info", "Build of this federator agent", build);
        let r = registry.sub_registry_with_prefix("federator_agent");
        r.register("connected", "1 while a session with a replica is up", self.connected.clone());
        r.register("connections", "Sessions established with a replica", self.connections.clone());
        r.register(
            "session_failures",
            "Sessions with a replica that failed",
            self.session_failures.clone(),
        );
        r.register(
            "applied_revision",
            "Federation revision of the view applied to the sinks",
            self.applied_revision.clone(),
        );
        r.register(
            "received_revision",
            "Highest federation revision received",
            self.received_revision.clone(),
        );
        r.register_with_unit(
            "propagation",
            "From the replica applying a change (bundle or import) of a source trust domain \
             to every sink of this agent holding it",
            Unit::Seconds,
            self.propagation.clone(),
        );
        r.register(
            "sink_healthy",
            "1 if the sink's last apply succeeded",
            self.sink_healthy.clone(),
        );
        r.register("sink_applies", "Applies of the view to a sink", self.sink_applies.clone());
        r.register(
            "export_source_problems",
            "Export documents skipped or refused right now",
            self.export_source_problems.clone(),
        );
        r.register("exports", "Valid exports the export sources give", self.exports.clone());
        r.register(
            "exports_published",
            "Exports published to the federation",
            self.exports_published.clone(),
        );
        r.register("bundles", "Federated bundles held", self.bundles.clone());
        r.register("imports", "Imports held", self.imports.clone());
        r.register("resyncs", "Full resyncs the federation asked for", self.resyncs.clone());
        r.register("acks", "Bundle acknowledgements accepted", self.acks.clone());
        r.register(
            "keepalive_failures",
            "Lease keep-alives that failed",
            self.keepalive_failures.clone(),
        );
        r.register(
            "failovers",
            "Replicas left for the next one after a connected session ended (an unresponsive \
             replica, a failed session, a stream the replica ended)",
            self.failovers.clone(),
        );
    }

    /// Sets the gauges that mirror `status`.
    pub fn mirror(&self, status: &AgentStatus) {
        self.connected.set(i64::from(status.connected_replica.is_some()));
        self.applied_revision.set(gauge(status.applied_revision));
        self.received_revision.set(gauge(status.received_revision));
        self.bundles.set(gauge(status.bundles.len()));
        self.imports.set(gauge(status.imports));
        self.exports.set(gauge(status.exports.exports));
        self.exports_published.set(gauge(status.exports.published));
        self.export_source_problems.set(gauge(status.exports.problems.len()));
        // Every member the agent knows of has its propagation series from then on (zero
        // observations until its first change), so that dashboards and alerts see the
        // series before anything changed; the own trust domain's imports come back too.
        let known = status
            .bundles
            .keys()
            .chain((!status.trust_domain.is_empty()).then_some(&status.trust_domain));
        for trust_domain in known {
            for kind in [ChangeKind::Bundle, ChangeKind::Import] {
                if kind == ChangeKind::Bundle && *trust_domain == status.trust_domain {
                    continue;
                }
                let labels = PropagationLabels {
                    kind: kind.as_str(),
                    source_trust_domain: trust_domain.clone(),
                };
                // Created, not observed: get_or_create on a known series is a map lookup.
                let _ = self.propagation.get_or_create(&labels);
            }
        }
        for (name, sink) in &status.sinks {
            self.sink_healthy
                .get_or_create(&SinkLabels { sink: name.clone() })
                .set(i64::from(sink.healthy));
        }
    }

    /// Counts one apply of the view to `sink`.
    pub fn sink_applied(&self, sink: &str, ok: bool) {
        let labels =
            SinkApplyLabels { sink: sink.to_string(), result: if ok { "ok" } else { "error" } };
        self.sink_applies.get_or_create(&labels).inc();
    }

    /// Observes that `change` reached every sink at `now_ms`; returns the seconds.
    pub fn observe_propagation(&self, change: &Propagation, now_ms: i64) -> f64 {
        let seconds = change.seconds_at(now_ms);
        let labels = PropagationLabels {
            kind: change.kind.as_str(),
            source_trust_domain: change.source_trust_domain.clone(),
        };
        self.propagation.get_or_create(&labels).observe(seconds);
        seconds
    }
}

/// The trust domains whose part of an import differs between `old` and `new` (`None`:
/// no import): those of every [`ImportedCluster`] added, removed or changed. A change
/// outside the clusters (ports, identities, conditions) names no source.
#[must_use]
pub fn import_sources(
    old: Option<&ServiceImport>,
    new: Option<&ServiceImport>,
) -> BTreeSet<String> {
    fn by_trust_domain(import: Option<&ServiceImport>) -> BTreeMap<&str, Vec<&ImportedCluster>> {
        let mut map: BTreeMap<&str, Vec<&ImportedCluster>> = BTreeMap::new();
        for cluster in import.map_or(&[][..], |i| i.clusters.as_slice()) {
            map.entry(cluster.trust_domain.as_str()).or_default().push(cluster);
        }
        map
    }
    let (old, new) = (by_trust_domain(old), by_trust_domain(new));
    old.keys()
        .chain(new.keys())
        .filter(|td| old.get(*td) != new.get(*td))
        .map(|td| (*td).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::agent::status::SinkStatus;
    use crate::metrics_http::serve;
    use crate::service::{ImportEndpoint, ServiceKey};

    fn cluster(td: &str, weight: u32) -> ImportedCluster {
        ImportedCluster {
            cluster: td.trim_end_matches(".test").into(),
            trust_domain: td.into(),
            live: true,
            via_gateway: false,
            identities: Vec::new(),
            endpoints: vec![ImportEndpoint {
                address: std::net::Ipv4Addr::LOCALHOST.into(),
                ports: Vec::new(),
                zone: String::new(),
                region: String::new(),
                weight,
                ready: true,
                priority: 0,
            }],
        }
    }

    fn import(clusters: Vec<ImportedCluster>, revision: u64) -> ServiceImport {
        ServiceImport {
            key: ServiceKey::new("ns", "svc"),
            hostname: "svc.ns.svc.clusterset.local".into(),
            ports: Vec::new(),
            identities: Vec::new(),
            clusters,
            conditions: Vec::new(),
            revision,
        }
    }

    fn set(tds: &[&str]) -> BTreeSet<String> {
        tds.iter().map(|td| (*td).to_string()).collect()
    }

    #[test]
    fn an_import_change_names_the_trust_domains_whose_clusters_differ() {
        let old = import(vec![cluster("a.test", 1), cluster("b.test", 1)], 5);
        // Added, changed, removed; a cluster that stays the same (at a new revision) is no
        // source.
        let new = import(vec![cluster("b.test", 2), cluster("c.test", 1)], 9);
        assert_eq!(import_sources(Some(&old), Some(&new)), set(&["a.test", "b.test", "c.test"]));
        let same = import(old.clusters.clone(), 12);
        assert_eq!(import_sources(Some(&old), Some(&same)), set(&[]));
        assert_eq!(import_sources(None, Some(&old)), set(&["a.test", "b.test"]));
        assert_eq!(import_sources(Some(&old), None), set(&["a.test", "b.test"]));
        assert_eq!(import_sources(None, None), set(&[]));
    }

    #[test]
    fn propagation_is_never_negative() {
        let change = Propagation {
            kind: ChangeKind::Bundle,
            source_trust_domain: "a.test".into(),
            applied_at_ms: 10_000,
        };
        assert!((change.seconds_at(10_250) - 0.25).abs() < 1e-9);
        assert!(change.seconds_at(9_000).abs() < f64::EPSILON);
    }

    #[test]
    fn propagation_series_exist_before_the_first_change() {
        let metrics = AgentMetrics::default();
        let mut status = AgentStatus { trust_domain: "a.test".into(), ..Default::default() };
        status.bundles.insert("b.test".into(), 1);
        metrics.mirror(&status);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry()).expect("encode");
        for series in [
            "federator_agent_propagation_seconds_count{kind=\"bundle\",source_trust_domain=\"b.test\"} 0",
            "federator_agent_propagation_seconds_count{kind=\"import\",source_trust_domain=\"b.test\"} 0",
            "federator_agent_propagation_seconds_count{kind=\"import\",source_trust_domain=\"a.test\"} 0",
        ] {
            assert!(text.contains(series), "{series} missing from\n{text}");
        }
        // The own bundle does not come from the federation: no series for it.
        assert!(!text.contains("kind=\"bundle\",source_trust_domain=\"a.test\""), "{text}");
    }

    #[tokio::test]
    async fn metrics_are_served_over_http() {
        let metrics = AgentMetrics::default();
        let mut status = AgentStatus { connected_replica: Some("r".into()), ..Default::default() };
        status.sinks.insert("files".into(), SinkStatus { healthy: true, ..Default::default() });
        metrics.mirror(&status);
        metrics.connections.inc();
        metrics.sink_applied("files", true);
        metrics.observe_propagation(
            &Propagation {
                kind: ChangeKind::Import,
                source_trust_domain: "b.test".into(),
                applied_at_ms: 1_000,
            },
            1_020,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server =
            tokio::spawn(serve(listener, metrics.registry(), metrics.readiness(), async move {
                let _ = stop_rx.await;
            }));
        let get = |path: &'static str| async move {
            tokio::time::timeout(Duration::from_secs(10), async {
                let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                let request =
                    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
                stream.write_all(request.as_bytes()).await.expect("request");
                let mut response = String::new();
                stream.read_to_string(&mut response).await.expect("response");
                response
            })
            .await
            .expect("the endpoint answers in time")
        };
        let ready = get("/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 200"), "connected: {ready}");
        let body = get("/metrics").await;
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("process_resident_memory_bytes "), "{body}");
        for name in [
            "federator_build_info{version=",
            "federator_agent_connected 1",
            "federator_agent_connections_total 1",
            "federator_agent_session_failures_total 0",
            "federator_agent_applied_revision 0",
            "federator_agent_received_revision 0",
            "federator_agent_propagation_seconds_bucket{",
            "kind=\"import\"",
            "source_trust_domain=\"b.test\"",
            "federator_agent_propagation_seconds_count{",
            "federator_agent_sink_healthy{sink=\"files\"} 1",
            "federator_agent_sink_applies_total{sink=\"files\",result=\"ok\"} 1",
            "federator_agent_export_source_problems 0",
            "federator_agent_exports 0",
            "federator_agent_exports_published 0",
            "federator_agent_bundles 0",
            "federator_agent_imports 0",
            "federator_agent_resyncs_total 0",
            "federator_agent_acks_total 0",
            "federator_agent_keepalive_failures_total 0",
            "federator_agent_failovers_total 0",
        ] {
            assert!(body.contains(name), "{name} missing from\n{body}");
        }
        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server stops")
            .expect("join")
            .expect("serve");
    }
}
