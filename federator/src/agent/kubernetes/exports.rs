//! From Kubernetes objects to what the cluster exports: a `ServiceExport`, the Service of
//! the same name and that Service's EndpointSlices become one
//! [`ServiceExport`](crate::service::ServiceExport) of the domain — the Service's ports,
//! the ready state and zone of every endpoint the slices list.
//!
//! What the MCS API does not say is read from annotations on the `ServiceExport`:
//!
//! | annotation | meaning | default |
//! |---|---|---|
//! | `federator.io/identities` | SPIFFE IDs the service's workloads run as, comma-separated | `spiffe://<trust domain>/ns/<namespace>/sa/<name>` |
//! | `federator.io/clusters` | the only clusters that may import it, comma-separated | every member |
//! | `federator.io/gateway` | `IP:PORT` of the east-west gateway it is reached through | its endpoints, directly |
//!
//! Whoever may write a `ServiceExport` in a namespace decides these, so the
//! [`ExportRules`] bound them: identities of the object's own namespace, gateways the
//! operator listed — except in the namespaces the operator trusts.
//!
//! Every `ServiceExport` gets a `Valid` verdict ([`Verdict`]): true when its export went
//! out, false with the reason (no Service, an ExternalName Service, a field the
//! federation would refuse) when not.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::agent::view::{ExportSet, SourceProblem};
use crate::service::{
    Endpoint, EndpointPort, ExportMode, Protocol, ServiceExport, ServiceKey, ServicePort,
    scope_from_clusters,
};

/// Annotation: the SPIFFE IDs of the service's workloads.
pub const IDENTITIES_ANNOTATION: &str = "federator.io/identities";
/// Annotation: the clusters that may import the service.
pub const CLUSTERS_ANNOTATION: &str = "federator.io/clusters";
/// Annotation: the east-west gateway the service is reached through.
pub const GATEWAY_ANNOTATION: &str = "federator.io/gateway";
/// The label the EndpointSlice controller puts on a Service's slices.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Whether a `ServiceExport` could be exported, for its `Valid` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Exported.
    pub valid: bool,
    /// A CamelCase reason (`Exported`, `NoService`, `ExternalName`, `Invalid`,
    /// `Refused`).
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

/// What a cluster's `ServiceExport`s may claim (`[exports.kubernetes]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportRules {
    /// The cluster's own trust domain: every identity is in it.
    pub trust_domain: String,
    /// Namespaces whose `ServiceExport`s may name any identity of the trust domain and
    /// any gateway.
    pub trusted_namespaces: BTreeSet<String>,
    /// The gateways any `ServiceExport` may name.
    pub gateways: BTreeSet<SocketAddr>,
}

impl ExportRules {
    /// Rules for a member of `trust_domain` that trusts no namespace and lists no
    /// gateway.
    #[must_use]
    pub fn new(trust_domain: impl Into<String>) -> Self {
        Self { trust_domain: trust_domain.into(), ..Self::default() }
    }

    /// Why the `ServiceExport` `key` may not claim `identities` and `mode`, if it may
    /// not.
    fn refuse_claims(
        &self,
        key: &ServiceKey,
        identities: &[String],
        mode: &ExportMode,
    ) -> Option<String> {
        if self.trusted_namespaces.contains(&key.namespace) {
            return None;
        }
        let own = format!("spiffe://{}/ns/{}/", self.trust_domain, key.namespace);
        if let Some(other) = identities.iter().find(|id| !id.starts_with(&own)) {
            return Some(format!(
                "annotation {IDENTITIES_ANNOTATION}: {other} is not an identity of namespace \
                 {ns}; a ServiceExport names identities under {own} unless the agent's \
                 [exports.kubernetes] trusted_namespaces lists {ns}",
                ns = key.namespace
            ));
        }
        if let ExportMode::Gateway { address, port } = mode {
            let gateway = SocketAddr::new(*address, *port);
            if !self.gateways.contains(&gateway) {
                return Some(format!(
                    "annotation {GATEWAY_ANNOTATION}: {gateway} is not one of the cluster's \
                     gateways; the operator lists them in the agent's [exports.kubernetes] \
                     gateways"
                ));
            }
        }
        None
    }
}

