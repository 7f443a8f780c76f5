//! Clusters, an egress listener and its routes for the imported services (CDS, LDS,
//! RDS): what lets an Envoy configured with nothing but an ADS bootstrap reach
//! `NAME.NS.svc.clusterset.local` over mTLS, verifying each exporter as itself and
//! failing over without a failed request. Pure functions of the view and the
//! [`MeshSettings`], tested without a server.
//!
//! # Clusters
//! One EDS cluster per load assignment ([`super::resources::load_assignments`]: the
//! import's hostname for its first port, `<hostname>:<port name>` for each named port),
//! its endpoints and secrets fetched over the same ADS stream. Each has:
//! - **one transport socket per exporter** (`transport_socket_matches` on the endpoint
//!   metadata `federator.trust_domain`): mTLS presenting the workload's SVID
//!   ([`CertificateSource`]) and accepting only a certificate that chains to that
//!   exporter's trust bundle (`spiffe://<trust domain>`) and carries one of that
//!   exporter's SPIFFE IDs. One member's identity never vouches for another member's
//!   endpoint. An endpoint that matches no exporter (its bundle is not held) gets the
//!   default socket, which accepts no certificate: fail closed;
//! - outlier detection (consecutive failures eject a host, up to every host, so a dead
//!   cluster leaves the rotation before its lease expires) and circuit breakers;
//! - priorities from EDS (the consumer's zone, then region, then elsewhere), so Envoy's
//!   priority load balancing follows the failover order.
//!
//! # Listener and routes
//! With an egress address set, one plain-HTTP listener there (`federator_egress`) whose
//! route configuration (`federator_egress`, by RDS) has a virtual host per import:
//! `Host: NAME.NS.svc.clusterset.local` (or `…:PORT`) routes to its cluster with a retry
//! policy on connect failures and resets that moves to hosts and priorities not tried
//! yet (`previous_hosts`, `previous_priorities`): a request to a cluster that just died
//! is answered by another.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, TransportSocketMatch,
};
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster, OutlierDetection};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiConfigSource, ApiVersion, ConfigSource, GrpcService,
    Http2ProtocolOptions, PathConfigSource, SocketAddress, TransportSocket, WatchedDirectory,
};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::retry_policy::{
    RetryHostPredicate, RetryPriority,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SdsSecretConfig, SubjectAltNameMatcher,
    UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::{self as pb, Struct, UInt32Value, Value, value::Kind};
use envoy_types::util::pack_any;

use super::resources::{
    EXPORTER_TRUST_DOMAIN, SECRET_ALL, assignment_ports, trust_domain_secret_name,
};
use crate::agent::view::AgentView;
use crate::service::{Protocol, ServiceImport, ServicePort};

/// Type URL of CDS resources.
pub const CLUSTER_TYPE_URL: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of LDS resources.
pub const LISTENER_TYPE_URL: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of RDS resources.
pub const ROUTE_TYPE_URL: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// Name of the egress listener and of its route configuration.
pub const EGRESS: &str = "federator_egress";
/// A SPIFFE ID no certificate carries: what an endpoint matching no exporter must
/// present, so that it is refused.
pub const NO_EXPORTER_ID: &str = "spiffe://federator.invalid/endpoint-of-no-known-exporter";
/// `HttpProtocolOptions`' key in `typed_extension_protocol_options`.
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Where Envoy gets the SVID it presents to imported services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertificateSource {
    /// An SDS secret of another server named in Envoy's bootstrap: typically the SPIRE
    /// agent's SDS (`cluster` its bootstrap cluster, `secret` the workload's SPIFFE ID
    /// or `default`).
    Sds {
        /// The bootstrap cluster of that SDS server.
        cluster: String,
        /// The secret's name.
        secret: String,
    },
    /// A file-based SDS document (a `DiscoveryResponse` with one `Secret`), read again
    /// when a file is moved into its directory (an atomic rename rotates it).
    File {
        /// The document.
        path: PathBuf,
        /// The secret's name in it.
        secret: String,
    },
}

/// Outlier detection of every cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierSettings {
    /// Consecutive failures (connect failures, resets, 5xx) that eject a host.
    pub consecutive_failures: u32,
    /// How often ejections are evaluated and lifted.
    pub interval: Duration,
    /// How long a host stays ejected the first time (longer each time again).
    pub base_ejection: Duration,
    /// Largest share of a cluster's hosts ejected at once, in percent. 100 lets a dead
    /// exporter leave entirely.
    pub max_ejection_percent: u32,
}

