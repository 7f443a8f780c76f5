use std::path::PathBuf;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::value::Kind as ValueKind;
use prost::Message as _;

use super::*;
use crate::agent::sinks::xds::tests::view;

fn settings(egress: bool) -> MeshSettings {
    let mut settings = MeshSettings::new(CertificateSource::File {
        path: PathBuf::from("/etc/envoy/svid/svid.json"),
        secret: "svid".into(),
    });
    if egress {
        settings.egress = Some(EgressSettings::at("127.0.0.1:15001".parse().expect("addr")));
    }
    settings
}

/// Validation secret name and accepted SPIFFE IDs of a transport socket.
fn verification(socket: &TransportSocket) -> (String, Vec<String>, String) {
    let Some(SocketConfig::TypedConfig(any)) = &socket.config_type else { panic!("no config") };
    let tls = UpstreamTlsContext::decode(any.value.as_slice()).expect("tls");
    let common = tls.common_tls_context.expect("common");
    let certificate = common.tls_certificate_sds_secret_configs[0].name.clone();
    let Some(ValidationContextType::CombinedValidationContext(combined)) =
        common.validation_context_type
    else {
        panic!("not a combined validation context")
    };
    let secret = combined.validation_context_sds_secret_config.expect("sds").name;
    let ids = combined
        .default_validation_context
        .expect("default")
        .match_typed_subject_alt_names
        .into_iter()
        .map(|m| match m.matcher.and_then(|m| m.match_pattern) {
            Some(MatchPattern::Exact(id)) => id,
            other => panic!("not exact: {other:?}"),
        })
        .collect();
    (secret, ids, certificate)
}

fn cart(clusters: &BTreeMap<String, Cluster>) -> &Cluster {
    &clusters["cart.shop.svc.clusterset.local"]
}

#[test]
fn every_assignment_gets_an_eds_cluster_over_ads() {
    let clusters = clusters(&view(), &settings(false));
    let names: Vec<&str> = clusters.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "api.shop.svc.clusterset.local",
            "api.shop.svc.clusterset.local:grpc",
            "api.shop.svc.clusterset.local:http",
            "cart.shop.svc.clusterset.local",
        ]
    );
    let cluster = cart(&clusters);
    assert_eq!(
        cluster.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
    );
    let eds = cluster.eds_cluster_config.as_ref().expect("eds");
    assert_eq!(eds.service_name, "cart.shop.svc.clusterset.local");
    assert!(matches!(
        eds.eds_config.as_ref().and_then(|c| c.config_source_specifier.as_ref()),
        Some(ConfigSourceSpecifier::Ads(_))
    ));
    assert_eq!(cluster.connect_timeout.as_ref().map(|d| d.seconds), Some(1));
}

#[test]
fn each_exporter_is_verified_by_its_own_bundle_and_identities_only() {
    let clusters = clusters(&view(), &settings(false));
    let cluster = cart(&clusters);
    let matches: Vec<(String, String, Vec<String>)> = cluster
        .transport_socket_matches
        .iter()
        .map(|m| {
            let fields = &m.r#match.as_ref().expect("match").fields;
            let Some(ValueKind::StringValue(td)) = &fields[EXPORTER_TRUST_DOMAIN].kind else {
                panic!("no trust domain")
            };
            let (secret, ids, certificate) =
                verification(m.transport_socket.as_ref().expect("socket"));
            assert_eq!(certificate, "svid", "the workload's SVID is presented");
            (td.clone(), secret, ids)
        })
        .collect();
    assert_eq!(
        matches,
        [
            (
                "b.test".to_string(),
                "spiffe://b.test".to_string(),
                vec!["spiffe://b.test/ns/shop/sa/cart".to_string()]
            ),
            (
                "c.test".to_string(),
                "spiffe://c.test".to_string(),
                vec!["spiffe://c.test/ns/shop/sa/cart".to_string()]
            ),
        ]
    );
    // An endpoint of no known exporter is refused: no certificate carries the ID.
    let (_, ids, _) = verification(cluster.transport_socket.as_ref().expect("default"));
    assert_eq!(ids, [NO_EXPORTER_ID]);
}

#[test]
fn an_exporter_whose_bundle_is_not_held_gets_no_socket_of_its_own() {
    let mut view = view();
    view.bundles.remove("c.test");
    let clusters = clusters(&view, &settings(false));
    let tds: Vec<&str> =
        cart(&clusters).transport_socket_matches.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(tds, ["exporter-b.test"]);
}

#[test]
fn clusters_eject_dead_hosts_and_bound_their_load() {
    let mut settings = settings(false);
    settings.outlier.consecutive_failures = 2;
    settings.circuit.max_retries = 7;
    let clusters = clusters(&view(), &settings);
    let cluster = cart(&clusters);
    let outlier = cluster.outlier_detection.as_ref().expect("outlier detection");
    assert_eq!(outlier.consecutive_5xx.as_ref().map(|v| v.value), Some(2));
    assert_eq!(outlier.consecutive_gateway_failure.as_ref().map(|v| v.value), Some(2));
    assert_eq!(outlier.max_ejection_percent.as_ref().map(|v| v.value), Some(100));
    let thresholds = &cluster.circuit_breakers.as_ref().expect("breakers").thresholds[0];
    assert_eq!(thresholds.max_retries.as_ref().map(|v| v.value), Some(7));
    assert!(cluster.typed_extension_protocol_options.is_empty(), "HTTP/1.1 by default");
}

