//! Tests of the export document: one test (at least) per rule, the static file, and
//! property tests (arbitrary input never panics; valid documents round-trip).

use std::net::Ipv4Addr;

use proptest::prelude::*;
use serde_json::{Value as Json, json};

use super::*;

const TD: &str = "a.example";

fn key() -> ServiceKey {
    ServiceKey::new("shop", "cart")
}

/// The document of the brief, every member given.
fn full() -> Json {
    json!({
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "appProtocol": "http"}],
        "endpoints": [{"address": "127.0.0.1", "zone": "z1", "region": "r1", "weight": 1,
                       "ready": true, "ports": [{"name": "http", "port": 8080}]}],
        "identities": ["spiffe://a.example/ns/shop/sa/cart"],
        "scope": {"clusters": ["b"]},
        "gateway": {"address": "127.0.0.9", "port": 15443}
    })
}

fn parse_json(doc: &Json) -> Result<ServiceExport, DocumentError> {
    parse_export_document(&key(), doc.to_string().as_bytes(), TD)
}

/// `full()` after `edit`.
fn edited(edit: impl FnOnce(&mut Json)) -> Json {
    let mut doc = full();
    edit(&mut doc);
    doc
}

#[track_caller]
fn assert_refused(doc: &Json, expected: &str) {
    let err = parse_json(doc).expect_err("must be refused").to_string();
    assert!(err.starts_with(expected), "expected {expected:?} at the start of: {err}");
}

#[track_caller]
fn assert_refused_bytes(bytes: &[u8], expected: &str) {
    let err = parse_export_document(&key(), bytes, TD).expect_err("must be refused").to_string();
    assert!(err.starts_with(expected), "expected {expected:?} at the start of: {err}");
}

// === accepted documents ===

#[test]
fn the_full_document_parses() {
    let export = parse_json(&full()).expect("valid");
    assert_eq!(export.key, key());
    assert_eq!(
        export.ports,
        vec![ServicePort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Tcp,
            app_protocol: "http".into()
        }]
    );
    assert_eq!(
        export.endpoints,
        vec![Endpoint {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: vec![EndpointPort { name: "http".into(), port: 8080 }],
            zone: "z1".into(),
            region: "r1".into(),
            weight: 1,
            ready: true,
        }]
    );
    assert_eq!(export.identities, vec!["spiffe://a.example/ns/shop/sa/cart".to_string()]);
    assert_eq!(export.scope, ExportScope::Clusters(BTreeSet::from(["b".to_string()])));
    assert_eq!(
        export.mode,
        ExportMode::Gateway { address: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)), port: 15443 }
    );
}

#[test]
fn defaults_fill_in_what_is_left_out() {
    let doc = json!({
        "ports": [{"port": 80}],
        "endpoints": [{"address": "127.0.0.1"}],
        "identities": ["spiffe://a.example/cart"]
    });
    let export = parse_json(&doc).expect("valid");
    assert_eq!(export.ports[0].protocol, Protocol::Tcp);
    assert_eq!(export.ports[0].name, "");
    assert_eq!(export.ports[0].app_protocol, "");
    let endpoint = &export.endpoints[0];
    assert_eq!((endpoint.weight, endpoint.ready), (1, true));
    assert!(endpoint.ports.is_empty() && endpoint.zone.is_empty() && endpoint.region.is_empty());
    assert_eq!(export.scope, ExportScope::AllMembers);
    assert_eq!(export.mode, ExportMode::Direct);
}

#[test]
fn protocols_are_read_in_any_case_and_no_endpoints_is_fine() {
    let doc = json!({
        "ports": [{"name": "a", "port": 53, "protocol": "udp"},
                  {"name": "b", "port": 53, "protocol": "Sctp"}],
        "identities": ["spiffe://a.example/dns"]
    });
    let export = parse_json(&doc).expect("valid");
    assert_eq!(export.ports[0].protocol, Protocol::Udp);
    assert_eq!(export.ports[1].protocol, Protocol::Sctp);
    assert!(export.endpoints.is_empty());
}

#[test]
fn namespace_and_name_may_repeat_the_key() {
    let doc = edited(|d| {
        d["namespace"] = json!("shop");
        d["name"] = json!("cart");
    });
    assert!(parse_json(&doc).is_ok());
}

#[test]
fn ipv6_endpoints_parse() {
    let doc = edited(|d| d["endpoints"][0]["address"] = json!("::1"));
    assert_eq!(parse_json(&doc).expect("valid").endpoints[0].address.to_string(), "::1");
}

// === refused documents: the document as a whole ===

#[test]
fn a_document_over_the_size_limit_is_refused() {
    let mut bytes = full().to_string().into_bytes();
    bytes.resize(MAX_DOCUMENT_BYTES + 1, b' ');
    assert_refused_bytes(&bytes, "body: must be at most 1048576 bytes");
}

