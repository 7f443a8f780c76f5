use proptest::prelude::*;

use super::*;

fn export_object(name: &str, annotations: &[(&str, &str)]) -> ObjectMeta {
    let mut object = ObjectMeta {
        name: Some(name.into()),
        namespace: Some("shop".into()),
        ..ObjectMeta::default()
    };
    if !annotations.is_empty() {
        object.annotations =
            Some(annotations.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect());
    }
    object
}

fn service(name: &str, kind: &str) -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "namespace": "shop" },
        "spec": {
            "type": kind,
            "ports": [
                { "name": "http", "port": 80, "protocol": "TCP", "appProtocol": "http" },
                { "name": "grpc", "port": 9090 }
            ]
        }
    }))
    .expect("service")
}

fn slice(service: &str, name: &str, family: &str, endpoints: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name,
            "namespace": "shop",
            "labels": { "kubernetes.io/service-name": service }
        },
        "addressType": family,
        "endpoints": endpoints,
        "ports": [{ "name": "http", "port": 8080 }, { "name": "grpc", "port": 9090 }, { "name": "metrics", "port": 9100 }]
    }))
    .expect("slice")
}

fn exports(
    objects: &[ObjectMeta],
    services: &[Service],
    slices: &[EndpointSlice],
) -> KubernetesExports {
    exports_from_objects(objects, services, slices, &rules())
}

/// a.example's rules: the gateway 192.0.2.10:15443 listed, `mesh-system` trusted.
fn rules() -> ExportRules {
    ExportRules {
        trusted_namespaces: ["mesh-system".to_string()].into(),
        gateways: ["192.0.2.10:15443".parse().expect("gateway")].into(),
        ..ExportRules::new("a.example")
    }
}

#[test]
fn a_service_export_becomes_the_services_ports_and_ready_endpoints() {
    let slices = [
        slice(
            "cart",
            "cart-1",
            "IPv4",
            serde_json::json!([
                { "addresses": ["192.0.2.1"], "conditions": { "ready": true }, "zone": "z1" },
                { "addresses": ["192.0.2.2"], "conditions": { "ready": false } },
                { "addresses": ["192.0.2.3"] }
            ]),
        ),
        slice("cart", "cart-2", "IPv6", serde_json::json!([{ "addresses": ["2001:db8::1"] }])),
        slice("cart", "cart-3", "FQDN", serde_json::json!([{ "addresses": ["db.example"] }])),
        slice("other", "other-1", "IPv4", serde_json::json!([{ "addresses": ["192.0.2.99"] }])),
    ];
    let out = exports(&[export_object("cart", &[])], &[service("cart", "ClusterIP")], &slices);
    let key = ServiceKey::new("shop", "cart");
    let export = &out.set.exports[&key];
    assert_eq!(export.ports.len(), 2);
    assert_eq!(export.ports[0].app_protocol, "http");
    assert_eq!(export.ports[1].protocol, Protocol::Tcp, "TCP when not given");
    let addresses: Vec<(String, bool, String)> =
        export.endpoints.iter().map(|e| (e.address.to_string(), e.ready, e.zone.clone())).collect();
    assert_eq!(
        addresses,
        [
            ("192.0.2.1".into(), true, "z1".into()),
            ("192.0.2.2".into(), false, String::new()),
            ("192.0.2.3".into(), true, String::new()),
            ("2001:db8::1".into(), true, String::new()),
        ],
        "a missing ready condition means ready; FQDN slices and other services' slices are not read"
    );
    // Only the port that differs from the service's is listed; metrics is no service port.
    assert_eq!(export.endpoints[0].ports, [EndpointPort { name: "http".into(), port: 8080 }]);
    assert_eq!(export.identities, ["spiffe://a.example/ns/shop/sa/cart"]);
    assert!(out.verdicts[&key].valid, "{:?}", out.verdicts[&key]);
    assert!(out.set.problems.is_empty(), "{:?}", out.set.problems);
}

