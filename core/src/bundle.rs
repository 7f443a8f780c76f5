//! SPIFFE trust bundles: strict parsing and validation of the JWKS documents (and PEM CA
//! files) that members publish, and their canonical form in the replicated state.
//!
//! Every rule of the "Bundle validation" table in SECURITY.md that can be decided from the
//! document, the trust domain and the time alone is enforced here; the checks that need the
//! stored state (a key already in another trust domain's bundle, a sequence number that does
//! not grow, a bundle that would no longer certify the submitting agent) are the caller's,
//! with [`TrustBundle::fingerprints`], [`TrustBundle::sequence`] and
//! [`TrustBundle::x509_roots_der`] as their data.
//!
//! Where this module is stricter than the SPIFFE Trust Domain and Bundle specification it
//! says so: the specification asks a *consumer* to skip JWKs of unknown `use` or `kty`; a
//! federator that republishes bundles to others rejects them instead, so that what one
//! member sent is exactly what the others receive.
//!
//! Decisions:
//! - A missing `spiffe_sequence` (the specification says SHOULD, not MUST) reads as 0;
//!   [`TrustBundle::to_spiffe_json`] always writes it. The caller's replay check ("must be
//!   greater than the stored one") therefore refuses an unsequenced update of a stored bundle.
//! - A missing `spiffe_refresh_hint` stays `None`; a present one must lie within the policy.
//! - Members the specification does not define are ignored and not kept, except the JWK
//!   members that must never be published (`d`, `p`, `q`, `dp`, `dq`, `qi`, `k`, `oth`,
//!   `x5u`, `jku`), which reject the whole document.
//! - Key fingerprints are the hex SHA-256 of the key's canonical DER SubjectPublicKeyInfo,
//!   for X.509 and JWT authorities alike, so the same key used for both SVID types (which
//!   the specification warns against) is caught as "the same key twice".
//! - Supported keys are what the federation's rustls/ring stack can verify: ECDSA P-256 and
//!   P-384, RSA of 2048 to 8192 bits, and (X.509 authorities only, as JWT-SVID has no EdDSA)
//!   Ed25519. P-521 is refused as unsupported.

mod json;
mod jwt;
mod key;
mod pem;
mod x509;

#[cfg(test)]
mod tests;

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use self::json::{Object, Path, Value};

/// The gRPC metadata key under which a replica names a refusal's kind, so that an agent
/// tells one from another without reading the message.
pub const REFUSAL_METADATA_KEY: &str = "federator-refusal";
/// The kind of refusal of a bundle whose sequence is not above the stored one.
pub const REFUSAL_SEQUENCE_REPLAY: &str = "sequence-replay";

/// Whether `error` refuses a bundle for a sequence at or below the stored one.
#[must_use]
pub fn is_sequence_replay(error: &BundleError) -> bool {
    matches!(error, BundleError::Invalid { field, rule }
        if field == "spiffe_sequence" && rule.ends_with("(replay)"))
}

/// `use` of the JWKs that hold X.509-SVID CA certificates.
pub const USE_X509_SVID: &str = "x509-svid";
/// `use` of the JWKs that hold JWT-SVID signing keys.
pub const USE_JWT_SVID: &str = "jwt-svid";

/// JWK members that carry private key material; publishing one leaks a secret.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "k", "oth"];
/// JWK members that point at key material elsewhere; a bundle must be self-contained.
const REMOTE_MEMBERS: [&str; 2] = ["x5u", "jku"];

/// A validated SPIFFE trust bundle of one trust domain.
///
/// Stored in the replicated state (postcard), so it holds no free-form JSON values: JWT
/// authorities are kept as canonical JSON strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustBundle {
    /// The trust domain the bundle is authoritative for, e.g. `cluster-a.example`.
    pub trust_domain: String,
    /// CA certificates that sign X.509-SVIDs, in document order.
    pub x509_authorities: Vec<X509Authority>,
    /// Public keys that sign JWT-SVIDs, in document order.
    pub jwt_authorities: Vec<JwtAuthority>,
    /// `spiffe_sequence` of the document; 0 when it had none.
    pub sequence: u64,
    /// `spiffe_refresh_hint` of the document, in seconds.
    pub refresh_hint_secs: Option<u64>,
}

