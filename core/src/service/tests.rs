use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::*;

const TD: &str = "a.test";

fn port(name: &str, number: u16) -> ServicePort {
    ServicePort {
        name: name.into(),
        port: number,
        protocol: Protocol::Tcp,
        app_protocol: String::new(),
    }
}

fn endpoint(last: u8, zone: &str, ready: bool) -> Endpoint {
    Endpoint {
        address: IpAddr::V4(Ipv4Addr::new(127, 0, 1, last)),
        ports: Vec::new(),
        zone: zone.into(),
        region: "r1".into(),
        weight: 1,
        ready,
    }
}

fn export() -> ServiceExport {
    ServiceExport {
        key: ServiceKey::new("shop", "cart"),
        ports: vec![port("http", 80), port("grpc", 9090)],
        endpoints: vec![endpoint(1, "z1", true), endpoint(2, "z2", true)],
        identities: vec![format!("spiffe://{TD}/ns/shop/sa/cart")],
        scope: ExportScope::AllMembers,
        mode: ExportMode::Direct,
    }
}

fn refused(export: &ServiceExport) -> ExportError {
    export.validate(TD).expect_err("must be refused")
}

#[test]
fn a_good_export_validates() {
    export().validate(TD).expect("valid");
    assert_eq!(export().key.hostname(), "cart.shop.svc.clusterset.local");
}

#[test]
fn each_bad_field_is_named() {
    type Breaker = Box<dyn Fn(&mut ServiceExport)>;
    let cases: Vec<(&str, Breaker)> = vec![
        ("namespace", Box::new(|e| e.key.namespace = "Shop".into())),
        ("name", Box::new(|e| e.key.name = "-cart".into())),
        ("name", Box::new(|e| e.key.name = "x".repeat(64))),
        ("ports", Box::new(|e| e.ports.clear())),
        ("ports[1].name", Box::new(|e| e.ports[1].name = "http".into())),
        ("ports[1].name", Box::new(|e| e.ports[1].name = String::new())),
        ("ports[1].port", Box::new(|e| e.ports[1].port = 0)),
        ("ports[1].port", Box::new(|e| e.ports[1].port = 80)),
        ("ports[0].app_protocol", Box::new(|e| e.ports[0].app_protocol = "h t t p".into())),
        ("endpoints[1].address", Box::new(|e| e.endpoints[1].address = e.endpoints[0].address)),
        (
            "endpoints[0].address",
            Box::new(|e| e.endpoints[0].address = Ipv4Addr::UNSPECIFIED.into()),
        ),
        (
            "endpoints[0].address",
            Box::new(|e| e.endpoints[0].address = Ipv4Addr::new(224, 0, 0, 1).into()),
        ),
        ("endpoints[0].weight", Box::new(|e| e.endpoints[0].weight = 0)),
        ("endpoints[0].zone", Box::new(|e| e.endpoints[0].zone = "a zone".into())),
        (
            "endpoints[0].ports[0].name",
            Box::new(|e| {
                e.endpoints[0].ports.push(EndpointPort { name: "nope".into(), port: 1 });
            }),
        ),
        ("identities", Box::new(|e| e.identities.clear())),
        ("identities[0]", Box::new(|e| e.identities[0] = "https://a.test/x".into())),
        ("identities[1]", Box::new(|e| e.identities.push(e.identities[0].clone()))),
        ("scope.clusters", Box::new(|e| e.scope = ExportScope::Clusters(BTreeSet::new()))),
        (
            "scope.clusters[0]",
            Box::new(|e| {
                e.scope = ExportScope::Clusters(BTreeSet::from(["Bad Name".to_string()]));
            }),
        ),
        (
            "mode.gateway.port",
            Box::new(|e| {
                e.mode = ExportMode::Gateway { address: Ipv4Addr::LOCALHOST.into(), port: 0 };
            }),
        ),
    ];
    for (field, break_it) in cases {
        let mut e = export();
        break_it(&mut e);
        let err = refused(&e);
        assert_eq!(err.field, field, "{err}");
    }
}

#[test]
fn identities_outside_the_trust_domain_are_refused() {
    let mut e = export();
    e.identities.push("spiffe://b.test/ns/shop/sa/cart".into());
    let err = refused(&e);
    assert_eq!(err.field, "identities[1]");
    assert!(err.rule.contains("outside the exporting member's trust domain a.test"), "{err}");
    assert!(e.claims_foreign_identity(TD));
    assert!(!export().claims_foreign_identity(TD));
}

#[test]
fn the_oldest_export_wins_a_port_conflict() {
    let a = [port("http", 80)];
    let b = [port("http", 8080), port("admin", 9000)];
    let c = [port("web", 80)];
    let merged = merge_ports([("a", &a[..]), ("b", &b[..]), ("c", &c[..])]);
    assert_eq!(merged.ports, vec![port("http", 80), port("admin", 9000)]);
    let conflict = merged.conflict.expect("conflict");
    assert_eq!(conflict.kind, "Conflict");
    assert_eq!(conflict.clusters, vec!["b".to_string(), "c".to_string()]);
    assert!(
        conflict.message.contains("cluster b defines port http=8080/TCP"),
        "{}",
        conflict.message
    );
    let same = merge_ports([("a", &a[..]), ("b", &a[..])]);
    assert!(same.conflict.is_none());
}