#[test]
fn what_is_not_json_is_refused() {
    assert_refused_bytes(b"", "body: not well-formed JSON");
    assert_refused_bytes(b"{\"ports\": [", "body: not well-formed JSON");
    assert_refused_bytes(b"ports: []", "body: not well-formed JSON");
    assert_refused_bytes(b"{} {}", "body: not well-formed JSON");
    assert_refused_bytes(b"{\"identities\": [\"\xff\"]}", "body: not well-formed JSON");
}

#[test]
fn a_document_that_is_not_an_object_is_refused() {
    assert_refused(&json!([]), "body: invalid type: sequence, expected a JSON object");
    assert_refused(&json!("x"), "body: invalid type: string");
    assert_refused(&json!(null), "body: invalid type: null");
}

#[test]
fn unknown_members_are_refused_where_they_are() {
    assert_refused(&edited(|d| d["extra"] = json!(1)), "extra: unknown field `extra`");
    assert_refused(&edited(|d| d["ports"][0]["targetPort"] = json!(1)), "ports[0].targetPort:");
    assert_refused(&edited(|d| d["endpoints"][0]["node"] = json!("n")), "endpoints[0].node:");
    assert_refused(
        &edited(|d| d["endpoints"][0]["ports"][0]["x"] = json!(1)),
        "endpoints[0].ports[0].x:",
    );
    assert_refused(&edited(|d| d["scope"]["all"] = json!(true)), "scope.all:");
    assert_refused(&edited(|d| d["gateway"]["host"] = json!("h")), "gateway.host:");
    // snake_case is not the document's spelling.
    assert_refused(
        &edited(|d| {
            d["ports"][0].as_object_mut().expect("object").remove("appProtocol");
            d["ports"][0]["app_protocol"] = json!("http");
        }),
        "ports[0].app_protocol: unknown field",
    );
}

#[test]
fn duplicate_members_are_refused() {
    let text = full().to_string().replacen("\"identities\"", "\"ports\":[],\"identities\"", 1);
    assert_refused_bytes(text.as_bytes(), "ports: duplicate field `ports`");
    let text = r#"{"ports":[{"port":80,"port":81}],"identities":["spiffe://a.example/x"]}"#;
    assert_refused_bytes(text.as_bytes(), "ports[0].port: duplicate field `port`");
}

#[test]
fn wrong_types_name_the_member() {
    assert_refused(
        &edited(|d| d["ports"][0]["port"] = json!("80")),
        "ports[0].port: invalid type: string \"80\", expected u16",
    );
    assert_refused(&edited(|d| d["ports"] = json!({})), "ports: invalid type: map");
    assert_refused(&edited(|d| d["endpoints"][0]["ready"] = json!("yes")), "endpoints[0].ready:");
    assert_refused(&edited(|d| d["endpoints"][0]["weight"] = json!(1.5)), "endpoints[0].weight:");
    assert_refused(&edited(|d| d["identities"] = json!("spiffe://a.example/x")), "identities:");
    assert_refused(&edited(|d| d["identities"][0] = json!(7)), "identities[0]:");
    assert_refused(&edited(|d| d["scope"]["clusters"] = json!("b")), "scope.clusters:");
    assert_refused(&edited(|d| d["gateway"] = json!("127.0.0.9:15443")), "gateway:");
    assert_refused(&edited(|d| d["ports"][0]["protocol"] = json!(6)), "ports[0].protocol:");
}

#[test]
fn numbers_out_of_range_are_refused() {
    assert_refused(
        &edited(|d| d["ports"][0]["port"] = json!(70_000)),
        "ports[0].port: invalid value",
    );
    assert_refused(&edited(|d| d["ports"][0]["port"] = json!(-1)), "ports[0].port: invalid value");
    assert_refused(
        &edited(|d| d["endpoints"][0]["ports"][0]["port"] = json!(65_536)),
        "endpoints[0].ports[0].port: invalid value",
    );
    assert_refused(&edited(|d| d["gateway"]["port"] = json!(1_000_000)), "gateway.port:");
    assert_refused(
        &edited(|d| d["endpoints"][0]["weight"] = json!(5_000_000_000_u64)),
        "endpoints[0].weight: invalid value",
    );
}

#[test]
fn missing_required_members_are_named() {
    assert_refused(
        &edited(|d| {
            d["ports"][0].as_object_mut().expect("object").remove("port");
        }),
        "ports[0]: missing field `port`",
    );
    assert_refused(
        &edited(|d| {
            d["endpoints"][0].as_object_mut().expect("object").remove("address");
        }),
        "endpoints[0]: missing field `address`",
    );
    assert_refused(
        &edited(|d| {
            d["endpoints"][0]["ports"][0].as_object_mut().expect("object").remove("port");
        }),
        "endpoints[0].ports[0]: missing field `port`",
    );
    assert_refused(&edited(|d| d["scope"] = json!({})), "scope: missing field `clusters`");
    assert_refused(&edited(|d| d["gateway"] = json!({"address": "127.0.0.9"})), "gateway: missing");
}