#[test]
fn an_address_in_two_slices_is_one_endpoint_ready_if_either_says_so() {
    let slices = [
        slice(
            "cart",
            "cart-1",
            "IPv4",
            serde_json::json!([{ "addresses": ["192.0.2.1"], "conditions": { "ready": false } }]),
        ),
        slice(
            "cart",
            "cart-2",
            "IPv4",
            serde_json::json!([{ "addresses": ["192.0.2.1"], "conditions": { "ready": true } }]),
        ),
    ];
    let out = exports(&[export_object("cart", &[])], &[service("cart", "ClusterIP")], &slices);
    let export = &out.set.exports[&ServiceKey::new("shop", "cart")];
    assert_eq!(export.endpoints.len(), 1);
    assert!(export.endpoints[0].ready);
}

#[test]
fn annotations_set_identities_scope_and_gateway() {
    let object = export_object(
        "cart",
        &[
            (
                IDENTITIES_ANNOTATION,
                "spiffe://a.example/ns/shop/sa/cart-v2, spiffe://a.example/ns/shop/sa/cart",
            ),
            (CLUSTERS_ANNOTATION, "cluster-b,cluster-c"),
            (GATEWAY_ANNOTATION, "192.0.2.10:15443"),
        ],
    );
    let out = exports(&[object], &[service("cart", "ClusterIP")], &[]);
    let export = &out.set.exports[&ServiceKey::new("shop", "cart")];
    assert_eq!(export.identities.len(), 2);
    assert!(export.scope.admits("cluster-b") && !export.scope.admits("cluster-d"));
    assert_eq!(
        export.mode,
        ExportMode::Gateway { address: "192.0.2.10".parse().expect("ip"), port: 15443 }
    );
}

#[test]
fn refusals_name_the_reason_and_the_annotation_to_fix() {
    let key = |name: &str| ServiceKey::new("shop", name);
    let out = exports(
        &[
            export_object("ghost", &[]),
            export_object("dns", &[]),
            export_object("foreign", &[(IDENTITIES_ANNOTATION, "spiffe://b.example/ns/shop/sa/x")]),
            export_object("gw", &[(GATEWAY_ANNOTATION, "gateway:443")]),
        ],
        &[
            service("dns", "ExternalName"),
            service("foreign", "ClusterIP"),
            service("gw", "ClusterIP"),
        ],
        &[],
    );
    assert!(out.set.exports.is_empty(), "{:?}", out.set.exports);
    assert_eq!(out.verdicts[&key("ghost")].reason, "NoService");
    assert_eq!(out.verdicts[&key("dns")].reason, "ExternalName");
    let foreign = &out.verdicts[&key("foreign")];
    assert_eq!(foreign.reason, "Invalid");
    assert!(foreign.message.contains("outside the exporting member's trust domain"), "{foreign:?}");
    assert!(foreign.message.contains(IDENTITIES_ANNOTATION), "{foreign:?}");
    assert!(out.verdicts[&key("gw")].message.contains("is not IP:PORT"));
    assert_eq!(out.set.problems.len(), 4, "each refusal is a problem of its own");
    assert!(out.set.problems.iter().all(|p| p.location.starts_with("ServiceExport shop/")));
}

#[test]
fn identities_of_other_namespaces_and_unlisted_gateways_are_refused_unless_trusted() {
    let in_namespace = |namespace: &str, name: &str, annotations: &[(&str, &str)]| {
        let mut object = export_object(name, annotations);
        object.namespace = Some(namespace.into());
        object
    };
    let service_in = |namespace: &str, name: &str| {
        let mut service = service(name, "ClusterIP");
        service.metadata.namespace = Some(namespace.into());
        service
    };
    let objects = [
        // A namespace owner claiming the payments team's identity.
        in_namespace(
            "shop",
            "steal",
            &[(IDENTITIES_ANNOTATION, "spiffe://a.example/ns/payments/sa/api")],
        ),
        // A prefix that only looks like the namespace.
        in_namespace(
            "shop",
            "prefix",
            &[(IDENTITIES_ANNOTATION, "spiffe://a.example/ns/shopping/sa/x")],
        ),
        in_namespace("shop", "detour", &[(GATEWAY_ANNOTATION, "198.51.100.7:443")]),
        in_namespace("shop", "listed", &[(GATEWAY_ANNOTATION, "192.0.2.10:15443")]),
        // The trusted namespace may name other identities and any gateway.
        in_namespace(
            "mesh-system",
            "ingress",
            &[
                (IDENTITIES_ANNOTATION, "spiffe://a.example/ns/payments/sa/api"),
                (GATEWAY_ANNOTATION, "198.51.100.7:443"),
            ],
        ),
    ];
    let services = [
        service_in("shop", "steal"),
        service_in("shop", "prefix"),
        service_in("shop", "detour"),
        service_in("shop", "listed"),
        service_in("mesh-system", "ingress"),
    ];
    let out = exports(&objects, &services, &[]);
    let exported: Vec<String> = out.set.exports.keys().map(ToString::to_string).collect();
    assert_eq!(exported, ["mesh-system/ingress", "shop/listed"], "{:?}", out.verdicts);
    for (name, words) in [
        ("steal", "is not an identity of namespace shop"),
        ("prefix", "is not an identity of namespace shop"),
        ("detour", "is not one of the cluster's gateways"),
    ] {
        let verdict = &out.verdicts[&ServiceKey::new("shop", name)];
        assert_eq!(verdict.reason, "Invalid", "{name}");
        assert!(verdict.message.contains(words), "{name}: {verdict:?}");
        assert!(verdict.message.contains("[exports.kubernetes]"), "names the setting: {verdict:?}");
    }
}

