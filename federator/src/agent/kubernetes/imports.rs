//! From the agent's view to the Kubernetes objects that carry it into the cluster:
//!
//! - a `ServiceImport` per imported service, in the service's namespace, with the merged
//!   ports and the exporting clusters;
//! - EndpointSlices with each exporting cluster's endpoints, labelled
//!   `multicluster.kubernetes.io/service-name` and `multicluster.kubernetes.io/source-cluster`
//!   (one slice per cluster, address family and port set, at most
//!   [`MAX_ENDPOINTS_PER_SLICE`] endpoints), an endpoint ready only while its exporter
//!   reports it ready and the exporter's lease is live (loopback addresses, which the API
//!   server refuses in a slice, are left out);
//! - a `ClusterTrustBundle` per federated trust domain, for the signer
//!   [`DEFAULT_SIGNER`] (or the configured one), labelled with the trust domain, so that
//!   a pod mounts one domain's anchors or every federated domain's with a projected
//!   volume.
//!
//! Every object carries the ownership labels ([`MANAGED_BY_LABEL`], [`AGENT_LABEL`]): the
//! agent deletes only objects with its own labels and never touches any other.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::certificates::v1::{ClusterTrustBundle, ClusterTrustBundleSpec};
use k8s_openapi::api::discovery::v1::{
    Endpoint as SliceEndpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sha2::Digest as _;

use super::crd::{
    ClusterStatus, ServiceImport as ServiceImportObject, ServiceImportPort, ServiceImportSpec,
    ServiceImportStatus,
};
use crate::agent::view::AgentView;
use crate::service::{ImportEndpoint, ServiceImport, ServicePort};

/// Label on every object the agent writes: `app.kubernetes.io/managed-by=federator`.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "federator";
/// Label naming the agent's cluster: an agent deletes only objects with its own (run one
/// agent per API server: object names do not carry the cluster).
pub const AGENT_LABEL: &str = "federator.io/agent-cluster";
/// MCS label: the imported service's name.
pub const MCS_SERVICE_NAME_LABEL: &str = "multicluster.kubernetes.io/service-name";
/// MCS label: the cluster the endpoints come from.
pub const MCS_SOURCE_CLUSTER_LABEL: &str = "multicluster.kubernetes.io/source-cluster";
/// The EndpointSlice label naming the controller that manages a slice.
pub const SLICE_MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Its value on the agent's slices.
pub const SLICE_MANAGER: &str = "agent.federator.io";
/// Label on a `ClusterTrustBundle`: its trust domain (or, for a name longer than a label
/// value allows, a digest of it; the annotation holds the name).
pub const TRUST_DOMAIN_LABEL: &str = "federator.io/trust-domain";
/// Annotation on a `ClusterTrustBundle`: its trust domain.
pub const TRUST_DOMAIN_ANNOTATION: &str = "federator.io/trust-domain";
/// The signer of the agent's `ClusterTrustBundle`s by default.
pub const DEFAULT_SIGNER: &str = "federator.io/federated-trust-domain";
/// Most endpoints in one EndpointSlice (the EndpointSlice controller's default).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// The objects that carry a view into a cluster.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    /// `ServiceImport`s.
    pub service_imports: Vec<ServiceImportObject>,
    /// EndpointSlices.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// `ClusterTrustBundle`s.
    pub trust_bundles: Vec<ClusterTrustBundle>,
}

/// The ownership labels of the agent of `cluster`.
#[must_use]
pub fn owner_labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (AGENT_LABEL.to_string(), cluster.to_string()),
    ])
}

/// The label selector of the objects the agent of `cluster` owns.
#[must_use]
pub fn owner_selector(cluster: &str) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY},{AGENT_LABEL}={cluster}")
}