#[test]
fn namespace_or_name_other_than_the_key_is_refused() {
    assert_refused(&edited(|d| d["namespace"] = json!("other")), "namespace: \"other\" differs");
    assert_refused(&edited(|d| d["name"] = json!("other")), "name: \"other\" differs");
}

// === refused documents: the values ===

#[test]
fn an_address_that_is_not_an_ip_is_refused() {
    assert_refused(
        &edited(|d| d["endpoints"][0]["address"] = json!("x")),
        "endpoints[0].address: \"x\" is not an IP address",
    );
    assert_refused(
        &edited(|d| d["endpoints"][0]["address"] = json!("localhost")),
        "endpoints[0].address: \"localhost\" is not an IP address",
    );
    assert_refused(
        &edited(|d| d["endpoints"][0]["address"] = json!(" 127.0.0.1")),
        "endpoints[0].address:",
    );
    assert_refused(
        &edited(|d| d["gateway"]["address"] = json!("gw.local")),
        "gateway.address: \"gw.local\" is not an IP address",
    );
}

#[test]
fn addresses_that_are_not_unicast_are_refused() {
    assert_refused(
        &edited(|d| d["endpoints"][0]["address"] = json!("0.0.0.0")),
        "endpoints[0].address: 0.0.0.0 is not a unicast address",
    );
    assert_refused(
        &edited(|d| d["endpoints"][0]["address"] = json!("224.0.0.1")),
        "endpoints[0].address:",
    );
    assert_refused(
        &edited(|d| d["endpoints"][0]["address"] = json!("255.255.255.255")),
        "endpoints[0].address:",
    );
    assert_refused(&edited(|d| d["gateway"]["address"] = json!("::")), "gateway.address:");
}

#[test]
fn an_unknown_protocol_is_refused() {
    assert_refused(
        &edited(|d| d["ports"][0]["protocol"] = json!("HTTP")),
        "ports[0].protocol: \"HTTP\" is not TCP, UDP or SCTP",
    );
}

#[test]
fn port_rules_are_named() {
    assert_refused(&edited(|d| d["ports"] = json!([])), "ports: a service needs at least one port");
    let many: Vec<Json> =
        (0..=64).map(|i| json!({"name": format!("p{i}"), "port": 1000 + i})).collect();
    assert_refused(&edited(|d| d["ports"] = json!(many)), "ports: at most 64 ports");
    assert_refused(&edited(|d| d["ports"][0]["port"] = json!(0)), "ports[0].port: must be 1");
    assert_refused(
        &edited(|d| d["ports"] = json!([{"port": 80}, {"port": 81}])),
        "ports[0].name: required when a service has several ports",
    );
    assert_refused(&edited(|d| d["ports"][0]["name"] = json!("HTTP")), "ports[0].name:");
    assert_refused(
        &edited(|d| d["ports"] = json!([{"name": "a", "port": 80}, {"name": "a", "port": 81}])),
        "ports[1].name: \"a\" is declared twice",
    );
    assert_refused(
        &edited(|d| d["ports"] = json!([{"name": "a", "port": 80}, {"name": "b", "port": 80}])),
        "ports[1].port: 80/TCP is declared twice",
    );
    assert_refused(
        &edited(|d| d["ports"][0]["appProtocol"] = json!("has space")),
        "ports[0].appProtocol: at most 63 printable characters",
    );
}

#[test]
fn endpoint_rules_are_named() {
    assert_refused(
        &edited(|d| {
            d["endpoints"] = json!([{"address": "127.0.0.1"}, {"address": "127.0.0.1"}]);
        }),
        "endpoints[1].address: 127.0.0.1 is listed twice",
    );
    assert_refused(&edited(|d| d["endpoints"][0]["zone"] = json!("a b")), "endpoints[0].zone:");
    assert_refused(
        &edited(|d| d["endpoints"][0]["region"] = json!("r".repeat(64))),
        "endpoints[0].region:",
    );
    assert_refused(
        &edited(|d| d["endpoints"][0]["weight"] = json!(0)),
        "endpoints[0].weight: must be 1 to 1000000",
    );
    assert_refused(
        &edited(|d| d["endpoints"][0]["weight"] = json!(1_000_001)),
        "endpoints[0].weight:",
    );
    assert_refused(
        &edited(|d| d["endpoints"][0]["ports"][0]["name"] = json!("grpc")),
        "endpoints[0].ports[0].name: \"grpc\" is not a port of the service",
    );
    assert_refused(
        &edited(|d| d["endpoints"][0]["ports"][0]["port"] = json!(0)),
        "endpoints[0].ports[0].port: must be 1",
    );
}

#[test]
fn too_many_endpoints_are_refused() {
    let endpoints: Vec<Json> = (0..=crate::service::MAX_ENDPOINTS)
        .map(|i| json!({"address": Ipv4Addr::from(0x7f00_0001 + u32::try_from(i).expect("small")).to_string()}))
        .collect();
    assert_refused(&edited(|d| d["endpoints"] = json!(endpoints)), "endpoints: at most 10000");
}

