//! X.509-SVID authorities: the checks on a CA certificate, and on the `x509-svid` JWK that
//! carries one.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::PublicKey as ParsedKey;
use x509_parser::signature_algorithm::RsaSsaPssParams;
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo, X509Version};

use super::json::{Object, Value};
use super::key::{Curve, KeyError, PublicKey, decode_base64url};
use super::{BundleError, ValidationPolicy, X509Authority, invalid, quoted};

/// A rule a CA certificate breaks, in the checks below that of its basic structure; the
/// text completes a sentence that names the certificate's field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
enum CertRule {
    #[error("signatureAlgorithm differs from the signature field of tbsCertificate")]
    SignatureFieldMismatch,
    #[error("is signed with {0}: SHA-1, MD5 and weaker hashes are refused")]
    WeakSignature(&'static str),
    #[error("has unreadable RSASSA-PSS parameters")]
    UnreadablePssParameters,
    #[error("is signed with RSASSA-PSS over hash {0}: SHA-1, MD5 and weaker hashes are refused")]
    WeakPssHash(String),
    #[error(
        "signature algorithm {0} is not supported (RSA, RSASSA-PSS or ECDSA with SHA-256 or \
         stronger, or Ed25519)"
    )]
    UnsupportedSignature(String),
    #[error("has an EC key on curve {0}; supported are P-256 and P-384")]
    UnsupportedCurve(String),
    #[error("has an EC key without a named curve")]
    UnnamedCurve,
    #[error("public key {0}")]
    EcPoint(KeyError),
    /// The RSA key breaks the rule given.
    #[error("{0}")]
    RsaKey(String),
    #[error("has an unreadable RSA public key")]
    UnreadableRsaKey,
    #[error("has an Ed25519 key that is not 32 bytes")]
    Ed25519Length,
    #[error("public key algorithm {0} is not supported (EC P-256/P-384, RSA, Ed25519)")]
    UnsupportedKeyAlgorithm(String),
    #[error("has an unreadable nameConstraints: {0}")]
    UnreadableNameConstraints(String),
    /// `uri` is quoted.
    #[error("nameConstraints permit URIs of {uri}, outside trust domain {trust_domain}")]
    PermittedUri { uri: String, trust_domain: String },
    /// `dns` is quoted.
    #[error("nameConstraints permit DNS names {dns}, outside trust domain {trust_domain}")]
    PermittedDns { dns: String, trust_domain: String },
    #[error("nameConstraints permit {kind} names, which lie outside trust domain {trust_domain}")]
    PermittedOther { kind: &'static str, trust_domain: String },
    #[error("has an unreadable subjectAltName: {0}")]
    UnreadableSubjectAltName(String),
    /// `uri` is quoted.
    #[error("subjectAltName {uri} names another trust domain than {trust_domain}")]
    ForeignSpiffeName { uri: String, trust_domain: String },
}

/// Signature algorithms a CA certificate may be signed with, by OID.
const ACCEPTED_SIGNATURES: [&str; 7] = [
    "1.2.840.113549.1.1.11", // sha256WithRSAEncryption
    "1.2.840.113549.1.1.12", // sha384WithRSAEncryption
    "1.2.840.113549.1.1.13", // sha512WithRSAEncryption
    "1.2.840.10045.4.3.2",   // ecdsa-with-SHA256
    "1.2.840.10045.4.3.3",   // ecdsa-with-SHA384
    "1.2.840.10045.4.3.4",   // ecdsa-with-SHA512
    "1.3.101.112",           // Ed25519
];

/// Signature algorithms on broken hashes, by OID, with their names.
const WEAK_SIGNATURES: [(&str, &str); 7] = [
    ("1.2.840.113549.1.1.2", "md2WithRSAEncryption"),
    ("1.2.840.113549.1.1.3", "md4WithRSAEncryption"),
    ("1.2.840.113549.1.1.4", "md5WithRSAEncryption"),
    ("1.2.840.113549.1.1.5", "sha1WithRSAEncryption"),
    ("1.3.14.3.2.29", "sha1WithRSASignature"),
    ("1.2.840.10045.4.1", "ecdsa-with-SHA1"),
    ("1.2.840.10040.4.3", "dsa-with-SHA1"),
];

