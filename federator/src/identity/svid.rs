//! X.509-SVIDs: SPIFFE IDs, the leaf checks of the X509-SVID specification, and chain
//! verification against the bundle of the SVID's own trust domain.
//!
//! Trust is never pooled. A chain is verified against the roots of the trust domain its
//! leaf names, so a member's CA can vouch only for its own trust domain: an SVID signed by
//! cluster B's CA that claims to be in trust domain A is checked against A's bundle, and
//! fails. The agent API port therefore accepts any client certificate at the handshake
//! ([`DeferredClientVerifier`], which still proves possession of the key) and decides per
//! request with [`verify_client_svid_by_trust_domain`].

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::{IdentityError, validate_trust_domain};

/// Longest SPIFFE ID accepted, in bytes (the SPIFFE ID specification's limit for URIs).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Most certificates accepted in a presented chain, leaf included.
pub const MAX_CHAIN_LEN: usize = 8;

/// Longest stretch of a peer-supplied string quoted in an error message.
const QUOTE_LIMIT: usize = 128;

/// The signature algorithms of the ring provider, for chains and handshake signatures.
static ALGORITHMS: LazyLock<WebPkiSupportedAlgorithms> =
    LazyLock::new(|| rustls::crypto::ring::default_provider().signature_verification_algorithms);

/// A SPIFFE ID: `spiffe://` + trust domain + path.
///
/// Build one with [`SpiffeId::parse`] or [`SpiffeId::new`], which enforce the SPIFFE ID
/// rules; the fields are public for reading.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The trust domain name, e.g. `cluster-a.example`.
    pub trust_domain: String,
    /// The path with its leading `/` (`/ns/default/sa/web`); empty for the ID of the trust
    /// domain itself.
    pub path: String,
}

/// Why a string is not a SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// The string is empty.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// The string is longer than [`MAX_SPIFFE_ID_LEN`].
    #[error("SPIFFE ID is {len} bytes; at most {MAX_SPIFFE_ID_LEN} are allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The string does not start with `spiffe://`.
    #[error("SPIFFE ID must start with \"spiffe://\" (scheme spiffe, lower case)")]
    Scheme,
    /// Nothing between `spiffe://` and the path.
    #[error("SPIFFE ID has no trust domain")]
    MissingTrustDomain,
    /// The authority holds `user@`.
    #[error("SPIFFE ID must not hold userinfo (\"@\")")]
    UserInfo,
    /// The authority holds `:port`.
    #[error("SPIFFE ID must not hold a port")]
    Port,
    /// The string holds `?query`.
    #[error("SPIFFE ID must not hold a query (\"?\")")]
    Query,
    /// The string holds `#fragment`.
    #[error("SPIFFE ID must not hold a fragment (\"#\")")]
    Fragment,
    /// The trust domain name breaks a rule.
    #[error("SPIFFE ID trust domain {name:?}: {rule}")]
    TrustDomain {
        /// The trust domain as given (shortened if long).
        name: String,
        /// The rule it broke.
        rule: &'static str,
    },
    /// The path is neither empty nor starts with `/` (only from [`SpiffeId::new`]).
    #[error("SPIFFE ID path must be empty or start with \"/\"")]
    PathStart,
    /// The path ends with `/`.
    #[error("SPIFFE ID path must not end with \"/\"")]
    TrailingSlash,
    /// The path holds `//`.
    #[error("SPIFFE ID path has an empty segment")]
    EmptySegment,
    /// The path holds a `.` or `..` segment.
    #[error("SPIFFE ID path has a \".\" or \"..\" segment")]
    DotSegment,
    /// The path holds `%`.
    #[error("SPIFFE ID path must not be percent-encoded")]
    PercentEncoded,
    /// The path holds a character outside `[A-Za-z0-9._-]`.
    #[error("SPIFFE ID path holds {ch:?}; only the characters a-z A-Z 0-9 . _ - are allowed")]
    PathChar {
        /// The first offending character.
        ch: char,
    },
}

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

// === impl SpiffeId ===