#[test]
fn identity_rules_are_named() {
    assert_refused(&edited(|d| d["identities"] = json!([])), "identities: name at least one");
    assert_refused(&edited(|d| d["identities"][0] = json!("cart")), "identities[0]:");
    assert_refused(
        &edited(|d| d["identities"][0] = json!("spiffe://b.example/ns/shop/sa/cart")),
        "identities[0]: spiffe://b.example/ns/shop/sa/cart is outside the exporting member's \
         trust domain a.example",
    );
    assert_refused(
        &edited(|d| {
            d["identities"] = json!(["spiffe://a.example/x", "spiffe://a.example/x"]);
        }),
        "identities[1]: spiffe://a.example/x is listed twice",
    );
    let many: Vec<String> = (0..=64).map(|i| format!("spiffe://a.example/w{i}")).collect();
    assert_refused(&edited(|d| d["identities"] = json!(many)), "identities: at most 64");
}

#[test]
fn scope_rules_are_named() {
    assert_refused(
        &edited(|d| d["scope"]["clusters"] = json!([])),
        "scope.clusters: an allowlist needs at least one cluster",
    );
    assert_refused(
        &edited(|d| d["scope"]["clusters"] = json!(["b", "c", "b"])),
        "scope.clusters[2]: \"b\" is listed twice",
    );
    assert_refused(
        &edited(|d| d["scope"]["clusters"] = json!(["b", "Not_A_Name"])),
        "scope.clusters[1]:",
    );
}

#[test]
fn gateway_rules_are_named() {
    assert_refused(&edited(|d| d["gateway"]["port"] = json!(0)), "gateway.port: must be 1");
}

#[test]
fn a_bad_key_is_refused() {
    let err = parse_export_document(&ServiceKey::new("Shop", "cart"), b"{}", TD)
        .expect_err("bad namespace")
        .to_string();
    assert!(err.starts_with("namespace:"), "{err}");
}

#[test]
fn messages_quoting_input_are_cut() {
    let long = "x".repeat(10_000);
    let err = parse_json(&edited(|d| d[long.as_str()] = json!(1))).expect_err("unknown");
    let err = err.to_string();
    assert!(err.chars().count() <= MAX_MESSAGE_CHARS + 1, "{} chars", err.len());
    let err = parse_json(&edited(|d| d["endpoints"][0]["address"] = json!(long))).expect_err("ip");
    let err = err.to_string();
    assert!(err.len() < 200, "{err}");
}

// === etcd keys ===

#[test]
fn etcd_keys_name_services() {
    assert_eq!(key_from_etcd_key("/federator/exports/", "/federator/exports/shop/cart"), Ok(key()));
    assert_eq!(key_from_etcd_key("/federator/exports", "/federator/exports/shop/cart"), Ok(key()));
    assert_eq!(
        key_from_etcd_key("/federator/exports//", "/federator/exports/shop/cart"),
        Ok(key())
    );
}

#[test]
fn bad_etcd_keys_are_refused() {
    let prefix = "/federator/exports/";
    for (bad, expected) in [
        ("/other/shop/cart", "is not under the prefix"),
        ("/federator/exportsshop/cart", "is not under the prefix"),
        ("/federator/exports/shop", "is not /federator/exports/NAMESPACE/NAME"),
        ("/federator/exports/shop/cart/x", "is not /federator/exports/NAMESPACE/NAME"),
        ("/federator/exports/", "is not /federator/exports/NAMESPACE/NAME"),
        ("/federator/exports/shop/", "name:"),
        ("/federator/exports//cart", "namespace:"),
        ("/federator/exports/Shop/cart", "namespace:"),
        ("/federator/exports/shop/ca_rt", "name:"),
    ] {
        let err = key_from_etcd_key(prefix, bad).expect_err(bad).to_string();
        assert!(err.contains(expected), "{bad}: {err}");
    }
}

#[test]
fn refusals_name_their_member_as_fields_and_in_their_text() {
    let err = parse_json(&edited(|d| d["endpoints"][0]["address"] = json!("x"))).expect_err("ip");
    assert_eq!(
        err,
        DocumentError::Member {
            field: "endpoints[0].address".into(),
            problem: "\"x\" is not an IP address".into()
        }
    );
    assert_eq!(err.to_string(), "endpoints[0].address: \"x\" is not an IP address");
    let big = vec![b' '; MAX_DOCUMENT_BYTES + 1];
    let err = parse_export_document(&key(), &big, TD).expect_err("too large");
    assert_eq!(
        err.to_string(),
        format!("body: must be at most {MAX_DOCUMENT_BYTES} bytes, is {}", big.len())
    );
    let err = key_from_etcd_key("/p/", "/q/shop/cart").expect_err("outside");
    assert_eq!(err.to_string(), "key \"/q/shop/cart\" is not under the prefix \"/p/\"");
    assert!(matches!(err, KeyError::NotUnderPrefix { .. }), "{err:?}");
}

// === the static file ===