#[test]
fn an_export_the_federation_refused_is_not_valid() {
    let mut out = exports(
        &[export_object("cart", &[]), export_object("ghost", &[])],
        &[service("cart", "ClusterIP")],
        &[],
    );
    let refusals = BTreeMap::from([
        (ServiceKey::new("shop", "cart"), "namespace shop is not granted to cluster-a".to_string()),
        (ServiceKey::new("shop", "ghost"), "whatever".to_string()),
    ]);
    apply_refusals(&mut out.verdicts, &refusals);
    let cart = &out.verdicts[&ServiceKey::new("shop", "cart")];
    assert_eq!((cart.valid, cart.reason), (false, "Refused"));
    assert!(cart.message.contains("not granted to cluster-a"), "{cart:?}");
    // A verdict that was not valid keeps its own reason.
    assert_eq!(out.verdicts[&ServiceKey::new("shop", "ghost")].reason, "NoService");
}

#[test]
fn a_service_export_being_deleted_exports_nothing() {
    let mut object = export_object("cart", &[]);
    object.deletion_timestamp =
        Some(serde_json::from_value(serde_json::json!("2026-12-06T00:00:00Z")).expect("time"));
    let out = exports(&[object], &[service("cart", "ClusterIP")], &[]);
    assert!(out.set.exports.is_empty() && out.verdicts.is_empty());
}

proptest! {
    /// Whatever the annotations and slice contents say, the conversion never panics, and
    /// every export it gives passes the federation's own validation.
    #[test]
    fn any_annotations_give_a_valid_export_or_a_reason(
        identities in ".{0,80}",
        clusters in "[a-z,-]{0,40}",
        gateway in ".{0,30}",
        addresses in proptest::collection::vec(".{0,20}|[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}", 0..6),
    ) {
        let object = export_object(
            "cart",
            &[(IDENTITIES_ANNOTATION, &identities), (CLUSTERS_ANNOTATION, &clusters), (GATEWAY_ANNOTATION, &gateway)],
        );
        let endpoints: Vec<serde_json::Value> =
            addresses.iter().map(|a| serde_json::json!({ "addresses": [a] })).collect();
        let slices = [slice("cart", "cart-1", "IPv4", serde_json::Value::Array(endpoints))];
        let out = exports(&[object], &[service("cart", "ClusterIP")], &slices);
        let key = ServiceKey::new("shop", "cart");
        prop_assert!(out.verdicts.contains_key(&key));
        if let Some(export) = out.set.exports.get(&key) {
            prop_assert!(export.validate("a.example").is_ok());
            prop_assert!(out.verdicts[&key].valid);
            // Nothing claimed beyond the namespace's identities and the listed gateway.
            prop_assert!(export.identities.iter().all(|id| id.starts_with("spiffe://a.example/ns/shop/")));
            if let ExportMode::Gateway { address, port } = &export.mode {
                prop_assert!(rules().gateways.contains(&SocketAddr::new(*address, *port)));
            }
        } else {
            prop_assert!(!out.verdicts[&key].valid);
            prop_assert_eq!(out.set.problems.len(), 1);
        }
    }
}