#[test]
fn imports_merge_clusters_mark_dead_ones_and_order_by_locality() {
    let mut near = export();
    near.endpoints = vec![endpoint(1, "z1", true), endpoint(2, "z2", true)];
    let mut far = export();
    far.endpoints = vec![Endpoint { region: "r2".into(), ..endpoint(3, "z9", true) }];
    let r1 = Locality { region: "r1".into(), zone: String::new() };
    let r2 = Locality { region: "r2".into(), zone: "z9".into() };
    let exporters = [
        ExporterView {
            cluster: "far",
            trust_domain: "far.test",
            live: true,
            export: &far,
            locality: &r2,
        },
        ExporterView {
            cluster: "near",
            trust_domain: "near.test",
            live: false,
            export: &near,
            locality: &r1,
        },
    ];
    let me = Locality { region: "r1".into(), zone: "z2".into() };
    let import = build_import(&near.key, 7, "me", &me, &exporters).expect("import");
    assert_eq!(import.revision, 7);
    assert_eq!(import.hostname, "cart.shop.svc.clusterset.local");
    assert_eq!(import.clusters[0].cluster, "near", "nearest cluster first");
    let priorities: Vec<u32> = import.clusters[0].endpoints.iter().map(|e| e.priority).collect();
    assert_eq!(priorities, vec![0, 1], "same zone, then same region");
    assert!(import.clusters[0].endpoints.iter().all(|e| !e.ready), "dead lease: not ready");
    assert_eq!(import.clusters[1].endpoints[0].priority, 2);
    assert_eq!(import.ready_endpoints(), 1);
    assert_eq!(import.total_endpoints(), 3);
}

#[test]
fn failover_follows_the_exporters_bound_locality_not_its_claims() {
    // A hostile exporter claims the consumer's own zone; its bound locality is elsewhere.
    let mut claimed = export();
    claimed.endpoints = vec![Endpoint { region: "r1".into(), ..endpoint(9, "z1", true) }];
    let mut honest = export();
    honest.endpoints = vec![endpoint(1, "", true)];
    let elsewhere = Locality { region: "r9".into(), zone: "z9".into() };
    let here = Locality { region: "r1".into(), zone: "z1".into() };
    let unbound = Locality::default();
    let me = Locality { region: "r1".into(), zone: "z1".into() };
    for (hostile_locality, expected) in [(&elsewhere, 2), (&unbound, 2)] {
        let exporters = [
            ExporterView {
                cluster: "hostile",
                trust_domain: "h.test",
                live: true,
                export: &claimed,
                locality: hostile_locality,
            },
            ExporterView {
                cluster: "honest",
                trust_domain: "o.test",
                live: true,
                export: &honest,
                locality: &here,
            },
        ];
        let import = build_import(&claimed.key, 1, "me", &me, &exporters).expect("import");
        assert_eq!(import.clusters[0].cluster, "honest", "bound locality first");
        assert_eq!(import.clusters[0].endpoints[0].priority, 0);
        assert_eq!(
            (
                import.clusters[0].endpoints[0].region.as_str(),
                import.clusters[0].endpoints[0].zone.as_str()
            ),
            ("r1", "z1")
        );
        assert_eq!(import.clusters[1].endpoints[0].priority, expected);
    }
}

#[test]
fn the_address_policy_refuses_metadata_loopback_and_their_disguises() {
    let refused = [
        "169.254.169.254",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "fe80::1",
        "0.0.0.0",
        "0.1.2.3",
        "::",
        "224.0.0.1",
        "ff02::1",
        "255.255.255.255",
    ];
    for text in refused {
        let address: std::net::IpAddr = text.parse().expect("address");
        for allow_loopback in [false, true] {
            let err = check_address_policy("endpoints[0].address", address, allow_loopback)
                .expect_err(text);
            assert_eq!(err.field, "endpoints[0].address");
        }
    }
    for text in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
        let address: std::net::IpAddr = text.parse().expect("address");
        assert!(check_address_policy("a", address, false).is_err(), "{text} refused by default");
        assert!(check_address_policy("a", address, true).is_ok(), "{text} allowed when set");
    }
    for text in ["192.0.2.33", "192.0.2.7", "2001:db8::5", "100.64.0.1"] {
        let address: std::net::IpAddr = text.parse().expect("address");
        assert!(check_address_policy("a", address, false).is_ok(), "{text}");
    }
}

proptest! {
    /// Whatever IPv4 address hides in a mapped or NAT64 form is judged as itself.
    #[test]
    fn mapped_forms_are_judged_as_their_ipv4_address(octets in any::<[u8; 4]>()) {
        let v4 = std::net::Ipv4Addr::from(octets);
        let plain = check_address_policy("a", v4.into(), false).is_ok();
        let mapped = check_address_policy("a", v4.to_ipv6_mapped().into(), false).is_ok();
        let [a, b, c, d] = octets;
        let nat64 = std::net::Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
        prop_assert_eq!(plain, mapped);
        prop_assert_eq!(plain, check_address_policy("a", nat64.into(), false).is_ok());
    }
}

