use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{DataSource, HealthStatus, Node};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LbEndpoint, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::protocol::{Kind, Snapshot, Subscription};
use super::resources::{
    self, LOAD_ASSIGNMENT_TYPE_URL, SECRET_ALL, SECRET_ROOTCA, SECRET_TYPE_URL, SPIFFE_VALIDATOR,
};
use super::{XdsServer, XdsSink};
use crate::agent::view::{AgentView, Sink as _};
use crate::bundle::{TrustBundle, ValidationPolicy};
use crate::identity::FederationCa;
use crate::service::{
    EndpointPort, ImportEndpoint, ImportedCluster, Protocol, ServiceImport, ServiceKey, ServicePort,
};

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(300);

// === fixtures ===

fn bundle(td: &str) -> TrustBundle {
    let ca = FederationCa::generate(td, td, Duration::from_secs(86_400)).expect("ca");
    let policy = ValidationPolicy::at(crate::clock::unix_now());
    crate::bundle::parse_pem_bundle(td, ca.cert_pem().as_bytes(), 1, None, &policy).expect("bundle")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

fn endpoint(address: &str, priority: u32, zone: &str, ready: bool) -> ImportEndpoint {
    ImportEndpoint {
        address: ip(address),
        ports: Vec::new(),
        zone: zone.into(),
        region: if priority < 2 { "r1".into() } else { "r2".into() },
        weight: 1,
        ready,
        priority,
    }
}

fn port(name: &str, number: u16) -> ServicePort {
    ServicePort {
        name: name.into(),
        port: number,
        protocol: Protocol::Tcp,
        app_protocol: String::new(),
    }
}

fn import(name: &str, ports: Vec<ServicePort>, clusters: Vec<ImportedCluster>) -> ServiceImport {
    let key = ServiceKey::new("shop", name);
    ServiceImport {
        hostname: key.hostname(),
        key,
        ports,
        identities: vec![format!("spiffe://b.test/ns/shop/sa/{name}")],
        clusters,
        conditions: Vec::new(),
        revision: 1,
    }
}

fn cluster(name: &str, endpoints: Vec<ImportEndpoint>) -> ImportedCluster {
    ImportedCluster {
        cluster: name.into(),
        trust_domain: format!("{name}.test"),
        live: true,
        via_gateway: false,
        identities: vec![format!("spiffe://{name}.test/ns/shop/sa/cart")],
        endpoints,
    }
}

/// Own trust domain `a.test`, federated `b.test` and `c.test`; imports `cart` (one
/// port, endpoints in three priorities) and `api` (two ports, one endpoint overriding
/// the `grpc` port).
pub(super) fn view() -> AgentView {
    let own = bundle("a.test");
    let bundles: BTreeMap<String, TrustBundle> =
        ["b.test", "c.test"].into_iter().map(|td| (td.to_string(), bundle(td))).collect();
    let cart = import(
        "cart",
        vec![port("", 8080)],
        vec![
            cluster(
                "b",
                vec![
                    endpoint("127.0.1.1", 0, "z1", true),
                    endpoint("127.0.1.2", 0, "z1", false),
                    endpoint("127.0.1.3", 1, "z2", true),
                ],
            ),
            cluster("c", vec![endpoint("127.0.2.1", 2, "z9", true)]),
        ],
    );
    let mut overriding = endpoint("127.0.3.2", 0, "z1", true);
    overriding.ports = vec![EndpointPort { name: "grpc".into(), port: 19090 }];
    overriding.weight = 5;
    let api = import(
        "api",
        vec![port("http", 80), port("grpc", 9090)],
        vec![cluster("b", vec![endpoint("127.0.3.1", 0, "z1", true), overriding])],
    );
    AgentView {
        revision: 7,
        cluster: "a".into(),
        trust_domain: "a.test".into(),
        own_bundle: Some(own),
        bundles,
        imports: [(cart.key.clone(), cart), (api.key.clone(), api)].into_iter().collect(),
        held_own_bundle: None,
    }
}

fn validation_context(secret: &Secret) -> &CertificateValidationContext {
    match &secret.r#type {
        Some(secret::Type::ValidationContext(context)) => context,
        other => panic!("not a validation context: {other:?}"),
    }
}

fn inline_text(source: Option<&DataSource>) -> String {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::InlineBytes(bytes)) => String::from_utf8(bytes.clone()).expect("utf-8"),
        other => panic!("not inline bytes: {other:?}"),
    }
}

