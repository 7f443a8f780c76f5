//! The xDS resources an agent serves, built from its view: SDS secrets (trust bundles)
//! and EDS load assignments (imports). Pure functions, so they are tested without a
//! server.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::{
    PortSpecifier, Protocol as Transport,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, DataSource, HealthStatus, Locality, SocketAddress, TypedExtensionConfig,
    data_source::Specifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, secret,
    spiffe_cert_validator_config::TrustDomain,
};
use envoy_types::pb::google::protobuf::{Struct, UInt32Value, Value, value::Kind};
use envoy_types::util::pack_any;

use crate::agent::view::AgentView;
use crate::bundle::TrustBundle;
use crate::service::{ImportEndpoint, ImportedCluster, Protocol, ServiceImport, ServicePort};

/// Priority, region and zone: what endpoints of one `LocalityLbEndpoints` share.
type LocalityKey<'a> = (u32, &'a str, &'a str);

/// The filter metadata key Envoy matches a cluster's `transport_socket_matches` against.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
/// The field of [`TRANSPORT_SOCKET_MATCH`] metadata that names an endpoint's exporter by
/// its trust domain: `match: {federator.trust_domain: b.example}` picks the transport
/// socket that verifies cluster b's endpoints as b's workloads only.
pub const EXPORTER_TRUST_DOMAIN: &str = "federator.trust_domain";

/// Name of the secret that validates peers of every trust domain the cluster trusts,
/// this cluster's own and the federated ones, with Envoy's SPIFFE certificate validator
/// (SPIRE agent's default name for it).
pub const SECRET_ALL: &str = "ALL";
/// Name of the secret that holds this cluster's own trust domain's CA certificates
/// (SPIRE agent's default name for it).
pub const SECRET_ROOTCA: &str = "ROOTCA";
/// Prefix of the per-trust-domain secrets: `spiffe://<trust domain>`.
pub const SECRET_TRUST_DOMAIN_PREFIX: &str = "spiffe://";
/// Name of Envoy's SPIFFE certificate validator extension.
pub const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";
/// Type URL of SDS resources (`envoy.extensions.transport_sockets.tls.v3.Secret`).
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// Type URL of EDS resources (`envoy.config.endpoint.v3.ClusterLoadAssignment`).
pub const LOAD_ASSIGNMENT_TYPE_URL: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// The SDS secret name of one trust domain's bundle: `spiffe://<trust domain>`.
#[must_use]
pub fn trust_domain_secret_name(trust_domain: &str) -> String {
    format!("{SECRET_TRUST_DOMAIN_PREFIX}{trust_domain}")
}

/// The EDS cluster name of one named port of an import: `<hostname>:<port name>`.
#[must_use]
pub fn port_cluster_name(hostname: &str, port_name: &str) -> String {
    format!("{hostname}:{port_name}")
}

/// Every secret the view yields, by name.
///
/// - [`SECRET_ALL`]: a validation context whose `custom_validator_config` is Envoy's
///   SPIFFE validator with one trust domain per bundle of [`AgentView::all_bundles`]
///   (own and federated), each with its X.509 authorities as inline PEM.
/// - [`SECRET_ROOTCA`]: this cluster's own bundle as a plain `trusted_ca`.
/// - `spiffe://<td>` for each bundle of [`AgentView::all_bundles`]: that bundle as a
///   plain `trusted_ca`.
///
/// A bundle without X.509 authorities (JWT only) cannot validate a certificate, so it
/// yields no secret and no entry in `ALL`; `ALL` itself is left out when no bundle has
/// X.509 authorities (Envoy rejects a SPIFFE validator without trust domains), and
/// `ROOTCA` when the own bundle is unknown. A left-out secret is simply not served:
/// Envoy keeps waiting for it.
#[must_use]
pub fn secrets(view: &AgentView) -> BTreeMap<String, Secret> {
    let mut out = BTreeMap::new();
    let mut trust_domains = Vec::new();
    for (td, bundle) in view.all_bundles() {
        let Some(pem) = bundle_pem(bundle) else { continue };
        trust_domains.push(TrustDomain {
            name: td.to_string(),
            trust_bundle: Some(inline(pem.clone())),
            workload_trust_domain: String::new(),
        });
        let name = trust_domain_secret_name(td);
        out.insert(name.clone(), trusted_ca_secret(name, pem));
    }
    if !trust_domains.is_empty() {
        let validator = SpiffeCertValidatorConfig { trust_domains, trust_bundles: None };
        let context = CertificateValidationContext {
            custom_validator_config: Some(TypedExtensionConfig {
                name: SPIFFE_VALIDATOR.to_string(),
                typed_config: Some(pack_any(validator)),
            }),
            ..Default::default()
        };
        out.insert(
            SECRET_ALL.to_string(),
            Secret {
                name: SECRET_ALL.to_string(),
                r#type: Some(secret::Type::ValidationContext(context)),
            },
        );
    }
    if let Some(pem) = view.own_bundle.as_ref().and_then(bundle_pem) {
        out.insert(SECRET_ROOTCA.to_string(), trusted_ca_secret(SECRET_ROOTCA.to_string(), pem));
    }
    out
}

fn bundle_pem(bundle: &TrustBundle) -> Option<Vec<u8>> {
    (!bundle.x509_authorities.is_empty()).then(|| bundle.to_pem().into_bytes())
}

fn inline(bytes: Vec<u8>) -> DataSource {
    DataSource { specifier: Some(Specifier::InlineBytes(bytes)), watched_directory: None }
}

