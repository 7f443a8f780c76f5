//! Conversions between the service domain types and the federation API's messages.
//! Parsing a message from an agent is the first line of validation: every error names
//! the field it is about.

use std::net::IpAddr;

use federator_proto::federation as pb;

use super::{
    Condition, Endpoint, EndpointPort, ExportError, ExportMode, ExportScope, ImportEndpoint,
    ImportedCluster, Protocol, ServiceExport, ServiceImport, ServiceKey, ServicePort, invalid,
};

fn port_number(field: &str, port: u32) -> Result<u16, ExportError> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| invalid(field, format!("{port} is not a port (1 to 65535)")))
}

fn address(field: &str, text: &str) -> Result<IpAddr, ExportError> {
    text.trim()
        .parse()
        .map_err(|_| invalid(field, format!("{text:?} is not an IPv4 or IPv6 address")))
}

fn ports_from_proto(
    field: &str,
    ports: Vec<pb::ServicePort>,
) -> Result<Vec<ServicePort>, ExportError> {
    ports
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            Ok(ServicePort {
                port: port_number(&format!("{field}[{i}].port"), p.port)?,
                protocol: Protocol::parse(&format!("{field}[{i}].protocol"), &p.protocol)?,
                name: p.name,
                app_protocol: p.app_protocol,
            })
        })
        .collect()
}

fn endpoint_ports_from_proto(
    field: &str,
    ports: Vec<pb::EndpointPort>,
) -> Result<Vec<EndpointPort>, ExportError> {
    ports
        .into_iter()
        .enumerate()
        .map(|(j, p)| {
            Ok(EndpointPort {
                port: port_number(&format!("{field}[{j}].port"), p.port)?,
                name: p.name,
            })
        })
        .collect()
}

/// Parses an export sent by an agent (not yet validated against the member's trust
/// domain: see [`ServiceExport::validate`]).
///
/// # Errors
/// A field that does not parse, named.
pub fn export_from_proto(message: pb::ServiceExport) -> Result<ServiceExport, ExportError> {
    let key = ServiceKey::new(message.namespace, message.name);
    let ports = ports_from_proto("ports", message.ports)?;
    let endpoints = message
        .endpoints
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            Ok(Endpoint {
                address: address(&format!("endpoints[{i}].address"), &e.address)?,
                ports: endpoint_ports_from_proto(&format!("endpoints[{i}].ports"), e.ports)?,
                zone: e.zone,
                region: e.region,
                weight: e.weight.max(1),
                ready: e.ready,
            })
        })
        .collect::<Result<Vec<_>, ExportError>>()?;
    let mode = match message.gateway {
        None => ExportMode::Direct,
        Some(gateway) => ExportMode::Gateway {
            address: address("gateway.address", &gateway.address)?,
            port: port_number("gateway.port", gateway.port)?,
        },
    };
    Ok(ServiceExport {
        key,
        ports,
        endpoints,
        identities: message.identities,
        scope: super::scope_from_clusters(&message.scope_clusters),
        mode,
    })
}

/// The message form of an export.
#[must_use]
pub fn export_to_proto(export: &ServiceExport) -> pb::ServiceExport {
    pb::ServiceExport {
        namespace: export.key.namespace.clone(),
        name: export.key.name.clone(),
        ports: export.ports.iter().map(port_to_proto).collect(),
        endpoints: export
            .endpoints
            .iter()
            .map(|e| pb::Endpoint {
                address: e.address.to_string(),
                ports: e.ports.iter().map(endpoint_port_to_proto).collect(),
                zone: e.zone.clone(),
                region: e.region.clone(),
                weight: e.weight,
                ready: e.ready,
            })
            .collect(),
        identities: export.identities.clone(),
        scope_clusters: match &export.scope {
            ExportScope::AllMembers => Vec::new(),
            ExportScope::Clusters(clusters) => clusters.iter().cloned().collect(),
        },
        gateway: match export.mode {
            ExportMode::Direct => None,
            ExportMode::Gateway { address, port } => {
                Some(pb::Gateway { address: address.to_string(), port: u32::from(port) })
            }
        },
    }
}

/// The message form of a port.
#[must_use]
pub fn port_to_proto(p: &ServicePort) -> pb::ServicePort {
    pb::ServicePort {
        name: p.name.clone(),
        port: u32::from(p.port),
        protocol: p.protocol.as_str().to_string(),
        app_protocol: p.app_protocol.clone(),
    }
}

fn endpoint_port_to_proto(p: &EndpointPort) -> pb::EndpointPort {
    pb::EndpointPort { name: p.name.clone(), port: u32::from(p.port) }
}

/// The message form of a condition.
#[must_use]
pub fn condition_to_proto(c: &Condition) -> pb::Condition {
    pb::Condition {
        r#type: c.kind.clone(),
        clusters: c.clusters.clone(),
        message: c.message.clone(),
    }
}

/// The message form of an import.
#[must_use]
pub fn import_to_proto(import: &ServiceImport) -> pb::ServiceImport {
    pb::ServiceImport {
        namespace: import.key.namespace.clone(),
        name: import.key.name.clone(),
        hostname: import.hostname.clone(),
        ports: import.ports.iter().map(port_to_proto).collect(),
        identities: import.identities.clone(),
        clusters: import
            .clusters
            .iter()
            .map(|c| pb::ImportedCluster {
                cluster: c.cluster.clone(),
                trust_domain: c.trust_domain.clone(),
                live: c.live,
                via_gateway: c.via_gateway,
                identities: c.identities.clone(),
                endpoints: c
                    .endpoints
                    .iter()
                    .map(|e| pb::ImportEndpoint {
                        address: e.address.to_string(),
                        ports: e.ports.iter().map(endpoint_port_to_proto).collect(),
                        zone: e.zone.clone(),
                        region: e.region.clone(),
                        weight: e.weight,
                        ready: e.ready,
                        priority: e.priority,
                    })
                    .collect(),
            })
            .collect(),
        conditions: import.conditions.iter().map(condition_to_proto).collect(),
    }
}

/// Parses an import received from a replica (what an agent applies to its sinks).
///
/// # Errors
/// A field that does not parse, named.
pub fn import_from_proto(
    message: pb::ServiceImport,
    revision: u64,
) -> Result<ServiceImport, ExportError> {
    let key = ServiceKey::new(message.namespace, message.name);
    key.validate()?;
    let clusters = message
        .clusters
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let endpoints = c
                .endpoints
                .into_iter()
                .enumerate()
                .map(|(j, e)| {
                    let field = format!("clusters[{i}].endpoints[{j}]");
                    Ok(ImportEndpoint {
                        address: address(&format!("{field}.address"), &e.address)?,
                        ports: endpoint_ports_from_proto(&format!("{field}.ports"), e.ports)?,
                        zone: e.zone,
                        region: e.region,
                        weight: e.weight.max(1),
                        ready: e.ready,
                        priority: e.priority,
                    })
                })
                .collect::<Result<Vec<_>, ExportError>>()?;
            Ok(ImportedCluster {
                cluster: c.cluster,
                trust_domain: c.trust_domain,
                live: c.live,
                via_gateway: c.via_gateway,
                identities: c.identities,
                endpoints,
            })
        })
        .collect::<Result<Vec<_>, ExportError>>()?;
    Ok(ServiceImport {
        hostname: key.hostname(),
        key,
        ports: ports_from_proto("ports", message.ports)?,
        identities: message.identities,
        clusters,
        conditions: message
            .conditions
            .into_iter()
            .map(|c| Condition { kind: c.r#type, clusters: c.clusters, message: c.message })
            .collect(),
        revision,
    })
}
