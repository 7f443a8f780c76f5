//! A stand-in for a member cluster in tests and chaos runs: its own CA and trust domain,
//! an agent SVID, SPIFFE bundles (with CA rotation), and a federation API client that
//! authenticates with the agent's SVID.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use federator::identity::{FederationCa, IssuedCertificate};
use federator_proto::federation as pb;
use federator_proto::federation::federation_client::FederationClient;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Channel, Endpoint};

/// Validity of generated certificates.
const VALIDITY: Duration = Duration::from_secs(86_400);

/// A member cluster: trust domain, CAs (more than one during a rotation), agent SVID.
pub struct MemberCluster {
    /// Cluster name.
    pub name: String,
    /// Trust domain.
    pub trust_domain: String,
    /// CAs in the current bundle, oldest first.
    cas: Vec<FederationCa>,
    /// The agent's SVID, issued by the newest CA that signs.
    agent: IssuedCertificate,
    /// Sequence of the last bundle built.
    pub sequence: u64,
}

impl MemberCluster {
    /// A new cluster with one CA and an agent SVID `spiffe://<td>/federator-agent`.
    ///
    /// # Errors
    /// Certificate generation failed.
    pub fn new(name: &str, trust_domain: &str) -> anyhow::Result<Self> {
        let ca = FederationCa::generate(trust_domain, &format!("{name} CA"), VALIDITY)?;
        let agent = ca.issue(&Self::agent_id_of(trust_domain), &[], &[], VALIDITY)?;
        Ok(Self {
            name: name.into(),
            trust_domain: trust_domain.into(),
            cas: vec![ca],
            agent,
            sequence: 0,
        })
    }

    /// The agent's SPIFFE ID in `trust_domain`.
    #[must_use]
    pub fn agent_id_of(trust_domain: &str) -> String {
        format!("spiffe://{trust_domain}/federator-agent")
    }

    /// The agent's SPIFFE ID.
    #[must_use]
    pub fn agent_id(&self) -> String {
        Self::agent_id_of(&self.trust_domain)
    }

    /// The CA certificates of the current bundle, PEM.
    #[must_use]
    pub fn ca_pem(&self) -> String {
        self.cas.iter().map(FederationCa::cert_pem).collect()
    }

    /// The next SPIFFE bundle document (sequence + 1) holding the current CAs.
    ///
    /// # Errors
    /// The bundle could not be built.
    pub fn next_bundle(&mut self) -> anyhow::Result<String> {
        self.sequence += 1;
        self.bundle_at(self.sequence)
    }

    /// A SPIFFE bundle document with the current CAs at `sequence`.
    ///
    /// # Errors
    /// The bundle could not be built.
    pub fn bundle_at(&self, sequence: u64) -> anyhow::Result<String> {
        let policy = federator::bundle::ValidationPolicy::at(federator::clock::unix_now());
        let bundle = federator::bundle::parse_pem_bundle(
            &self.trust_domain,
            self.ca_pem().as_bytes(),
            sequence,
            Some(300),
            &policy,
        )
        .map_err(|e| anyhow::anyhow!("building the bundle of {}: {e}", self.trust_domain))?;
        Ok(bundle.to_spiffe_json())
    }

    /// Rotation step 1: add a new CA beside the old one (the agent keeps its SVID).
    ///
    /// # Errors
    /// Certificate generation failed.
    pub fn add_ca(&mut self) -> anyhow::Result<()> {
        let n = self.cas.len() + 1;
        self.cas.push(FederationCa::generate(
            &self.trust_domain,
            &format!("{} CA {n}", self.name),
            VALIDITY,
        )?);
        Ok(())
    }

    /// Rotation step 2: the agent gets an SVID from the newest CA, and the older CAs leave
    /// the bundle.
    ///
    /// # Errors
    /// Certificate generation failed.
    pub fn retire_old_cas(&mut self) -> anyhow::Result<()> {
        let newest = self.cas.pop().context("no CA")?;
        self.agent = newest.issue(&self.agent_id(), &[], &[], VALIDITY)?;
        self.cas = vec![newest];
        Ok(())
    }