/// RSASSA-PSS; its hash is in the parameters.
const RSASSA_PSS: &str = "1.2.840.113549.1.1.10";
/// Hashes RSASSA-PSS may use: SHA-256, SHA-384, SHA-512.
const PSS_HASHES: [&str; 3] =
    ["2.16.840.1.101.3.4.2.1", "2.16.840.1.101.3.4.2.2", "2.16.840.1.101.3.4.2.3"];

/// A CA certificate that passed every check, and its key.
pub(super) struct CheckedCertificate {
    /// What the bundle keeps.
    pub(super) authority: X509Authority,
    /// The certificate's public key.
    pub(super) key: PublicKey,
}

/// Parses the `x509-svid` JWK `jwk` (whose `use` and `kty` were checked).
pub(super) fn parse_x509_svid_key(
    jwk: &Object<'_>,
    trust_domain: &str,
    policy: &ValidationPolicy,
) -> Result<X509Authority, BundleError> {
    jwk.forbid("kid", "must not be set on an x509-svid key (X509-SVID specification §6.1)")?;
    let x5c_field = jwk.field("x5c");
    let chain = match jwk.get("x5c") {
        None => return Err(invalid(x5c_field, "must be set on an x509-svid key")),
        Some(Value::Array(chain)) => chain,
        Some(other) => {
            return Err(invalid(x5c_field, format!("must be an array, is {}", other.kind())));
        }
    };
    if chain.len() != 1 {
        return Err(invalid(
            x5c_field,
            format!("must hold exactly one certificate, holds {}", chain.len()),
        ));
    }
    let cert_field = format!("{x5c_field}[0]");
    let der = match &chain[0] {
        Value::String(b64) => STANDARD.decode(b64).map_err(|_| {
            invalid(&cert_field, "must be standard base64 (with padding) of a DER certificate")
        })?,
        other => {
            return Err(invalid(&cert_field, format!("must be a string, is {}", other.kind())));
        }
    };
    let checked = check_ca_certificate(der, &cert_field, trust_domain, policy)?;
    check_jwk_matches(jwk, &checked.key)?;
    Ok(checked.authority)
}

/// Checks that the key members of `jwk`, where present, are those of the certificate key.
fn check_jwk_matches(jwk: &Object<'_>, key: &PublicKey) -> Result<(), BundleError> {
    let kty = jwk.required_str("kty")?;
    if kty != key.kty() {
        return Err(invalid(
            jwk.field("kty"),
            format!("is {} but the certificate's key is {}", quoted(kty), key.kty()),
        ));
    }
    let expected = key.jwk_params();
    for name in ["crv", "x", "y", "n", "e"] {
        let Some(given) = jwk.optional_str(name)? else {
            continue;
        };
        let field = jwk.field(name);
        let Some((_, want)) = expected.iter().find(|(n, _)| *n == name) else {
            return Err(invalid(field, format!("does not belong to a key of type {}", key.kty())));
        };
        let same = if name == "crv" {
            given == want
        } else {
            // Compare octets so that a non-canonical encoding is named as such.
            let given =
                decode_base64url(given).map_err(|rule| invalid(&field, rule.to_string()))?;
            decode_base64url(want).is_ok_and(|want| want == given)
        };
        if !same {
            return Err(invalid(field, "does not match the public key of the certificate in x5c"));
        }
    }
    Ok(())
}

/// The public key of DER certificate `der`, for writing its JWK members; `None` if the
/// certificate does not parse or has an unsupported key (never for a checked one).
pub(super) fn certificate_key(der: &[u8]) -> Option<PublicKey> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    public_key(cert.public_key()).ok()
}

