//! Exported services and the imports built from them, following the Kubernetes
//! Multi-Cluster Services API (KEP-1645).
//!
//! A member cluster *exports* a service: its ports, its endpoints, the SPIFFE IDs its
//! workloads run as, who may import it (every member or an allowlist) and how it is
//! reached (its endpoints directly, or the cluster's east-west gateway). Every consuming
//! cluster gets one *import* per namespace/name that merges the endpoints of every
//! exporting cluster; when exporters disagree on a port, the oldest export's definition
//! wins and the service carries a `Conflict` condition every exporter sees.
//!
//! Everything here is plain data and pure functions, so that the state machine applies it
//! identically on every replica.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::identity::SpiffeId;

mod convert;
mod import;

pub use convert::{
    condition_to_proto, export_from_proto, export_to_proto, import_from_proto, import_to_proto,
    port_to_proto,
};
pub use import::{
    Condition, ExporterView, ImportEndpoint, ImportedCluster, Locality, MergedPorts, ServiceImport,
    build_import, locality_priority, merge_ports,
};

/// Most ports one service may declare.
pub const MAX_PORTS: usize = 64;
/// Most endpoints one cluster may export for one service.
pub const MAX_ENDPOINTS: usize = 10_000;
/// Most SPIFFE IDs one export may name.
pub const MAX_IDENTITIES: usize = 64;
/// Most clusters in a scope allowlist.
pub const MAX_SCOPE_CLUSTERS: usize = 1_000;
/// Largest endpoint weight (Envoy's load-balancing weights are 1..=2^32-1; meshes use
/// small ones).
pub const MAX_WEIGHT: u32 = 1_000_000;
/// The domain imported services are named under.
pub const CLUSTERSET_DOMAIN: &str = "svc.clusterset.local";

/// Why an export was refused; names the field that broke a rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct ExportError {
    /// The offending field, with its index (`endpoints[3].address`).
    pub field: String,
    /// The rule it broke.
    pub rule: String,
}

fn invalid(field: impl Into<String>, rule: impl Into<String>) -> ExportError {
    ExportError { field: field.into(), rule: rule.into() }
}

/// A service's name in the clusterset: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceKey {
    /// Namespace (DNS label).
    pub namespace: String,
    /// Name (DNS label).
    pub name: String,
}

impl ServiceKey {
    /// A key from its parts (not validated).
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }

    /// Parses `NS/NAME`.
    ///
    /// # Errors
    /// Not of that form, or a part is not a DNS label.
    pub fn parse(text: &str) -> Result<Self, ExportError> {
        let (namespace, name) = text
            .split_once('/')
            .ok_or_else(|| invalid("service", format!("{text:?} is not NAMESPACE/NAME")))?;
        let key = Self::new(namespace, name);
        key.validate()?;
        Ok(key)
    }

    /// Checks both parts are DNS labels (RFC 1123, at most 63 characters).
    ///
    /// # Errors
    /// The part that is not.
    pub fn validate(&self) -> Result<(), ExportError> {
        validate_label("namespace", &self.namespace)?;
        validate_label("name", &self.name)
    }

    /// The name consumers resolve: `NAME.NS.svc.clusterset.local`.
    #[must_use]
    pub fn hostname(&self) -> String {
        format!("{}.{}.{CLUSTERSET_DOMAIN}", self.name, self.namespace)
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A transport protocol of a port.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Parses `TCP`, `UDP` or `SCTP` (any case); empty means TCP.
    ///
    /// # Errors
    /// Any other name.
    pub fn parse(field: &str, text: &str) -> Result<Self, ExportError> {
        match text.to_ascii_uppercase().as_str() {
            "" | "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            "SCTP" => Ok(Self::Sctp),
            _ => Err(invalid(field, format!("{text:?} is not TCP, UDP or SCTP"))),
        }
    }

    /// The protocol's name as Kubernetes spells it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port of a service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServicePort {
    /// Name (IANA service name style; may be empty when the service has one port).
    pub name: String,
    /// Port number.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Application protocol (`http`, `h2c`, `grpc`…), empty when not given.
    pub app_protocol: String,
}