fn trusted_ca_secret(name: String, pem: Vec<u8>) -> Secret {
    let context =
        CertificateValidationContext { trusted_ca: Some(inline(pem)), ..Default::default() };
    Secret { name, r#type: Some(secret::Type::ValidationContext(context)) }
}

/// Every load assignment the view yields, by cluster name.
///
/// Each import yields one assignment named after its hostname
/// (`NAME.NS.svc.clusterset.local`) for its first port; an import with several ports
/// also yields one per named port, `<hostname>:<port name>` (see
/// [`port_cluster_name`]), so an Envoy cluster per port can pick its own. SCTP ports
/// yield none (Envoy does not proxy SCTP).
#[must_use]
pub fn load_assignments(view: &AgentView) -> BTreeMap<String, ClusterLoadAssignment> {
    assignment_ports(view)
        .into_iter()
        .map(|(name, import, port)| (name.clone(), load_assignment(name, import, port)))
        .collect()
}

/// The name of every load assignment (and CDS cluster) of the view, with the import and
/// the port it serves: see [`load_assignments`].
#[must_use]
pub fn assignment_ports(view: &AgentView) -> Vec<(String, &ServiceImport, &ServicePort)> {
    let mut out = Vec::new();
    for import in view.imports.values() {
        let Some(first) = import.ports.first() else { continue };
        if first.protocol != Protocol::Sctp {
            out.push((import.hostname.clone(), import, first));
        }
        if import.ports.len() > 1 {
            for port in &import.ports {
                if port.name.is_empty() || port.protocol == Protocol::Sctp {
                    continue;
                }
                out.push((port_cluster_name(&import.hostname, &port.name), import, port));
            }
        }
    }
    out
}

/// The assignment of one port of an import: every endpoint of every exporting cluster,
/// grouped by (priority, region, zone) into localities in that order.
fn load_assignment(
    cluster_name: String,
    import: &ServiceImport,
    port: &ServicePort,
) -> ClusterLoadAssignment {
    let mut groups: BTreeMap<LocalityKey<'_>, Vec<(&ImportedCluster, &ImportEndpoint)>> =
        BTreeMap::new();
    for cluster in &import.clusters {
        for endpoint in &cluster.endpoints {
            groups
                .entry((endpoint.priority, endpoint.region.as_str(), endpoint.zone.as_str()))
                .or_default()
                .push((cluster, endpoint));
        }
    }
    // Envoy requires the locality weights of one priority to sum to at most 2^32-1.
    let mut per_priority: BTreeMap<u32, u32> = BTreeMap::new();
    for (priority, _, _) in groups.keys() {
        *per_priority.entry(*priority).or_default() += 1;
    }
    let transport = if port.protocol == Protocol::Udp { Transport::Udp } else { Transport::Tcp };
    let endpoints = groups
        .into_iter()
        .map(|((priority, region, zone), members)| {
            let cap = u32::MAX / per_priority.get(&priority).copied().unwrap_or(1).max(1);
            let weight: u64 = members.iter().map(|(_, e)| u64::from(e.weight.max(1))).sum();
            let weight = u32::try_from(weight).unwrap_or(u32::MAX).clamp(1, cap.max(1));
            LocalityLbEndpoints {
                locality: Some(Locality {
                    region: region.to_string(),
                    zone: zone.to_string(),
                    sub_zone: String::new(),
                }),
                lb_endpoints: members
                    .into_iter()
                    .map(|(cluster, e)| lb_endpoint(cluster, e, port, transport))
                    .collect(),
                load_balancing_weight: Some(UInt32Value { value: weight }),
                priority,
                ..Default::default()
            }
        })
        .collect();
    ClusterLoadAssignment { cluster_name, endpoints, ..Default::default() }
}

/// The metadata of an endpoint of `cluster`: its exporter's trust domain, under the key
/// Envoy matches `transport_socket_matches` against — so that a cluster verifies each
/// exporter's endpoints with that trust domain's bundle and that exporter's identities
/// (listed per cluster in the import documents) and no other's.
///
/// One map entry with one field: prost encodes protobuf maps in `HashMap` order, and a
/// resource's encoding must not change while its content does not (its digest decides
/// whether Envoy gets a push).
fn exporter_metadata(cluster: &ImportedCluster) -> Metadata {
    let trust_domain = Value { kind: Some(Kind::StringValue(cluster.trust_domain.clone())) };
    let socket_match = Struct {
        fields: [(EXPORTER_TRUST_DOMAIN.to_string(), trust_domain)].into_iter().collect(),
    };
    Metadata {
        filter_metadata: [(TRANSPORT_SOCKET_MATCH.to_string(), socket_match)].into_iter().collect(),
        ..Default::default()
    }
}

fn lb_endpoint(
    cluster: &ImportedCluster,
    endpoint: &ImportEndpoint,
    port: &ServicePort,
    transport: Transport,
) -> LbEndpoint {
    let number = endpoint.ports.iter().find(|p| p.name == port.name).map_or(port.port, |p| p.port);
    let address = SocketAddress {
        protocol: transport as i32,
        address: endpoint.address.to_string(),
        port_specifier: Some(PortSpecifier::PortValue(u32::from(number))),
        ..Default::default()
    };
    let health = if endpoint.ready { HealthStatus::Healthy } else { HealthStatus::Unhealthy };
    LbEndpoint {
        health_status: health as i32,
        load_balancing_weight: Some(UInt32Value { value: endpoint.weight.max(1) }),
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(Address { address: Some(AddressKind::SocketAddress(address)) }),
            ..Default::default()
        })),
        metadata: Some(exporter_metadata(cluster)),
    }
}
