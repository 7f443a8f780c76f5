use std::collections::BTreeMap;

use proptest::prelude::*;
use sha2::Digest as _;

use super::*;
use crate::bundle::{TrustBundle, X509Authority};
use crate::service::{EndpointPort, ImportedCluster, Protocol, ServiceKey};

fn endpoint(address: &str, ready: bool, port: Option<u16>) -> ImportEndpoint {
    ImportEndpoint {
        address: address.parse().expect("ip"),
        ports: port
            .map(|p| vec![EndpointPort { name: "http".into(), port: p }])
            .unwrap_or_default(),
        zone: "z1".into(),
        region: "r1".into(),
        weight: 1,
        ready,
        priority: 2,
    }
}

fn import(clusters: Vec<ImportedCluster>) -> ServiceImport {
    ServiceImport {
        key: ServiceKey::new("shop", "cart"),
        hostname: "cart.shop.svc.clusterset.local".into(),
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Tcp,
            app_protocol: "http".into(),
        }],
        identities: vec![],
        clusters,
        conditions: vec![],
        revision: 7,
    }
}

fn exporter(name: &str, endpoints: Vec<ImportEndpoint>) -> ImportedCluster {
    ImportedCluster {
        cluster: name.into(),
        trust_domain: format!("{name}.example"),
        live: true,
        via_gateway: false,
        identities: vec![],
        endpoints,
    }
}

fn view(imports: Vec<ServiceImport>) -> AgentView {
    AgentView {
        cluster: "cluster-b".into(),
        trust_domain: "b.example".into(),
        imports: imports.into_iter().map(|i| (i.key.clone(), i)).collect(),
        ..AgentView::default()
    }
}

#[test]
fn an_import_becomes_a_service_import_and_slices_per_cluster_family_and_ports() {
    let desired = desired_objects(
        &view(vec![import(vec![
            exporter(
                "cluster-a",
                vec![
                    endpoint("192.0.2.1", true, Some(8080)),
                    endpoint("192.0.2.2", false, Some(8080)),
                    endpoint("192.0.2.3", true, None),
                    endpoint("2001:db8::1", true, Some(8080)),
                    endpoint("127.0.0.1", true, Some(8080)),
                ],
            ),
            exporter("cluster-c", vec![endpoint("198.51.100.1", true, Some(8080))]),
        ])]),
        DEFAULT_SIGNER,
    );
    assert_eq!(desired.service_imports.len(), 1);
    let object = &desired.service_imports[0];
    assert_eq!(object.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(object.spec.ports[0].app_protocol.as_deref(), Some("http"));
    assert_eq!(object.spec.type_, "Headless");
    let clusters: Vec<&str> =
        object.status.iter().flat_map(|s| &s.clusters).map(|c| c.cluster.as_str()).collect();
    assert_eq!(clusters, ["cluster-a", "cluster-c"]);
    // cluster-a: IPv4 on 8080, IPv4 on 80, IPv6 on 8080; cluster-c: one.
    assert_eq!(desired.endpoint_slices.len(), 4);
    for slice in &desired.endpoint_slices {
        let labels = slice.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels[MCS_SERVICE_NAME_LABEL], "cart");
        assert_eq!(labels[SLICE_MANAGED_BY_LABEL], SLICE_MANAGER);
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(labels[AGENT_LABEL], "cluster-b");
        assert!(
            !labels.contains_key("kubernetes.io/service-name"),
            "no local Service routes to them"
        );
        let name = slice.metadata.name.clone().unwrap_or_default();
        assert!(name.len() <= 63 && name.starts_with("cart-cluster-"), "{name}");
    }
    let a_v4_8080 = desired
        .endpoint_slices
        .iter()
        .find(|s| {
            s.address_type == "IPv4"
                && s.metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l[MCS_SOURCE_CLUSTER_LABEL] == "cluster-a")
                && s.ports.as_ref().is_some_and(|p| p[0].port == Some(8080))
        })
        .expect("cluster-a's IPv4 slice on 8080");
    let states: Vec<(String, Option<bool>)> = a_v4_8080
        .endpoints
        .iter()
        .flatten()
        .map(|e| (e.addresses[0].clone(), e.conditions.as_ref().and_then(|c| c.ready)))
        .collect();
    assert_eq!(
        states,
        [("192.0.2.1".into(), Some(true)), ("192.0.2.2".into(), Some(false))],
        "no loopback address: the API server refuses them"
    );
    let names: std::collections::BTreeSet<_> =
        desired.endpoint_slices.iter().map(|s| s.metadata.name.clone()).collect();
    assert_eq!(names.len(), 4, "distinct names");
}

#[test]
fn a_large_cluster_is_cut_into_slices_of_at_most_a_hundred() {
    let endpoints: Vec<ImportEndpoint> =
        (0..250).map(|i| endpoint(&format!("2001:db8::{:x}", i + 1), true, None)).collect();
    let desired = desired_objects(
        &view(vec![import(vec![exporter("cluster-a", endpoints)])]),
        DEFAULT_SIGNER,
    );
    let sizes: Vec<usize> =
        desired.endpoint_slices.iter().map(|s| s.endpoints.as_ref().map_or(0, Vec::len)).collect();
    assert_eq!(sizes, [100, 100, 50]);
}