/// What the cluster's `ServiceExport`s say: the exports and, per `ServiceExport`, its
/// verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubernetesExports {
    /// The exports and the problems, as every export source gives them.
    pub set: ExportSet,
    /// The verdict on each `ServiceExport`.
    pub verdicts: BTreeMap<ServiceKey, Verdict>,
}

/// The exports of `service_exports` (their metadata: a `ServiceExport` says nothing
/// else, and an upstream one has no spec at all), each built from the Service of the same namespace
/// and name among `services` and its slices among `slices`, under `rules`.
#[must_use]
pub fn exports_from_objects<'a>(
    service_exports: impl IntoIterator<Item = &'a ObjectMeta>,
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    rules: &ExportRules,
) -> KubernetesExports {
    let services: BTreeMap<ServiceKey, &Service> =
        services.into_iter().filter_map(|s| Some((key_of(&s.metadata)?, s))).collect();
    let mut slices_of: BTreeMap<ServiceKey, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        let namespace = slice.metadata.namespace.clone().unwrap_or_default();
        if let Some(service) =
            slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            slices_of.entry(ServiceKey::new(namespace, service.clone())).or_default().push(slice);
        }
    }
    let mut out = KubernetesExports::default();
    for object in service_exports {
        let Some(key) = key_of(object) else { continue };
        if object.deletion_timestamp.is_some() {
            continue;
        }
        let slices = slices_of.get(&key).map_or(&[][..], Vec::as_slice);
        let verdict = match services.get(&key) {
            None => Verdict {
                valid: false,
                reason: "NoService",
                message: format!(
                    "no Service {key} in this cluster: create it, then it is exported"
                ),
            },
            Some(service) => match export_of(&key, object, service, slices, rules) {
                Ok(export) => {
                    let message = format!(
                        "exported with {} port(s) and {} endpoint(s) as {}",
                        export.ports.len(),
                        export.endpoints.len(),
                        export.identities.join(", ")
                    );
                    out.set.exports.insert(key.clone(), export);
                    Verdict { valid: true, reason: "Exported", message }
                }
                Err((reason, message)) => Verdict { valid: false, reason, message },
            },
        };
        if !verdict.valid {
            out.set.problems.push(SourceProblem {
                location: format!("ServiceExport {key}"),
                message: verdict.message.clone(),
            });
        }
        out.verdicts.insert(key, verdict);
    }
    out
}

/// Turns the verdict on each exported service the federation refused (`refusals`: the
/// service and the federation's reason) into `Refused`: the export left the cluster, but
/// no other cluster gets it.
pub fn apply_refusals(
    verdicts: &mut BTreeMap<ServiceKey, Verdict>,
    refusals: &BTreeMap<ServiceKey, String>,
) {
    for (key, why) in refusals {
        if let Some(verdict) = verdicts.get_mut(key)
            && verdict.valid
        {
            *verdict = Verdict {
                valid: false,
                reason: "Refused",
                message: format!("the federation refused it: {why}"),
            };
        }
    }
}

fn key_of(meta: &ObjectMeta) -> Option<ServiceKey> {
    Some(ServiceKey::new(meta.namespace.clone()?, meta.name.clone()?))
}