impl fmt::Display for ServicePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.name.is_empty() {
            write!(f, "{}=", self.name)?;
        }
        write!(f, "{}/{}", self.port, self.protocol)?;
        if !self.app_protocol.is_empty() {
            write!(f, " ({})", self.app_protocol)?;
        }
        Ok(())
    }
}

/// The port an endpoint serves a service port on, when it differs from the service's.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EndpointPort {
    /// The service port's name.
    pub name: String,
    /// The endpoint's port number.
    pub port: u16,
}

/// One endpoint of an exported service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Its IP address.
    pub address: IpAddr,
    /// Ports that differ from the service ports (empty: the service ports).
    pub ports: Vec<EndpointPort>,
    /// Availability zone (may be empty).
    pub zone: String,
    /// Region (may be empty).
    pub region: String,
    /// Load-balancing weight, 1 or more.
    pub weight: u32,
    /// Whether the exporting cluster reports it ready.
    pub ready: bool,
}

/// Who may import a service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExportScope {
    /// Every member of the federation.
    #[default]
    AllMembers,
    /// Only these clusters.
    Clusters(BTreeSet<String>),
}

impl ExportScope {
    /// Whether `cluster` may import under this scope.
    #[must_use]
    pub fn admits(&self, cluster: &str) -> bool {
        match self {
            Self::AllMembers => true,
            Self::Clusters(clusters) => clusters.contains(cluster),
        }
    }
}

/// How other clusters reach an exported service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExportMode {
    /// Straight to the endpoints (flat network between clusters).
    #[default]
    Direct,
    /// Through the exporting cluster's east-west gateway.
    Gateway {
        /// The gateway's address.
        address: IpAddr,
        /// The gateway's port.
        port: u16,
    },
}

/// A service as one cluster exports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceExport {
    /// Namespace and name.
    pub key: ServiceKey,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
    /// SPIFFE IDs the service's workloads run as; all in the exporter's trust domain.
    pub identities: Vec<String>,
    /// Who may import it.
    pub scope: ExportScope,
    /// How it is reached.
    pub mode: ExportMode,
}

impl ServiceExport {
    /// Checks every field; `trust_domain` is the exporting member's own (bound at join,
    /// never taken from the request).
    ///
    /// # Errors
    /// The first field that breaks a rule.
    pub fn validate(&self, trust_domain: &str) -> Result<(), ExportError> {
        self.key.validate()?;
        self.validate_ports()?;
        self.validate_endpoints()?;
        self.validate_identities(trust_domain)?;
        if let ExportScope::Clusters(clusters) = &self.scope {
            if clusters.is_empty() {
                return Err(invalid(
                    "scope.clusters",
                    "an allowlist needs at least one cluster (omit it to export to every member)",
                ));
            }
            if clusters.len() > MAX_SCOPE_CLUSTERS {
                return Err(invalid(
                    "scope.clusters",
                    format!("at most {MAX_SCOPE_CLUSTERS} clusters"),
                ));
            }
            for (i, cluster) in clusters.iter().enumerate() {
                crate::token::validate_cluster_name(cluster)
                    .map_err(|e| invalid(format!("scope.clusters[{i}]"), e.to_string()))?;
            }
        }
        if let ExportMode::Gateway { address, port } = &self.mode {
            validate_address("mode.gateway.address", *address)?;
            if *port == 0 {
                return Err(invalid("mode.gateway.port", "must be 1 to 65535"));
            }
        }
        Ok(())
    }