fn bundle(td: &str, roots: usize) -> TrustBundle {
    TrustBundle {
        trust_domain: td.into(),
        x509_authorities: (0..roots)
            .map(|i| X509Authority {
                der: vec![0x30, 0x03, 0x02, 0x01, i as u8],
                not_before: 0,
                not_after: 1,
                fingerprint: format!("f{i}"),
            })
            .collect(),
        jwt_authorities: vec![],
        sequence: 1,
        refresh_hint_secs: None,
    }
}

#[test]
fn every_federated_trust_domain_with_x509_roots_becomes_a_cluster_trust_bundle() {
    let mut v = view(vec![]);
    v.bundles = BTreeMap::from([
        ("a.example".to_string(), bundle("a.example", 2)),
        ("jwt-only.example".to_string(), bundle("jwt-only.example", 0)),
        ("under_score.example".to_string(), bundle("under_score.example", 1)),
    ]);
    v.own_bundle = Some(bundle("b.example", 1));
    let desired = desired_objects(&v, "example.com/peers");
    let names: Vec<String> =
        desired.trust_bundles.iter().filter_map(|b| b.metadata.name.clone()).collect();
    assert_eq!(names.len(), 2, "no bundle without X.509 roots, none for the own domain: {names:?}");
    assert_eq!(names[0], "example.com:peers:a.example");
    assert!(names[1].starts_with("example.com:peers:") && !names[1].contains('_'), "{names:?}");
    let first = &desired.trust_bundles[0];
    assert_eq!(first.spec.signer_name.as_deref(), Some("example.com/peers"));
    assert_eq!(first.spec.trust_bundle.matches("BEGIN CERTIFICATE").count(), 2);
    assert_eq!(
        first.metadata.labels.as_ref().map(|l| l[TRUST_DOMAIN_LABEL].clone()),
        Some("a.example".into())
    );
    assert_eq!(
        desired.trust_bundles[1]
            .metadata
            .annotations
            .as_ref()
            .map(|a| a[TRUST_DOMAIN_ANNOTATION].clone()),
        Some("under_score.example".into())
    );
}

#[test]
fn what_the_api_server_would_refuse_is_made_acceptable_or_left_out() {
    let mut odd = import(vec![exporter(
        "cluster-a",
        vec![
            endpoint("::ffff:198.51.100.3", true, Some(8080)),
            endpoint("::ffff:127.0.0.1", true, None),
        ],
    )]);
    odd.ports[0].app_protocol = "HTTP/2".into();
    let desired = desired_objects(&view(vec![odd]), DEFAULT_SIGNER);
    assert_eq!(desired.endpoint_slices.len(), 1, "the mapped loopback address is left out");
    let slice = &desired.endpoint_slices[0];
    assert_eq!(slice.address_type, "IPv4", "an IPv4-mapped address is IPv4");
    assert_eq!(
        slice.endpoints.as_ref().map(|e| e[0].addresses[0].clone()),
        Some("198.51.100.3".into())
    );
    assert_eq!(
        slice.ports.as_ref().and_then(|p| p[0].app_protocol.clone()),
        None,
        "not a qualified name"
    );
    assert_eq!(desired.service_imports[0].spec.ports[0].app_protocol, None);
    for good in ["http", "kubernetes.io/h2c", "grpc-web"] {
        assert!(is_qualified_name(good), "{good}");
    }
    for bad in ["", "HTTP/2", "grpc+tls", "-x", "a/b/c", &"x".repeat(64)] {
        assert!(!is_qualified_name(bad), "{bad}");
    }
    assert!(
        trust_bundle_name(DEFAULT_SIGNER, "corp-")
            .ends_with(&hex::encode(&sha2::Sha256::digest(b"corp-")[..16]))
    );
}

#[test]
fn slices_of_two_services_with_long_names_never_share_a_name() {
    let long = |name: &str| {
        let mut i = import(vec![exporter("cluster-a", vec![endpoint("192.0.2.1", true, None)])]);
        i.key = ServiceKey::new("shop", name);
        i
    };
    let a = format!("{}-a", "s".repeat(60));
    let b = format!("{}-b", "s".repeat(60));
    let desired = desired_objects(&view(vec![long(&a), long(&b)]), DEFAULT_SIGNER);
    let names: std::collections::BTreeSet<_> =
        desired.endpoint_slices.iter().filter_map(|s| s.metadata.name.clone()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

proptest! {
    /// Whatever the names, the objects' names and labels are ones the API server takes.
    #[test]
    fn names_and_labels_are_always_acceptable(
        service in "[a-z][a-z0-9-]{0,61}[a-z0-9]",
        cluster in "[a-z][a-z0-9-]{0,61}[a-z0-9]",
        td in "[a-z0-9._-]{1,250}",
    ) {
        let name = object_name(&format!("{service}-{cluster}"), "id");
        prop_assert!(name.len() <= 63 && !name.starts_with('-') && !name.ends_with('-'));
        prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        let label = label_value(&td);
        prop_assert!(label.len() <= 63);
        prop_assert!(label.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric()));
        prop_assert!(label.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric()));
        let bundle = trust_bundle_name(DEFAULT_SIGNER, &td);
        prop_assert!(bundle.starts_with("federator.io:federated-trust-domain:") && bundle.len() <= 253);
        prop_assert!(bundle.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-' || b == b':'));
    }
}