impl SpiffeId {
    /// Parses `text` under the SPIFFE ID rules: scheme `spiffe`, a valid trust domain, no
    /// userinfo, port, query or fragment, and a path of non-empty segments of
    /// `[A-Za-z0-9._-]` that are neither `.` nor `..`.
    ///
    /// # Errors
    /// `text` breaks a rule; the error says which.
    pub fn parse(text: &str) -> Result<Self, SpiffeIdError> {
        if text.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if text.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: text.len() });
        }
        let rest = text.strip_prefix("spiffe://").ok_or(SpiffeIdError::Scheme)?;
        if rest.contains('#') {
            return Err(SpiffeIdError::Fragment);
        }
        if rest.contains('?') {
            return Err(SpiffeIdError::Query);
        }
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        if authority.contains('@') {
            return Err(SpiffeIdError::UserInfo);
        }
        if authority.contains(':') {
            return Err(SpiffeIdError::Port);
        }
        if authority.is_empty() {
            return Err(SpiffeIdError::MissingTrustDomain);
        }
        check_trust_domain(authority)?;
        check_path(path)?;
        Ok(Self { trust_domain: authority.to_string(), path: path.to_string() })
    }

    /// The SPIFFE ID `spiffe://{trust_domain}{path}`; `path` is empty or starts with `/`.
    ///
    /// # Errors
    /// A part breaks a SPIFFE ID rule; the error says which.
    pub fn new(trust_domain: &str, path: &str) -> Result<Self, SpiffeIdError> {
        if trust_domain.is_empty() {
            return Err(SpiffeIdError::MissingTrustDomain);
        }
        check_trust_domain(trust_domain)?;
        if !path.is_empty() && !path.starts_with('/') {
            return Err(SpiffeIdError::PathStart);
        }
        check_path(path)?;
        let id = Self { trust_domain: trust_domain.to_string(), path: path.to_string() };
        let len = id.to_string().len();
        if len > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong { len });
        }
        Ok(id)
    }

    /// Whether this ID lies in trust domain `trust_domain`.
    #[must_use]
    pub fn is_member_of(&self, trust_domain: &str) -> bool {
        self.trust_domain == trust_domain
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

fn check_trust_domain(name: &str) -> Result<(), SpiffeIdError> {
    match validate_trust_domain(name) {
        Ok(()) => Ok(()),
        Err(IdentityError::TrustDomain { rule, .. }) => {
            Err(SpiffeIdError::TrustDomain { name: quote(name), rule })
        }
        Err(_) => Err(SpiffeIdError::TrustDomain {
            name: quote(name),
            rule: "is not a valid trust domain name",
        }),
    }
}

/// Checks a path that is empty or starts with `/`.
fn check_path(path: &str) -> Result<(), SpiffeIdError> {
    let Some(path) = path.strip_prefix('/') else {
        return Ok(());
    };
    let mut segments = path.split('/').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() {
            return Err(if segments.peek().is_none() {
                SpiffeIdError::TrailingSlash
            } else {
                SpiffeIdError::EmptySegment
            });
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        if segment.contains('%') {
            return Err(SpiffeIdError::PercentEncoded);
        }
        if let Some(ch) =
            segment.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(SpiffeIdError::PathChar { ch });
        }
    }
    Ok(())
}

/// `text`, cut to [`QUOTE_LIMIT`] characters, for error messages about peer input.
fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_LIMIT) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

// === leaf and chain checks ===