/// The `spiffe_refresh_hint` served with a bundle that carries none, seconds (the
/// default of the server's `[bundle_endpoint] refresh_hint_seconds` and the agent's
/// `bundle_refresh_hint_seconds`).
pub const DEFAULT_REFRESH_HINT_SECS: u64 = 300;
/// Bounds of a configured default refresh hint, seconds (those of a published one).
pub const REFRESH_HINT_BOUNDS: std::ops::RangeInclusive<u64> = 10..=7 * 24 * 3600;

/// One X.509-SVID CA certificate of a bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct X509Authority {
    /// The certificate, DER (one byte string in encodings; see [`crate::state::ProbeValue`]).
    #[serde(with = "serde_bytes")]
    pub der: Vec<u8>,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// Hex SHA-256 of the certificate's canonical SubjectPublicKeyInfo (cross-bundle
    /// uniqueness).
    pub fingerprint: String,
}

/// One JWT-SVID signing key of a bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtAuthority {
    /// The key ID (`kid`).
    pub kid: String,
    /// The canonical public JWK: `kty`, `use` (`jwt-svid`), `kid`, optional `alg`, then
    /// `crv`/`x`/`y` or `n`/`e`, compact, in that order.
    pub jwk_json: String,
    /// Hex SHA-256 of the key's canonical SubjectPublicKeyInfo (same scheme as
    /// [`X509Authority::fingerprint`]).
    pub fingerprint: String,
}

/// Limits and clock for bundle validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationPolicy {
    /// The time to validate certificates at, unix seconds (given by the caller so that every
    /// replica decides alike).
    pub now: i64,
    /// Largest accepted document, bytes.
    pub max_bytes: usize,
    /// Most keys (or PEM certificates) in one bundle.
    pub max_keys: usize,
    /// Deepest accepted nesting of JSON arrays and objects (the document object is level 1).
    pub max_depth: usize,
    /// How far in the future a certificate's `notBefore` may lie, seconds.
    pub pre_publication_window_secs: i64,
    /// Smallest accepted `spiffe_refresh_hint`, seconds.
    pub min_refresh_hint_secs: u64,
    /// Largest accepted `spiffe_refresh_hint`, seconds.
    pub max_refresh_hint_secs: u64,
}

// === impl ValidationPolicy ===

impl ValidationPolicy {
    /// The default limits, validating at `now` (unix seconds).
    #[must_use]
    pub fn at(now: i64) -> Self {
        Self {
            now,
            max_bytes: 256 * 1024,
            max_keys: 64,
            max_depth: 16,
            pre_publication_window_secs: 300,
            min_refresh_hint_secs: *REFRESH_HINT_BOUNDS.start(),
            max_refresh_hint_secs: *REFRESH_HINT_BOUNDS.end(),
        }
    }
}

impl Default for ValidationPolicy {
    /// The default limits, validating at the current wall-clock time. Code that must decide
    /// alike on every replica uses [`ValidationPolicy::at`] with an agreed time instead.
    fn default() -> Self {
        Self::at(crate::clock::unix_now())
    }
}

/// Why a bundle was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum BundleError {
    /// A member of the document (or the document, the PEM text or the trust domain) broke a
    /// rule.
    #[error("{field}: {rule}")]
    Invalid {
        /// Where: a JSON path such as `keys[2].x5c`, or `body`, `pem[1]`, `trust_domain`.
        field: String,
        /// The rule it broke.
        rule: String,
    },
    /// The body is not well-formed JSON.
    #[error("body: not well-formed JSON at line {line} column {column}: {problem}")]
    Syntax {
        /// Line of the fault, from 1.
        line: usize,
        /// Column of the fault, from 1.
        column: usize,
        /// What the JSON reader found.
        problem: String,
    },
}