fn spiffe_config(secret: &Secret) -> SpiffeCertValidatorConfig {
    let custom = validation_context(secret).custom_validator_config.as_ref().expect("custom");
    assert_eq!(custom.name, SPIFFE_VALIDATOR);
    let any = custom.typed_config.as_ref().expect("typed config");
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"
    );
    SpiffeCertValidatorConfig::decode(any.value.as_slice()).expect("decodes")
}

fn decode_secret(any: &Any) -> Secret {
    assert_eq!(any.type_url, SECRET_TYPE_URL);
    Secret::decode(any.value.as_slice()).expect("secret")
}

fn decode_cla(any: &Any) -> ClusterLoadAssignment {
    assert_eq!(any.type_url, LOAD_ASSIGNMENT_TYPE_URL);
    ClusterLoadAssignment::decode(any.value.as_slice()).expect("cla")
}

fn socket(lb: &LbEndpoint) -> (String, u32) {
    let Some(HostIdentifier::Endpoint(endpoint)) = &lb.host_identifier else {
        panic!("no endpoint")
    };
    let Some(AddressKind::SocketAddress(socket)) =
        endpoint.address.as_ref().and_then(|a| a.address.as_ref())
    else {
        panic!("no socket address")
    };
    let Some(PortSpecifier::PortValue(port)) = socket.port_specifier else { panic!("no port") };
    (socket.address.clone(), port)
}

// === secrets ===

#[test]
fn all_is_a_spiffe_validator_with_every_trust_domain() {
    let view = view();
    let secrets = resources::secrets(&view);
    let all = &secrets[SECRET_ALL];
    assert_eq!(all.name, "ALL");
    let config = spiffe_config(all);
    assert!(config.trust_bundles.is_none());
    let names: Vec<&str> = config.trust_domains.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a.test", "b.test", "c.test"]);
    for td in &config.trust_domains {
        let expected = view.all_bundles()[td.name.as_str()].to_pem();
        assert_eq!(inline_text(td.trust_bundle.as_ref()), expected);
        assert!(expected.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(td.workload_trust_domain.is_empty());
    }
    // Nothing else in the context: the SPIFFE validator does all the work.
    let context = validation_context(all);
    assert!(context.trusted_ca.is_none());
}

#[test]
fn rootca_and_per_trust_domain_secrets_are_plain_trusted_cas() {
    let view = view();
    let secrets = resources::secrets(&view);
    let names: Vec<&str> = secrets.keys().map(String::as_str).collect();
    assert_eq!(names, ["ALL", "ROOTCA", "spiffe://a.test", "spiffe://b.test", "spiffe://c.test"]);
    let own_pem = view.own_bundle.as_ref().expect("own").to_pem();
    let rootca = &secrets[SECRET_ROOTCA];
    assert_eq!(rootca.name, "ROOTCA");
    assert_eq!(inline_text(validation_context(rootca).trusted_ca.as_ref()), own_pem);
    for td in ["a.test", "b.test", "c.test"] {
        let name = resources::trust_domain_secret_name(td);
        let secret = &secrets[&name];
        assert_eq!(secret.name, name);
        let context = validation_context(secret);
        assert!(context.custom_validator_config.is_none());
        assert_eq!(inline_text(context.trusted_ca.as_ref()), view.all_bundles()[td].to_pem());
    }
}

#[test]
fn bundles_without_x509_authorities_yield_no_secret() {
    let mut view = view();
    view.own_bundle = None;
    view.bundles.get_mut("c.test").expect("c").x509_authorities.clear();
    let secrets = resources::secrets(&view);
    let names: Vec<&str> = secrets.keys().map(String::as_str).collect();
    assert_eq!(names, ["ALL", "spiffe://b.test"]);
    let config = spiffe_config(&secrets[SECRET_ALL]);
    assert_eq!(config.trust_domains.len(), 1);
    assert_eq!(config.trust_domains[0].name, "b.test");

    view.bundles.clear();
    assert!(resources::secrets(&view).is_empty(), "no ALL without any trust domain");
}

// === endpoints ===

#[test]
fn load_assignments_group_by_priority_and_locality() {
    let view = view();
    let assignments = resources::load_assignments(&view);
    let names: Vec<&str> = assignments.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "api.shop.svc.clusterset.local",
            "api.shop.svc.clusterset.local:grpc",
            "api.shop.svc.clusterset.local:http",
            "cart.shop.svc.clusterset.local",
        ]
    );
    let cart = &assignments["cart.shop.svc.clusterset.local"];
    assert_eq!(cart.cluster_name, "cart.shop.svc.clusterset.local");
    let groups: Vec<(u32, &str, &str, usize)> = cart
        .endpoints
        .iter()
        .map(|g| {
            let locality = g.locality.as_ref().expect("locality");
            (g.priority, locality.region.as_str(), locality.zone.as_str(), g.lb_endpoints.len())
        })
        .collect();
    assert_eq!(groups, [(0, "r1", "z1", 2), (1, "r1", "z2", 1), (2, "r2", "z9", 1)]);

    let same_zone = &cart.endpoints[0];
    assert_eq!(same_zone.load_balancing_weight.as_ref().map(|w| w.value), Some(2));
    let health: Vec<(String, u32, i32, Option<u32>)> = same_zone
        .lb_endpoints
        .iter()
        .map(|lb| {
            let (address, port) = socket(lb);
            (address, port, lb.health_status, lb.load_balancing_weight.as_ref().map(|w| w.value))
        })
        .collect();
    assert_eq!(
        health,
        [
            ("127.0.1.1".to_string(), 8080, HealthStatus::Healthy as i32, Some(1)),
            ("127.0.1.2".to_string(), 8080, HealthStatus::Unhealthy as i32, Some(1)),
        ]
    );
    assert_eq!(socket(&cart.endpoints[2].lb_endpoints[0]), ("127.0.2.1".to_string(), 8080));
}