fn entry(namespace: &str, name: &str) -> Json {
    let mut doc = full();
    doc["namespace"] = json!(namespace);
    doc["name"] = json!(name);
    doc["identities"] = json!([format!("spiffe://a.example/ns/{namespace}/sa/{name}")]);
    doc
}

fn file(entries: &[Json]) -> Vec<u8> {
    serde_json::to_vec_pretty(&json!({"exports": entries})).expect("JSON")
}

#[test]
fn a_file_of_good_entries_parses() {
    let set = parse_export_file(&file(&[entry("shop", "cart"), entry("shop", "pay")]), TD);
    assert!(set.problems.is_empty(), "{:?}", set.problems);
    assert_eq!(
        set.exports.keys().cloned().collect::<Vec<_>>(),
        vec![ServiceKey::new("shop", "cart"), ServiceKey::new("shop", "pay")]
    );
    assert!(parse_export_file(br#"{"exports": []}"#, TD) == ExportSet::default());
}

#[test]
fn bad_entries_are_problems_and_good_ones_are_kept() {
    let mut bad_address = entry("shop", "pay");
    bad_address["endpoints"][0]["address"] = json!("x");
    let mut unknown = entry("shop", "ship");
    unknown["colour"] = json!("red");
    let mut nameless = entry("shop", "tax");
    nameless.as_object_mut().expect("object").remove("name");
    let entries = [
        entry("shop", "cart"),
        bad_address,
        json!(7),
        unknown,
        nameless,
        entry("shop", "cart"),
        entry("web", "front"),
    ];
    let set = parse_export_file(&file(&entries), TD);
    assert_eq!(
        set.exports.keys().cloned().collect::<Vec<_>>(),
        vec![ServiceKey::new("shop", "cart"), ServiceKey::new("web", "front")]
    );
    let problems: Vec<(&str, &str)> =
        set.problems.iter().map(|p| (p.location.as_str(), p.message.as_str())).collect();
    assert_eq!(problems.len(), 5, "{problems:?}");
    assert_eq!(problems[0], ("exports[1]", "endpoints[0].address: \"x\" is not an IP address"));
    assert_eq!(problems[1].0, "exports[2]");
    assert!(problems[1].1.starts_with("body: invalid type: integer"), "{problems:?}");
    assert_eq!(problems[2].0, "exports[3]");
    assert!(problems[2].1.starts_with("colour: unknown field"), "{problems:?}");
    assert_eq!(problems[3], ("exports[4]", "name: required in a file entry"));
    assert_eq!(problems[4], ("exports[5]", "shop/cart is already exported by exports[0]"));
}

#[test]
fn entries_are_found_in_compact_and_tricky_text() {
    // Brackets and commas inside strings, escapes, and no whitespace at all.
    let text = r#"{"exports":[{"namespace":"shop","name":"cart","ports":[{"port":80}],"identities":["spiffe://a.example/a,]}[{\"\\"]},{"namespace":"shop","name":"b\"x","ports":[]}]}"#;
    let set = parse_export_file(text.as_bytes(), TD);
    assert_eq!(set.problems.len(), 2, "{:?}", set.problems);
    assert_eq!(set.problems[0].location, "exports[0]");
    assert!(set.problems[0].message.starts_with("identities[0]:"), "{:?}", set.problems);
    assert_eq!(set.problems[1].location, "exports[1]");
    assert!(set.problems[1].message.starts_with("name:"), "{:?}", set.problems);
}

#[test]
fn a_file_that_is_not_an_exports_file_is_one_problem() {
    for (bytes, expected) in [
        (&b"not json"[..], "body: not well-formed JSON"),
        (b"{\"exports\": [", "body: not well-formed JSON"),
        (b"[]", "body: invalid type: sequence, expected a JSON object"),
        (b"{}", "body: missing field `exports`"),
        (b"{\"exports\": [], \"other\": 1}", "other: unknown field"),
        (b"{\"exports\": {}}", "exports: invalid type: map"),
    ] {
        let set = parse_export_file(bytes, TD);
        assert!(set.exports.is_empty());
        assert_eq!(set.problems.len(), 1, "{set:?}");
        assert_eq!(set.problems[0].location, "");
        assert!(set.problems[0].message.starts_with(expected), "{:?}", set.problems);
    }
}

#[test]
fn a_file_over_its_limits_is_one_problem() {
    let mut bytes = br#"{"exports": []}"#.to_vec();
    bytes.resize(MAX_FILE_BYTES + 1, b' ');
    let set = parse_export_file(&bytes, TD);
    assert_eq!(set.problems.len(), 1);
    assert!(set.problems[0].message.starts_with("must be at most"), "{:?}", set.problems);

    let text = format!("{{\"exports\": [{}]}}", vec!["{}"; MAX_FILE_EXPORTS + 1].join(","));
    let set = parse_export_file(text.as_bytes(), TD);
    assert_eq!(set.problems.len(), 1);
    assert!(set.problems[0].message.starts_with("exports: at most 10000"), "{:?}", set.problems);
}

#[test]
fn the_file_writer_round_trips() {
    let cart = parse_json(&full()).expect("valid");
    let mut pay = parse_json(&edited(|d| {
        d.as_object_mut().expect("object").remove("gateway");
        d.as_object_mut().expect("object").remove("scope");
    }))
    .expect("valid");
    pay.key = ServiceKey::new("shop", "pay");
    let text = export_file_json(&[cart.clone(), pay.clone()]);
    let set = parse_export_file(text.as_bytes(), TD);
    assert!(set.problems.is_empty(), "{:?}", set.problems);
    assert_eq!(set.exports.get(&cart.key), Some(&cart));
    assert_eq!(set.exports.get(&pay.key), Some(&pay));
}

#[test]
fn the_document_writer_writes_the_documented_form() {
    let export = parse_json(&full()).expect("valid");
    let written: Json = serde_json::from_str(&export_document_json(&export)).expect("JSON out");
    assert_eq!(written, full());
}

// === internals ===

#[test]
fn paths_follow_the_reader() {
    let text = br#"{"a": [1, {"b": {"c": [0, 0, "x,]"]}}], "d": 2}"#;
    let at = |needle: &str| {
        let hay = String::from_utf8_lossy(text);
        path_at(text, hay.find(needle).expect("needle") + needle.len())
    };
    assert_eq!(at("\"x,]\""), "a[1].b.c[2]");
    assert_eq!(at("\"d\""), "d");
    assert_eq!(at("1"), "a[0]");
    assert_eq!(path_at(text, 0), "");
    assert_eq!(path_at(text, text.len()), "");
    assert_eq!(path_at(br#"{"odd key": 1"#, 12), "[\"odd key\"]");
}

#[test]
fn offsets_follow_lines() {
    let text = b"ab\ncd\nef";
    assert_eq!(offset_of(text, 1, 1), 1);
    assert_eq!(offset_of(text, 2, 0), 3);
    assert_eq!(offset_of(text, 3, 2), 8);
    assert_eq!(offset_of(text, 9, 9), 8);
}

// === properties ===

fn label() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,10}[a-z0-9])?"
}

fn locality() -> impl Strategy<Value = String> {
    "[!-~]{0,12}"
}

prop_compose! {
    fn valid_export()(
        namespace in label(),
        name in label(),
        port_count in 1usize..5,
        app in "[!-~]{0,10}",
        protocols in proptest::collection::vec(0u8..3, 5),
        endpoint_hosts in proptest::collection::btree_set(1u32..0x00ff_fffe, 0..6),
        zones in proptest::collection::vec((locality(), locality(), 1u32..=1_000_000, any::<bool>()), 6),
        identity_paths in proptest::collection::btree_set("[a-z0-9]{1,8}", 1..4),
        scope in proptest::option::of(proptest::collection::btree_set(label(), 1..4)),
        gateway in proptest::option::of((1u32..0x00ff_fffe, 1u16..)),
        override_port in proptest::option::of(1u16..),
    ) -> ServiceExport {
        let ports: Vec<ServicePort> = (0..port_count)
            .map(|i| ServicePort {
                name: if port_count == 1 && i == 0 { String::new() } else { format!("p{i}") },
                port: 1000 + u16::try_from(i).expect("small"),
                protocol: [Protocol::Tcp, Protocol::Udp, Protocol::Sctp][usize::from(protocols[i])],
                app_protocol: if i == 0 { app.clone() } else { String::new() },
            })
            .collect();
        let endpoints = endpoint_hosts
            .iter()
            .zip(&zones)
            .map(|(host, (zone, region, weight, ready))| Endpoint {
                address: IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | host)),
                ports: override_port
                    .map(|port| vec![EndpointPort { name: ports[0].name.clone(), port }])
                    .unwrap_or_default(),
                zone: zone.clone(),
                region: region.clone(),
                weight: *weight,
                ready: *ready,
            })
            .collect();
        ServiceExport {
            key: ServiceKey::new(namespace, name),
            ports,
            endpoints,
            identities: identity_paths.iter().map(|p| format!("spiffe://{TD}/{p}")).collect(),
            scope: scope.map_or(ExportScope::AllMembers, ExportScope::Clusters),
            mode: gateway.map_or(ExportMode::Direct, |(host, port)| ExportMode::Gateway {
                address: IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | host)),
                port,
            }),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_export_document(&key(), &bytes, TD);
        let _ = parse_export_file(&bytes, TD);
        let _ = path_at(&bytes, bytes.len());
        let _ = entry_spans(&bytes);
    }

    #[test]
    fn arbitrary_json_like_text_never_panics(text in "[\\[\\]{}\":,0-9a-z\\\\ .-]{0,300}") {
        let _ = parse_export_document(&key(), text.as_bytes(), TD);
        let _ = parse_export_file(text.as_bytes(), TD);
        let wrapped = format!("{{\"exports\":[{text}]}}");
        let _ = parse_export_file(wrapped.as_bytes(), TD);
    }

    #[test]
    fn valid_documents_round_trip(export in valid_export()) {
        prop_assert_eq!(export.validate(TD), Ok(()));
        let text = export_document_json(&export);
        prop_assert_eq!(parse_export_document(&export.key, text.as_bytes(), TD), Ok(export.clone()));
        let file = export_file_json(std::slice::from_ref(&export));
        let set = parse_export_file(file.as_bytes(), TD);
        prop_assert!(set.problems.is_empty(), "{:?}", set.problems);
        prop_assert_eq!(set.exports.get(&export.key), Some(&export));
    }

    #[test]
    fn mutated_documents_never_panic(
        export in valid_export(),
        cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = export_document_json(&export).into_bytes();
        for (at, byte) in cuts {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        let _ = parse_export_document(&export.key, &bytes, TD);
        let wrapped = [&b"{\"exports\":["[..], &bytes, b"]}"].concat();
        let _ = parse_export_file(&wrapped, TD);
    }
}

