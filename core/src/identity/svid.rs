//! X.509-SVIDs: the leaf checks of the X509-SVID specification, and chain verification
//! against the bundle of the SVID's own trust domain.
//!
//! Trust is never pooled. A chain is verified against the roots of the trust domain its
//! leaf names, so a member's CA can vouch only for its own trust domain: an SVID signed by
//! cluster B's CA that claims to be in trust domain A is checked against A's bundle, and
//! fails. The agent API port therefore accepts any client certificate at the handshake
//! ([`super::DeferredClientVerifier`], which still proves possession of the key) and
//! decides per request: [`svid_identity`] names the leaf's trust domain, whose bundle
//! [`verify_client_svid`] then checks the chain against.

use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::spiffe_id::{SpiffeId, SpiffeIdError, quote};

/// Most certificates accepted in a presented chain, leaf included.
pub const MAX_CHAIN_LEN: usize = 8;

/// The signature algorithms of the ring provider, for chains and handshake signatures.
pub(super) static ALGORITHMS: LazyLock<WebPkiSupportedAlgorithms> =
    LazyLock::new(|| rustls::crypto::ring::default_provider().signature_verification_algorithms);

/// Why an X.509-SVID, or the chain it came in, was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    /// The peer presented no certificate.
    #[error("no SVID was presented")]
    NoCertificate,
    /// The chain is longer than [`MAX_CHAIN_LEN`].
    #[error("SVID chain has {count} certificates; at most {MAX_CHAIN_LEN} are accepted")]
    ChainTooLong {
        /// Certificates presented.
        count: usize,
    },
    /// A certificate is not valid DER X.509.
    #[error("{what} is not a valid X.509 certificate: {problem}")]
    Malformed {
        /// Which certificate: `SVID`, `intermediate certificate 1`, `bundle root 0`…
        what: String,
        /// What the parser said.
        problem: String,
    },
    /// The leaf has no or several URI SANs.
    #[error("SVID has {count} URI SANs; exactly one is required")]
    UriSanCount {
        /// URI SANs found.
        count: usize,
    },
    /// The only URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN {uri:?} is not a spiffe:// ID: {source}")]
    NotSpiffeId {
        /// The URI (shortened if long).
        uri: String,
        /// The rule it broke.
        source: SpiffeIdError,
    },
    /// The SPIFFE ID names a trust domain, not a workload.
    #[error("SVID's SPIFFE ID {id} has no path; a leaf SVID must name a workload")]
    RootPath {
        /// The SPIFFE ID.
        id: SpiffeId,
    },
    /// basicConstraints CA=true on the leaf.
    #[error("SVID is a CA certificate (basicConstraints CA=true)")]
    IsCa,
    /// The leaf has no keyUsage extension.
    #[error("SVID has no keyUsage extension; digitalSignature is required")]
    NoKeyUsage,
    /// keyUsage lacks digitalSignature.
    #[error("SVID lacks digitalSignature in keyUsage")]
    NoDigitalSignature,
    /// keyUsage has keyCertSign.
    #[error("SVID has keyCertSign")]
    KeyCertSign,
    /// keyUsage has cRLSign.
    #[error("SVID has cRLSign")]
    CrlSign,
    /// An intermediate of the chain cannot issue certificates.
    #[error("intermediate certificate {index} of the SVID chain {problem}")]
    BadIntermediate {
        /// Its position in the chain (the leaf is 0).
        index: usize,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The leaf's notAfter is in the past.
    #[error("SVID {id} expired at {not_after} (now {now}; unix seconds)")]
    Expired {
        /// The SVID's SPIFFE ID.
        id: SpiffeId,
        /// Its notAfter.
        not_after: i64,
        /// The verification time.
        now: i64,
    },
    /// The leaf's notBefore is in the future.
    #[error("SVID {id} is not valid before {not_before} (now {now}; unix seconds)")]
    NotYetValid {
        /// The SVID's SPIFFE ID.
        id: SpiffeId,
        /// Its notBefore.
        not_before: i64,
        /// The verification time.
        now: i64,
    },
    /// No bundle is stored for the trust domain the SVID claims.
    #[error("no bundle is known for trust domain {trust_domain}")]
    NoBundle {
        /// The trust domain of the SVID.
        trust_domain: String,
    },
    /// A root certificate of the bundle cannot serve as a trust anchor.
    #[error("bundle of trust domain {trust_domain} holds an unusable root certificate: {problem}")]
    BadRoot {
        /// The trust domain of the SVID.
        trust_domain: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Path validation against the bundle failed.
    #[error("chain does not verify against the bundle of trust domain {trust_domain}: {problem}")]
    Untrusted {
        /// The trust domain of the SVID, whose bundle was used.
        trust_domain: String,
        /// Why it failed.
        problem: String,
    },
    /// The SVID is valid but is not the one expected.
    #[error("peer SVID is {actual}, expected {expected}")]
    UnexpectedId {
        /// The SPIFFE ID required.
        expected: SpiffeId,
        /// The SPIFFE ID presented.
        actual: SpiffeId,
    },
    /// The SVID is valid but belongs to another trust domain than the one whose bundle is
    /// configured.
    #[error("peer SVID {actual} is not in trust domain {expected}")]
    WrongTrustDomain {
        /// The trust domain required.
        expected: String,
        /// The SPIFFE ID presented.
        actual: SpiffeId,
    },
    /// A configured trust domain name is invalid.
    #[error("{source}")]
    BadTrustDomain {
        /// The rule it broke.
        source: SpiffeIdError,
    },
    /// The verification time is before the unix epoch.
    #[error("verification time {now} is before 1970")]
    InvalidTime {
        /// The time given.
        now: i64,
    },
}

// === leaf and chain checks ===

/// What the leaf checks learn about an SVID.
pub(super) struct Leaf {
    /// Its SPIFFE ID.
    pub(super) id: SpiffeId,
    /// notBefore, unix seconds.
    not_before: i64,
    /// notAfter, unix seconds.
    not_after: i64,
}

/// Leaf checks of the X509-SVID spec: exactly one URI SAN which is a SPIFFE ID with a
/// path, CA=false, no keyCertSign/cRLSign, digitalSignature present. Returns the SPIFFE
/// ID. Says nothing about who issued the certificate or whether it is still valid.
///
/// # Errors
/// The certificate does not parse or breaks a rule; the error says which.
pub fn svid_identity(leaf_der: &[u8]) -> Result<SpiffeId, SvidError> {
    inspect_leaf(leaf_der).map(|leaf| leaf.id)
}

fn inspect_leaf(der: &[u8]) -> Result<Leaf, SvidError> {
    let what = "SVID";
    let cert = parse_certificate(what, der)?;
    let san = cert.subject_alternative_name().map_err(|e| malformed(what, e))?;
    let uris: Vec<&str> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let [uri] = uris[..] else {
        return Err(SvidError::UriSanCount { count: uris.len() });
    };
    let id = SpiffeId::parse(uri)
        .map_err(|source| SvidError::NotSpiffeId { uri: quote(uri), source })?;
    if id.path.is_empty() {
        return Err(SvidError::RootPath { id });
    }
    let basic = cert.basic_constraints().map_err(|e| malformed(what, e))?;
    // An absent basicConstraints extension means CA=false (RFC 5280 4.2.1.9).
    if basic.is_some_and(|ext| ext.value.ca) {
        return Err(SvidError::IsCa);
    }
    let usage = cert.key_usage().map_err(|e| malformed(what, e))?.ok_or(SvidError::NoKeyUsage)?;
    if usage.value.key_cert_sign() {
        return Err(SvidError::KeyCertSign);
    }
    if usage.value.crl_sign() {
        return Err(SvidError::CrlSign);
    }
    if !usage.value.digital_signature() {
        return Err(SvidError::NoDigitalSignature);
    }
    Ok(Leaf {
        id,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Parses one DER certificate, refusing trailing bytes and extensions that do not parse
/// (x509-parser would otherwise report a garbled extension as absent).
pub(super) fn parse_certificate<'a>(
    what: &str,
    der: &'a [u8],
) -> Result<X509Certificate<'a>, SvidError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| malformed(what, e))?;
    if !rest.is_empty() {
        return Err(malformed(what, format!("{} bytes after the certificate", rest.len())));
    }
    for ext in cert.extensions() {
        if let ParsedExtension::ParseError { error } = ext.parsed_extension() {
            return Err(malformed(what, format!("extension {}: {error}", ext.oid)));
        }
    }
    Ok(cert)
}

fn malformed(what: &str, problem: impl fmt::Display) -> SvidError {
    SvidError::Malformed { what: what.to_string(), problem: problem.to_string() }
}

/// Checks the shape of a presented chain: its length, the leaf, and that every
/// intermediate is a CA allowed to sign certificates (X509-SVID 3.2).
pub(super) fn inspect_chain<C: AsRef<[u8]>>(chain: &[C]) -> Result<Leaf, SvidError> {
    let Some(leaf) = chain.first() else {
        return Err(SvidError::NoCertificate);
    };
    if chain.len() > MAX_CHAIN_LEN {
        return Err(SvidError::ChainTooLong { count: chain.len() });
    }
    let leaf = inspect_leaf(leaf.as_ref())?;
    for (index, der) in chain.iter().enumerate().skip(1) {
        let cert = parse_certificate(&format!("intermediate certificate {index}"), der.as_ref())?;
        if !cert.is_ca() {
            return Err(SvidError::BadIntermediate {
                index,
                problem: "is not a CA (basicConstraints CA=true is required)",
            });
        }
        let signs =
            cert.key_usage().ok().flatten().is_some_and(|usage| usage.value.key_cert_sign());
        if !signs {
            return Err(SvidError::BadIntermediate { index, problem: "lacks keyCertSign" });
        }
    }
    Ok(leaf)
}

/// Trust anchors of the bundle of `trust_domain`.
pub(super) fn trust_anchors<R: AsRef<[u8]>>(
    trust_domain: &str,
    roots_der: &[R],
) -> Result<Vec<TrustAnchor<'static>>, SvidError> {
    roots_der
        .iter()
        .enumerate()
        .map(|(i, root)| {
            let der = CertificateDer::from(root.as_ref());
            webpki::anchor_from_trusted_cert(&der).map(|anchor| anchor.to_owned()).map_err(|e| {
                SvidError::BadRoot {
                    trust_domain: trust_domain.to_string(),
                    problem: format!("root {i}: {e}"),
                }
            })
        })
        .collect()
}

/// Path validation of `chain` (already through [`inspect_chain`]) against `anchors`.
pub(super) fn verify_path<C: AsRef<[u8]>>(
    chain: &[C],
    leaf: Leaf,
    anchors: &[TrustAnchor<'_>],
    now: i64,
    usage: webpki::KeyUsage,
) -> Result<SpiffeId, SvidError> {
    let trust_domain = leaf.id.trust_domain.clone();
    let untrusted =
        |problem: String| SvidError::Untrusted { trust_domain: trust_domain.clone(), problem };
    let Ok(seconds) = u64::try_from(now) else {
        return Err(SvidError::InvalidTime { now });
    };
    // Checked here too, so that the usual failure names the SVID rather than "a
    // certificate of the chain".
    if now > leaf.not_after {
        return Err(SvidError::Expired { id: leaf.id, not_after: leaf.not_after, now });
    }
    if now < leaf.not_before {
        return Err(SvidError::NotYetValid { id: leaf.id, not_before: leaf.not_before, now });
    }
    if anchors.is_empty() {
        return Err(untrusted("the bundle holds no X.509 authority".to_string()));
    }
    let Some((end_entity, intermediates)) = chain.split_first() else {
        return Err(SvidError::NoCertificate);
    };
    let end_entity = CertificateDer::from(end_entity.as_ref());
    let intermediates: Vec<CertificateDer<'_>> =
        intermediates.iter().map(|der| CertificateDer::from(der.as_ref())).collect();
    let cert = webpki::EndEntityCert::try_from(&end_entity).map_err(|e| malformed("SVID", e))?;
    cert.verify_for_usage(
        ALGORITHMS.all,
        anchors,
        &intermediates,
        UnixTime::since_unix_epoch(Duration::from_secs(seconds)),
        usage,
        None,
        None,
    )
    .map_err(|e| untrusted(describe_path_error(&e)))?;
    Ok(leaf.id)
}

fn describe_path_error(error: &webpki::Error) -> String {
    match error {
        webpki::Error::UnknownIssuer => {
            "it was not issued by any authority of that bundle".to_string()
        }
        webpki::Error::InvalidSignatureForPublicKey | webpki::Error::SignatureAlgorithmMismatch => {
            "a signature in the chain is invalid".to_string()
        }
        webpki::Error::CertExpired { time, not_after } => format!(
            "a certificate of the chain expired at {} (now {})",
            not_after.as_secs(),
            time.as_secs()
        ),
        webpki::Error::CertNotValidYet { time, not_before } => format!(
            "a certificate of the chain is not valid before {} (now {})",
            not_before.as_secs(),
            time.as_secs()
        ),
        webpki::Error::RequiredEkuNotFoundContext(_) => {
            "its extended key usage does not allow this use (TLS client or server)".to_string()
        }
        other => format!("{other:?}"),
    }
}

fn verify_svid<C: AsRef<[u8]>, R: AsRef<[u8]>>(
    chain: &[C],
    roots_der: &[R],
    now: i64,
    usage: webpki::KeyUsage,
) -> Result<SpiffeId, SvidError> {
    let leaf = inspect_chain(chain)?;
    let anchors = trust_anchors(&leaf.id.trust_domain, roots_der)?;
    verify_path(chain, leaf, &anchors, now, usage)
}

/// Verifies `chain` (leaf first, then intermediates, DER) for TLS client authentication
/// against `roots_der` at unix time `now`, and returns its SPIFFE ID. No name is checked:
/// the SPIFFE ID is the identity.
///
/// `roots_der` must be the bundle of the leaf's own trust domain only (look it up with
/// [`svid_identity`]); never a pool of several trust domains' roots.
///
/// # Errors
/// The chain breaks an X509-SVID rule, is expired, or does not chain to `roots_der`.
pub fn verify_client_svid<C: AsRef<[u8]>, R: AsRef<[u8]>>(
    chain: &[C],
    roots_der: &[R],
    now: i64,
) -> Result<SpiffeId, SvidError> {
    verify_svid(chain, roots_der, now, webpki::KeyUsage::client_auth())
}

/// [`verify_client_svid`] for TLS server authentication (the `https_spiffe` profile);
/// servers are verified with [`super::SpiffeServerVerifier`].
///
/// # Errors
/// As [`verify_client_svid`].
#[cfg(test)]
fn verify_server_svid<C: AsRef<[u8]>, R: AsRef<[u8]>>(
    chain: &[C],
    roots_der: &[R],
    now: i64,
) -> Result<SpiffeId, SvidError> {
    verify_svid(chain, roots_der, now, webpki::KeyUsage::server_auth())
}

/// Verifies `chain` for TLS client authentication against the bundle that `bundle_of`
/// returns for the trust domain the leaf itself names, so a peer cannot pick the roots
/// it is checked against.
///
/// The server looks the bundle up itself, as this does ([`svid_identity`], then
/// [`verify_client_svid`]).
///
/// # Errors
/// As [`verify_client_svid`], and [`SvidError::NoBundle`] when `bundle_of` knows no
/// bundle for the leaf's trust domain.
#[cfg(test)]
pub(super) fn verify_client_svid_by_trust_domain<C, F, B, R>(
    chain: &[C],
    bundle_of: F,
    now: i64,
) -> Result<SpiffeId, SvidError>
where
    C: AsRef<[u8]>,
    F: FnOnce(&str) -> Option<B>,
    B: AsRef<[R]>,
    R: AsRef<[u8]>,
{
    let leaf = inspect_chain(chain)?;
    let bundle = bundle_of(&leaf.id.trust_domain)
        .ok_or_else(|| SvidError::NoBundle { trust_domain: leaf.id.trust_domain.clone() })?;
    let anchors = trust_anchors(&leaf.id.trust_domain, bundle.as_ref())?;
    verify_path(chain, leaf, &anchors, now, webpki::KeyUsage::client_auth())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use rcgen::{BasicConstraints, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};
    use rustls_pki_types::pem::PemObject;

    use super::*;
    use crate::identity::FederationCa;
    use crate::identity::test_svids::{TestCa, TestSvid, now};

    fn refusal(svid: &TestSvid) -> SvidError {
        svid_identity(&svid.chain[0]).expect_err("the leaf checks must refuse it")
    }

    // === leaf checks ===

    #[test]
    fn well_formed_svid_yields_its_spiffe_id() {
        let a = TestCa::root("a.test");
        let svid = a.leaf("spiffe://a.test/agent");
        let id = svid_identity(&svid.chain[0]).expect("valid SVID");
        assert_eq!(id.to_string(), "spiffe://a.test/agent");
    }

    #[test]
    fn svid_with_two_uri_sans_is_refused() {
        let a = TestCa::root("a.test");
        let svid = a.leaf_with("spiffe://a.test/one", |p| {
            p.subject_alt_names.push(SanType::URI("spiffe://a.test/two".try_into().expect("uri")));
        });
        let error = refusal(&svid);
        assert!(matches!(error, SvidError::UriSanCount { count: 2 }), "{error}");
        assert_eq!(error.to_string(), "SVID has 2 URI SANs; exactly one is required");
    }

    #[test]
    fn svid_without_uri_san_is_refused() {
        let a = TestCa::root("a.test");
        let svid = a.leaf_with("spiffe://a.test/x", |p| {
            p.subject_alt_names = vec![SanType::DnsName("a.test".try_into().expect("dns"))];
        });
        assert!(matches!(refusal(&svid), SvidError::UriSanCount { count: 0 }));
    }

    #[test]
    fn svid_with_non_spiffe_uri_is_refused() {
        let a = TestCa::root("a.test");
        let error = refusal(&a.leaf("https://a.test/agent"));
        assert!(
            matches!(&error, SvidError::NotSpiffeId { source: SpiffeIdError::Scheme, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("is not a spiffe:// ID"), "{error}");
    }

    #[test]
    fn svid_naming_only_a_trust_domain_is_refused() {
        let a = TestCa::root("a.test");
        assert!(matches!(refusal(&a.leaf("spiffe://a.test")), SvidError::RootPath { .. }));
    }

    #[test]
    fn svid_that_is_a_ca_is_refused() {
        let a = TestCa::root("a.test");
        let svid = a.leaf_with("spiffe://a.test/x", |p| {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        });
        let error = refusal(&svid);
        assert!(matches!(error, SvidError::IsCa), "{error}");
        assert!(error.to_string().contains("SVID is a CA certificate"));
    }

    #[test]
    fn svid_with_key_cert_sign_is_refused() {
        let a = TestCa::root("a.test");
        let svid = a.leaf_with("spiffe://a.test/x", |p| {
            p.key_usages.push(KeyUsagePurpose::KeyCertSign);
        });
        let error = refusal(&svid);
        assert!(matches!(error, SvidError::KeyCertSign), "{error}");
        assert_eq!(error.to_string(), "SVID has keyCertSign");
    }

    #[test]
    fn svid_with_crl_sign_is_refused() {
        let a = TestCa::root("a.test");
        let svid = a.leaf_with("spiffe://a.test/x", |p| {
            p.key_usages.push(KeyUsagePurpose::CrlSign);
        });
        assert!(matches!(refusal(&svid), SvidError::CrlSign));
    }

    #[test]
    fn svid_without_digital_signature_is_refused() {
        let a = TestCa::root("a.test");
        let svid = a.leaf_with("spiffe://a.test/x", |p| {
            p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
        });
        assert!(matches!(refusal(&svid), SvidError::NoDigitalSignature));
        let svid = a.leaf_with("spiffe://a.test/x", |p| p.key_usages.clear());
        assert!(matches!(refusal(&svid), SvidError::NoKeyUsage));
    }

    #[test]
    fn garbage_is_not_an_svid() {
        assert!(matches!(svid_identity(b"not a certificate"), Err(SvidError::Malformed { .. })));
        let a = TestCa::root("a.test");
        let mut der = a.leaf("spiffe://a.test/x").chain[0].to_vec();
        der.push(0);
        assert!(matches!(svid_identity(&der), Err(SvidError::Malformed { .. })));
    }

    // === chain verification ===

    #[test]
    fn svid_of_a_verifies_with_the_bundle_of_a() {
        let a = TestCa::root("a.test");
        let svid = a.leaf("spiffe://a.test/agent");
        let id = verify_client_svid(&svid.chain, &a.roots(), now()).expect("trusted");
        assert_eq!(id.to_string(), "spiffe://a.test/agent");
        let id = verify_server_svid(&svid.chain, &a.roots(), now()).expect("trusted");
        assert_eq!(id.trust_domain, "a.test");
    }

    #[test]
    fn svid_signed_by_b_claiming_trust_domain_a_is_refused() {
        let a = TestCa::root("a.test");
        let b = TestCa::root("b.test");
        let forged = b.leaf("spiffe://a.test/agent");
        let error = verify_client_svid(&forged.chain, &a.roots(), now()).expect_err("forged");
        assert!(
            matches!(&error, SvidError::Untrusted { trust_domain, .. } if trust_domain == "a.test"),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .starts_with("chain does not verify against the bundle of trust domain a.test: "),
            "{error}"
        );
    }

    #[test]
    fn roots_are_chosen_by_the_svids_own_trust_domain() {
        let a = TestCa::root("a.test");
        let b = TestCa::root("b.test");
        let bundles: HashMap<&str, Vec<CertificateDer<'static>>> =
            HashMap::from([("a.test", a.roots()), ("b.test", b.roots())]);
        let lookup = |td: &str| bundles.get(td);

        let genuine = a.leaf("spiffe://a.test/agent");
        let id =
            verify_client_svid_by_trust_domain(&genuine.chain, lookup, now()).expect("genuine");
        assert_eq!(id.trust_domain, "a.test");

        // B's CA is trusted for B, and only for B.
        let forged = b.leaf("spiffe://a.test/agent");
        assert!(matches!(
            verify_client_svid_by_trust_domain(&forged.chain, lookup, now()),
            Err(SvidError::Untrusted { trust_domain, .. }) if trust_domain == "a.test"
        ));
        let own = b.leaf("spiffe://b.test/agent");
        verify_client_svid_by_trust_domain(&own.chain, lookup, now()).expect("b in b");

        let stranger = TestCa::root("c.test").leaf("spiffe://c.test/agent");
        let error = verify_client_svid_by_trust_domain(&stranger.chain, lookup, now())
            .expect_err("no bundle");
        assert_eq!(error.to_string(), "no bundle is known for trust domain c.test");
    }

    #[test]
    fn malformed_svid_is_refused_before_any_bundle_lookup() {
        let a = TestCa::root("a.test");
        let svid = a.leaf_with("spiffe://a.test/x", |p| {
            p.key_usages.push(KeyUsagePurpose::KeyCertSign);
        });
        let error = verify_client_svid_by_trust_domain(
            &svid.chain,
            |_| -> Option<Vec<Vec<u8>>> { panic!("the bundle must not be looked up") },
            now(),
        )
        .expect_err("refused");
        assert!(matches!(error, SvidError::KeyCertSign));
    }

    #[test]
    fn expired_svid_is_refused() {
        let a = TestCa::root("a.test");
        let svid = a.leaf_with("spiffe://a.test/x", |p| {
            let now = time::OffsetDateTime::now_utc();
            p.not_before = now - time::Duration::hours(2);
            p.not_after = now - time::Duration::hours(1);
        });
        svid_identity(&svid.chain[0]).expect("the leaf checks do not look at time");
        let error = verify_client_svid(&svid.chain, &a.roots(), now()).expect_err("expired");
        assert!(matches!(error, SvidError::Expired { .. }), "{error}");
        assert!(error.to_string().contains("expired at"), "{error}");

        let svid = a.leaf_with("spiffe://a.test/x", |p| {
            p.not_before = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        });
        assert!(matches!(
            verify_client_svid(&svid.chain, &a.roots(), now()),
            Err(SvidError::NotYetValid { .. })
        ));
        let svid = a.leaf("spiffe://a.test/x");
        assert!(matches!(
            verify_client_svid(&svid.chain, &a.roots(), -1),
            Err(SvidError::InvalidTime { now: -1 })
        ));
    }

    #[test]
    fn chain_through_an_intermediate_verifies() {
        let a = TestCa::root("a.test");
        let deep = a.intermediate().intermediate();
        let svid = deep.leaf("spiffe://a.test/agent");
        assert_eq!(svid.chain.len(), 3);
        let id = verify_client_svid(&svid.chain, &a.roots(), now()).expect("trusted");
        assert_eq!(id.path, "/agent");
        // Without its intermediates the leaf has no path to the root.
        assert!(matches!(
            verify_client_svid(&svid.chain[..1], &a.roots(), now()),
            Err(SvidError::Untrusted { .. })
        ));
    }

    #[test]
    fn intermediate_that_is_no_ca_is_refused() {
        let a = TestCa::root("a.test");
        let svid = a.leaf("spiffe://a.test/agent");
        let not_a_ca = a.leaf("spiffe://a.test/other");
        let chain = vec![svid.chain[0].clone(), not_a_ca.chain[0].clone()];
        assert!(matches!(
            verify_client_svid(&chain, &a.roots(), now()),
            Err(SvidError::BadIntermediate { index: 1, .. })
        ));
    }

    #[test]
    fn chain_length_is_bounded() {
        let a = TestCa::root("a.test");
        let svid = a.leaf("spiffe://a.test/agent");
        let long = vec![svid.chain[0].clone(); MAX_CHAIN_LEN + 1];
        assert!(matches!(
            verify_client_svid(&long, &a.roots(), now()),
            Err(SvidError::ChainTooLong { .. })
        ));
        let empty: &[&[u8]] = &[];
        assert!(matches!(
            verify_client_svid(empty, &a.roots(), now()),
            Err(SvidError::NoCertificate)
        ));
        let no_roots: &[&[u8]] = &[];
        assert!(matches!(
            verify_client_svid(&svid.chain, no_roots, now()),
            Err(SvidError::Untrusted { .. })
        ));
    }

    #[test]
    fn extended_key_usage_decides_client_or_server() {
        let a = TestCa::root("a.test");
        let client_only = a.leaf_with("spiffe://a.test/agent", |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        });
        verify_client_svid(&client_only.chain, &a.roots(), now()).expect("client use");
        assert!(matches!(
            verify_server_svid(&client_only.chain, &a.roots(), now()),
            Err(SvidError::Untrusted { .. })
        ));
    }

    #[test]
    fn federation_ca_certificates_are_svids() {
        let ca =
            FederationCa::generate("fed.test", "test CA", Duration::from_secs(3600)).expect("ca");
        let admin = ca
            .issue(
                &crate::identity::admin_spiffe_id("fed.test"),
                &[],
                &[],
                Duration::from_secs(600),
            )
            .expect("admin");
        let chain = CertificateDer::pem_slice_iter(admin.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("pem");
        let root = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).expect("pem");
        let id = verify_client_svid(&chain, &[root], now()).expect("admin SVID");
        assert_eq!(id.to_string(), "spiffe://fed.test/federator/admin");
    }
}