#[test]
fn each_endpoint_names_its_exporter_for_transport_socket_matches() {
    use envoy_types::pb::google::protobuf::value::Kind;
    let view = view();
    let assignments = resources::load_assignments(&view);
    let cart = &assignments["cart.shop.svc.clusterset.local"];
    let mut exporters = Vec::new();
    for lb in cart.endpoints.iter().flat_map(|g| &g.lb_endpoints) {
        let metadata = lb.metadata.as_ref().expect("metadata");
        let matched = &metadata.filter_metadata[resources::TRANSPORT_SOCKET_MATCH].fields;
        let Some(Kind::StringValue(td)) = &matched[resources::EXPORTER_TRUST_DOMAIN].kind else {
            panic!("{matched:?}")
        };
        exporters.push(td.clone());
    }
    exporters.dedup();
    assert_eq!(exporters, ["b.test", "c.test"], "each endpoint names its own exporter");
    // The same view encodes to the same bytes (no spurious pushes to Envoy).
    let again = resources::load_assignments(&view);
    use prost::Message as _;
    assert_eq!(again["cart.shop.svc.clusterset.local"].encode_to_vec(), cart.encode_to_vec());
}

#[test]
fn each_named_port_gets_its_own_assignment_with_overridden_ports() {
    let view = view();
    let assignments = resources::load_assignments(&view);
    let ports = |name: &str| -> Vec<(String, u32)> {
        assignments[name].endpoints.iter().flat_map(|g| &g.lb_endpoints).map(socket).collect()
    };
    let first = ports("api.shop.svc.clusterset.local");
    assert_eq!(first, [("127.0.3.1".to_string(), 80), ("127.0.3.2".to_string(), 80)]);
    assert_eq!(ports("api.shop.svc.clusterset.local:http"), first);
    assert_eq!(
        ports("api.shop.svc.clusterset.local:grpc"),
        [("127.0.3.1".to_string(), 9090), ("127.0.3.2".to_string(), 19090)]
    );
    assert_eq!(
        assignments["api.shop.svc.clusterset.local:grpc"].cluster_name,
        "api.shop.svc.clusterset.local:grpc"
    );
    let weights: Vec<u32> = assignments["api.shop.svc.clusterset.local"].endpoints[0]
        .lb_endpoints
        .iter()
        .filter_map(|lb| lb.load_balancing_weight.as_ref().map(|w| w.value))
        .collect();
    assert_eq!(weights, [1, 5]);
}

