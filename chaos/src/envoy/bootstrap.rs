//! The bootstrap of a sidecar Envoy ([`bootstrap`]): its listener and clusters as JSON,
//! fed by the agent's xDS server (state of the world, one service per type) and by the
//! SVID secret file beside it.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{CLIENT_CLUSTER, LOCAL_CLUSTER, SVID_SECRET, Sidecar, XDS_CLUSTER};

/// A config source on the agent's xDS server: state-of-the-world gRPC, one service per
/// resource type (the agent serves no ADS and no delta xDS).
fn agent_source() -> Value {
    json!({
        "resource_api_version": "V3",
        "initial_fetch_timeout": "10s",
        "api_config_source": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{ "envoy_grpc": { "cluster_name": XDS_CLUSTER } }],
            "set_node_on_first_message_only": true,
        },
    })
}

/// The sidecar's own SVID from the secret file in `svid_dir`, reloaded when a file is
/// moved into that directory.
fn svid_source(svid_dir: &Path) -> Value {
    json!([{
        "name": SVID_SECRET,
        "sds_config": {
            "resource_api_version": "V3",
            "path_config_source": {
                "path": svid_dir.join("svid.json"),
                "watched_directory": { "path": svid_dir },
            },
        },
    }])
}

fn socket_address(addr: &str) -> anyhow::Result<Value> {
    let addr: SocketAddr = addr.parse().with_context(|| format!("not an address: {addr}"))?;
    if !addr.ip().is_loopback() {
        bail!("{addr}: sidecars use loopback addresses only");
    }
    Ok(json!({ "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } }))
}

fn static_cluster(name: &str, addr: &str, http2: bool) -> anyhow::Result<Value> {
    let mut cluster = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket_address(addr)? } }] }],
        },
    });
    if http2 {
        cluster["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} },
            },
        });
    }
    Ok(cluster)
}

fn http_connection_manager(stat_prefix: &str, cluster: &str, extra: Value) -> Value {
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "route_config": {
            "name": "local",
            "virtual_hosts": [{
                "name": "all",
                "domains": ["*"],
                "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": cluster, "timeout": "5s" } }],
            }],
        },
        "http_filters": [{
            "name": "envoy.filters.http.router",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
        }],
    });
    if let (Some(hcm), Value::Object(extra)) = (hcm.as_object_mut(), extra) {
        hcm.extend(extra);
    }
    json!({ "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm })
}

/// The bootstrap of Envoy `name` (its node id) as `sidecar`, its SVID secret file in
/// `svid_dir`; an ADS sidecar's is the one it was given.
pub(super) fn bootstrap(name: &str, sidecar: &Sidecar, svid_dir: &Path) -> anyhow::Result<Value> {
    let (listener, clusters) = match sidecar {
        Sidecar::Ads(ads) => return Ok(ads.bootstrap.clone()),
        Sidecar::Server(server) => {
            let tls = json!({
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": true,
                    "common_tls_context": {
                        "tls_certificate_sds_secret_configs": svid_source(svid_dir),
                        "validation_context_sds_secret_config": {
                            "name": server.validation_secret,
                            "sds_config": agent_source(),
                        },
                    },
                },
            });
            // The verified client's SPIFFE ID and certificate hash go to the service; a
            // header the client sent itself is replaced.
            let hcm = http_connection_manager(
                "inbound",
                LOCAL_CLUSTER,
                json!({
                    "forward_client_cert_details": "SANITIZE_SET",
                    "set_current_client_cert_details": { "uri": true },
                }),
            );
            let listener = json!({
                "name": "inbound",
                "address": socket_address(&format!("127.0.0.1:{}", server.listen_port))?,
                "filter_chains": [{ "transport_socket": tls, "filters": [hcm] }],
            });
            let clusters = vec![
                static_cluster(LOCAL_CLUSTER, &server.upstream.to_string(), false)?,
                static_cluster(XDS_CLUSTER, &server.xds_addr, true)?,
            ];
            (listener, clusters)
        }
        Sidecar::Client(client) => {
            let sans: Vec<Value> = client
                .upstream_ids
                .iter()
                .map(|id| json!({ "san_type": "URI", "matcher": { "exact": id } }))
                .collect();
            let tls = json!({
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "common_tls_context": {
                        "tls_certificate_sds_secret_configs": svid_source(svid_dir),
                        "combined_validation_context": {
                            "default_validation_context": { "match_typed_subject_alt_names": sans },
                            "validation_context_sds_secret_config": {
                                "name": client.validation_secret,
                                "sds_config": agent_source(),
                            },
                        },
                    },
                },
            });
            let imported = json!({
                "name": CLIENT_CLUSTER,
                "type": "EDS",
                "connect_timeout": "1s",
                "eds_cluster_config": {
                    "service_name": client.eds_service,
                    "eds_config": agent_source(),
                },
                // One request per connection: every call is a new mTLS handshake.
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "common_http_protocol_options": { "max_requests_per_connection": 1 },
                        "explicit_http_config": { "http_protocol_options": {} },
                    },
                },
                "transport_socket": tls,
            });
            let hcm = http_connection_manager("outbound", CLIENT_CLUSTER, json!({}));
            let listener = json!({
                "name": "outbound",
                "address": socket_address(&format!("127.0.0.1:{}", client.listen_port))?,
                "filter_chains": [{ "filters": [hcm] }],
            });
            (listener, vec![imported, static_cluster(XDS_CLUSTER, &client.xds_addr, true)?])
        }
    };
    Ok(json!({
        "node": { "id": name, "cluster": name },
        "admin": { "address": socket_address("127.0.0.1:0")? },
        "static_resources": { "listeners": [listener], "clusters": clusters },
    }))
}