/// Circuit breakers of every cluster (default priority).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CircuitSettings {
    /// Connections to all hosts of a cluster.
    pub max_connections: u32,
    /// Requests waiting for a connection.
    pub max_pending_requests: u32,
    /// Requests in flight.
    pub max_requests: u32,
    /// Retries in flight.
    pub max_retries: u32,
}

/// The egress listener and its routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressSettings {
    /// Where Envoy listens for plain HTTP to imported services.
    pub listen: SocketAddr,
    /// Envoy's `retry_on` conditions.
    pub retry_on: String,
    /// Retries of one request.
    pub retries: u32,
    /// Bound of each try.
    pub per_try_timeout: Duration,
    /// Bound of a request, its retries included.
    pub timeout: Duration,
}

/// What CDS, LDS and RDS serve beside SDS and EDS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshSettings {
    /// The SVID Envoy presents upstream.
    pub certificate: CertificateSource,
    /// Bound of a connection attempt.
    pub connect_timeout: Duration,
    /// Outlier detection.
    pub outlier: OutlierSettings,
    /// Circuit breakers.
    pub circuit: CircuitSettings,
    /// The egress listener, if any.
    pub egress: Option<EgressSettings>,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 3,
            interval: Duration::from_secs(1),
            base_ejection: Duration::from_secs(10),
            max_ejection_percent: 100,
        }
    }
}

impl Default for CircuitSettings {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 64,
        }
    }
}

impl EgressSettings {
    /// The defaults for a listener at `listen`.
    #[must_use]
    pub fn at(listen: SocketAddr) -> Self {
        Self {
            listen,
            retry_on: "connect-failure,refused-stream,reset".into(),
            retries: 3,
            per_try_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(15),
        }
    }
}

impl MeshSettings {
    /// The defaults for Envoy presenting `certificate`.
    #[must_use]
    pub fn new(certificate: CertificateSource) -> Self {
        Self {
            certificate,
            connect_timeout: Duration::from_secs(1),
            outlier: OutlierSettings::default(),
            circuit: CircuitSettings::default(),
            egress: None,
        }
    }
}

