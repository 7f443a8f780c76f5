//! Imports: what a consuming cluster sees of one service, built from the exports of every
//! cluster that admits it — the ports merged (the oldest export wins a conflict), the
//! endpoints per exporting cluster with their failover priority by locality, and the
//! identities the workloads run as.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{EndpointPort, ExportMode, ServiceExport, ServiceKey, ServicePort};

/// A condition of a service, as KEP-1645 puts on its `ServiceExport`s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    /// `Conflict`.
    pub kind: String,
    /// The exporting clusters whose definition lost.
    pub clusters: Vec<String>,
    /// What conflicts, for people.
    pub message: String,
}

/// The oldest exporter's view of the ports, and the conflicts with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedPorts {
    /// The union of all exports' ports; on conflict, the oldest export's definition.
    pub ports: Vec<ServicePort>,
    /// A `Conflict` condition when some exporter disagrees.
    pub conflict: Option<Condition>,
}

/// Merges the ports of the exports of one service, given oldest first (by the log index
/// of their first export). A port conflicts when another export defines the same name
/// differently, or the same number and protocol under another name.
pub fn merge_ports<'a>(
    exports: impl IntoIterator<Item = (&'a str, &'a [ServicePort])>,
) -> MergedPorts {
    let mut merged: Vec<ServicePort> = Vec::new();
    let mut owner: Vec<&str> = Vec::new();
    let mut losers = Vec::new();
    let mut details = Vec::new();
    for (cluster, ports) in exports {
        let mut lost = false;
        for port in ports {
            let clash = merged.iter().position(|m| {
                m.name == port.name || (m.port == port.port && m.protocol == port.protocol)
            });
            match clash {
                Some(i) if merged[i] == *port => {}
                Some(i) => {
                    lost = true;
                    details.push(format!(
                        "cluster {cluster} defines port {port}, the oldest export (cluster {}) \
                         defines {}",
                        owner[i], merged[i]
                    ));
                }
                None => {
                    merged.push(port.clone());
                    owner.push(cluster);
                }
            }
        }
        if lost {
            losers.push(cluster.to_string());
        }
    }
    let conflict = (!losers.is_empty()).then(|| Condition {
        kind: "Conflict".into(),
        clusters: losers,
        message: format!("conflicting port definitions: {}", details.join("; ")),
    });
    MergedPorts { ports: merged, conflict }
}

/// A cluster's locality, for ordering endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
}

/// Failover priority of an endpoint seen from `consumer`: 0 in the same zone, 1 in the
/// same region, 2 anywhere else (Envoy's priorities: lower is preferred).
#[must_use]
pub fn locality_priority(consumer: &Locality, region: &str, zone: &str) -> u32 {
    let same_region = !consumer.region.is_empty() && consumer.region == region;
    if same_region && !consumer.zone.is_empty() && consumer.zone == zone {
        0
    } else if same_region {
        1
    } else {
        2
    }
}

/// An endpoint as a consumer sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportEndpoint {
    /// Address to connect to (the endpoint's, or the gateway's).
    pub address: IpAddr,
    /// Ports that differ from the import's ports (empty: the import's ports; for a
    /// gateway, every port maps to the gateway port).
    pub ports: Vec<EndpointPort>,
    /// Zone.
    pub zone: String,
    /// Region.
    pub region: String,
    /// Weight.
    pub weight: u32,
    /// Ready: the exporter reports it ready and the exporter's lease is live.
    pub ready: bool,
    /// Failover priority from the consumer's locality (0 = same zone).
    pub priority: u32,
}

/// The endpoints one cluster contributes to an import.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedCluster {
    /// The exporting cluster.
    pub cluster: String,
    /// Its trust domain (whose bundle verifies its workloads).
    pub trust_domain: String,
    /// Whether its lease is live.
    pub live: bool,
    /// Through its gateway rather than directly.
    pub via_gateway: bool,
    /// The SPIFFE IDs this cluster's endpoints run as: what a consumer accepts from
    /// these endpoints, and from no other cluster's.
    pub identities: Vec<String>,
    /// Its endpoints, ordered by priority then address.
    pub endpoints: Vec<ImportEndpoint>,
}

/// A service as one consuming cluster imports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceImport {
    /// Namespace and name.
    pub key: ServiceKey,
    /// `NAME.NS.svc.clusterset.local`.
    pub hostname: String,
    /// Merged ports.
    pub ports: Vec<ServicePort>,
    /// Every exporter's SPIFFE IDs together. Verify an endpoint against its own
    /// cluster's [`ImportedCluster::identities`] instead: one member's identity must
    /// never vouch for another member's endpoints.
    pub identities: Vec<String>,
    /// Per exporting cluster.
    pub clusters: Vec<ImportedCluster>,
    /// Conditions (a `Conflict` when exporters disagree).
    pub conditions: Vec<Condition>,
    /// Revision of the last change to the service.
    pub revision: u64,
}