#[test]
fn scope_and_gateway_mode() {
    let mut scoped = export();
    scoped.scope = ExportScope::Clusters(BTreeSet::from(["b".to_string()]));
    scoped.mode = ExportMode::Gateway { address: Ipv4Addr::new(127, 0, 9, 9).into(), port: 15443 };
    let none = Locality::default();
    let exporters = [ExporterView {
        cluster: "a",
        trust_domain: TD,
        live: true,
        export: &scoped,
        locality: &none,
    }];
    assert!(build_import(&scoped.key, 1, "c", &Locality::default(), &exporters).is_none());
    let import = build_import(&scoped.key, 1, "b", &Locality::default(), &exporters).expect("b");
    let only = &import.clusters[0];
    assert!(only.via_gateway);
    assert_eq!(only.endpoints.len(), 1);
    assert_eq!(only.endpoints[0].address, IpAddr::V4(Ipv4Addr::new(127, 0, 9, 9)));
    assert!(only.endpoints[0].ports.iter().all(|p| p.port == 15443));
    assert_eq!(only.endpoints[0].weight, 2);
}

#[test]
fn service_keys_parse() {
    assert_eq!(ServiceKey::parse("shop/cart").expect("ok"), ServiceKey::new("shop", "cart"));
    assert_eq!(ServiceKey::parse("cart").expect_err("no slash").field, "service");
    assert_eq!(ServiceKey::parse("shop/Cart").expect_err("upper").field, "name");
    assert_eq!(Protocol::parse("p", "udp").expect("udp"), Protocol::Udp);
    assert!(Protocol::parse("p", "icmp").is_err());
}

fn arb_export() -> impl Strategy<Value = ServiceExport> {
    let ports = proptest::collection::vec(("[a-z-]{0,6}", 0u16..5, 0u8..3), 0..4);
    let endpoints =
        proptest::collection::vec((any::<u8>(), "[a-z ]{0,3}", 0u32..3, any::<bool>()), 0..5);
    let ids = proptest::collection::vec("spiffe://[ab]\\.test/[a-z]{0,3}", 0..3);
    (ports, endpoints, ids).prop_map(|(ports, endpoints, identities)| ServiceExport {
        key: ServiceKey::new("ns", "svc"),
        ports: ports
            .into_iter()
            .map(|(name, port, proto)| ServicePort {
                name,
                port,
                protocol: [Protocol::Tcp, Protocol::Udp, Protocol::Sctp][usize::from(proto)],
                app_protocol: String::new(),
            })
            .collect(),
        endpoints: endpoints
            .into_iter()
            .map(|(last, zone, weight, ready)| Endpoint {
                address: IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
                ports: Vec::new(),
                zone,
                region: String::new(),
                weight,
                ready,
            })
            .collect(),
        identities,
        scope: ExportScope::AllMembers,
        mode: ExportMode::Direct,
    })
}

proptest! {
    /// Whatever an agent sends, validation answers without panicking, and an accepted
    /// export keeps every promise the import builder relies on.
    #[test]
    fn validation_is_total_and_accepted_exports_are_sound(e in arb_export()) {
        match e.validate(TD) {
            Ok(()) => {
                prop_assert!(!e.ports.is_empty());
                prop_assert!(e.ports.iter().all(|p| p.port > 0));
                prop_assert!(e.endpoints.iter().all(|ep| ep.weight > 0));
                prop_assert!(e.identities.iter().all(|i| i.starts_with("spiffe://a.test/")));
                let none = Locality::default();
                let view = [ExporterView { cluster: "a", trust_domain: TD, live: true, export: &e, locality: &none }];
                let import = build_import(&e.key, 1, "b", &Locality::default(), &view).expect("admitted");
                prop_assert_eq!(import.total_endpoints(), e.endpoints.len());
                prop_assert!(import.conditions.is_empty());
            }
            Err(err) => prop_assert!(!err.field.is_empty()),
        }
    }

    /// The merge never loses the oldest export's ports and never reports a conflict for
    /// identical exports.
    #[test]
    fn merge_keeps_the_oldest(a in arb_export(), b in arb_export()) {
        let merged = merge_ports([("a", a.ports.as_slice()), ("b", b.ports.as_slice())]);
        for p in &a.ports {
            let first = a.ports.iter().position(|q| q.name == p.name || (q.port == p.port && q.protocol == p.protocol));
            if first == a.ports.iter().position(|q| q == p) {
                prop_assert!(merged.ports.contains(p));
            }
        }
        // A port list that clashes with itself is refused by validation; the rest merge
        // with themselves without conflict.
        let names: BTreeSet<_> = a.ports.iter().map(|p| &p.name).collect();
        let numbers: BTreeSet<_> = a.ports.iter().map(|p| (p.port, p.protocol)).collect();
        prop_assume!(names.len() == a.ports.len() && numbers.len() == a.ports.len());
        let same = merge_ports([("a", a.ports.as_slice()), ("b", a.ports.as_slice())]);
        prop_assert!(same.conflict.is_none());
    }
}