/// The config source of every resource Envoy fetches from this server: the ADS stream.
fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn duration(d: Duration) -> pb::Duration {
    pb::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn u32_value(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

fn exact(text: &str) -> StringMatcher {
    StringMatcher { match_pattern: Some(MatchPattern::Exact(text.to_string())), ignore_case: false }
}

/// The SVID Envoy presents, as an SDS reference.
fn certificate(source: &CertificateSource) -> SdsSecretConfig {
    match source {
        CertificateSource::Sds { cluster, secret } => SdsSecretConfig {
            name: secret.clone(),
            sds_config: Some(ConfigSource {
                resource_api_version: ApiVersion::V3 as i32,
                config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(
                    ApiConfigSource {
                        api_type: ApiType::Grpc as i32,
                        transport_api_version: ApiVersion::V3 as i32,
                        grpc_services: vec![GrpcService {
                            target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                                cluster_name: cluster.clone(),
                                ..Default::default()
                            })),
                            ..Default::default()
                        }],
                        set_node_on_first_message_only: true,
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
        },
        CertificateSource::File { path, secret } => SdsSecretConfig {
            name: secret.clone(),
            sds_config: Some(ConfigSource {
                resource_api_version: ApiVersion::V3 as i32,
                config_source_specifier: Some(ConfigSourceSpecifier::PathConfigSource(
                    PathConfigSource {
                        path: path.display().to_string(),
                        watched_directory: path.parent().map(|dir| WatchedDirectory {
                            path: dir.display().to_string(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
        },
    }
}

/// mTLS presenting the SVID and accepting a peer chained to `validation_secret` that
/// carries one of `ids` (none accepted when `ids` is empty: a SAN matcher is always set).
fn upstream_tls(
    settings: &MeshSettings,
    validation_secret: String,
    ids: &[String],
) -> TransportSocket {
    let ids: Vec<&str> = if ids.is_empty() {
        vec![NO_EXPORTER_ID]
    } else {
        ids.iter().map(String::as_str).collect()
    };
    let sans = ids
        .into_iter()
        .map(|id| SubjectAltNameMatcher {
            san_type: SanType::Uri as i32,
            matcher: Some(exact(id)),
            oid: String::new(),
        })
        .collect();
    let context = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![certificate(&settings.certificate)],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: sans,
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(SdsSecretConfig {
                        name: validation_secret,
                        sds_config: Some(ads()),
                    }),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(SocketConfig::TypedConfig(pack_any(context))),
    }
}

/// The metadata an exporter's endpoints carry, as a transport socket match.
fn exporter_match(trust_domain: &str) -> Struct {
    let value = Value { kind: Some(Kind::StringValue(trust_domain.to_string())) };
    Struct { fields: [(EXPORTER_TRUST_DOMAIN.to_string(), value)].into_iter().collect() }
}

/// Whether a port speaks HTTP/2 to its upstream (by its application protocol).
fn http2(port: &ServicePort) -> bool {
    matches!(port.app_protocol.to_ascii_lowercase().as_str(), "h2" | "h2c" | "http2" | "grpc")
}

/// Every cluster the view yields, by name (one per load assignment).
#[must_use]
pub fn clusters(view: &AgentView, settings: &MeshSettings) -> BTreeMap<String, Cluster> {
    let held: BTreeSet<&str> = view
        .all_bundles()
        .into_iter()
        .filter(|(_, bundle)| !bundle.x509_authorities.is_empty())
        .map(|(td, _)| td)
        .collect();
    assignment_ports(view)
        .into_iter()
        .map(|(name, import, port)| {
            let cluster = cluster(name.clone(), import, port, &held, settings);
            (name, cluster)
        })
        .collect()
}

fn cluster(
    name: String,
    import: &ServiceImport,
    port: &ServicePort,
    held: &BTreeSet<&str>,
    settings: &MeshSettings,
) -> Cluster {
    // One socket per exporting trust domain whose bundle is held; a trust domain with
    // several exporting clusters (a rejoin under a new name) accepts each one's IDs.
    let mut exporters: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for exporter in &import.clusters {
        if held.contains(exporter.trust_domain.as_str()) {
            exporters
                .entry(exporter.trust_domain.as_str())
                .or_default()
                .extend(exporter.identities.iter().cloned());
        }
    }
    let transport_socket_matches = exporters
        .into_iter()
        .map(|(td, ids)| TransportSocketMatch {
            name: format!("exporter-{td}"),
            r#match: Some(exporter_match(td)),
            transport_socket: Some(upstream_tls(
                settings,
                trust_domain_secret_name(td),
                &ids.into_iter().collect::<Vec<_>>(),
            )),
        })
        .collect();
    let mut typed_extension_protocol_options = std::collections::HashMap::new();
    if http2(port) {
        let options = HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )),
                },
            )),
            ..Default::default()
        };
        typed_extension_protocol_options
            .insert(HTTP_PROTOCOL_OPTIONS.to_string(), pack_any(options));
    }
    let outlier = &settings.outlier;
    let circuit = &settings.circuit;
    Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig { eds_config: Some(ads()), service_name: name }),
        connect_timeout: Some(duration(settings.connect_timeout)),
        transport_socket_matches,
        // An endpoint of no known exporter: no certificate is accepted.
        transport_socket: Some(upstream_tls(settings, SECRET_ALL.to_string(), &[])),
        outlier_detection: Some(OutlierDetection {
            consecutive_5xx: u32_value(outlier.consecutive_failures),
            consecutive_gateway_failure: u32_value(outlier.consecutive_failures),
            enforcing_consecutive_gateway_failure: u32_value(100),
            interval: Some(duration(outlier.interval)),
            base_ejection_time: Some(duration(outlier.base_ejection)),
            max_ejection_percent: u32_value(outlier.max_ejection_percent),
            ..Default::default()
        }),
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                max_connections: u32_value(circuit.max_connections),
                max_pending_requests: u32_value(circuit.max_pending_requests),
                max_requests: u32_value(circuit.max_requests),
                max_retries: u32_value(circuit.max_retries),
                ..Default::default()
            }],
            ..Default::default()
        }),
        typed_extension_protocol_options,
        ..Default::default()
    }
}