#[test]
fn grpc_ports_speak_http2_upstream() {
    let mut view = view();
    for import in view.imports.values_mut() {
        for port in &mut import.ports {
            if port.name == "grpc" {
                port.app_protocol = "grpc".into();
            }
        }
    }
    let clusters = clusters(&view, &settings(false));
    assert!(
        clusters["api.shop.svc.clusterset.local:grpc"]
            .typed_extension_protocol_options
            .contains_key(HTTP_PROTOCOL_OPTIONS)
    );
    assert!(
        clusters["api.shop.svc.clusterset.local:http"].typed_extension_protocol_options.is_empty()
    );
}

#[test]
fn the_svid_comes_from_an_sds_cluster_or_a_watched_file() {
    let sds = certificate(&CertificateSource::Sds {
        cluster: "spire_agent".into(),
        secret: "spiffe://a.test/ns/shop/sa/client".into(),
    });
    assert_eq!(sds.name, "spiffe://a.test/ns/shop/sa/client");
    let Some(ConfigSourceSpecifier::ApiConfigSource(api)) =
        sds.sds_config.and_then(|c| c.config_source_specifier)
    else {
        panic!("not an API source")
    };
    assert_eq!(api.api_type, ApiType::Grpc as i32);
    let file = certificate(&settings(false).certificate);
    let Some(ConfigSourceSpecifier::PathConfigSource(path)) =
        file.sds_config.and_then(|c| c.config_source_specifier)
    else {
        panic!("not a path source")
    };
    assert_eq!(path.path, "/etc/envoy/svid/svid.json");
    assert_eq!(path.watched_directory.map(|d| d.path).as_deref(), Some("/etc/envoy/svid"));
}

#[test]
fn without_an_egress_address_there_is_no_listener_and_no_route() {
    assert!(listeners(&settings(false)).is_empty());
    assert!(routes(&view(), &settings(false)).is_empty());
}

#[test]
fn the_egress_listener_takes_its_routes_by_rds() {
    let listeners = listeners(&settings(true));
    let listener = &listeners[EGRESS];
    let Some(AddressKind::SocketAddress(address)) =
        listener.address.as_ref().and_then(|a| a.address.as_ref())
    else {
        panic!("no socket address")
    };
    assert_eq!(
        (address.address.as_str(), address.port_specifier.clone()),
        ("127.0.0.1", Some(PortSpecifier::PortValue(15001)))
    );
    let filter = &listener.filter_chains[0].filters[0];
    let Some(FilterConfig::TypedConfig(any)) = &filter.config_type else { panic!("no config") };
    let manager = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
    let Some(RouteSpecifier::Rds(rds)) = manager.route_specifier else { panic!("not RDS") };
    assert_eq!(rds.route_config_name, EGRESS);
}

#[test]
fn each_import_port_is_a_virtual_host_with_retries_across_clusters() {
    let routes = routes(&view(), &settings(true));
    let config = &routes[EGRESS];
    let hosts: Vec<(&str, Vec<&str>)> = config
        .virtual_hosts
        .iter()
        .map(|v| (v.name.as_str(), v.domains.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        hosts,
        [
            (
                "api.shop.svc.clusterset.local",
                vec!["api.shop.svc.clusterset.local", "api.shop.svc.clusterset.local:80"]
            ),
            ("api.shop.svc.clusterset.local:grpc", vec!["api.shop.svc.clusterset.local:9090"]),
            (
                "cart.shop.svc.clusterset.local",
                vec!["cart.shop.svc.clusterset.local", "cart.shop.svc.clusterset.local:8080"]
            ),
        ],
        "the http port is the first port: its host is taken by the hostname's own"
    );
    let route = &config.virtual_hosts[2].routes[0];
    let Some(Action::Route(action)) = &route.action else { panic!("not a route") };
    assert_eq!(
        action.cluster_specifier,
        Some(ClusterSpecifier::Cluster("cart.shop.svc.clusterset.local".into()))
    );
    let retry = action.retry_policy.as_ref().expect("retry policy");
    assert_eq!(retry.retry_on, "connect-failure,refused-stream,reset");
    assert_eq!(retry.num_retries.as_ref().map(|v| v.value), Some(3));
    assert_eq!(
        retry.retry_priority.as_ref().map(|p| p.name.as_str()),
        Some("envoy.retry_priorities.previous_priorities")
    );
    assert_eq!(
        retry.retry_host_predicate.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["envoy.retry_host_predicates.previous_hosts"]
    );
}

#[test]
fn udp_ports_get_no_route() {
    let mut view = view();
    for import in view.imports.values_mut() {
        for port in &mut import.ports {
            port.protocol = Protocol::Udp;
        }
    }
    assert!(routes(&view, &settings(true))[EGRESS].virtual_hosts.is_empty());
}