#[test]
fn arrays_in_place_of_objects_are_refused() {
    // serde's derived structs would read these as their fields in order.
    assert_refused(&json!([[], [], ["spiffe://a.example/x"]]), "body: invalid type: sequence");
    assert_refused(&edited(|d| d["ports"][0] = json!(["http", 80])), "ports[0]: invalid type");
    assert_refused(&edited(|d| d["endpoints"][0] = json!(["127.0.0.1"])), "endpoints[0]:");
    assert_refused(
        &edited(|d| d["endpoints"][0]["ports"][0] = json!(["http", 1])),
        "endpoints[0].ports[0]:",
    );
    assert_refused(&edited(|d| d["scope"] = json!([["b"]])), "scope: invalid type");
    assert_refused(&edited(|d| d["gateway"] = json!(["127.0.0.9", 1])), "gateway: invalid type");
    let set = parse_export_file(br#"[[]]"#, TD);
    assert_eq!(set.problems.len(), 1, "{set:?}");
}

// === properties: what parses is valid and round-trips, what is refused names a member ===

/// Whether `message` starts with the member it is about (`endpoints[0].address: …`,
/// `body: …`). A message cut at [`MAX_MESSAGE_CHARS`] (it quotes input) may have lost
/// the `: ` after a long member path.
fn names_a_member(message: &str) -> bool {
    match message.split_once(": ") {
        Some((member, _)) => !member.is_empty() && !member.starts_with(char::is_whitespace),
        None => message.ends_with('…') && message.chars().count() == MAX_MESSAGE_CHARS + 1,
    }
}

/// A document that parses is a valid export of `key` that its writer gives back; one
/// that does not is refused with the member it is about.
fn check_document(key: &ServiceKey, bytes: &[u8]) -> Result<(), TestCaseError> {
    match parse_export_document(key, bytes, TD) {
        Ok(export) => {
            prop_assert_eq!(&export.key, key);
            prop_assert_eq!(export.validate(TD), Ok(()));
            let written = export_document_json(&export);
            prop_assert_eq!(parse_export_document(key, written.as_bytes(), TD), Ok(export));
        }
        Err(error) => {
            let message = error.to_string();
            prop_assert!(names_a_member(&message), "{message:?}");
        }
    }
    Ok(())
}

/// A file's problems are at `""` (the file, then alone) or `exports[i]`, each naming a
/// member or the earlier entry of the same service; the entries kept are valid and the
/// file writer gives them back.
fn check_file(bytes: &[u8]) -> Result<(), TestCaseError> {
    let set = parse_export_file(bytes, TD);
    for problem in &set.problems {
        if problem.location.is_empty() {
            prop_assert_eq!(set.problems.len(), 1);
            prop_assert!(set.exports.is_empty());
            prop_assert!(names_a_member(&problem.message), "{problem:?}");
            continue;
        }
        let index = problem
            .location
            .strip_prefix("exports[")
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|i| i.parse::<usize>().ok());
        prop_assert!(index.is_some(), "{problem:?}");
        match problem.message.split_once(" is already exported by exports[") {
            Some((service, first)) => {
                let first = first.strip_suffix(']').and_then(|i| i.parse::<usize>().ok());
                prop_assert!(
                    matches!((first, index), (Some(first), Some(index)) if first < index),
                    "{problem:?}"
                );
                let service = ServiceKey::parse(service);
                prop_assert!(service.is_ok(), "{problem:?}");
                prop_assert!(set.exports.contains_key(&service.expect("checked")));
            }
            None => prop_assert!(names_a_member(&problem.message), "{problem:?}"),
        }
    }
    for (key, export) in &set.exports {
        prop_assert_eq!(key, &export.key);
        prop_assert_eq!(export.validate(TD), Ok(()));
    }
    let kept: Vec<ServiceExport> = set.exports.values().cloned().collect();
    let again = parse_export_file(export_file_json(&kept).as_bytes(), TD);
    prop_assert!(again.problems.is_empty(), "{:?}", again.problems);
    prop_assert_eq!(&again.exports, &set.exports);
    Ok(())
}