/// The objects for `view`, written by the agent of `view.cluster` with `signer`.
#[must_use]
pub fn desired_objects(view: &AgentView, signer: &str) -> Desired {
    let mut desired = Desired::default();
    for import in view.imports.values() {
        desired.service_imports.push(service_import(import, &view.cluster));
        desired.endpoint_slices.extend(endpoint_slices(import, &view.cluster));
    }
    for (trust_domain, bundle) in &view.bundles {
        if bundle.x509_roots_der().is_empty() {
            continue;
        }
        desired.trust_bundles.push(trust_bundle(
            trust_domain,
            &bundle.to_pem(),
            signer,
            &view.cluster,
        ));
    }
    desired
}

fn service_import(import: &ServiceImport, cluster: &str) -> ServiceImportObject {
    let mut object = ServiceImportObject::new(
        &import.key.name,
        ServiceImportSpec {
            ports: import.ports.iter().map(import_port).collect(),
            ips: Vec::new(),
            // No cluster-set IP is allocated: names resolve to the endpoints.
            type_: "Headless".into(),
        },
    );
    object.metadata.namespace = Some(import.key.namespace.clone());
    object.metadata.labels = Some(owner_labels(cluster));
    object.status = Some(ServiceImportStatus {
        clusters: import
            .clusters
            .iter()
            .map(|c| ClusterStatus { cluster: c.cluster.clone() })
            .collect(),
    });
    object
}

fn import_port(port: &ServicePort) -> ServiceImportPort {
    ServiceImportPort {
        name: port.name.clone(),
        protocol: port.protocol.as_str().into(),
        // What Kubernetes takes as an appProtocol (a qualified name); any other value a
        // member gave is left out rather than refused with the whole object.
        app_protocol: is_qualified_name(&port.app_protocol).then(|| port.app_protocol.clone()),
        port: i32::from(port.port),
    }
}