// === impl BundleError ===

impl BundleError {
    /// The field the error is about (`body` for malformed JSON).
    #[must_use]
    pub fn field(&self) -> &str {
        match self {
            Self::Invalid { field, .. } => field,
            Self::Syntax { .. } => "body",
        }
    }

    /// The rule that was broken.
    #[must_use]
    pub fn rule(&self) -> &str {
        match self {
            Self::Invalid { rule, .. } => rule,
            Self::Syntax { problem, .. } => problem,
        }
    }
}

/// Shorthand for [`BundleError::Invalid`].
fn invalid(field: impl Into<String>, rule: impl Into<String>) -> BundleError {
    BundleError::Invalid { field: field.into(), rule: rule.into() }
}

/// Quotes an untrusted string for an error message: escaped and cut to 64 characters.
fn quoted(s: &str) -> String {
    const LIMIT: usize = 64;
    if s.chars().count() <= LIMIT {
        format!("{s:?}")
    } else {
        let cut: String = s.chars().take(LIMIT).collect();
        format!("{cut:?}…")
    }
}

/// Parses and validates a SPIFFE bundle (JWKS document) for `trust_domain`.
///
/// # Errors
/// The first rule the document breaks, naming the field.
pub fn parse_spiffe_bundle(
    trust_domain: &str,
    json: &[u8],
    policy: &ValidationPolicy,
) -> Result<TrustBundle, BundleError> {
    check_trust_domain(trust_domain)?;
    if json.len() > policy.max_bytes {
        return Err(invalid(
            "body",
            format!("must be at most {} bytes, is {}", policy.max_bytes, json.len()),
        ));
    }
    let text = std::str::from_utf8(json).map_err(|e| {
        invalid("body", format!("must be UTF-8 (invalid byte at offset {})", e.valid_up_to()))
    })?;
    let document = json::read(text, policy.max_depth)?;
    let root = Object::of(&document, &Path::Root)?;

    let sequence = match root.get("spiffe_sequence") {
        None => 0,
        Some(v) => v.as_u64().ok_or_else(|| {
            invalid("spiffe_sequence", "must be an integer from 0 to 18446744073709551615")
        })?,
    };
    let refresh_hint_secs = match root.get("spiffe_refresh_hint") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            invalid("spiffe_refresh_hint", "must be a non-negative integer number of seconds")
        })?),
    };
    check_refresh_hint(refresh_hint_secs, policy)?;

    let keys_path = Path::Member(&Path::Root, "keys");
    let keys = match root.get("keys") {
        None => return Err(invalid("keys", "must be set")),
        Some(Value::Array(keys)) => keys,
        Some(_) => return Err(invalid("keys", "must be an array")),
    };
    if keys.is_empty() {
        return Err(invalid("keys", "must hold at least one key"));
    }
    if keys.len() > policy.max_keys {
        return Err(invalid(
            "keys",
            format!("must hold at most {} keys, holds {}", policy.max_keys, keys.len()),
        ));
    }

    let mut bundle = TrustBundle {
        trust_domain: trust_domain.to_string(),
        x509_authorities: Vec::new(),
        jwt_authorities: Vec::new(),
        sequence,
        refresh_hint_secs,
    };
    let mut seen = Fingerprints::default();
    let mut kids: HashMap<String, usize> = HashMap::new();
    for (i, key) in keys.iter().enumerate() {
        let path = Path::Index(&keys_path, i);
        let jwk = Object::of(key, &path)?;
        match check_common_members(&jwk)? {
            KeyUse::X509Svid => {
                let authority = x509::parse_x509_svid_key(&jwk, trust_domain, policy)?;
                seen.insert(&authority.fingerprint, path.to_string())?;
                bundle.x509_authorities.push(authority);
            }
            KeyUse::JwtSvid => {
                let authority = jwt::parse_jwt_svid_key(&jwk)?;
                seen.insert(&authority.fingerprint, path.to_string())?;
                if let Some(first) = kids.insert(authority.kid.clone(), i) {
                    return Err(invalid(
                        jwk.field("kid"),
                        format!("duplicates the kid of keys[{first}]"),
                    ));
                }
                bundle.jwt_authorities.push(authority);
            }
        }
    }
    Ok(bundle)
}