impl ServiceImport {
    /// Ready endpoints over all clusters.
    #[must_use]
    pub fn ready_endpoints(&self) -> usize {
        self.clusters.iter().flat_map(|c| &c.endpoints).filter(|e| e.ready).count()
    }

    /// Endpoints over all clusters.
    #[must_use]
    pub fn total_endpoints(&self) -> usize {
        self.clusters.iter().map(|c| c.endpoints.len()).sum()
    }
}

/// What one exporter contributes to an import, as the state machine holds it.
#[derive(Clone, Copy, Debug)]
pub struct ExporterView<'a> {
    /// Cluster.
    pub cluster: &'a str,
    /// Its trust domain.
    pub trust_domain: &'a str,
    /// Whether its lease is live.
    pub live: bool,
    /// Its export.
    pub export: &'a ServiceExport,
    /// Where it runs, as the operator bound it (empty: not bound). Failover is ordered by
    /// this, never by what the export claims: an endpoint's zone counts only within the
    /// bound region.
    pub locality: &'a Locality,
}

impl ExporterView<'_> {
    /// The locality importers place an endpoint of this exporter in.
    fn endpoint_locality(&self, zone: &str) -> (String, String) {
        if self.locality.region.is_empty() {
            return (String::new(), String::new());
        }
        let zone = if zone.is_empty() { &self.locality.zone } else { zone };
        (self.locality.region.clone(), zone.to_string())
    }
}

/// Builds the import `consumer` sees of one service from its exporters, oldest first.
/// `None` when no exporter's scope admits the consumer.
#[must_use]
pub fn build_import(
    key: &ServiceKey,
    revision: u64,
    consumer: &str,
    consumer_locality: &Locality,
    exporters: &[ExporterView<'_>],
) -> Option<ServiceImport> {
    let merged = merge_ports(exporters.iter().map(|e| (e.cluster, e.export.ports.as_slice())));
    let admitted: Vec<&ExporterView<'_>> =
        exporters.iter().filter(|e| e.export.scope.admits(consumer)).collect();
    if admitted.is_empty() {
        return None;
    }
    let mut identities = BTreeSet::new();
    let mut clusters = Vec::with_capacity(admitted.len());
    for exporter in admitted {
        identities.extend(exporter.export.identities.iter().cloned());
        let export = exporter.export;
        let mut endpoints: Vec<ImportEndpoint> = match export.mode {
            ExportMode::Direct => export
                .endpoints
                .iter()
                .map(|e| {
                    let (region, zone) = exporter.endpoint_locality(&e.zone);
                    ImportEndpoint {
                        address: e.address,
                        ports: e.ports.clone(),
                        priority: locality_priority(consumer_locality, &region, &zone),
                        zone,
                        region,
                        weight: e.weight,
                        ready: e.ready && exporter.live,
                    }
                })
                .collect(),
            ExportMode::Gateway { address, port } => {
                let (region, zone) = exporter
                    .endpoint_locality(export.endpoints.first().map_or("", |e| e.zone.as_str()));
                let ready_count = export.endpoints.iter().filter(|e| e.ready).count();
                vec![ImportEndpoint {
                    address,
                    ports: merged
                        .ports
                        .iter()
                        .map(|p| EndpointPort { name: p.name.clone(), port })
                        .collect(),
                    priority: locality_priority(consumer_locality, &region, &zone),
                    zone,
                    region,
                    weight: u32::try_from(ready_count.max(1)).unwrap_or(u32::MAX),
                    ready: ready_count > 0 && exporter.live,
                }]
            }
        };
        endpoints.sort_by_key(|e| (e.priority, e.address));
        clusters.push(ImportedCluster {
            cluster: exporter.cluster.to_string(),
            trust_domain: exporter.trust_domain.to_string(),
            live: exporter.live,
            via_gateway: matches!(export.mode, ExportMode::Gateway { .. }),
            identities: export.identities.clone(),
            endpoints,
        });
    }
    // Nearest clusters first, so that a reader sees the failover order.
    clusters.sort_by_key(|c| {
        (c.endpoints.iter().map(|e| e.priority).min().unwrap_or(u32::MAX), c.cluster.clone())
    });
    Some(ServiceImport {
        key: key.clone(),
        hostname: key.hostname(),
        ports: merged.ports,
        identities: identities.into_iter().collect(),
        clusters,
        conditions: merged.conflict.into_iter().collect(),
        revision,
    })
}