/// What the leaf checks learn about an SVID.
struct Leaf {
    /// Its SPIFFE ID.
    id: SpiffeId,
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
fn parse_certificate<'a>(what: &str, der: &'a [u8]) -> Result<X509Certificate<'a>, SvidError> {
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
fn inspect_chain<C: AsRef<[u8]>>(chain: &[C]) -> Result<Leaf, SvidError> {
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
fn trust_anchors<R: AsRef<[u8]>>(
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
fn verify_path<C: AsRef<[u8]>>(
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
/// [`svid_identity`], or use [`verify_client_svid_by_trust_domain`]); never a pool of
/// several trust domains' roots.
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

/// [`verify_client_svid`] for TLS server authentication (the `https_spiffe` profile).
///
/// # Errors
/// As [`verify_client_svid`].
pub fn verify_server_svid<C: AsRef<[u8]>, R: AsRef<[u8]>>(
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
/// # Errors
/// As [`verify_client_svid`], and [`SvidError::NoBundle`] when `bundle_of` knows no
/// bundle for the leaf's trust domain.
pub fn verify_client_svid_by_trust_domain<C, F, B, R>(
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

fn unix_seconds(now: UnixTime) -> i64 {
    i64::try_from(now.as_secs()).unwrap_or(i64::MAX)
}

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
/// domain ([`verify_client_svid_by_trust_domain`]) or, for operators and replicas, against
/// the federation CA. At the handshake it accepts any chain that parses.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeferredClientVerifier;

impl DeferredClientVerifier {
    /// The verifier.
    #[must_use]
    pub const fn new() -> Self {
        Self
    }

    /// The verifier, ready for `ServerConfig::builder().with_client_cert_verifier`.
    #[must_use]
    pub fn shared() -> Arc<dyn ClientCertVerifier> {
        Arc::new(Self)
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
    /// As [`verify_server_svid`], and the SVID is not of this trust domain or not the
    /// expected one.
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

// === rustls configurations for agents and the agent API ===

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Verifier of the federation's replicas: standard WebPKI server verification (name
/// included) against the federation CA, `ca_pem` (from the join token).
///
/// # Errors
/// `ca_pem` holds no usable certificate.
pub fn federation_server_verifier(
    ca_pem: &str,
) -> Result<Arc<dyn ServerCertVerifier>, IdentityError> {
    let certs = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Tls(format!("federation CA: invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(IdentityError::Tls("federation CA: holds no CERTIFICATE block".to_string()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| IdentityError::Tls(format!("federation CA: {e}")))?;
    }
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| IdentityError::Tls(format!("federation CA: {e}")))?;
    Ok(verifier)
}

/// A client configuration that presents `chain` and `key` (the agent's SVID), verifies
/// servers with `verifier`, and speaks HTTP/2.
///
/// # Errors
/// rustls refused the certificate and key.
pub fn agent_client_config(
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
pub fn agent_api_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| IdentityError::Tls(e.to_string()))?
        .with_client_cert_verifier(DeferredClientVerifier::shared())
        .with_single_cert(chain, key)
        .map_err(|e| IdentityError::Tls(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use futures::StreamExt as _;
    use proptest::prelude::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName as Dn, DnType,
        ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use tokio::io::AsyncReadExt as _;

    use super::*;
    use crate::identity::FederationCa;

    // === fixtures ===

    /// A test CA of one trust domain: a root, or an intermediate below one.
    struct TestCa {
        /// The trust domain.
        td: String,
        /// Signs leaves and further intermediates.
        issuer: CertifiedIssuer<'static, KeyPair>,
        /// The root at the top, DER.
        root: CertificateDer<'static>,
        /// The intermediates between a leaf of this CA and the root, nearest first.
        intermediates: Vec<CertificateDer<'static>>,
    }

    /// A leaf: its chain (leaf first, then intermediates) and key.
    struct TestSvid {
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    }

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    fn ca_params(td: &str, name: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut dn = Dn::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names =
            vec![SanType::URI(format!("spiffe://{td}").try_into().expect("uri"))];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(1);
        params
    }

    impl TestCa {
        fn root(td: &str) -> Self {
            let key = KeyPair::generate().expect("key");
            let issuer = CertifiedIssuer::self_signed(ca_params(td, &format!("{td} root")), key)
                .expect("root");
            Self {
                td: td.to_string(),
                root: issuer.der().clone(),
                issuer,
                intermediates: Vec::new(),
            }
        }

        fn intermediate(&self) -> Self {
            let key = KeyPair::generate().expect("key");
            let issuer = CertifiedIssuer::signed_by(
                ca_params(&self.td, &format!("{} intermediate", self.td)),
                key,
                &self.issuer,
            )
            .expect("intermediate");
            let mut intermediates = vec![issuer.der().clone()];
            intermediates.extend(self.intermediates.iter().cloned());
            Self { td: self.td.clone(), root: self.root.clone(), issuer, intermediates }
        }

        /// A well-formed SVID for `id`, after `edit` had its way with the parameters.
        fn leaf_with(&self, id: &str, edit: impl FnOnce(&mut CertificateParams)) -> TestSvid {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.subject_alt_names = vec![SanType::URI(id.try_into().expect("uri"))];
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages =
                vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
            params.use_authority_key_identifier_extension = true;
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::minutes(5);
            params.not_after = now + time::Duration::hours(1);
            edit(&mut params);
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &self.issuer).expect("leaf");
            let mut chain = vec![cert.der().clone()];
            chain.extend(self.intermediates.iter().cloned());
            TestSvid { chain, key: PrivatePkcs8KeyDer::from(key.serialize_der()).into() }
        }

        fn leaf(&self, id: &str) -> TestSvid {
            self.leaf_with(id, |_| {})
        }

        fn roots(&self) -> Vec<CertificateDer<'static>> {
            vec![self.root.clone()]
        }
    }

    fn refusal(svid: &TestSvid) -> SvidError {
        svid_identity(&svid.chain[0]).expect_err("the leaf checks must refuse it")
    }

    // === SPIFFE IDs ===

    #[test]
    fn spiffe_ids_parse_into_trust_domain_and_path() {
        let id: SpiffeId = "spiffe://cluster-a.example/ns/default/sa/web".parse().expect("valid");
        assert_eq!(id.trust_domain, "cluster-a.example");
        assert_eq!(id.path, "/ns/default/sa/web");
        assert_eq!(id.to_string(), "spiffe://cluster-a.example/ns/default/sa/web");
        let root = SpiffeId::parse("spiffe://td").expect("trust domain ID");
        assert_eq!(root.path, "");
        assert_eq!(
            SpiffeId::new("td", "/A-z_0.9/x").expect("new").to_string(),
            "spiffe://td/A-z_0.9/x"
        );
        assert!(id.is_member_of("cluster-a.example"));
        assert!(!id.is_member_of("cluster-b.example"));
    }

    #[test]
    fn spiffe_id_rules_are_enforced() {
        use SpiffeIdError as E;
        let cases: &[(&str, SpiffeIdError)] = &[
            ("", E::Empty),
            ("http://td/x", E::Scheme),
            ("SPIFFE://td/x", E::Scheme),
            ("spiffe:/td/x", E::Scheme),
            ("spiffe://", E::MissingTrustDomain),
            ("spiffe:///x", E::MissingTrustDomain),
            ("spiffe://user@td/x", E::UserInfo),
            ("spiffe://td:8443/x", E::Port),
            ("spiffe://td/x?q=1", E::Query),
            ("spiffe://td/x#frag", E::Fragment),
            ("spiffe://td/", E::TrailingSlash),
            ("spiffe://td/x/", E::TrailingSlash),
            ("spiffe://td//x", E::EmptySegment),
            ("spiffe://td/./x", E::DotSegment),
            ("spiffe://td/x/..", E::DotSegment),
            ("spiffe://td/x%2Fy", E::PercentEncoded),
            ("spiffe://td/a b", E::PathChar { ch: ' ' }),
            ("spiffe://td/ü", E::PathChar { ch: 'ü' }),
        ];
        for (text, expected) in cases {
            assert_eq!(SpiffeId::parse(text).as_ref(), Err(expected), "{text:?} must be refused");
        }
        for bad_td in ["spiffe://TD/x", "spiffe://t%64/x", "spiffe://t_d!/x"] {
            assert!(
                matches!(SpiffeId::parse(bad_td), Err(E::TrustDomain { .. })),
                "{bad_td:?} must be refused for its trust domain"
            );
        }
        let long = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        assert!(matches!(SpiffeId::parse(&long), Err(E::TooLong { .. })));
        assert_eq!(SpiffeId::new("td", "x"), Err(E::PathStart));
        assert_eq!(SpiffeId::new("", "/x"), Err(E::MissingTrustDomain));
    }

    proptest! {
        #[test]
        fn spiffe_id_parsing_never_panics(text in "\\PC{0,300}") {
            let _ = SpiffeId::parse(&text);
        }

        #[test]
        fn spiffe_id_parsing_never_panics_near_the_scheme(text in "spiffe://[a-z@:/?#%.A-Z0-9_-]{0,60}") {
            if let Ok(id) = SpiffeId::parse(&text) {
                prop_assert_eq!(id.to_string(), text);
            }
        }

        #[test]
        fn valid_spiffe_ids_round_trip(
            td in "[a-z0-9_][a-z0-9_-]{0,12}(\\.[a-z0-9_-]{1,12}){0,3}",
            segments in prop::collection::vec("[A-Za-z0-9._-]{1,12}", 0..6),
        ) {
            prop_assume!(segments.iter().all(|s| s != "." && s != ".."));
            let path: String = segments.iter().map(|s| format!("/{s}")).collect();
            let text = format!("spiffe://{td}{path}");
            let id = SpiffeId::parse(&text).expect("valid");
            prop_assert_eq!(&id.trust_domain, &td);
            prop_assert_eq!(&id.path, &path);
            prop_assert_eq!(id.to_string(), text);
            prop_assert_eq!(SpiffeId::new(&td, &path).expect("valid parts"), id);
        }
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

    // === rustls verifiers ===

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
        let id = verify_client_svid_by_trust_domain(chain, |td| bundles.get(td), now())
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