/// Every JSON pointer into `value` (object keys of documents need no escaping).
fn pointers(value: &Json, at: &str, out: &mut Vec<String>) {
    match value {
        Json::Object(members) => {
            for (name, member) in members {
                pointers(member, &format!("{at}/{name}"), out);
            }
        }
        Json::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                pointers(item, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at.to_string());
}

/// Values to put in place of a document's members: wrong types, out-of-range numbers,
/// strings that are almost addresses, protocols or SPIFFE IDs.
fn spoiler() -> impl Strategy<Value = Json> {
    prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        (0u64..70_000).prop_map(Json::from),
        Just(json!(1.5)),
        "[ -~]{0,16}".prop_map(Json::from),
        prop::sample::select(vec![
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "udp",
            "HTTP",
            "spiffe://a.example/x",
            "spiffe://b.example/x",
            "p0",
            "b",
            "",
        ])
        .prop_map(Json::from),
        Just(json!([])),
        Just(json!({})),
        Just(json!({"port": 80})),
        Just(json!({"address": "127.0.0.2"})),
    ]
}

/// One change to a document: a member (or item) replaced, removed, or an unknown member
/// added next to it.
#[derive(Clone, Debug)]
enum Spoil {
    Replace(Json),
    Remove,
    AddUnknown,
}