#[test]
fn sctp_ports_yield_no_assignment() {
    let mut view = view();
    let api = view.imports.get_mut(&ServiceKey::new("shop", "api")).expect("api");
    api.ports[1].protocol = Protocol::Sctp;
    let names: Vec<String> = resources::load_assignments(&view).into_keys().collect();
    assert!(names.contains(&"api.shop.svc.clusterset.local:http".to_string()));
    assert!(!names.contains(&"api.shop.svc.clusterset.local:grpc".to_string()));
}

// === protocol ===

fn request(kind: Kind, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: kind.type_url().into(),
        resource_names: names.iter().map(|n| (*n).to_string()).collect(),
        node: Some(Node { id: "sidecar~127.0.0.1~test".into(), ..Default::default() }),
        ..Default::default()
    }
}

fn ack(kind: Kind, names: &[&str], response: &DiscoveryResponse) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: response.version_info.clone(),
        response_nonce: response.nonce.clone(),
        ..request(kind, names)
    }
}

fn nack(kind: Kind, names: &[&str], kept: &str, response: &DiscoveryResponse) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: kept.into(),
        response_nonce: response.nonce.clone(),
        error_detail: Some(rpc::Status { code: 3, message: "rejected".into(), details: vec![] }),
        ..request(kind, names)
    }
}

#[test]
fn protocol_answers_requests_and_pushes_changes_only() {
    let mut view = view();
    let snapshot = Snapshot::from_view(&view);
    let mut sub = Subscription::new(Kind::Secrets);
    let names = ["ALL", "spiffe://nowhere.test"];

    let first =
        sub.on_request(request(Kind::Secrets, &names), &snapshot).expect("ok").expect("sent");
    assert_eq!(first.type_url, SECRET_TYPE_URL);
    assert!(first.version_info.starts_with("7-"), "{}", first.version_info);
    assert_eq!(first.resources.len(), 1, "unknown names get no resource");
    assert_eq!(decode_secret(&first.resources[0]).name, "ALL");

    // ACK: nothing until a change; the same content again is no change.
    assert!(sub.on_request(ack(Kind::Secrets, &names, &first), &snapshot).expect("ok").is_none());
    view.revision = 8;
    assert!(sub.on_change(&Snapshot::from_view(&view)).is_none());
    // A change elsewhere (an import) does not concern this stream either.
    view.imports.clear();
    assert!(sub.on_change(&Snapshot::from_view(&view)).is_none());

    // A new trust domain changes ALL.
    view.bundles.insert("d.test".into(), bundle("d.test"));
    view.revision = 9;
    let changed = Snapshot::from_view(&view);
    let second = sub.on_change(&changed).expect("pushed");
    assert!(second.version_info.starts_with("9-"));
    assert_ne!(second.nonce, first.nonce);
    assert_eq!(spiffe_config(&decode_secret(&second.resources[0])).trust_domains.len(), 4);

    // A request carrying an old nonce is stale.
    assert!(sub.on_request(ack(Kind::Secrets, &names, &first), &changed).expect("ok").is_none());
    // NACK: logged, nothing resent; the next change is pushed.
    let rejected = nack(Kind::Secrets, &names, &first.version_info, &second);
    assert!(sub.on_request(rejected, &changed).expect("ok").is_none());
    view.bundles.remove("d.test");
    let third = sub.on_change(&Snapshot::from_view(&view)).expect("pushed after a NACK");
    assert_eq!(
        third.version_info.split_once('-').map(|v| v.1),
        first.version_info.split_once('-').map(|v| v.1)
    );

    // Subscribing to more names answers at once.
    let more = ["ALL", "ROOTCA"];
    let fourth =
        sub.on_request(ack(Kind::Secrets, &more, &third), &changed).expect("ok").expect("sent");
    let sent: Vec<String> = fourth.resources.iter().map(|a| decode_secret(a).name).collect();
    assert_eq!(sent, ["ALL", "ROOTCA"]);

    // Another resource type is refused.
    assert!(sub.on_request(request(Kind::Endpoints, &["x"]), &changed).is_err());
}