/// Builds a bundle from PEM CA certificates (X.509 authorities only), validating each like
/// the certificate of an `x509-svid` key. Only `CERTIFICATE` blocks are accepted (a private
/// key block rejects the file); text between blocks is ignored.
///
/// # Errors
/// The first rule the input breaks; certificate fields are named `pem[i]`.
pub fn parse_pem_bundle(
    trust_domain: &str,
    pem: &[u8],
    sequence: u64,
    refresh_hint_secs: Option<u64>,
    policy: &ValidationPolicy,
) -> Result<TrustBundle, BundleError> {
    check_trust_domain(trust_domain)?;
    if pem.len() > policy.max_bytes {
        return Err(invalid(
            "pem",
            format!("must be at most {} bytes, is {}", policy.max_bytes, pem.len()),
        ));
    }
    check_refresh_hint(refresh_hint_secs, policy)?;
    let certificates = pem::read_certificates(pem, policy.max_keys)?;
    let mut seen = Fingerprints::default();
    let mut x509_authorities = Vec::with_capacity(certificates.len());
    for (i, der) in certificates.into_iter().enumerate() {
        let field = format!("pem[{i}]");
        let authority = x509::check_ca_certificate(der, &field, trust_domain, policy)?.authority;
        seen.insert(&authority.fingerprint, field)?;
        x509_authorities.push(authority);
    }
    Ok(TrustBundle {
        trust_domain: trust_domain.to_string(),
        x509_authorities,
        jwt_authorities: Vec::new(),
        sequence,
        refresh_hint_secs,
    })
}

fn check_trust_domain(trust_domain: &str) -> Result<(), BundleError> {
    crate::identity::validate_trust_domain(trust_domain).map_err(|e| match e {
        crate::identity::IdentityError::TrustDomain { rule, .. } => invalid("trust_domain", rule),
        other => invalid("trust_domain", other.to_string()),
    })
}