    /// An SVID for `spiffe_id` issued by this cluster's newest CA (for tests that need a
    /// second workload or a forged identity).
    ///
    /// # Errors
    /// Certificate generation failed.
    pub fn issue(&self, spiffe_id: &str) -> anyhow::Result<IssuedCertificate> {
        let ca = self.cas.last().context("no CA")?;
        Ok(ca.issue(spiffe_id, &[], &[], VALIDITY)?)
    }

    /// The agent's SVID.
    #[must_use]
    pub fn agent_svid(&self) -> &IssuedCertificate {
        &self.agent
    }

    /// Joins `fed` through replica `via` with a fresh token and the next bundle.
    ///
    /// # Errors
    /// The token could not be made or the join was refused.
    pub async fn join(
        &mut self,
        fed: &crate::cluster::Federation,
        via: u64,
    ) -> anyhow::Result<pb::JoinResponse> {
        // Its exports' endpoints claim region-1 (see `export`): the operator binds it.
        let token =
            fed.token_with(&self.name, &self.trust_domain, "1h", &["--region", "region-1"])?;
        let bundle = self.next_bundle()?;
        let mut client = self.client(&fed.replica(via).api_addr, &fed.ca_pem()).await?;
        let request = join_request(&token, &self.trust_domain, bundle);
        Ok(client.join(request).await.context("join")?.into_inner())
    }

    /// Joins `fed` through replica `via` with a token made with more `token create`
    /// arguments (`--namespace`, `--region`, `--zone`), and the next bundle.
    ///
    /// # Errors
    /// The token could not be made or the join was refused.
    pub async fn join_with(
        &mut self,
        fed: &crate::cluster::Federation,
        via: u64,
        token_args: &[&str],
    ) -> anyhow::Result<pb::JoinResponse> {
        let token = fed.token_with(&self.name, &self.trust_domain, "1h", token_args)?;
        let bundle = self.next_bundle()?;
        let mut client = self.client(&fed.replica(via).api_addr, &fed.ca_pem()).await?;
        let request = join_request(&token, &self.trust_domain, bundle);
        Ok(client.join(request).await.context("join")?.into_inner())
    }

    /// The SPIFFE ID this cluster's workload `name` in namespace `ns` runs as.
    #[must_use]
    pub fn workload_id(&self, ns: &str, name: &str) -> String {
        format!("spiffe://{}/ns/{ns}/sa/{name}", self.trust_domain)
    }

    /// An export of `ns/name` with one `http` port and ready endpoints at `addresses`,
    /// run as this cluster's workload identity, to every member.
    #[must_use]
    pub fn export(&self, ns: &str, name: &str, port: u32, addresses: &[&str]) -> pb::ServiceExport {
        pb::ServiceExport {
            namespace: ns.into(),
            name: name.into(),
            ports: vec![pb::ServicePort {
                name: "http".into(),
                port,
                protocol: "TCP".into(),
                app_protocol: "http".into(),
            }],
            endpoints: addresses
                .iter()
                .map(|a| pb::Endpoint {
                    address: (*a).into(),
                    ports: Vec::new(),
                    zone: "zone-1".into(),
                    region: "region-1".into(),
                    weight: 1,
                    ready: true,
                })
                .collect(),
            identities: vec![self.workload_id(ns, name)],
            scope_clusters: Vec::new(),
            gateway: None,
        }
    }

    /// A federation client that presents the agent's SVID to `api_addr`, trusting
    /// `federation_ca_pem` for the server.
    ///
    /// # Errors
    /// The connection failed.
    pub async fn client(
        &self,
        api_addr: &str,
        federation_ca_pem: &str,
    ) -> anyhow::Result<FederationClient<Channel>> {
        connect_as(api_addr, federation_ca_pem, Some(&self.agent)).await
    }
}

/// A federation client presenting `svid` (or no certificate) to `api_addr`.
///
/// # Errors
/// The connection failed.
pub async fn connect_as(
    api_addr: &str,
    federation_ca_pem: &str,
    svid: Option<&IssuedCertificate>,
) -> anyhow::Result<FederationClient<Channel>> {
    Ok(FederationClient::new(channel_as(api_addr, federation_ca_pem, svid).await?))
}