#[test]
fn protocol_waits_for_unknown_names_and_empties_removed_clusters() {
    let mut view = view();
    let mut sub = Subscription::new(Kind::Endpoints);
    let names = ["cart.shop.svc.clusterset.local", "later.shop.svc.clusterset.local"];
    view.imports.remove(&ServiceKey::new("shop", "cart"));
    let empty = Snapshot::from_view(&view);
    assert!(sub.on_request(request(Kind::Endpoints, &names), &empty).expect("ok").is_none());

    let full = Snapshot::from_view(&super::tests::view());
    let first = sub.on_change(&full).expect("sent when it appears");
    assert_eq!(first.resources.len(), 1);
    assert_eq!(decode_cla(&first.resources[0]).endpoints.len(), 3);
    assert!(sub.on_request(ack(Kind::Endpoints, &names, &first), &full).expect("ok").is_none());

    // Removed: an assignment without endpoints, so Envoy drops the stale ones.
    let removed = sub.on_change(&empty).expect("pushed");
    let cla = decode_cla(&removed.resources[0]);
    assert_eq!(cla.cluster_name, "cart.shop.svc.clusterset.local");
    assert!(cla.endpoints.is_empty());
    assert!(sub.on_change(&empty).is_none());
}

#[test]
fn fetch_answers_even_with_nothing() {
    let snapshot = Snapshot::from_view(&view());
    let response = super::protocol::fetch(
        Kind::Endpoints,
        request(Kind::Endpoints, &["cart.shop.svc.clusterset.local"]),
        &snapshot,
    )
    .expect("ok");
    assert_eq!(response.resources.len(), 1);
    let none = super::protocol::fetch(Kind::Secrets, request(Kind::Secrets, &["nope"]), &snapshot)
        .expect("ok");
    assert!(none.resources.is_empty());
    assert!(none.version_info.starts_with("7-"));
}

// === over gRPC ===

async fn next(stream: &mut tonic::Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a response in time")
        .expect("stream ok")
        .expect("stream open")
}

async fn quiet(stream: &mut tonic::Streaming<DiscoveryResponse>) {
    if let Ok(message) = tokio::time::timeout(QUIET, stream.message()).await {
        panic!("expected nothing, got {message:?}");
    }
}

async fn apply(sink: &XdsSink, view: &AgentView) {
    tokio::time::timeout(WAIT, sink.apply(view)).await.expect("in time").expect("applied");
}