fn spoils() -> impl Strategy<Value = Vec<(prop::sample::Index, Spoil)>> {
    proptest::collection::vec(
        (
            any::<prop::sample::Index>(),
            prop_oneof![
                3 => spoiler().prop_map(Spoil::Replace),
                1 => Just(Spoil::Remove),
                1 => Just(Spoil::AddUnknown),
            ],
        ),
        1..4,
    )
}

/// `doc` after `spoils`, each at a pointer picked among the document's current ones.
fn spoiled(mut doc: Json, spoils: Vec<(prop::sample::Index, Spoil)>) -> Json {
    for (at, spoil) in spoils {
        let mut all = Vec::new();
        pointers(&doc, "", &mut all);
        let pointer = at.get(&all).clone();
        let (parent, last) = pointer.rsplit_once('/').unwrap_or(("", ""));
        match spoil {
            Spoil::Replace(value) => {
                if let Some(target) = doc.pointer_mut(&pointer) {
                    *target = value;
                }
            }
            Spoil::Remove => match doc.pointer_mut(parent) {
                Some(Json::Object(members)) => {
                    members.remove(last);
                }
                Some(Json::Array(items)) => {
                    if let Ok(i) = last.parse::<usize>()
                        && i < items.len()
                    {
                        items.remove(i);
                    }
                }
                _ => {}
            },
            Spoil::AddUnknown => match doc.pointer_mut(&pointer) {
                Some(Json::Object(members)) => {
                    members.insert("unknownMember".into(), json!(1));
                }
                Some(other) => *other = json!({"unknownMember": 1}),
                None => {}
            },
        }
    }
    doc
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_input_is_valid_and_round_trips_or_names_a_member(
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
        text in "[\\[\\]{}\":,0-9a-z\\\\ .-]{0,300}",
    ) {
        check_document(&key(), &bytes)?;
        check_file(&bytes)?;
        check_document(&key(), text.as_bytes())?;
        check_file(text.as_bytes())?;
        check_file(format!("{{\"exports\":[{text}]}}").as_bytes())?;
    }

    #[test]
    fn spoiled_documents_are_valid_and_round_trip_or_name_a_member(
        export in valid_export(),
        spoils in spoils(),
    ) {
        let doc: Json = serde_json::from_str(&export_document_json(&export)).expect("JSON");
        let doc = spoiled(doc, spoils);
        check_document(&export.key, doc.to_string().as_bytes())?;
    }

    #[test]
    fn spoiled_files_keep_good_entries_and_locate_problems(
        exports in proptest::collection::vec(valid_export(), 1..4),
        spoils in spoils(),
    ) {
        let file: Json = serde_json::from_str(&export_file_json(&exports)).expect("JSON");
        let file = spoiled(file, spoils);
        check_file(file.to_string().as_bytes())?;
        check_file(serde_json::to_string_pretty(&file).expect("JSON").as_bytes())?;
    }

    #[test]
    fn only_canonical_etcd_keys_name_services(
        text in prop_oneof!["[a-z0-9/_-]{0,30}", "\\PC{0,40}"],
        prefixed in any::<bool>(),
    ) {
        let prefix = "/federator/exports/";
        let etcd_key = if prefixed { format!("{prefix}{text}") } else { text };
        match key_from_etcd_key(prefix, &etcd_key) {
            Ok(service) => {
                prop_assert_eq!(service.validate(), Ok(()));
                prop_assert_eq!(format!("{prefix}{service}"), etcd_key.clone());
                prop_assert_eq!(key_from_etcd_key("/federator/exports", &etcd_key), Ok(service));
            }
            Err(error) => {
                let message = error.to_string();
                prop_assert!(message.starts_with("key "), "{message:?}");
            }
        }
    }
}