/// A gRPC channel to `api_addr` presenting `svid` (or no certificate), trusting
/// `federation_ca_pem` for the server.
///
/// # Errors
/// The connection failed.
pub async fn channel_as(
    api_addr: &str,
    federation_ca_pem: &str,
    svid: Option<&IssuedCertificate>,
) -> anyhow::Result<Channel> {
    channel_from(api_addr, federation_ca_pem, svid, None).await
}

/// Like [`channel_as`], with connections made from the local address `source` (e.g.
/// another loopback address, 127.0.0.2, to act as a second network client).
///
/// # Errors
/// The connection failed.
pub async fn channel_from(
    api_addr: &str,
    federation_ca_pem: &str,
    svid: Option<&IssuedCertificate>,
    source: Option<std::net::IpAddr>,
) -> anyhow::Result<Channel> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(federation_ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match svid {
        Some(svid) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(svid.cert_pem.as_bytes())
                    .collect::<Result<_, _>>()?;
            let key = PrivateKeyDer::from_pem_slice(svid.key_pem.as_bytes())?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let endpoint = Endpoint::from_shared(format!("https://{api_addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30));
    let channel = match source {
        None => {
            endpoint.connect_with_connector(federator_raft::tls::connector(Arc::new(config))).await
        }
        Some(source) => {
            let config = Arc::new(config);
            let connector = tower::service_fn(move |uri: http::Uri| {
                let config = Arc::clone(&config);
                async move {
                    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']).to_string();
                    let port = uri.port_u16().unwrap_or(443);
                    let target: std::net::SocketAddr = format!("{host}:{port}")
                        .parse()
                        .map_err(|e| std::io::Error::other(format!("{host}:{port}: {e}")))?;
                    let socket = match source {
                        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
                    };
                    socket.bind(std::net::SocketAddr::new(source, 0))?;
                    let tcp = socket.connect(target).await?;
                    // As the default connector does: no call waits on a delayed ACK.
                    tcp.set_nodelay(true)?;
                    let name = rustls_pki_types::ServerName::try_from(host)
                        .map_err(std::io::Error::other)?;
                    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                }
            });
            endpoint.connect_with_connector(connector).await
        }
    };
    channel.with_context(|| format!("connect to {api_addr}"))
}

/// A `JoinRequest` for `token` with `bundle_json`.
#[must_use]
pub fn join_request(token: &str, trust_domain: &str, bundle_json: String) -> pb::JoinRequest {
    pb::JoinRequest {
        token: token.to_string(),
        bundle: Some(pb::TrustBundle {
            trust_domain: trust_domain.to_string(),
            spiffe_bundle_json: bundle_json,
            sequence: 0,
        }),
    }
}

/// A `PublishBundleRequest`.
#[must_use]
pub fn publish_request(
    trust_domain: &str,
    bundle_json: String,
    force: bool,
) -> pb::PublishBundleRequest {
    pb::PublishBundleRequest {
        bundle: Some(pb::TrustBundle {
            trust_domain: trust_domain.to_string(),
            spiffe_bundle_json: bundle_json,
            sequence: 0,
        }),
        force,
    }
}

/// Keeps a lease alive from a task of its own, every `interval`, until dropped or
/// stopped. Keep-alive failures (an election, a replica down) are counted, not fatal;
/// a `NotFound` answer (the lease expired) stops it.
pub struct LeaseKeeper {
    task: tokio::task::JoinHandle<()>,
    /// Keep-alives answered / failed so far.
    pub counts: Arc<std::sync::Mutex<(u64, u64)>>,
}

impl LeaseKeeper {
    /// Starts keeping `lease_id` alive through `client`.
    #[must_use]
    pub fn start(mut client: FederationClient<Channel>, lease_id: u64, interval: Duration) -> Self {
        let counts = Arc::new(std::sync::Mutex::new((0, 0)));
        let shared = Arc::clone(&counts);
        let task = tokio::spawn(async move {
            loop {
                let answer = client.keep_alive(pb::KeepAliveRequest { lease_id }).await;
                let expired = matches!(&answer, Err(s) if s.code() == tonic::Code::NotFound);
                if let Ok(mut c) = shared.lock() {
                    if answer.is_ok() { c.0 += 1 } else { c.1 += 1 }
                }
                if expired {
                    return;
                }
                tokio::time::sleep(interval).await;
            }
        });
        Self { task, counts }
    }

    /// Stops keeping the lease alive.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}