#[tokio::test]
async fn grpc_streams_answer_ack_nack_and_push() {
    let server = XdsServer::new();
    let sink = server.sink();
    assert_eq!(sink.name(), "xds");
    let mut view = view();
    apply(&sink, &view).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(server.serve(listener, async {
        let _ = stop_rx.await;
    }));

    let url = format!("http://{addr}");
    let mut sds = tokio::time::timeout(WAIT, SecretDiscoveryServiceClient::connect(url.clone()))
        .await
        .expect("in time")
        .expect("connect");
    let mut eds = tokio::time::timeout(WAIT, EndpointDiscoveryServiceClient::connect(url))
        .await
        .expect("in time")
        .expect("connect");

    // SDS: ALL.
    let (sds_tx, sds_rx) = mpsc::channel(8);
    sds_tx.send(request(Kind::Secrets, &["ALL"])).await.expect("send");
    let mut secrets = tokio::time::timeout(WAIT, sds.stream_secrets(ReceiverStream::new(sds_rx)))
        .await
        .expect("in time")
        .expect("stream")
        .into_inner();
    let first = next(&mut secrets).await;
    assert_eq!(first.type_url, SECRET_TYPE_URL);
    let all = decode_secret(&first.resources[0]);
    assert_eq!(all.name, "ALL");
    assert_eq!(spiffe_config(&all).trust_domains.len(), 3);
    sds_tx.send(ack(Kind::Secrets, &["ALL"], &first)).await.expect("ack");

    // EDS: cart.
    let cart = ["cart.shop.svc.clusterset.local"];
    let (eds_tx, eds_rx) = mpsc::channel(8);
    eds_tx.send(request(Kind::Endpoints, &cart)).await.expect("send");
    let mut endpoints =
        tokio::time::timeout(WAIT, eds.stream_endpoints(ReceiverStream::new(eds_rx)))
            .await
            .expect("in time")
            .expect("stream")
            .into_inner();
    let eds_first = next(&mut endpoints).await;
    let cla = decode_cla(&eds_first.resources[0]);
    assert_eq!(cla.cluster_name, cart[0]);
    assert_eq!(cla.endpoints[0].lb_endpoints[0].health_status, HealthStatus::Healthy as i32);
    eds_tx.send(ack(Kind::Endpoints, &cart, &eds_first)).await.expect("ack");
    quiet(&mut secrets).await;
    quiet(&mut endpoints).await;

    // A changed view: a fourth trust domain, and cart's nearest endpoint goes unready.
    view.revision = 8;
    view.bundles.insert("d.test".into(), bundle("d.test"));
    let key = ServiceKey::new("shop", "cart");
    view.imports.get_mut(&key).expect("cart").clusters[0].endpoints[0].ready = false;
    apply(&sink, &view).await;
    let pushed = next(&mut secrets).await;
    assert!(pushed.version_info.starts_with("8-"));
    assert_eq!(spiffe_config(&decode_secret(&pushed.resources[0])).trust_domains.len(), 4);
    let eds_pushed = next(&mut endpoints).await;
    let cla = decode_cla(&eds_pushed.resources[0]);
    assert_eq!(cla.endpoints[0].lb_endpoints[0].health_status, HealthStatus::Unhealthy as i32);
    eds_tx.send(ack(Kind::Endpoints, &cart, &eds_pushed)).await.expect("ack");

    // NACK the secret: nothing is resent, the stream lives on and gets the next change.
    sds_tx.send(nack(Kind::Secrets, &["ALL"], &first.version_info, &pushed)).await.expect("nack");
    quiet(&mut secrets).await;
    view.revision = 9;
    view.bundles.remove("c.test");
    apply(&sink, &view).await;
    let after_nack = next(&mut secrets).await;
    let names: Vec<String> = spiffe_config(&decode_secret(&after_nack.resources[0]))
        .trust_domains
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["a.test", "b.test", "d.test"]);
    // Endpoints did not change: no push on EDS.
    quiet(&mut endpoints).await;

    // Unary fetch.
    let fetched = tokio::time::timeout(
        WAIT,
        sds.fetch_secrets(request(Kind::Secrets, &["spiffe://b.test", "ROOTCA"])),
    )
    .await
    .expect("in time")
    .expect("fetch")
    .into_inner();
    let names: Vec<String> = fetched.resources.iter().map(|a| decode_secret(a).name).collect();
    assert_eq!(names, ["ROOTCA", "spiffe://b.test"]);

    // A wrong type URL ends that stream with INVALID_ARGUMENT.
    let (bad_tx, bad_rx) = mpsc::channel(1);
    bad_tx.send(request(Kind::Endpoints, &cart)).await.expect("send");
    let mut bad = tokio::time::timeout(WAIT, sds.stream_secrets(ReceiverStream::new(bad_rx)))
        .await
        .expect("in time")
        .expect("stream")
        .into_inner();
    let status =
        tokio::time::timeout(WAIT, bad.message()).await.expect("in time").expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // Shutdown ends the open streams and the server.
    let _ = stop_tx.send(());
    let end = tokio::time::timeout(WAIT, secrets.message()).await.expect("stream ends in time");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    tokio::time::timeout(WAIT, server)
        .await
        .expect("server stops in time")
        .expect("joined")
        .expect("served");
    drop((sds_tx, eds_tx));
}

#[tokio::test]
async fn serves_on_a_unix_socket() {
    use hyper_util::rt::TokioIo;

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("xds.sock");
    let server = XdsServer::new();
    apply(&server.sink(), &view()).await;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve_unix(path.clone(), async {
        let _ = stop_rx.await;
    }));
    tokio::time::timeout(WAIT, async {
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("socket appears");

    let connect_path = path.clone();
    let endpoint = tonic::transport::Endpoint::from_static("http://127.0.0.1:1");
    let channel = endpoint.connect_with_connector(tower::service_fn(move |_: http::Uri| {
        let path = connect_path.clone();
        async move {
            Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
        }
    }));
    let channel = tokio::time::timeout(WAIT, channel).await.expect("in time").expect("connect");
    let mut eds = EndpointDiscoveryServiceClient::new(channel);
    let fetched = tokio::time::timeout(
        WAIT,
        eds.fetch_endpoints(request(Kind::Endpoints, &["cart.shop.svc.clusterset.local"])),
    )
    .await
    .expect("in time")
    .expect("fetch")
    .into_inner();
    assert_eq!(decode_cla(&fetched.resources[0]).cluster_name, "cart.shop.svc.clusterset.local");

    let _ = stop_tx.send(());
    tokio::time::timeout(WAIT, task).await.expect("stops").expect("joined").expect("served");
    assert!(!path.exists(), "socket removed");
}