/// The export of one `ServiceExport`, or why there is none (reason, message).
fn export_of(
    key: &ServiceKey,
    object: &ObjectMeta,
    service: &Service,
    slices: &[&EndpointSlice],
    rules: &ExportRules,
) -> Result<ServiceExport, (&'static str, String)> {
    let trust_domain = rules.trust_domain.as_str();
    let invalid = |message: String| ("Invalid", message);
    let annotations = object.annotations.clone().unwrap_or_default();
    let spec = service.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err((
            "ExternalName",
            format!("Service {key} is of type ExternalName, which has no endpoints to export"),
        ));
    }
    let mut ports = Vec::new();
    for (i, port) in spec.ports.unwrap_or_default().iter().enumerate() {
        let protocol = Protocol::parse(
            &format!("spec.ports[{i}].protocol"),
            port.protocol.as_deref().unwrap_or("TCP"),
        )
        .map_err(|e| invalid(format!("Service {key}: {e}")))?;
        ports.push(ServicePort {
            name: port.name.clone().unwrap_or_default(),
            port: u16::try_from(port.port).map_err(|_| {
                invalid(format!("Service {key}: port {} is out of range", port.port))
            })?,
            protocol,
            app_protocol: port.app_protocol.clone().unwrap_or_default(),
        });
    }
    let endpoints = endpoints_of(&ports, slices);
    let identities = match annotations.get(IDENTITIES_ANNOTATION) {
        Some(list) => split_list(list),
        None => vec![format!("spiffe://{trust_domain}/ns/{}/sa/{}", key.namespace, key.name)],
    };
    let clusters = annotations.get(CLUSTERS_ANNOTATION).map(|l| split_list(l)).unwrap_or_default();
    let mode = match annotations.get(GATEWAY_ANNOTATION) {
        None => ExportMode::Direct,
        Some(text) => {
            let gateway: SocketAddr = text.trim().parse().map_err(|_| {
                invalid(format!(
                    "annotation {GATEWAY_ANNOTATION}: {text:?} is not IP:PORT (e.g. 192.0.2.9:15443)"
                ))
            })?;
            ExportMode::Gateway { address: gateway.ip(), port: gateway.port() }
        }
    };
    let export = ServiceExport {
        key: key.clone(),
        ports,
        endpoints,
        identities,
        scope: scope_from_clusters(&clusters),
        mode,
    };
    export.validate(trust_domain).map_err(|e| {
        let field = e.field.clone();
        let hint = match field.as_str() {
            f if f.starts_with("identities") => {
                format!(" (set the annotation {IDENTITIES_ANNOTATION})")
            }
            f if f.starts_with("scope") => format!(" (the annotation {CLUSTERS_ANNOTATION})"),
            f if f.starts_with("mode") => format!(" (the annotation {GATEWAY_ANNOTATION})"),
            _ => String::new(),
        };
        invalid(format!("{key}: {e}{hint}"))
    })?;
    if let Some(refusal) = rules.refuse_claims(key, &export.identities, &export.mode) {
        return Err(invalid(format!("{key}: {refusal}")));
    }
    Ok(export)
}

/// The endpoints the slices list (IPv4 and IPv6; FQDN slices have none), each address
/// once (ready when any slice lists it ready), with the ports that differ from the
/// service's.
fn endpoints_of(ports: &[ServicePort], slices: &[&EndpointSlice]) -> Vec<Endpoint> {
    let mut by_address: BTreeMap<IpAddr, Endpoint> = BTreeMap::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        // The slice's ports, by the service port they serve; a port of no service
        // port is left out.
        let overrides: BTreeSet<(String, u16)> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let name = p.name.clone().unwrap_or_default();
                let number = u16::try_from(p.port?).ok()?;
                let declared = ports.iter().find(|s| s.name == name)?;
                (declared.port != number).then_some((name, number))
            })
            .collect();
        for endpoint in slice.endpoints.iter().flatten() {
            let ready = endpoint.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            for address in &endpoint.addresses {
                let Ok(address) = address.parse::<IpAddr>() else { continue };
                let entry = by_address.entry(address).or_insert_with(|| Endpoint {
                    address,
                    ports: overrides
                        .iter()
                        .map(|(name, port)| EndpointPort { name: name.clone(), port: *port })
                        .collect(),
                    zone: endpoint.zone.clone().unwrap_or_default(),
                    region: String::new(),
                    weight: 1,
                    ready,
                });
                entry.ready |= ready;
            }
        }
    }
    by_address.into_values().collect()
}

/// A comma-separated list, trimmed, without empty items.
fn split_list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

#[cfg(test)]
mod tests;