/// Checks that `der` is a usable CA certificate of `trust_domain` at `policy.now`. Errors
/// name `field`.
pub(super) fn check_ca_certificate(
    der: Vec<u8>,
    field: &str,
    trust_domain: &str,
    policy: &ValidationPolicy,
) -> Result<CheckedCertificate, BundleError> {
    let fail = |rule: String| invalid(field, rule);
    let (rest, cert) = X509Certificate::from_der(&der)
        .map_err(|e| fail(format!("is not a DER X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(fail(format!("has {} bytes after the certificate", rest.len())));
    }
    if cert.version() != X509Version::V3 {
        return Err(fail(format!("must be an X.509 v3 certificate, is v{}", cert.version().0 + 1)));
    }
    check_signature_algorithm(&cert).map_err(|rule| fail(rule.to_string()))?;

    match cert.basic_constraints() {
        Err(e) => return Err(fail(format!("has an unreadable basicConstraints: {e}"))),
        Ok(None) => {
            return Err(fail(
                "must have basicConstraints with CA=true, has no basicConstraints".to_string(),
            ));
        }
        Ok(Some(bc)) if !bc.value.ca => {
            return Err(fail("basicConstraints must have CA=true".to_string()));
        }
        Ok(Some(_)) => {}
    }
    match cert.key_usage() {
        Err(e) => return Err(fail(format!("has an unreadable keyUsage: {e}"))),
        Ok(None) => {
            return Err(fail("must have keyUsage with keyCertSign, has no keyUsage".to_string()));
        }
        Ok(Some(ku)) if !ku.value.key_cert_sign() => {
            return Err(fail("keyUsage must include keyCertSign".to_string()));
        }
        Ok(Some(_)) => {}
    }

    let key = public_key(cert.public_key()).map_err(|rule| fail(rule.to_string()))?;

    let validity = cert.validity();
    let (not_before, not_after) = (validity.not_before.timestamp(), validity.not_after.timestamp());
    if not_after < not_before {
        return Err(fail(format!(
            "validity ends ({}) before it begins ({})",
            validity.not_after, validity.not_before
        )));
    }
    if not_after < policy.now {
        return Err(fail(format!(
            "has expired: notAfter is {} ({not_after}), now is {}",
            validity.not_after, policy.now
        )));
    }
    if not_before > policy.now.saturating_add(policy.pre_publication_window_secs) {
        return Err(fail(format!(
            "is not yet valid: notBefore is {} ({not_before}), more than {} s after now ({})",
            validity.not_before, policy.pre_publication_window_secs, policy.now
        )));
    }

    check_name_constraints(&cert, trust_domain).map_err(|rule| fail(rule.to_string()))?;
    check_spiffe_names(&cert, trust_domain).map_err(|rule| fail(rule.to_string()))?;

    let fingerprint = key.fingerprint();
    Ok(CheckedCertificate {
        authority: X509Authority { der, not_before, not_after, fingerprint },
        key,
    })
}

fn check_signature_algorithm(cert: &X509Certificate<'_>) -> Result<(), CertRule> {
    let outer = &cert.signature_algorithm;
    if outer.algorithm != cert.tbs_certificate.signature.algorithm {
        return Err(CertRule::SignatureFieldMismatch);
    }
    let oid = outer.algorithm.to_id_string();
    if let Some((_, name)) = WEAK_SIGNATURES.iter().find(|(weak, _)| *weak == oid) {
        return Err(CertRule::WeakSignature(name));
    }
    if oid == RSASSA_PSS {
        return check_pss_hash(outer);
    }
    if ACCEPTED_SIGNATURES.contains(&oid.as_str()) {
        return Ok(());
    }
    Err(CertRule::UnsupportedSignature(oid))
}

fn check_pss_hash(algorithm: &AlgorithmIdentifier<'_>) -> Result<(), CertRule> {
    let params = algorithm
        .parameters
        .as_ref()
        .and_then(|any| RsaSsaPssParams::try_from(any).ok())
        .ok_or(CertRule::UnreadablePssParameters)?;
    let hash = params.hash_algorithm_oid().to_id_string();
    if PSS_HASHES.contains(&hash.as_str()) { Ok(()) } else { Err(CertRule::WeakPssHash(hash)) }
}

/// The certificate's public key, if of a supported type and size.
fn public_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<PublicKey, CertRule> {
    let algorithm = spki.algorithm.algorithm.to_id_string();
    match algorithm.as_str() {
        "1.2.840.10045.2.1" => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string());
            let curve = match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => Curve::P256,
                Some("1.3.132.0.34") => Curve::P384,
                Some(other) => {
                    let name = match other {
                        "1.3.132.0.35" => "P-521",
                        "1.3.132.0.10" => "secp256k1",
                        oid => oid,
                    };
                    return Err(CertRule::UnsupportedCurve(name.to_string()));
                }
                None => return Err(CertRule::UnnamedCurve),
            };
            PublicKey::ec_from_sec1(curve, &spki.subject_public_key.data).map_err(CertRule::EcPoint)
        }
        "1.2.840.113549.1.1.1" => match spki.parsed() {
            Ok(ParsedKey::RSA(rsa)) => PublicKey::rsa(rsa.modulus, rsa.exponent)
                .map_err(|problem| CertRule::RsaKey(problem.into_rule())),
            _ => Err(CertRule::UnreadableRsaKey),
        },
        "1.3.101.112" => {
            let x = spki.subject_public_key.data.to_vec();
            if x.len() == 32 { Ok(PublicKey::Ed25519 { x }) } else { Err(CertRule::Ed25519Length) }
        }
        other => Err(CertRule::UnsupportedKeyAlgorithm(other.to_string())),
    }
}

