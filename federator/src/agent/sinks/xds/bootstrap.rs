//! The Envoy bootstrap that takes everything else from the agent's xDS server over one
//! ADS stream: `federator agent envoy-bootstrap` prints it.
//!
//! It holds only what Envoy cannot discover: its node, its admin listener, the static
//! cluster of the agent's xDS server (HTTP/2, plain text on loopback or a unix socket),
//! optionally the cluster of the SDS server of the workload's SVID (the SPIRE agent's
//! socket), and `dynamic_resources` naming ADS for clusters and listeners. Clusters,
//! endpoints, secrets, the egress listener and its routes all arrive by ADS.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::{Value, json};

use super::mesh::{CertificateSource, MeshSettings};

/// Name of the agent's xDS server's cluster in the bootstrap.
pub const AGENT_XDS_CLUSTER: &str = "federator_agent";

/// What the bootstrap is for.
#[derive(Clone, Debug)]
pub struct BootstrapOptions<'a> {
    /// Envoy's node id (and node cluster).
    pub node_id: &'a str,
    /// The agent's xDS server.
    pub xds: SocketAddr,
    /// Envoy's admin listener.
    pub admin: SocketAddr,
    /// Incremental xDS (`DELTA_GRPC`) instead of state of the world.
    pub delta: bool,
    /// The unix socket of the SDS server of the workload's SVID, when the mesh settings
    /// name one by its bootstrap cluster (the SPIRE agent's Workload API socket).
    pub certificate_sds_socket: Option<&'a Path>,
}

fn socket_address(addr: SocketAddr) -> Value {
    json!({ "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } })
}

fn http2_cluster(name: &str, address: Value) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": address } }] }],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} },
            },
        },
    })
}

/// Why no bootstrap could be written.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The SVID comes from a bootstrap cluster whose SDS socket was not given.
    #[error(
        "[sinks.xds.clusters] takes the SVID from the bootstrap cluster {0:?}: give its SDS \
         server's unix socket with --certificate-sds-socket (the SPIRE agent's, e.g. \
         /run/spire/sockets/agent.sock)"
    )]
    NoCertificateSocket(String),
}

/// The bootstrap (Envoy's JSON form).
///
/// # Errors
/// The mesh settings take the SVID from a bootstrap cluster and no socket was given for
/// it ([`BootstrapError::NoCertificateSocket`]).
pub fn envoy_bootstrap(
    options: &BootstrapOptions<'_>,
    mesh: Option<&MeshSettings>,
) -> Result<Value, BootstrapError> {
    let mut clusters = vec![http2_cluster(AGENT_XDS_CLUSTER, socket_address(options.xds))];
    if let Some(MeshSettings { certificate: CertificateSource::Sds { cluster, .. }, .. }) = mesh {
        let socket = options
            .certificate_sds_socket
            .ok_or_else(|| BootstrapError::NoCertificateSocket(cluster.clone()))?;
        clusters.push(http2_cluster(cluster, json!({ "pipe": { "path": socket } })));
    }
    let api_type = if options.delta { "DELTA_GRPC" } else { "GRPC" };
    let ads = json!({ "ads": {}, "resource_api_version": "V3" });
    Ok(json!({
        "node": { "id": options.node_id, "cluster": options.node_id },
        "admin": { "address": socket_address(options.admin) },
        "static_resources": { "clusters": clusters },
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{ "envoy_grpc": { "cluster_name": AGENT_XDS_CLUSTER } }],
                "set_node_on_first_message_only": true,
            },
            "cds_config": ads,
            "lds_config": ads,
        },
    }))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn options(delta: bool) -> BootstrapOptions<'static> {
        BootstrapOptions {
            node_id: "sidecar-a",
            xds: "127.0.0.1:18000".parse().expect("addr"),
            admin: "127.0.0.1:9901".parse().expect("addr"),
            delta,
            certificate_sds_socket: None,
        }
    }

    #[test]
    fn the_bootstrap_names_ads_for_everything() {
        let value = envoy_bootstrap(&options(false), None).expect("bootstrap");
        let dynamic = &value["dynamic_resources"];
        assert_eq!(dynamic["ads_config"]["api_type"], "GRPC");
        assert_eq!(dynamic["cds_config"]["ads"], json!({}));
        assert_eq!(dynamic["lds_config"]["ads"], json!({}));
        let clusters = value["static_resources"]["clusters"].as_array().expect("clusters");
        assert_eq!(clusters.len(), 1);
        assert_eq!(clusters[0]["name"], AGENT_XDS_CLUSTER);
        let delta = envoy_bootstrap(&options(true), None).expect("bootstrap");
        assert_eq!(delta["dynamic_resources"]["ads_config"]["api_type"], "DELTA_GRPC");
    }

    #[test]
    fn an_svid_from_an_sds_cluster_needs_its_socket() {
        let mesh = MeshSettings::new(CertificateSource::Sds {
            cluster: "spire_agent".into(),
            secret: "default".into(),
        });
        let err = envoy_bootstrap(&options(false), Some(&mesh)).expect_err("socket required");
        assert!(err.to_string().contains("--certificate-sds-socket"), "{err}");
        let socket = PathBuf::from("/run/spire/sockets/agent.sock");
        let with = BootstrapOptions { certificate_sds_socket: Some(&socket), ..options(false) };
        let value = envoy_bootstrap(&with, Some(&mesh)).expect("bootstrap");
        let clusters = value["static_resources"]["clusters"].as_array().expect("clusters");
        assert_eq!(clusters[1]["name"], "spire_agent");
        assert_eq!(
            clusters[1]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["pipe"]["path"],
            "/run/spire/sockets/agent.sock"
        );
    }
}