    fn validate_ports(&self) -> Result<(), ExportError> {
        if self.ports.is_empty() {
            return Err(invalid("ports", "a service needs at least one port"));
        }
        if self.ports.len() > MAX_PORTS {
            return Err(invalid("ports", format!("at most {MAX_PORTS} ports")));
        }
        let mut names = BTreeSet::new();
        let mut numbers = BTreeSet::new();
        for (i, port) in self.ports.iter().enumerate() {
            let field = |f: &str| format!("ports[{i}].{f}");
            if port.name.is_empty() {
                if self.ports.len() > 1 {
                    return Err(invalid(
                        field("name"),
                        "required when a service has several ports",
                    ));
                }
            } else {
                validate_label(&field("name"), &port.name)?;
            }
            if port.port == 0 {
                return Err(invalid(field("port"), "must be 1 to 65535"));
            }
            if port.app_protocol.len() > 63
                || !port.app_protocol.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(invalid(field("app_protocol"), "at most 63 printable characters"));
            }
            if !names.insert(port.name.as_str()) {
                return Err(invalid(field("name"), format!("{:?} is declared twice", port.name)));
            }
            if !numbers.insert((port.port, port.protocol)) {
                return Err(invalid(
                    field("port"),
                    format!("{}/{} is declared twice", port.port, port.protocol),
                ));
            }
        }
        Ok(())
    }

    fn validate_endpoints(&self) -> Result<(), ExportError> {
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(invalid("endpoints", format!("at most {MAX_ENDPOINTS} endpoints")));
        }
        let mut addresses = BTreeSet::new();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let field = |f: &str| format!("endpoints[{i}].{f}");
            validate_address(&field("address"), endpoint.address)?;
            if !addresses.insert(endpoint.address) {
                return Err(invalid(
                    field("address"),
                    format!("{} is listed twice", endpoint.address),
                ));
            }
            validate_locality(&field("zone"), &endpoint.zone)?;
            validate_locality(&field("region"), &endpoint.region)?;
            if endpoint.weight == 0 || endpoint.weight > MAX_WEIGHT {
                return Err(invalid(field("weight"), format!("must be 1 to {MAX_WEIGHT}")));
            }
            for (j, port) in endpoint.ports.iter().enumerate() {
                if !self.ports.iter().any(|p| p.name == port.name) {
                    return Err(invalid(
                        format!("endpoints[{i}].ports[{j}].name"),
                        format!("{:?} is not a port of the service", port.name),
                    ));
                }
                if port.port == 0 {
                    return Err(invalid(
                        format!("endpoints[{i}].ports[{j}].port"),
                        "must be 1 to 65535",
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_identities(&self, trust_domain: &str) -> Result<(), ExportError> {
        if self.identities.is_empty() {
            return Err(invalid(
                "identities",
                "name at least one SPIFFE ID the service's workloads run as",
            ));
        }
        if self.identities.len() > MAX_IDENTITIES {
            return Err(invalid("identities", format!("at most {MAX_IDENTITIES} SPIFFE IDs")));
        }
        let mut seen = BTreeSet::new();
        for (i, text) in self.identities.iter().enumerate() {
            let field = format!("identities[{i}]");
            let id = SpiffeId::parse(text).map_err(|e| invalid(&field, e.to_string()))?;
            if id.trust_domain != trust_domain {
                return Err(invalid(
                    field,
                    format!("{text} is outside the exporting member's trust domain {trust_domain}"),
                ));
            }
            if !seen.insert(text.as_str()) {
                return Err(invalid(field, format!("{text} is listed twice")));
            }
        }
        Ok(())
    }

    /// Checks every endpoint and gateway address against the federation's address
    /// policy: never unspecified, link-local (169.254.0.0/16 — cloud metadata services —
    /// and fe80::/10), multicast or broadcast, also in their IPv4-mapped and NAT64 forms;
    /// loopback only when `allow_loopback` (single-machine development and tests).
    ///
    /// # Errors
    /// The first address the policy refuses, with its field.
    pub fn check_addresses(&self, allow_loopback: bool) -> Result<(), ExportError> {
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            check_address_policy(
                &format!("endpoints[{i}].address"),
                endpoint.address,
                allow_loopback,
            )?;
        }
        if let ExportMode::Gateway { address, .. } = &self.mode {
            check_address_policy("mode.gateway.address", *address, allow_loopback)?;
        }
        Ok(())
    }

    /// Whether an identity claim is the reason `validate` failed: such exports are a
    /// permission problem (a member claiming another domain's workloads), not a typo.
    #[must_use]
    pub fn claims_foreign_identity(&self, trust_domain: &str) -> bool {
        self.identities
            .iter()
            .any(|id| SpiffeId::parse(id).is_ok_and(|id| id.trust_domain != trust_domain))
    }
}

/// Checks an RFC 1123 label: 1 to 63 of `[a-z0-9-]`, starting and ending alphanumeric.
///
/// # Errors
/// Names the field and the rule.
pub fn validate_label(field: &str, value: &str) -> Result<(), ExportError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else if value.len() > 63 {
        // Not echoed: an error must not carry a caller's megabyte back (or into a log).
        Err(invalid(field, format!("is {} bytes long; a DNS label has at most 63", value.len())))
    } else {
        Err(invalid(
            field,
            format!(
                "{value:?} must be 1 to 63 lower-case letters, digits or '-', starting and ending \
                 with a letter or digit"
            ),
        ))
    }
}

fn validate_address(field: &str, address: IpAddr) -> Result<(), ExportError> {
    if address.is_unspecified() || address.is_multicast() {
        return Err(invalid(field, format!("{address} is not a unicast address")));
    }
    if let IpAddr::V4(v4) = address
        && v4.is_broadcast()
    {
        return Err(invalid(field, format!("{address} is not a unicast address")));
    }
    Ok(())
}

/// Refuses addresses no member may publish (see [`ServiceExport::check_addresses`]).
///
/// # Errors
/// Names the field, the address and why.
pub fn check_address_policy(
    field: &str,
    address: IpAddr,
    allow_loopback: bool,
) -> Result<(), ExportError> {
    // An IPv4-mapped (::ffff:a.b.c.d) or NAT64 (64:ff9b::a.b.c.d) form is judged as the
    // IPv4 address it reaches.
    let address = match address {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if let Some(v4) = v6.to_ipv4_mapped() {
                IpAddr::V4(v4)
            } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [.., a, b, c, d] = v6.octets();
                IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d))
            } else {
                address
            }
        }
        v4 @ IpAddr::V4(_) => v4,
    };
    let refused = |what: &str| {
        Err(invalid(field, format!("{address} is {what}; members may not publish such addresses")))
    };
    match address {
        IpAddr::V4(v4) => {
            if v4.is_unspecified() || v4.octets()[0] == 0 {
                return refused("in 0.0.0.0/8 (this network)");
            }
            if v4.is_link_local() {
                return refused("link-local (169.254.0.0/16, where cloud metadata services live)");
            }
            if v4.is_multicast() || v4.is_broadcast() {
                return refused("not a unicast address");
            }
            if v4.is_loopback() && !allow_loopback {
                return refused(
                    "a loopback address (the federation setting allow_loopback_endpoints \
                     accepts them for single-machine development)",
                );
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified() {
                return refused("unspecified");
            }
            if v6.is_unicast_link_local() {
                return refused("link-local (fe80::/10)");
            }
            if v6.is_multicast() {
                return refused("not a unicast address");
            }
            if v6.is_loopback() && !allow_loopback {
                return refused(
                    "a loopback address (the federation setting allow_loopback_endpoints \
                     accepts them for single-machine development)",
                );
            }
        }
    }
    Ok(())
}

fn validate_locality(field: &str, value: &str) -> Result<(), ExportError> {
    if value.len() > 63 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(field, "at most 63 printable characters without spaces"));
    }
    Ok(())
}

/// A scope from an allowlist of clusters (empty: every member).
#[must_use]
pub fn scope_from_clusters(clusters: &[String]) -> ExportScope {
    if clusters.is_empty() {
        ExportScope::AllMembers
    } else {
        ExportScope::Clusters(clusters.iter().cloned().collect())
    }
}

#[cfg(test)]
mod tests;