/// The egress listener, by name: none without an egress address.
#[must_use]
pub fn listeners(settings: &MeshSettings) -> BTreeMap<String, Listener> {
    let Some(egress) = &settings.egress else { return BTreeMap::new() };
    let router = HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(HttpFilterConfig::TypedConfig(pack_any(Router::default()))),
        ..Default::default()
    };
    let manager = HttpConnectionManager {
        stat_prefix: EGRESS.into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: EGRESS.into(),
        })),
        http_filters: vec![router],
        ..Default::default()
    };
    let address = SocketAddress {
        address: egress.listen.ip().to_string(),
        port_specifier: Some(PortSpecifier::PortValue(u32::from(egress.listen.port()))),
        ..Default::default()
    };
    let listener = Listener {
        name: EGRESS.into(),
        address: Some(Address { address: Some(AddressKind::SocketAddress(address)) }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(FilterConfig::TypedConfig(pack_any(manager))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    [(EGRESS.to_string(), listener)].into_iter().collect()
}

/// The egress routes, by name: none without an egress address. A virtual host per
/// HTTP-capable (TCP) port of each import: the first port answers to the bare hostname
/// and `hostname:PORT`, every other named port to `hostname:PORT`.
#[must_use]
pub fn routes(view: &AgentView, settings: &MeshSettings) -> BTreeMap<String, RouteConfiguration> {
    let Some(egress) = &settings.egress else { return BTreeMap::new() };
    let mut taken = BTreeSet::new();
    let mut virtual_hosts = Vec::new();
    for (cluster, import, port) in assignment_ports(view) {
        if port.protocol != Protocol::Tcp {
            continue;
        }
        let first = import.ports.first().is_some_and(|p| p == port);
        let mut domains = Vec::new();
        if first {
            domains.push(import.hostname.clone());
        }
        domains.push(format!("{}:{}", import.hostname, port.port));
        domains.retain(|d| taken.insert(d.clone()));
        if domains.is_empty() {
            continue;
        }
        virtual_hosts.push(VirtualHost {
            name: cluster.clone(),
            domains,
            routes: vec![route(cluster, egress)],
            ..Default::default()
        });
    }
    let config = RouteConfiguration { name: EGRESS.into(), virtual_hosts, ..Default::default() };
    [(EGRESS.to_string(), config)].into_iter().collect()
}

fn route(cluster: String, egress: &EgressSettings) -> Route {
    let retry_policy = RetryPolicy {
        retry_on: egress.retry_on.clone(),
        num_retries: u32_value(egress.retries),
        per_try_timeout: Some(duration(egress.per_try_timeout)),
        // A retry goes to another priority (another cluster's zone or region) first…
        retry_priority: Some(RetryPriority {
            name: "envoy.retry_priorities.previous_priorities".into(),
            config_type: Some(
                envoy_types::pb::envoy::config::route::v3::retry_policy::retry_priority::ConfigType::TypedConfig(
                    pack_any(PreviousPrioritiesConfig { update_frequency: 1 }),
                ),
            ),
        }),
        // …and never to a host already tried.
        retry_host_predicate: vec![RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(
                envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                    pack_any(PreviousHostsPredicate::default()),
                ),
            ),
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    };
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
            timeout: Some(duration(egress.timeout)),
            retry_policy: Some(retry_policy),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