/// Refuses permitted name subtrees that reach outside `trust_domain`. Excluded subtrees
/// only narrow and are fine.
///
/// In SPIFFE every URI host is its own trust domain, so a permitted URI subtree must be the
/// trust domain itself (as the RFC 5280 host `td`, or written `spiffe://td`); a `.td` subtree
/// would permit other trust domains. A permitted DNS subtree may be the trust domain name or
/// a name below it. Permitted directory names do not name hosts and are fine; any other kind
/// (IP address, e-mail, other name…) is refused.
fn check_name_constraints(cert: &X509Certificate<'_>, trust_domain: &str) -> Result<(), CertRule> {
    let constraints = match cert.name_constraints() {
        Err(e) => return Err(CertRule::UnreadableNameConstraints(e.to_string())),
        Ok(None) => return Ok(()),
        Ok(Some(nc)) => nc.value,
    };
    let below = format!(".{trust_domain}");
    for subtree in constraints.permitted_subtrees.iter().flatten() {
        match &subtree.base {
            GeneralName::URI(uri) => {
                let host =
                    uri.strip_prefix("spiffe://").map_or(*uri, |rest| rest.trim_end_matches('/'));
                if !host.eq_ignore_ascii_case(trust_domain) {
                    return Err(CertRule::PermittedUri {
                        uri: quoted(uri),
                        trust_domain: trust_domain.to_string(),
                    });
                }
            }
            GeneralName::DNSName(dns) => {
                let dns = dns.to_ascii_lowercase();
                let dns = dns.strip_prefix('.').unwrap_or(&dns);
                if dns != trust_domain && !dns.ends_with(&below) {
                    return Err(CertRule::PermittedDns {
                        dns: quoted(dns),
                        trust_domain: trust_domain.to_string(),
                    });
                }
            }
            GeneralName::DirectoryName(_) => {}
            other => {
                return Err(CertRule::PermittedOther {
                    kind: general_name_kind(other),
                    trust_domain: trust_domain.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Refuses a `spiffe://` URI SAN of another trust domain: a CA names the domain it serves.
fn check_spiffe_names(cert: &X509Certificate<'_>, trust_domain: &str) -> Result<(), CertRule> {
    let san = match cert.subject_alternative_name() {
        Err(e) => return Err(CertRule::UnreadableSubjectAltName(e.to_string())),
        Ok(None) => return Ok(()),
        Ok(Some(san)) => san.value,
    };
    for name in &san.general_names {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        let Some(scheme_end) = uri.find("://") else {
            continue;
        };
        if !uri[..scheme_end].eq_ignore_ascii_case("spiffe") {
            continue;
        }
        let rest = &uri[scheme_end + 3..];
        let host = rest.split('/').next().unwrap_or_default();
        if host != trust_domain {
            return Err(CertRule::ForeignSpiffeName {
                uri: quoted(uri),
                trust_domain: trust_domain.to_string(),
            });
        }
    }
    Ok(())
}

fn general_name_kind(name: &GeneralName<'_>) -> &'static str {
    match name {
        GeneralName::OtherName(..) => "otherName",
        GeneralName::RFC822Name(_) => "e-mail (rfc822Name)",
        GeneralName::DNSName(_) => "DNS",
        GeneralName::X400Address(_) => "x400Address",
        GeneralName::DirectoryName(_) => "directoryName",
        GeneralName::EDIPartyName(_) => "ediPartyName",
        GeneralName::URI(_) => "URI",
        GeneralName::IPAddress(_) => "IP address",
        GeneralName::RegisteredID(_) => "registeredID",
        GeneralName::Invalid(..) => "invalid",
    }
}
