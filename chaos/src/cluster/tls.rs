//! TLS identities other than the replicas' own: a web PKI stand-in for the bundle
//! endpoint's `https_web` profile ([`WebCertificate`]), and a raw raft peer that presents
//! a chosen certificate, or none ([`raw_raft_vote`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A web PKI stand-in for the bundle endpoint's `https_web` profile: a CA that is not
/// the federation's, and a certificate it issued for 127.0.0.1 and localhost.
#[derive(Debug)]
pub struct WebCertificate {
    /// The CA certificate (PEM file): what an `https_web` consumer trusts.
    pub ca: PathBuf,
    /// The endpoint's certificate (PEM file).
    pub cert: PathBuf,
    /// Its key (PEM file).
    pub key: PathBuf,
    /// The CA certificate, PEM.
    pub ca_pem: String,
}

impl WebCertificate {
    /// Generates one into `dir` (created).
    ///
    /// # Errors
    /// Generation failed or a file could not be written.
    pub fn write(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let hour = Duration::from_secs(3600);
        let ca = federator::identity::FederationCa::generate("web.invalid", "web CA", hour)?;
        let leaf = ca.issue(
            "spiffe://web.invalid/bundle-endpoint",
            &["127.0.0.1".parse()?],
            &["localhost".to_string()],
            hour,
        )?;
        let web = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("web.pem"),
            key: dir.join("web.key"),
            ca_pem: ca.cert_pem().to_string(),
        };
        std::fs::write(&web.ca, &web.ca_pem)?;
        std::fs::write(&web.cert, &leaf.cert_pem)?;
        std::fs::write(&web.key, &leaf.key_pem)?;
        Ok(web)
    }

    /// A `[bundle_endpoint]` section serving `https_spiffe` on `spiffe_port` and
    /// `https_web` with this certificate on `web_port`, both on 127.0.0.1.
    #[must_use]
    pub fn bundle_endpoint_config(&self, spiffe_port: u16, web_port: u16) -> String {
        format!(
            "\n[bundle_endpoint]\nlisten_spiffe = \"127.0.0.1:{spiffe_port}\"\nlisten_web = \
             \"127.0.0.1:{web_port}\"\nweb_cert = \"{}\"\nweb_key = \"{}\"\n",
            self.cert.display(),
            self.key.display()
        )
    }
}

/// Why [`raw_raft_vote`] did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum RawVoteError {
    /// The client could not be set up (certificate files, CA, endpoint).
    #[error("client set-up: {0}")]
    Setup(Box<dyn std::error::Error + Send + Sync>),
    /// The connection (or its TLS handshake) failed.
    #[error("connect: {0:?}")]
    Connect(tonic::transport::Error),
    /// The replica answered the vote with an error.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Refused(tonic::Status),
}

fn setup(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> RawVoteError {
    RawVoteError::Setup(error.into())
}

/// Sends a harmless raft Vote RPC (term 0) to `raft_addr` as a raw peer that trusts the
/// CA in `trust/ca.pem`: with no client certificate (`None`), or with certificate `name`
/// from directory `certs`. Returns why when the call is refused at any layer.
///
/// # Errors
/// The handshake or the call was refused.
pub async fn raw_raft_vote(
    raft_addr: &str,
    trust: &Path,
    identity: Option<(&Path, &str)>,
) -> Result<(), RawVoteError> {
    use federator_proto::raft as rpb;
    use rustls_pki_types::pem::PemObject as _;

    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = match identity {
        Some((certs, name)) => {
            let files = federator::identity::TlsFiles {
                ca: trust.join("ca.pem"),
                cert: certs.join(format!("{name}.pem")),
                key: certs.join(format!("{name}.key")),
            };
            files.load().map_err(setup)?.client_config().map_err(setup)?
        }
        None => {
            let mut roots = rustls::RootCertStore::empty();
            let ca = rustls_pki_types::CertificateDer::pem_file_iter(trust.join("ca.pem"))
                .map_err(setup)?;
            for cert in ca {
                roots.add(cert.map_err(setup)?).map_err(setup)?;
            }
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(setup)?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec()];
            std::sync::Arc::new(config)
        }
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{raft_addr}"))
        .map_err(setup)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_with_connector(federator_raft::tls::connector(config))
        .await
        .map_err(RawVoteError::Connect)?;
    let mut client = rpb::raft_service_client::RaftServiceClient::new(channel);
    let request = rpb::VoteRequest {
        vote: Some(rpb::Vote {
            leader_id: Some(rpb::LeaderId { term: 0, node_id: 99 }),
            committed: false,
        }),
        last_log_id: None,
    };
    client.vote(request).await.map(|_| ()).map_err(RawVoteError::Refused)
}
