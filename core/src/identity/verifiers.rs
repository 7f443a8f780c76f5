//! The rustls verifiers of SPIFFE peers: [`DeferredClientVerifier`] for the agent API port
//! (possession of the key at the handshake, trust per request) and [`SpiffeServerVerifier`]
//! for SPIFFE servers (the `https_spiffe` profile).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

use super::spiffe_id::{SpiffeId, SpiffeIdError, check_trust_domain};
use super::svid::{
    ALGORITHMS, MAX_CHAIN_LEN, SvidError, inspect_chain, parse_certificate, trust_anchors,
    verify_path,
};

/// `now` in unix seconds.
fn unix_seconds(now: UnixTime) -> i64 {
    i64::try_from(now.as_secs()).unwrap_or(i64::MAX)
}

/// The rustls form of `error`: a certificate that does not parse is badly encoded.
fn to_rustls_error(error: SvidError) -> rustls::Error {
    let error = match error {
        SvidError::Malformed { .. } => CertificateError::BadEncoding,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(error)
}

// === impl DeferredClientVerifier ===

/// Client certificate verifier of the agent API port: requires a client certificate and
/// proves possession of its key (the handshake signature), but defers trust to each
/// request, where the chain is verified against the stored bundle of the SVID's own trust
/// domain ([`super::svid_identity`] names it, [`super::verify_client_svid`] checks the chain)
/// or, for operators and replicas, against
/// the federation CA. At the handshake it accepts any chain that parses.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeferredClientVerifier;

impl DeferredClientVerifier {
    /// The verifier.
    #[must_use]
    pub const fn new() -> Self {
        Self
    }
}

impl ClientCertVerifier for DeferredClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Members' CAs are many and change; an empty list asks for any certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let count = intermediates.len() + 1;
        if count > MAX_CHAIN_LEN {
            return Err(to_rustls_error(SvidError::ChainTooLong { count }));
        }
        webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        for (i, cert) in intermediates.iter().enumerate() {
            parse_certificate(&format!("intermediate certificate {}", i + 1), cert)
                .map_err(to_rustls_error)?;
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &ALGORITHMS)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &ALGORITHMS)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ALGORITHMS.supported_schemes()
    }
}

// === impl SpiffeServerVerifier ===

/// Server certificate verifier for SPIFFE servers (the `https_spiffe` profile): the
/// server's chain must be an X.509-SVID of one trust domain, verified against that trust
/// domain's bundle, and, if given, carry exactly the expected SPIFFE ID. The DNS name or
/// IP address dialled is not checked.
#[derive(Clone, Debug)]
pub struct SpiffeServerVerifier {
    /// The trust domain whose bundle `roots` is.
    trust_domain: String,
    /// That bundle's X.509 authorities.
    roots: Vec<TrustAnchor<'static>>,
    /// The server's SPIFFE ID, if one particular server is expected.
    expected: Option<SpiffeId>,
}

