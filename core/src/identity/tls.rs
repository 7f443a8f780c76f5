//! Loading certificate files and building rustls client and server configurations.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;

use super::IdentityError;
use super::reload::CertifiedIdentity;

/// Paths of a CA bundle, a certificate chain and its private key (all PEM).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// CA certificates that peers' certificates must chain to.
    pub ca: PathBuf,
    /// This party's certificate chain, leaf first.
    pub cert: PathBuf,
    /// This party's private key.
    pub key: PathBuf,
}

/// Parsed TLS material: trusted CAs, own chain and key.
#[derive(Debug)]
pub struct TlsMaterial {
    /// Trusted CA certificates.
    pub ca: Vec<CertificateDer<'static>>,
    /// Own certificate and key; every configuration built from this material serves the
    /// current pair, which follows the files when loaded from them.
    pub identity: Arc<CertifiedIdentity>,
}

// === impl TlsFiles ===

impl TlsFiles {
    /// Reads and parses the three files. `section` prefixes field names in errors
    /// (`tls.ca`, …).
    ///
    /// # Errors
    /// A file is missing, unreadable or holds no usable PEM.
    pub fn load(&self) -> Result<TlsMaterial, IdentityError> {
        let ca = read_certs("ca", &self.ca)?;
        let identity = CertifiedIdentity::from_files(self.cert.clone(), self.key.clone())?;
        Ok(TlsMaterial { ca, identity: Arc::new(identity) })
    }
}

fn read_file(field: &'static str, path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Read {
        field,
        path: path.display().to_string(),
        source,
    })
}

fn read_certs(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let pem = read_file(field, path)?;
    let certs =
        CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| {
            IdentityError::Pem {
                field,
                path: path.display().to_string(),
                problem: format!("invalid PEM: {e}"),
            }
        })?;
    if certs.is_empty() {
        return Err(IdentityError::Pem {
            field,
            path: path.display().to_string(),
            problem: "holds no CERTIFICATE block".to_string(),
        });
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// === impl TlsMaterial ===

impl TlsMaterial {
    fn roots(&self) -> Result<RootCertStore, IdentityError> {
        let mut roots = RootCertStore::empty();
        for cert in &self.ca {
            roots
                .add(cert.clone())
                .map_err(|e| IdentityError::Tls(format!("CA certificate: {e}")))?;
        }
        Ok(roots)
    }

    /// A server configuration that requires every client to present a certificate
    /// chaining to the CA, and speaks HTTP/2.
    ///
    /// # Errors
    /// rustls refused the material.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider())
                .build()
                .map_err(|e| IdentityError::Tls(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| IdentityError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.identity.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// A server configuration that requires a client certificate and proof of its key,
    /// but leaves trust in the chain to each request (see
    /// [`super::DeferredClientVerifier`]): agents of many trust domains share the port.
    ///
    /// # Errors
    /// rustls refused the material.
    pub fn server_config_deferring_client_trust(
        &self,
    ) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| IdentityError::Tls(e.to_string()))?
            .with_client_cert_verifier(Arc::new(super::DeferredClientVerifier::new()))
            .with_cert_resolver(self.identity.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// A server configuration without client authentication (the public SPIFFE bundle
    /// endpoint), speaking HTTP/1.1 and HTTP/2.
    ///
    /// # Errors
    /// rustls refused the material.
    pub fn public_server_config(&self) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| IdentityError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.identity.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// A client configuration that trusts the CA and presents this certificate.
    ///
    /// # Errors
    /// rustls refused the material.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, IdentityError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| IdentityError::Tls(e.to_string()))?
            .with_root_certificates(self.roots()?)
            .with_client_cert_resolver(self.identity.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The SPIFFE ID of a certificate: its only URI SAN, if that is a `spiffe://` URI.
/// Certificates with no or several URI SANs have none.
#[must_use]
pub fn peer_spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|name| match name {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let first = uris.next()?;
    if uris.next().is_some() || !first.starts_with("spiffe://") {
        return None;
    }
    Some(first.to_string())
}

/// Encodes DER certificates as PEM `CERTIFICATE` blocks.
#[must_use]
pub fn certificates_to_pem<'a>(ders: impl IntoIterator<Item = &'a [u8]>) -> String {
    use base64::Engine as _;
    let mut out = String::new();
    for der in ders {
        let encoded = base64::engine::general_purpose::STANDARD.encode(der);
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in encoded.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}