/// A slice's ports: (name, number, protocol).
type SlicePorts = Vec<(String, u16, &'static str)>;

/// The slices of one import: per exporting cluster, address family and port set.
fn endpoint_slices(import: &ServiceImport, cluster: &str) -> Vec<EndpointSlice> {
    let mut slices = Vec::new();
    for exporter in &import.clusters {
        // (family, ports) → endpoints, in the import's order (priority, then address).
        let mut groups: BTreeMap<(&'static str, SlicePorts), Vec<&ImportEndpoint>> =
            BTreeMap::new();
        // The API server refuses loopback addresses in a slice (they mean nothing in
        // another cluster anyway; only a single-machine federation has them).
        for endpoint in
            exporter.endpoints.iter().filter(|e| !e.address.to_canonical().is_loopback())
        {
            // An IPv4-mapped IPv6 address is the IPv4 address (the API server refuses it
            // in an IPv6 slice).
            let family = match endpoint.address.to_canonical() {
                IpAddr::V4(_) => "IPv4",
                IpAddr::V6(_) => "IPv6",
            };
            let ports = import
                .ports
                .iter()
                .map(|p| {
                    let number =
                        endpoint.ports.iter().find(|o| o.name == p.name).map_or(p.port, |o| o.port);
                    (p.name.clone(), number, p.protocol.as_str())
                })
                .collect();
            groups.entry((family, ports)).or_default().push(endpoint);
        }
        for ((family, ports), endpoints) in groups {
            for (chunk, endpoints) in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE).enumerate() {
                let mut labels = owner_labels(cluster);
                labels.insert(MCS_SERVICE_NAME_LABEL.into(), import.key.name.clone());
                labels.insert(MCS_SOURCE_CLUSTER_LABEL.into(), exporter.cluster.clone());
                labels.insert(SLICE_MANAGED_BY_LABEL.into(), SLICE_MANAGER.into());
                let identity =
                    format!("{}/{}/{family}/{ports:?}/{chunk}", import.key, exporter.cluster);
                slices.push(EndpointSlice {
                    metadata: ObjectMeta {
                        name: Some(object_name(
                            &format!("{}-{}", import.key.name, exporter.cluster),
                            &identity,
                        )),
                        namespace: Some(import.key.namespace.clone()),
                        labels: Some(labels),
                        ..ObjectMeta::default()
                    },
                    address_type: family.into(),
                    endpoints: Some(
                        endpoints
                            .iter()
                            .map(|e| SliceEndpoint {
                                addresses: vec![e.address.to_canonical().to_string()],
                                conditions: Some(EndpointConditions {
                                    ready: Some(e.ready),
                                    serving: Some(e.ready),
                                    terminating: Some(false),
                                }),
                                zone: (!e.zone.is_empty()).then(|| e.zone.clone()),
                                ..SliceEndpoint::default()
                            })
                            .collect(),
                    ),
                    ports: Some(
                        ports
                            .iter()
                            .map(|(name, port, protocol)| SlicePort {
                                name: Some(name.clone()),
                                port: Some(i32::from(*port)),
                                protocol: Some((*protocol).into()),
                                app_protocol: import
                                    .ports
                                    .iter()
                                    .find(|p| &p.name == name)
                                    .filter(|p| is_qualified_name(&p.app_protocol))
                                    .map(|p| p.app_protocol.clone()),
                            })
                            .collect(),
                    ),
                });
            }
        }
    }
    slices
}

/// `prefix` cut to leave room for a digest of `identity`: a DNS label (at most 63
/// characters) unique per identity.
fn object_name(prefix: &str, identity: &str) -> String {
    let digest = hex::encode(&sha2::Sha256::digest(identity.as_bytes())[..5]);
    let room = 63 - digest.len() - 1;
    let prefix: String = prefix.chars().take(room).collect();
    format!("{}-{digest}", prefix.trim_end_matches('-'))
}

/// The `ClusterTrustBundle` of `trust_domain`: named with the signer as its prefix (as
/// the API requires: `federator.io:federated-trust-domain:<trust domain>`).
fn trust_bundle(trust_domain: &str, pem: &str, signer: &str, cluster: &str) -> ClusterTrustBundle {
    let mut labels = owner_labels(cluster);
    labels.insert(TRUST_DOMAIN_LABEL.into(), label_value(trust_domain));
    ClusterTrustBundle {
        metadata: ObjectMeta {
            name: Some(trust_bundle_name(signer, trust_domain)),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                TRUST_DOMAIN_ANNOTATION.to_string(),
                trust_domain.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: ClusterTrustBundleSpec {
            signer_name: Some(signer.to_string()),
            trust_bundle: pem.to_string(),
        },
    }
}

/// `<signer with / as :>:<trust domain>`; a trust domain that is not a DNS subdomain
/// (`_`, a label ending in `-`), or too long for an object name, becomes a digest.
#[must_use]
pub fn trust_bundle_name(signer: &str, trust_domain: &str) -> String {
    let prefix = signer.replace('/', ":");
    let fits = is_dns_subdomain(trust_domain) && prefix.len() + 1 + trust_domain.len() <= 253;
    if fits {
        format!("{prefix}:{trust_domain}")
    } else {
        format!("{prefix}:{}", hex::encode(&sha2::Sha256::digest(trust_domain.as_bytes())[..16]))
    }
}

/// Whether `name` is a DNS subdomain: dot-separated labels of `[a-z0-9-]`, each 1 to 63
/// characters, starting and ending alphanumeric.
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Whether `text` is a Kubernetes qualified name (`[prefix/]name`, the name 1 to 63 of
/// `[A-Za-z0-9._-]` starting and ending alphanumeric, the prefix a DNS subdomain), as an
/// `appProtocol` must be.
fn is_qualified_name(text: &str) -> bool {
    let (prefix, name) = match text.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, text),
    };
    prefix.is_none_or(is_dns_subdomain)
        && !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// `value` as a label value (at most 63 characters), or a digest of it.
#[must_use]
pub fn label_value(value: &str) -> String {
    let fits = value.len() <= 63
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        && value.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && value.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if fits {
        value.to_string()
    } else {
        format!("sha256-{}", hex::encode(&sha2::Sha256::digest(value.as_bytes())[..16]))
    }
}

#[cfg(test)]
mod tests;