impl SpiffeServerVerifier {
    /// A verifier accepting servers of `trust_domain` whose SVID chains to `roots_der`
    /// (that trust domain's bundle), and only `expected` if given.
    ///
    /// # Errors
    /// `trust_domain` is invalid, `expected` lies in another trust domain, or a root
    /// cannot serve as a trust anchor.
    pub fn new<R: AsRef<[u8]>>(
        trust_domain: &str,
        roots_der: &[R],
        expected: Option<SpiffeId>,
    ) -> Result<Self, SvidError> {
        if trust_domain.is_empty() {
            return Err(SvidError::BadTrustDomain { source: SpiffeIdError::MissingTrustDomain });
        }
        check_trust_domain(trust_domain).map_err(|source| SvidError::BadTrustDomain { source })?;
        if let Some(expected) = &expected
            && !expected.is_member_of(trust_domain)
        {
            return Err(SvidError::WrongTrustDomain {
                expected: trust_domain.to_string(),
                actual: expected.clone(),
            });
        }
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            roots: trust_anchors(trust_domain, roots_der)?,
            expected,
        })
    }

    /// Verifies a server chain (leaf first) at unix time `now` and returns its SPIFFE ID.
    ///
    /// # Errors
    /// As [`super::verify_client_svid`] (for server authentication), and the SVID is not of
    /// this trust domain or not the expected one.
    pub fn verify<C: AsRef<[u8]>>(&self, chain: &[C], now: i64) -> Result<SpiffeId, SvidError> {
        let leaf = inspect_chain(chain)?;
        if !leaf.id.is_member_of(&self.trust_domain) {
            return Err(SvidError::WrongTrustDomain {
                expected: self.trust_domain.clone(),
                actual: leaf.id,
            });
        }
        let id = verify_path(chain, leaf, &self.roots, now, webpki::KeyUsage::server_auth())?;
        match &self.expected {
            Some(expected) if *expected != id => {
                Err(SvidError::UnexpectedId { expected: expected.clone(), actual: id })
            }
            _ => Ok(id),
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain: Vec<&[u8]> =
            std::iter::once(end_entity).chain(intermediates).map(AsRef::as_ref).collect();
        self.verify(&chain, unix_seconds(now)).map_err(to_rustls_error)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &ALGORITHMS)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &ALGORITHMS)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ALGORITHMS.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use futures::StreamExt as _;
    use rcgen::{CertificateParams, SanType};
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    use tokio::io::AsyncReadExt as _;

    use super::*;
    use crate::identity::IdentityError;
    use crate::identity::test_svids::{TestCa, TestSvid, now};

    // === rustls configurations of agents and the agent API, as the tests use them ===

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Verifier of the federation's replicas: standard WebPKI server verification (name
    /// included) against the federation CA, `ca_pem` (from the join token).
    ///
    /// # Errors
    /// `ca_pem` holds no usable certificate.
    fn federation_server_verifier(
        ca_pem: &str,
    ) -> Result<Arc<dyn ServerCertVerifier>, IdentityError> {
        let certs = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| IdentityError::Tls(format!("federation CA: invalid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(IdentityError::Tls(
                "federation CA: holds no CERTIFICATE block".to_string(),
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs {
            roots.add(cert).map_err(|e| IdentityError::Tls(format!("federation CA: {e}")))?;
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| IdentityError::Tls(format!("federation CA: {e}")))?;
        Ok(verifier)
    }

    /// A client configuration that presents `chain` and `key` (the agent's SVID), verifies
    /// servers with `verifier`, and speaks HTTP/2.
    ///
    /// # Errors
    /// rustls refused the certificate and key.
    fn agent_client_config(
        verifier: Arc<dyn ServerCertVerifier>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<rustls::ClientConfig>, IdentityError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| IdentityError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain, key)
            .map_err(|e| IdentityError::Tls(format!("certificate and key: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// A server configuration for the agent API port: presents `chain` and `key`, requires a
    /// client certificate through [`DeferredClientVerifier`], and speaks HTTP/2.
    ///
    /// # Errors
    /// rustls refused the certificate and key.
    fn agent_api_server_config(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| IdentityError::Tls(e.to_string()))?
            .with_client_cert_verifier(Arc::new(DeferredClientVerifier))
            .with_single_cert(chain, key)
            .map_err(|e| IdentityError::Tls(format!("certificate and key: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    // === the verifiers ===

    #[test]
    fn spiffe_server_verifier_checks_trust_domain_and_expected_id() {
        let a = TestCa::root("a.test");
        let b = TestCa::root("b.test");
        let server = a.leaf("spiffe://a.test/bundle-endpoint");
        let expected: SpiffeId = "spiffe://a.test/bundle-endpoint".parse().expect("id");

        let verifier =
            SpiffeServerVerifier::new("a.test", &a.roots(), Some(expected.clone())).expect("new");
        assert_eq!(verifier.verify(&server.chain, now()).expect("ok"), expected);

        let other = a.leaf("spiffe://a.test/somebody-else");
        assert!(matches!(
            verifier.verify(&other.chain, now()),
            Err(SvidError::UnexpectedId { .. })
        ));

        let any_of_a = SpiffeServerVerifier::new("a.test", &a.roots(), None).expect("new");
        any_of_a.verify(&other.chain, now()).expect("any ID of a");
        let of_b = b.leaf("spiffe://b.test/x");
        assert!(matches!(
            any_of_a.verify(&of_b.chain, now()),
            Err(SvidError::WrongTrustDomain { .. })
        ));
        let forged = b.leaf("spiffe://a.test/bundle-endpoint");
        assert!(matches!(verifier.verify(&forged.chain, now()), Err(SvidError::Untrusted { .. })));

        assert!(matches!(
            SpiffeServerVerifier::new("b.test", &b.roots(), Some(expected)),
            Err(SvidError::WrongTrustDomain { .. })
        ));
        assert!(matches!(
            SpiffeServerVerifier::new("B", &b.roots(), None),
            Err(SvidError::BadTrustDomain { .. })
        ));
        assert!(matches!(
            SpiffeServerVerifier::new("b.test", &[b"junk".as_slice()], None),
            Err(SvidError::BadRoot { .. })
        ));
    }

    #[test]
    fn deferred_verifier_requires_a_parsable_certificate_and_no_roots() {
        let verifier = DeferredClientVerifier;
        assert!(verifier.offer_client_auth());
        assert!(verifier.client_auth_mandatory());
        assert!(verifier.root_hint_subjects().is_empty());
        assert!(!verifier.supported_verify_schemes().is_empty());
        let unix_now = UnixTime::now();
        let garbage = CertificateDer::from(b"garbage".as_slice());
        assert!(verifier.verify_client_cert(&garbage, &[], unix_now).is_err());
        let a = TestCa::root("a.test");
        let forged = TestCa::root("b.test").intermediate().leaf("spiffe://a.test/x");
        verifier
            .verify_client_cert(&forged.chain[0], &forged.chain[1..], unix_now)
            .expect("trust is decided per request, not at the handshake");
        assert!(verifier.verify_client_cert(&a.root, &[garbage], unix_now).is_err());
    }

    /// A loopback agent API server with the deferred verifier, and the URI to reach it.
    async fn agent_api(server: &TestSvid) -> (federator_raft::tls::TlsIncoming, http::Uri) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config =
            agent_api_server_config(server.chain.clone(), server.key.clone_key()).expect("config");
        let uri = format!("https://{addr}").parse().expect("uri");
        (federator_raft::tls::incoming(listener, config), uri)
    }

    #[tokio::test]
    async fn agent_api_handshake_keeps_the_chain_for_the_per_request_check() {
        let fed = TestCa::root("fed.test");
        let b = TestCa::root("b.test");
        let server = fed.leaf("spiffe://fed.test/federator/replica/1");
        let agent = b.intermediate().leaf("spiffe://b.test/federator-agent");
        let (mut incoming, uri) = agent_api(&server).await;

        let expected: SpiffeId = "spiffe://fed.test/federator/replica/1".parse().expect("id");
        let verifier =
            SpiffeServerVerifier::new("fed.test", &fed.roots(), Some(expected)).expect("verifier");
        let client =
            agent_client_config(Arc::new(verifier), agent.chain.clone(), agent.key.clone_key())
                .expect("client config");
        let connector = federator_raft::tls::connector(client);
        let (accepted, connected) = tokio::join!(incoming.next(), connector.connect(&uri));
        connected.expect("the agent trusts the replica");
        let conn = accepted.expect("a connection").expect("accepted");

        let chain = &conn.info().peer_chain;
        assert_eq!(chain.len(), 2, "leaf and intermediate");
        assert_eq!(chain[..], agent.chain[..]);
        let bundles = HashMap::from([("b.test", b.roots()), ("fed.test", fed.roots())]);
        let id = crate::identity::svid::verify_client_svid_by_trust_domain(
            chain,
            |td| bundles.get(td),
            now(),
        )
        .expect("the agent's SVID verifies against b's bundle");
        assert_eq!(id.to_string(), "spiffe://b.test/federator-agent");
    }

    #[tokio::test]
    async fn agent_api_refuses_a_client_without_certificate() {
        let fed = TestCa::root("fed.test");
        let server = fed.leaf("spiffe://fed.test/federator/replica/1");
        let (mut incoming, uri) = agent_api(&server).await;
        let verifier = SpiffeServerVerifier::new("fed.test", &fed.roots(), None).expect("verifier");
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        client.alpn_protocols = vec![b"h2".to_vec()];
        let connector = federator_raft::tls::connector(Arc::new(client));
        let (accepted, refused) = tokio::join!(
            tokio::time::timeout(Duration::from_millis(500), incoming.next()),
            async {
                match connector.connect(&uri).await {
                    Err(_) => true,
                    // TLS 1.3: the client learns of the refusal on its first read.
                    Ok(mut stream) => matches!(stream.read(&mut [0_u8; 1]).await, Err(_) | Ok(0)),
                }
            }
        );
        assert!(accepted.is_err(), "no connection may be handed to the server");
        assert!(refused, "the client must see the refusal");
    }

    #[tokio::test]
    async fn agent_trusts_only_replicas_signed_by_the_federation_ca() {
        let fed = TestCa::root("fed.test");
        let impostor_ca = TestCa::root("fed.test");
        let agent = TestCa::root("a.test").leaf("spiffe://a.test/agent");
        let client = agent_client_config(
            federation_server_verifier(&fed.issuer.pem()).expect("verifier"),
            agent.chain.clone(),
            agent.key.clone_key(),
        )
        .expect("client config");
        let connector = federator_raft::tls::connector(client);
        let with_loopback_ip = |p: &mut CertificateParams| {
            p.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        };
        for (ca, trusted) in [(&fed, true), (&impostor_ca, false)] {
            let server = ca.leaf_with("spiffe://fed.test/federator/replica/1", with_loopback_ip);
            let (mut incoming, uri) = agent_api(&server).await;
            let (_, connected) = tokio::join!(
                tokio::time::timeout(Duration::from_millis(500), incoming.next()),
                connector.connect(&uri)
            );
            assert_eq!(connected.is_ok(), trusted, "{connected:?}");
        }
        assert!(federation_server_verifier("no PEM here").is_err());
    }
}