fn check_refresh_hint(hint: Option<u64>, policy: &ValidationPolicy) -> Result<(), BundleError> {
    match hint {
        Some(secs)
            if secs < policy.min_refresh_hint_secs || secs > policy.max_refresh_hint_secs =>
        {
            Err(invalid(
                "spiffe_refresh_hint",
                format!(
                    "must be between {} and {} seconds, is {secs}",
                    policy.min_refresh_hint_secs, policy.max_refresh_hint_secs
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// The SVID type a JWK is authoritative for.
enum KeyUse {
    X509Svid,
    JwtSvid,
}

/// Checks the members every JWK must have or must not have, and returns its `use`.
fn check_common_members(jwk: &Object<'_>) -> Result<KeyUse, BundleError> {
    for name in PRIVATE_MEMBERS {
        if jwk.get(name).is_some() {
            return Err(invalid(
                jwk.field(name),
                "is private key material and must never be published",
            ));
        }
    }
    for name in REMOTE_MEMBERS {
        if jwk.get(name).is_some() {
            return Err(invalid(
                jwk.field(name),
                "must not be set: a bundle carries its keys, it never points at them",
            ));
        }
    }
    let key_use = match jwk.required_str("use")? {
        USE_X509_SVID => KeyUse::X509Svid,
        USE_JWT_SVID => KeyUse::JwtSvid,
        other => {
            return Err(invalid(
                jwk.field("use"),
                format!("must be x509-svid or jwt-svid, is {}", quoted(other)),
            ));
        }
    };
    match jwk.required_str("kty")? {
        "EC" | "RSA" | "OKP" => Ok(key_use),
        "oct" => Err(invalid(
            jwk.field("kty"),
            "must not be oct: a symmetric key is a secret and never goes in a bundle",
        )),
        other => Err(invalid(
            jwk.field("kty"),
            format!("unknown key type {}; must be EC, RSA or OKP", quoted(other)),
        )),
    }
}

/// Fingerprints seen so far in one bundle, to refuse the same key twice.
#[derive(Default)]
struct Fingerprints(HashMap<String, String>);

impl Fingerprints {
    fn insert(&mut self, fingerprint: &str, field: String) -> Result<(), BundleError> {
        if let Some(first) = self.0.get(fingerprint) {
            return Err(invalid(field, format!("holds the same public key as {first}")));
        }
        self.0.insert(fingerprint.to_string(), field);
        Ok(())
    }
}

// === impl TrustBundle ===

impl TrustBundle {
    /// The bundle as a SPIFFE JWKS document: X.509 authorities first (`x5c` plus the key
    /// members derived from the certificate), then JWT authorities, then `spiffe_sequence`
    /// and, when set, `spiffe_refresh_hint`. Compact and deterministic;
    /// [`parse_spiffe_bundle`] of it gives back an equal bundle.
    #[must_use]
    pub fn to_spiffe_json(&self) -> String {
        self.write_spiffe_json(self.refresh_hint_secs)
    }

    /// The document as served to consumers (the bundle endpoint, the agent's files and
    /// etcd keys): [`TrustBundle::to_spiffe_json`] with `spiffe_refresh_hint` always set,
    /// as the SPIFFE Trust Domain and Bundle specification (§4.1.2) asks — the member's
    /// own hint (validated within the policy's bounds when it was published), else
    /// `default_secs`. Not the canonical encoding: it depends on a local setting, so
    /// nothing is digested or replicated in this form.
    #[must_use]
    pub fn to_served_json(&self, default_secs: u64) -> String {
        self.write_spiffe_json(Some(self.refresh_hint_secs.unwrap_or(default_secs)))
    }

    fn write_spiffe_json(&self, refresh_hint_secs: Option<u64>) -> String {
        let mut out = String::from("{\"keys\":[");
        let mut first = true;
        for authority in &self.x509_authorities {
            if !std::mem::take(&mut first) {
                out.push(',');
            }
            out.push_str("{\"use\":\"x509-svid\"");
            if let Some(key) = x509::certificate_key(&authority.der) {
                key.write_jwk_members(&mut out);
            }
            out.push_str(",\"x5c\":[\"");
            out.push_str(&STANDARD.encode(&authority.der));
            out.push_str("\"]}");
        }
        for authority in &self.jwt_authorities {
            if !std::mem::take(&mut first) {
                out.push(',');
            }
            out.push_str(&authority.jwk_json);
        }
        out.push_str("],\"spiffe_sequence\":");
        out.push_str(&self.sequence.to_string());
        if let Some(hint) = refresh_hint_secs {
            out.push_str(",\"spiffe_refresh_hint\":");
            out.push_str(&hint.to_string());
        }
        out.push('}');
        out
    }

    /// The X.509 authorities as concatenated PEM `CERTIFICATE` blocks.
    #[must_use]
    pub fn to_pem(&self) -> String {
        let mut out = String::new();
        for authority in &self.x509_authorities {
            pem::write_certificate(&mut out, &authority.der);
        }
        out
    }

    /// Hex SHA-256 of [`TrustBundle::to_spiffe_json`].
    #[must_use]
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.to_spiffe_json().as_bytes()))
    }

    /// The fingerprint of every key, X.509 authorities first.
    pub fn fingerprints(&self) -> impl Iterator<Item = &str> {
        self.x509_authorities
            .iter()
            .map(|a| a.fingerprint.as_str())
            .chain(self.jwt_authorities.iter().map(|a| a.fingerprint.as_str()))
    }

    /// The X.509 CA certificates, DER, for building a root store.
    #[must_use]
    pub fn x509_roots_der(&self) -> Vec<&[u8]> {
        self.x509_authorities.iter().map(|a| a.der.as_slice()).collect()
    }
}
