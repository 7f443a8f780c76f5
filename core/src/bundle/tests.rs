//! Tests of bundle parsing: one test (at least) per rule of SECURITY.md's "Bundle
//! validation" table, output forms, and property tests over generated and mutated documents.
//!
//! Certificates come from rcgen, except what rcgen cannot make (RSA keys, SHA-1 and MD5
//! signatures, P-521, X.509 v1, URI name constraints): those are fixtures made by
//! `testdata/generate.sh`, validated at their own `notBefore` plus an hour.

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use proptest::prelude::*;
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType, GeneralSubtree,
    IsCa, KeyPair, KeyUsagePurpose, NameConstraints, SanType, SignatureAlgorithm,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::{Value as Json, json};
use sha2::{Digest as _, Sha256};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::*;

const TD: &str = "example.org";
/// The time rcgen certificates are validated at (2027-01-15).
const NOW: i64 = 1_800_000_000;
const DAY: i64 = 86_400;

// === helpers ===

fn policy() -> ValidationPolicy {
    ValidationPolicy::at(NOW)
}

fn time(unix: i64) -> ::time::OffsetDateTime {
    ::time::OffsetDateTime::from_unix_timestamp(unix).expect("valid time")
}

/// Parameters of a valid CA certificate of `example.org`, valid around [`NOW`].
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, TD);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names =
        vec![SanType::URI(format!("spiffe://{TD}").try_into().expect("valid URI"))];
    params.not_before = time(NOW - DAY);
    params.not_after = time(NOW + 365 * DAY);
    params
}

fn key(alg: &'static SignatureAlgorithm) -> KeyPair {
    KeyPair::generate_for(alg).expect("key generation")
}

fn self_signed(params: &CertificateParams, key: &KeyPair) -> Vec<u8> {
    params.self_signed(key).expect("signing").der().to_vec()
}

/// A valid P-256 CA certificate after `edit`.
fn ca_with(edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
    let mut params = ca_params();
    edit(&mut params);
    self_signed(&params, &key(&rcgen::PKCS_ECDSA_P256_SHA256))
}

fn ca() -> Vec<u8> {
    ca_with(|_| {})
}

/// A fixture certificate, DER, and a policy at its `notBefore` plus an hour.
fn fixture(pem: &[u8]) -> (Vec<u8>, ValidationPolicy) {
    let der = CertificateDer::from_pem_slice(pem).expect("fixture PEM").to_vec();
    let (_, cert) = X509Certificate::from_der(&der).expect("fixture DER");
    let now = cert.validity().not_before.timestamp() + 3600;
    (der, ValidationPolicy::at(now))
}

const RSA2048: &[u8] = include_bytes!("testdata/rsa2048_ca.pem");
const RSA1024: &[u8] = include_bytes!("testdata/rsa1024_ca.pem");
const ECDSA_SHA1: &[u8] = include_bytes!("testdata/ecdsa_sha1_ca.pem");
const RSA_MD5: &[u8] = include_bytes!("testdata/rsa_md5_ca.pem");
const P521: &[u8] = include_bytes!("testdata/p521_ca.pem");
const V1: &[u8] = include_bytes!("testdata/v1_ca.pem");
const URI_CONSTRAINT_OTHER: &[u8] = include_bytes!("testdata/uri_constraint_other_ca.pem");
const URI_CONSTRAINT_OWN: &[u8] = include_bytes!("testdata/uri_constraint_own_ca.pem");

/// An `x509-svid` JWK holding `der`, with `kty` only.
fn x509_jwk(der: &[u8], kty: &str) -> Json {
    json!({"use": "x509-svid", "kty": kty, "x5c": [STANDARD.encode(der)]})
}

/// Uncompressed point coordinates of an rcgen EC key.
fn ec_coordinates(key: &KeyPair) -> (String, String) {
    let raw = key.public_key_raw();
    let len = (raw.len() - 1) / 2;
    (URL_SAFE_NO_PAD.encode(&raw[1..=len]), URL_SAFE_NO_PAD.encode(&raw[1 + len..]))
}

/// A `jwt-svid` JWK of the EC key `key` on `crv`.
fn jwt_ec(kid: &str, key: &KeyPair, crv: &str) -> Json {
    let (x, y) = ec_coordinates(key);
    json!({"use": "jwt-svid", "kty": "EC", "kid": kid, "crv": crv, "x": x, "y": y})
}

fn jwt_p256(kid: &str) -> Json {
    jwt_ec(kid, &key(&rcgen::PKCS_ECDSA_P256_SHA256), "P-256")
}

/// Modulus and exponent of an RSA certificate, as JWK members.
fn rsa_members(der: &[u8]) -> (String, String) {
    let (_, cert) = X509Certificate::from_der(der).expect("DER");
    let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = cert.public_key().parsed() else {
        panic!("not an RSA certificate")
    };
    let strip = |b: &[u8]| {
        let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
        URL_SAFE_NO_PAD.encode(&b[start..])
    };
    (strip(rsa.modulus), strip(rsa.exponent))
}

fn document(keys: Vec<Json>) -> Vec<u8> {
    serde_json::to_vec(&json!({"keys": keys, "spiffe_sequence": 1, "spiffe_refresh_hint": 300}))
        .expect("JSON")
}

fn parse(doc: &[u8]) -> Result<TrustBundle, BundleError> {
    parse_spiffe_bundle(TD, doc, &policy())
}

#[track_caller]
fn assert_rejected<T: std::fmt::Debug>(result: Result<T, BundleError>, field: &str, rule: &str) {
    let err = result.expect_err("must be rejected");
    assert_eq!(err.field(), field, "wrong field in: {err}");
    assert!(err.rule().contains(rule), "rule {rule:?} not in: {err}");
}

#[track_caller]
fn rejects(keys: Vec<Json>, field: &str, rule: &str) {
    assert_rejected(parse(&document(keys)), field, rule);
}

// === document ===

#[test]
fn accepts_a_valid_bundle_with_both_key_uses() {
    let der = ca();
    let bundle = parse(&document(vec![x509_jwk(&der, "EC"), jwt_p256("k1")])).expect("valid");
    assert_eq!(bundle.trust_domain, TD);
    assert_eq!(bundle.x509_authorities.len(), 1);
    assert_eq!(bundle.x509_authorities[0].der, der);
    assert_eq!(bundle.x509_authorities[0].not_before, NOW - DAY);
    assert_eq!(bundle.x509_authorities[0].not_after, NOW + 365 * DAY);
    assert_eq!(bundle.jwt_authorities.len(), 1);
    assert_eq!(bundle.jwt_authorities[0].kid, "k1");
    assert_eq!(bundle.sequence, 1);
    assert_eq!(bundle.refresh_hint_secs, Some(300));
}

#[test]
fn rejects_body_over_the_size_limit() {
    let doc = document(vec![x509_jwk(&ca(), "EC")]);
    let small = ValidationPolicy { max_bytes: doc.len() - 1, ..policy() };
    assert_rejected(parse_spiffe_bundle(TD, &doc, &small), "body", "at most");
    let exact = ValidationPolicy { max_bytes: doc.len(), ..policy() };
    assert!(parse_spiffe_bundle(TD, &doc, &exact).is_ok());
}

#[test]
fn rejects_invalid_utf8() {
    assert_rejected(parse(b"{\"keys\":[\"\xff\"]}"), "body", "UTF-8");
}

#[test]
fn rejects_malformed_json() {
    for doc in [&b"{\"keys\":["[..], b"", b"{} []", b"{\"keys\":[],}", b"{'keys':[]}"] {
        let err = parse(doc).expect_err("malformed");
        assert!(matches!(err, BundleError::Syntax { .. }), "{err}");
        assert_eq!(err.field(), "body");
    }
}

#[test]
fn rejects_nesting_deeper_than_the_limit() {
    let mut nested = json!(1);
    for _ in 0..16 {
        nested = json!([nested]);
    }
    let mut doc = json!({"keys": [x509_jwk(&ca(), "EC")], "extra": nested});
    assert_rejected(
        parse(&serde_json::to_vec(&doc).expect("JSON")),
        &format!("extra{}", "[0]".repeat(15)),
        "nests deeper than 16 levels",
    );
    // One level less (the document object is level 1) is fine.
    doc["extra"] = doc["extra"][0].take();
    assert!(parse(&serde_json::to_vec(&doc).expect("JSON")).is_ok());
}

#[test]
fn deeply_nested_input_is_refused_without_recursing_into_it() {
    let doc = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let lax = ValidationPolicy { max_bytes: 1 << 20, ..policy() };
    assert_rejected(
        parse_spiffe_bundle(TD, doc.as_bytes(), &lax),
        "document[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]",
        "nests deeper",
    );
    // A limit above serde_json's own still refuses, as a syntax error.
    let deep = ValidationPolicy { max_depth: 10_000, ..lax };
    assert!(parse_spiffe_bundle(TD, doc.as_bytes(), &deep).is_err());
}

#[test]
fn rejects_duplicate_members_at_any_level() {
    let x5c = STANDARD.encode(ca());
    let top = format!(r#"{{"keys":[{{"use":"x509-svid","kty":"EC","x5c":["{x5c}"]}}],"keys":[]}}"#);
    assert_rejected(parse(top.as_bytes()), "keys", "duplicate member");
    let inner = format!(
        r#"{{"keys":[{{"use":"jwt-svid","kty":"EC","x5c":["{x5c}"],"\u0075se":"x509-svid"}}]}}"#
    );
    assert_rejected(parse(inner.as_bytes()), "keys[0].use", "duplicate member");
    let sequence = format!(
        r#"{{"keys":[{{"use":"x509-svid","kty":"EC","x5c":["{x5c}"]}}],"spiffe_sequence":1,"spiffe_sequence":2}}"#
    );
    assert_rejected(parse(sequence.as_bytes()), "spiffe_sequence", "duplicate member");
}

#[test]
fn rejects_a_document_that_is_not_an_object() {
    assert_rejected(parse(b"[]"), "document", "must be a JSON object");
    assert_rejected(parse(b"\"keys\""), "document", "must be a JSON object");
}

#[test]
fn rejects_keys_missing_empty_or_not_an_array() {
    assert_rejected(parse(br#"{"spiffe_sequence":1}"#), "keys", "must be set");
    assert_rejected(parse(br#"{"keys":[]}"#), "keys", "at least one key");
    assert_rejected(parse(br#"{"keys":{}}"#), "keys", "must be an array");
    assert_rejected(parse(br#"{"keys":null}"#), "keys", "must be an array");
}

#[test]
fn rejects_too_many_keys() {
    let keys = vec![json!({}); 65];
    rejects(keys, "keys", "at most 64 keys, holds 65");
    let few = ValidationPolicy { max_keys: 1, ..policy() };
    let doc = document(vec![jwt_p256("a"), jwt_p256("b")]);
    assert_rejected(parse_spiffe_bundle(TD, &doc, &few), "keys", "at most 1 keys");
}

#[test]
fn rejects_a_key_that_is_not_an_object() {
    rejects(vec![json!("x509-svid")], "keys[0]", "must be a JSON object");
}

#[test]
fn rejects_an_invalid_trust_domain_name() {
    let doc = document(vec![x509_jwk(&ca(), "EC")]);
    for (name, rule) in [
        ("Example.org", "lower case"),
        ("exa%6dple.org", "percent"),
        ("spiffe://example.org", "characters"),
        ("example.org/x", "characters"),
        ("", "empty"),
    ] {
        assert_rejected(parse_spiffe_bundle(name, &doc, &policy()), "trust_domain", rule);
    }
    let pem = TrustBundle::to_pem(&parse(&doc).expect("valid"));
    assert_rejected(
        parse_pem_bundle("Example.org", pem.as_bytes(), 1, None, &policy()),
        "trust_domain",
        "lower case",
    );
}

#[test]
fn missing_sequence_reads_as_zero() {
    let doc = json!({"keys": [x509_jwk(&ca(), "EC")]});
    let bundle = parse(&serde_json::to_vec(&doc).expect("JSON")).expect("valid");
    assert_eq!(bundle.sequence, 0);
    assert_eq!(bundle.refresh_hint_secs, None);
}

#[test]
fn rejects_a_sequence_that_is_not_an_unsigned_64_bit_integer() {
    let keys = json!([x509_jwk(&ca(), "EC")]);
    for bad in ["-1", "1.5", "1e3", "\"1\"", "null", "18446744073709551616"] {
        let doc = format!(r#"{{"keys":{keys},"spiffe_sequence":{bad}}}"#);
        assert_rejected(parse(doc.as_bytes()), "spiffe_sequence", "integer");
    }
    let doc = format!(r#"{{"keys":{keys},"spiffe_sequence":18446744073709551615}}"#);
    assert_eq!(parse(doc.as_bytes()).expect("valid").sequence, u64::MAX);
}

#[test]
fn rejects_a_refresh_hint_out_of_range() {
    let keys = json!([x509_jwk(&ca(), "EC")]);
    let with_hint = |hint: &str| format!(r#"{{"keys":{keys},"spiffe_refresh_hint":{hint}}}"#);
    for bad in ["0", "9", "604801", "18446744073709551615"] {
        assert_rejected(
            parse(with_hint(bad).as_bytes()),
            "spiffe_refresh_hint",
            "must be between 10 and 604800 seconds",
        );
    }
    for bad in ["-5", "30.5", "\"300\""] {
        assert_rejected(parse(with_hint(bad).as_bytes()), "spiffe_refresh_hint", "integer");
    }
    for good in [10, 604_800] {
        let bundle = parse(with_hint(&good.to_string()).as_bytes()).expect("in range");
        assert_eq!(bundle.refresh_hint_secs, Some(good));
    }
}

#[test]
fn ignores_members_the_specification_does_not_define() {
    let doc = json!({
        "keys": [x509_jwk(&ca(), "EC")],
        "spiffe_sequence": 3,
        "vendor": {"anything": [1, 2, {"x": null}]},
    });
    let bundle = parse(&serde_json::to_vec(&doc).expect("JSON")).expect("valid");
    assert!(!bundle.to_spiffe_json().contains("vendor"));
}

// === every key ===

#[test]
fn rejects_a_key_without_use() {
    rejects(
        vec![json!({"kty": "EC", "x5c": [STANDARD.encode(ca())]})],
        "keys[0].use",
        "must be set",
    );
}

#[test]
fn rejects_an_unknown_use() {
    let der = ca();
    for bad in ["X509-SVID", "sig", ""] {
        let mut jwk = x509_jwk(&der, "EC");
        jwk["use"] = json!(bad);
        rejects(vec![jwk], "keys[0].use", "must be x509-svid or jwt-svid");
    }
    let mut jwk = x509_jwk(&der, "EC");
    jwk["use"] = json!(1);
    rejects(vec![jwk], "keys[0].use", "must be a string");
}

#[test]
fn rejects_a_key_without_kty() {
    let mut jwk = x509_jwk(&ca(), "EC");
    jwk.as_object_mut().expect("object").remove("kty");
    rejects(vec![jwk], "keys[0].kty", "must be set");
}

#[test]
fn rejects_an_unknown_kty() {
    rejects(vec![x509_jwk(&ca(), "EC2")], "keys[0].kty", "unknown key type");
    let mut jwt = jwt_p256("k");
    jwt["kty"] = json!("ec");
    rejects(vec![jwt], "keys[0].kty", "unknown key type");
}

#[test]
fn rejects_private_key_members() {
    let der = ca();
    for member in ["d", "p", "q", "dp", "dq", "qi", "k", "oth"] {
        let mut x509 = x509_jwk(&der, "EC");
        x509[member] = json!("AQAB");
        rejects(vec![x509], &format!("keys[0].{member}"), "private key material");
        let mut jwt = jwt_p256("k");
        jwt[member] = json!("AQAB");
        rejects(vec![jwt], &format!("keys[0].{member}"), "private key material");
    }
}

#[test]
fn rejects_x5u_and_jku() {
    for member in ["x5u", "jku"] {
        let mut x509 = x509_jwk(&ca(), "EC");
        x509[member] = json!("https://example.org/keys");
        rejects(vec![x509], &format!("keys[0].{member}"), "must not be set");
        let mut jwt = jwt_p256("k");
        jwt[member] = json!("https://example.org/keys");
        rejects(vec![jwt], &format!("keys[0].{member}"), "must not be set");
    }
}

#[test]
fn rejects_the_same_key_twice() {
    let key = key(&rcgen::PKCS_ECDSA_P256_SHA256);
    let mut params = ca_params();
    let first = self_signed(&params, &key);
    params.serial_number = Some(rcgen::SerialNumber::from(7u64));
    let second = self_signed(&params, &key);
    assert_ne!(first, second);
    rejects(
        vec![jwt_p256("a"), x509_jwk(&first, "EC"), x509_jwk(&second, "EC")],
        "keys[2]",
        "holds the same public key as keys[1]",
    );
    // The same key as X.509 and as JWT authority is also the same key twice.
    rejects(
        vec![x509_jwk(&first, "EC"), jwt_ec("a", &key, "P-256")],
        "keys[1]",
        "holds the same public key as keys[0]",
    );
    // The same certificate twice, too.
    rejects(vec![x509_jwk(&first, "EC"), x509_jwk(&first, "EC")], "keys[1]", "same public key");
}

// === x509-svid keys ===

#[test]
fn rejects_kid_on_an_x509_svid_key() {
    let mut jwk = x509_jwk(&ca(), "EC");
    jwk["kid"] = json!("k");
    rejects(vec![jwk], "keys[0].kid", "must not be set on an x509-svid key");
}

#[test]
fn rejects_x5c_missing_or_not_exactly_one_certificate() {
    let der = ca();
    let mut jwk = x509_jwk(&der, "EC");
    jwk.as_object_mut().expect("object").remove("x5c");
    rejects(vec![jwk.clone()], "keys[0].x5c", "must be set");
    jwk["x5c"] = json!([]);
    rejects(vec![jwk.clone()], "keys[0].x5c", "must hold exactly one certificate, holds 0");
    let b64 = STANDARD.encode(&der);
    jwk["x5c"] = json!([b64, b64]);
    rejects(
        vec![jwt_p256("a"), jwt_p256("b"), jwk.clone()],
        "keys[2].x5c",
        "must hold exactly one certificate, holds 2",
    );
    jwk["x5c"] = json!(b64);
    rejects(vec![jwk], "keys[0].x5c", "must be an array");
}

#[test]
fn rejects_x5c_that_is_not_standard_base64() {
    let der = ca();
    let mut jwk = x509_jwk(&der, "EC");
    jwk["x5c"] = json!([URL_SAFE.encode(&der).replace('=', "") + "-_"]);
    rejects(vec![jwk.clone()], "keys[0].x5c[0]", "standard base64");
    jwk["x5c"] = json!([STANDARD.encode(&der).trim_end_matches('=').to_string() + "!"]);
    rejects(vec![jwk.clone()], "keys[0].x5c[0]", "standard base64");
    jwk["x5c"] = json!([42]);
    rejects(vec![jwk], "keys[0].x5c[0]", "must be a string");
}

#[test]
fn rejects_x5c_that_is_not_a_certificate() {
    rejects(
        vec![x509_jwk(b"not a certificate", "EC")],
        "keys[0].x5c[0]",
        "is not a DER X.509 certificate",
    );
    let mut der = ca();
    der.push(0);
    rejects(vec![x509_jwk(&der, "EC")], "keys[0].x5c[0]", "1 bytes after the certificate");
}

#[test]
fn rejects_a_certificate_that_is_not_v3() {
    let (der, policy) = fixture(V1);
    assert_rejected(
        parse_spiffe_bundle(TD, &document(vec![x509_jwk(&der, "EC")]), &policy),
        "keys[0].x5c[0]",
        "must be an X.509 v3 certificate, is v1",
    );
}

#[test]
fn rejects_a_certificate_without_the_ca_flag() {
    rejects(
        vec![x509_jwk(&ca_with(|p| p.is_ca = IsCa::NoCa), "EC")],
        "keys[0].x5c[0]",
        "has no basicConstraints",
    );
    rejects(
        vec![x509_jwk(&ca_with(|p| p.is_ca = IsCa::ExplicitNoCa), "EC")],
        "keys[0].x5c[0]",
        "basicConstraints must have CA=true",
    );
}

#[test]
fn rejects_a_certificate_without_key_cert_sign() {
    rejects(
        vec![x509_jwk(
            &ca_with(|p| {
                p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
            }),
            "EC",
        )],
        "keys[0].x5c[0]",
        "keyUsage must include keyCertSign",
    );
    rejects(
        vec![x509_jwk(&ca_with(|p| p.key_usages = vec![]), "EC")],
        "keys[0].x5c[0]",
        "has no keyUsage",
    );
}

#[test]
fn rejects_jwk_key_members_that_differ_from_the_certificate_key() {
    let key = key(&rcgen::PKCS_ECDSA_P256_SHA256);
    let der = self_signed(&ca_params(), &key);
    let (x, y) = ec_coordinates(&key);
    let (other_x, other_y) = ec_coordinates(&self::key(&rcgen::PKCS_ECDSA_P256_SHA256));

    let mut matching = x509_jwk(&der, "EC");
    matching["crv"] = json!("P-256");
    matching["x"] = json!(x);
    matching["y"] = json!(y);
    assert!(parse(&document(vec![matching.clone()])).is_ok());

    let mut wrong_x = matching.clone();
    wrong_x["x"] = json!(other_x);
    rejects(vec![wrong_x], "keys[0].x", "does not match the public key");
    let mut wrong_y = matching.clone();
    wrong_y["y"] = json!(other_y);
    rejects(vec![wrong_y], "keys[0].y", "does not match the public key");
    let mut wrong_crv = matching.clone();
    wrong_crv["crv"] = json!("P-384");
    rejects(vec![wrong_crv], "keys[0].crv", "does not match");
    let mut wrong_kty = matching.clone();
    wrong_kty["kty"] = json!("RSA");
    rejects(vec![wrong_kty], "keys[0].kty", "certificate's key is EC");
    let mut foreign = matching.clone();
    foreign["n"] = json!("AQAB");
    rejects(vec![foreign], "keys[0].n", "does not belong to a key of type EC");
    let mut padded = matching;
    padded["x"] = json!(format!("{x}=="));
    rejects(vec![padded], "keys[0].x", "base64url");
}

#[test]
fn accepts_rsa_2048_and_checks_its_jwk_members() {
    let (der, policy) = fixture(RSA2048);
    let (n, e) = rsa_members(&der);
    let mut jwk = x509_jwk(&der, "RSA");
    jwk["n"] = json!(n);
    jwk["e"] = json!(e);
    let bundle =
        parse_spiffe_bundle(TD, &document(vec![jwk.clone()]), &policy).expect("valid RSA CA");
    assert!(bundle.to_spiffe_json().contains(&format!("\"n\":\"{n}\"")));
    jwk["e"] = json!("Aw");
    assert_rejected(
        parse_spiffe_bundle(TD, &document(vec![jwk]), &policy),
        "keys[0].e",
        "does not match",
    );
}

#[test]
fn rejects_an_expired_certificate() {
    rejects(
        vec![x509_jwk(&ca_with(|p| p.not_after = time(NOW - 1)), "EC")],
        "keys[0].x5c[0]",
        "has expired",
    );
    // Valid up to and including notAfter.
    assert!(parse(&document(vec![x509_jwk(&ca_with(|p| p.not_after = time(NOW)), "EC")])).is_ok());
}

#[test]
fn rejects_a_certificate_not_yet_valid_beyond_the_window() {
    rejects(
        vec![x509_jwk(&ca_with(|p| p.not_before = time(NOW + 301)), "EC")],
        "keys[0].x5c[0]",
        "is not yet valid",
    );
    // Within the pre-publication window is fine.
    let early = ca_with(|p| p.not_before = time(NOW + 300));
    assert!(parse(&document(vec![x509_jwk(&early, "EC")])).is_ok());
}

#[test]
fn rejects_a_certificate_whose_validity_ends_before_it_begins() {
    rejects(
        vec![x509_jwk(
            &ca_with(|p| {
                p.not_before = time(NOW);
                p.not_after = time(NOW - 10);
            }),
            "EC",
        )],
        "keys[0].x5c[0]",
        "before it begins",
    );
}

#[test]
fn rejects_rsa_keys_below_2048_bits() {
    let (der, policy) = fixture(RSA1024);
    assert_rejected(
        parse_spiffe_bundle(TD, &document(vec![x509_jwk(&der, "RSA")]), &policy),
        "keys[0].x5c[0]",
        "RSA key must be at least 2048 bits, is 1024",
    );
}

#[test]
fn rejects_sha1_and_md5_signatures() {
    for (pem, kty, name) in
        [(ECDSA_SHA1, "EC", "ecdsa-with-SHA1"), (RSA_MD5, "RSA", "md5WithRSAEncryption")]
    {
        let (der, policy) = fixture(pem);
        assert_rejected(
            parse_spiffe_bundle(TD, &document(vec![x509_jwk(&der, kty)]), &policy),
            "keys[0].x5c[0]",
            name,
        );
    }
}

#[test]
fn rejects_unsupported_certificate_curves() {
    let (der, policy) = fixture(P521);
    assert_rejected(
        parse_spiffe_bundle(TD, &document(vec![x509_jwk(&der, "EC")]), &policy),
        "keys[0].x5c[0]",
        "curve P-521; supported are P-256 and P-384",
    );
}

#[test]
fn accepts_p384_and_ed25519_authorities() {
    let p384 = self_signed(&ca_params(), &key(&rcgen::PKCS_ECDSA_P384_SHA384));
    let ed25519 = self_signed(&ca_params(), &key(&rcgen::PKCS_ED25519));
    let bundle =
        parse(&document(vec![x509_jwk(&p384, "EC"), x509_jwk(&ed25519, "OKP")])).expect("valid");
    let json = bundle.to_spiffe_json();
    assert!(json.contains("\"crv\":\"P-384\""), "{json}");
    assert!(json.contains("\"crv\":\"Ed25519\""), "{json}");
}

#[test]
fn rejects_uri_name_constraints_outside_the_trust_domain() {
    let (der, policy) = fixture(URI_CONSTRAINT_OTHER);
    assert_rejected(
        parse_spiffe_bundle(TD, &document(vec![x509_jwk(&der, "EC")]), &policy),
        "keys[0].x5c[0]",
        "nameConstraints permit URIs of \"other.org\"",
    );
    // Permitting only its own trust domain, and excluding others, is fine.
    let (der, policy) = fixture(URI_CONSTRAINT_OWN);
    assert!(parse_spiffe_bundle(TD, &document(vec![x509_jwk(&der, "EC")]), &policy).is_ok());
}

#[test]
fn rejects_dns_and_ip_name_constraints_outside_the_trust_domain() {
    let constrained = |permitted: Vec<GeneralSubtree>, excluded: Vec<GeneralSubtree>| {
        ca_with(|p| {
            p.name_constraints = Some(NameConstraints {
                permitted_subtrees: permitted,
                excluded_subtrees: excluded,
            });
        })
    };
    rejects(
        vec![x509_jwk(
            &constrained(vec![GeneralSubtree::DnsName("other.org".into())], vec![]),
            "EC",
        )],
        "keys[0].x5c[0]",
        "nameConstraints permit DNS names \"other.org\"",
    );
    rejects(
        vec![x509_jwk(
            &constrained(vec![GeneralSubtree::DnsName("notexample.org".into())], vec![]),
            "EC",
        )],
        "keys[0].x5c[0]",
        "outside trust domain",
    );
    rejects(
        vec![x509_jwk(
            &constrained(
                vec![GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([10, 0, 0, 0], 8))],
                vec![],
            ),
            "EC",
        )],
        "keys[0].x5c[0]",
        "permit IP address names",
    );
    let fine = constrained(
        vec![
            GeneralSubtree::DnsName(TD.into()),
            GeneralSubtree::DnsName(".svc.example.org".into()),
        ],
        vec![GeneralSubtree::DnsName("other.org".into())],
    );
    assert!(parse(&document(vec![x509_jwk(&fine, "EC")])).is_ok());
}

#[test]
fn rejects_a_spiffe_id_of_another_trust_domain() {
    let der = ca_with(|p| {
        p.subject_alt_names =
            vec![SanType::URI("spiffe://other.org".try_into().expect("valid URI"))];
    });
    rejects(vec![x509_jwk(&der, "EC")], "keys[0].x5c[0]", "another trust domain");
    // No SPIFFE ID at all is allowed (the specification says SHOULD).
    let bare = ca_with(|p| p.subject_alt_names = vec![]);
    assert!(parse(&document(vec![x509_jwk(&bare, "EC")])).is_ok());
}

// === jwt-svid keys ===

#[test]
fn rejects_a_jwt_key_without_kid() {
    let mut jwk = jwt_p256("k");
    jwk.as_object_mut().expect("object").remove("kid");
    rejects(vec![jwk.clone()], "keys[0].kid", "must be set");
    jwk["kid"] = json!("");
    rejects(vec![jwk.clone()], "keys[0].kid", "must not be empty");
    jwk["kid"] = json!(7);
    rejects(vec![jwk], "keys[0].kid", "must be a string");
}

#[test]
fn rejects_a_duplicated_kid() {
    rejects(
        vec![jwt_p256("same"), x509_jwk(&ca(), "EC"), jwt_p256("same")],
        "keys[2].kid",
        "duplicates the kid of keys[0]",
    );
}

#[test]
fn rejects_kty_oct() {
    rejects(
        vec![json!({"use": "jwt-svid", "kty": "oct", "kid": "k"})],
        "keys[0].kty",
        "must not be oct",
    );
}

#[test]
fn rejects_okp_and_x5c_on_jwt_keys() {
    rejects(
        vec![json!({"use": "jwt-svid", "kty": "OKP", "kid": "k", "crv": "Ed25519", "x": "AA"})],
        "keys[0].kty",
        "not supported for jwt-svid keys",
    );
    let mut jwk = jwt_p256("k");
    jwk["x5c"] = json!([STANDARD.encode(ca())]);
    rejects(vec![jwk], "keys[0].x5c", "must not be set on a jwt-svid key");
}

#[test]
fn rejects_an_unsupported_or_missing_curve() {
    for crv in ["P-521", "secp256k1", "Ed25519", "p-256"] {
        let mut jwk = jwt_p256("k");
        jwk["crv"] = json!(crv);
        rejects(vec![jwk], "keys[0].crv", "unsupported curve");
    }
    let mut jwk = jwt_p256("k");
    jwk.as_object_mut().expect("object").remove("crv");
    rejects(vec![jwk], "keys[0].crv", "must be set");
}

#[test]
fn rejects_ec_coordinates_of_the_wrong_length() {
    let mut jwk = jwt_p256("k");
    jwk["x"] = json!(URL_SAFE_NO_PAD.encode([1u8; 31]));
    rejects(vec![jwk], "keys[0].x", "must be 32 bytes for P-256, is 31");
    // A P-256 point declared as P-384.
    let mut jwk = jwt_p256("k");
    jwk["crv"] = json!("P-384");
    rejects(vec![jwk], "keys[0].x", "must be 48 bytes for P-384, is 32");
    let mut jwk = jwt_p256("k");
    jwk.as_object_mut().expect("object").remove("y");
    rejects(vec![jwk], "keys[0].y", "must be set");
}

#[test]
fn rejects_an_ec_point_not_on_the_curve() {
    let p256 = jwt_p256("k");
    let mut off = p256.clone();
    let mut y = URL_SAFE_NO_PAD.decode(off["y"].as_str().expect("y")).expect("base64url");
    y[31] ^= 1;
    off["y"] = json!(URL_SAFE_NO_PAD.encode(&y));
    rejects(vec![off], "keys[0]", "is not a valid point on P-256");
    // Coordinates beyond the field prime.
    let mut big = p256;
    big["x"] = json!(URL_SAFE_NO_PAD.encode([0xffu8; 32]));
    rejects(vec![big], "keys[0]", "is not a valid point on P-256");
    // The same for P-384.
    let mut p384 = jwt_ec("k", &key(&rcgen::PKCS_ECDSA_P384_SHA384), "P-384");
    p384["y"] = json!(URL_SAFE_NO_PAD.encode([7u8; 48]));
    rejects(vec![p384], "keys[0]", "is not a valid point on P-384");
}

#[test]
fn rejects_ec_coordinates_that_are_not_base64url() {
    let mut jwk = jwt_p256("k");
    let x = jwk["x"].as_str().expect("x").to_string();
    jwk["x"] = json!(format!("{x}="));
    rejects(vec![jwk], "keys[0].x", "base64url without padding");
}

#[test]
fn accepts_rsa_jwt_keys_of_2048_bits_or_more() {
    let (der, policy) = fixture(RSA2048);
    let (n, e) = rsa_members(&der);
    let jwk = json!({"use": "jwt-svid", "kty": "RSA", "kid": "r", "alg": "RS256", "n": n, "e": e});
    let bundle = parse_spiffe_bundle(TD, &document(vec![jwk]), &policy).expect("valid");
    assert_eq!(
        bundle.jwt_authorities[0].jwk_json,
        format!(r#"{{"kty":"RSA","use":"jwt-svid","kid":"r","alg":"RS256","n":"{n}","e":"{e}"}}"#)
    );
}

#[test]
fn rejects_rsa_jwt_keys_below_2048_bits_or_malformed() {
    let (der, _) = fixture(RSA1024);
    let (n, e) = rsa_members(&der);
    let jwk =
        |n: &str, e: &str| json!({"use": "jwt-svid", "kty": "RSA", "kid": "r", "n": n, "e": e});
    rejects(vec![jwk(&n, &e)], "keys[0].n", "RSA key must be at least 2048 bits, is 1024");
    let (der, _) = fixture(RSA2048);
    let (n, _) = rsa_members(&der);
    rejects(vec![jwk(&n, "Ag")], "keys[0].e", "RSA exponent must be odd");
    let mut padded = vec![0u8];
    padded.extend(URL_SAFE_NO_PAD.decode(&n).expect("n"));
    rejects(
        vec![jwk(&URL_SAFE_NO_PAD.encode(&padded), "AQAB")],
        "keys[0].n",
        "no leading zero octet",
    );
    rejects(vec![jwk(&n, "")], "keys[0].e", "must not be empty");
    let mut with_crv = jwk(&n, "AQAB");
    with_crv["crv"] = json!("P-256");
    rejects(vec![with_crv], "keys[0].crv", "does not belong to an RSA key");
    let mut huge = vec![0xffu8; 1025];
    huge[0] = 1;
    rejects(vec![jwk(&URL_SAFE_NO_PAD.encode(&huge), "AQAB")], "keys[0].n", "at most 8192 bits");
}

#[test]
fn rejects_an_alg_that_does_not_fit_the_key() {
    let mut jwk = jwt_p256("k");
    jwk["alg"] = json!("RS256");
    rejects(vec![jwk.clone()], "keys[0].alg", "cannot be used with this EC key");
    jwk["alg"] = json!("HS256");
    rejects(vec![jwk.clone()], "keys[0].alg", "cannot be used");
    jwk["alg"] = json!("ES384");
    rejects(vec![jwk.clone()], "keys[0].alg", "cannot be used");
    jwk["alg"] = json!("ES256");
    let bundle = parse(&document(vec![jwk])).expect("ES256 fits P-256");
    assert!(bundle.jwt_authorities[0].jwk_json.contains("\"alg\":\"ES256\""));
}

#[test]
fn keeps_jwt_keys_in_canonical_form() {
    let key = key(&rcgen::PKCS_ECDSA_P384_SHA384);
    let (x, y) = ec_coordinates(&key);
    let doc = format!(
        r#"{{"keys":[{{"y":"{y}","x":"{x}","crv":"P-384","kid":"a\"b\u00e9","kty":"EC","use":"jwt-svid","key_ops":["verify"]}}]}}"#
    );
    let bundle = parse(doc.as_bytes()).expect("valid");
    let jwk = &bundle.jwt_authorities[0];
    assert_eq!(jwk.kid, "a\"bé");
    assert_eq!(
        jwk.jwk_json,
        format!(
            r#"{{"kty":"EC","use":"jwt-svid","kid":"a\"bé","crv":"P-384","x":"{x}","y":"{y}"}}"#
        )
    );
    let reparsed: Json = serde_json::from_str(&jwk.jwk_json).expect("valid JSON");
    assert_eq!(reparsed["kid"], "a\"bé");
}

// === PEM ===

#[test]
fn parses_a_pem_bundle() {
    let (a, b) = (ca(), self_signed(&ca_params(), &key(&rcgen::PKCS_ED25519)));
    let pem = format!("comment\n{}between\n{}", pem_block(&a), pem_block(&b));
    let bundle =
        parse_pem_bundle(TD, pem.as_bytes(), 9, Some(60), &policy()).expect("valid PEM bundle");
    assert_eq!(bundle.x509_roots_der(), vec![a.as_slice(), b.as_slice()]);
    assert_eq!(bundle.sequence, 9);
    assert_eq!(bundle.refresh_hint_secs, Some(60));
    assert!(bundle.jwt_authorities.is_empty());
}

fn pem_block(der: &[u8]) -> String {
    let mut out = String::new();
    pem::write_certificate(&mut out, der);
    out
}

#[test]
fn rejects_pem_without_certificates() {
    for text in ["", "hello", "-----BEGIN FOO-----\nAAAA\n-----END FOO-----\n"] {
        assert_rejected(
            parse_pem_bundle(TD, text.as_bytes(), 1, None, &policy()),
            "pem",
            "at least one CERTIFICATE",
        );
    }
}

#[test]
fn rejects_pem_holding_a_private_key() {
    let key = key(&rcgen::PKCS_ECDSA_P256_SHA256);
    let pem = format!("{}{}", pem_block(&ca()), key.serialize_pem());
    assert_rejected(
        parse_pem_bundle(TD, pem.as_bytes(), 1, None, &policy()),
        "pem[1]",
        "PrivateKey block",
    );
}

#[test]
fn rejects_malformed_pem() {
    let block = pem_block(&ca());
    let cut = &block[..block.len() - 30];
    assert_rejected(
        parse_pem_bundle(TD, cut.as_bytes(), 1, None, &policy()),
        "pem",
        "is not valid PEM",
    );
    let bad = block.replacen('M', "!", 1);
    assert_rejected(
        parse_pem_bundle(TD, bad.as_bytes(), 1, None, &policy()),
        "pem",
        "is not valid PEM",
    );
}

#[test]
fn rejects_pem_over_the_limits() {
    let pem = format!("{}{}", pem_block(&ca()), pem_block(&ca()));
    let one = ValidationPolicy { max_keys: 1, ..policy() };
    assert_rejected(
        parse_pem_bundle(TD, pem.as_bytes(), 1, None, &one),
        "pem",
        "at most 1 certificates",
    );
    let small = ValidationPolicy { max_bytes: 100, ..policy() };
    assert_rejected(
        parse_pem_bundle(TD, pem.as_bytes(), 1, None, &small),
        "pem",
        "at most 100 bytes",
    );
}

#[test]
fn pem_certificates_follow_the_x509_svid_rules() {
    let expired = ca_with(|p| p.not_after = time(NOW - 1));
    let pem = format!("{}{}", pem_block(&ca()), pem_block(&expired));
    assert_rejected(
        parse_pem_bundle(TD, pem.as_bytes(), 1, None, &policy()),
        "pem[1]",
        "has expired",
    );
    let key = key(&rcgen::PKCS_ECDSA_P256_SHA256);
    let first = self_signed(&ca_params(), &key);
    let mut params = ca_params();
    params.serial_number = Some(rcgen::SerialNumber::from(2u64));
    let second = self_signed(&params, &key);
    let pem = format!("{}{}", pem_block(&first), pem_block(&second));
    assert_rejected(
        parse_pem_bundle(TD, pem.as_bytes(), 1, None, &policy()),
        "pem[1]",
        "same public key as pem[0]",
    );
    let (v1, policy) = fixture(V1);
    assert_rejected(
        parse_pem_bundle(TD, pem_block(&v1).as_bytes(), 1, None, &policy),
        "pem[0]",
        "v3",
    );
}

#[test]
fn pem_refresh_hint_must_be_in_range() {
    let pem = pem_block(&ca());
    assert_rejected(
        parse_pem_bundle(TD, pem.as_bytes(), 1, Some(5), &policy()),
        "spiffe_refresh_hint",
        "between 10 and 604800",
    );
}

// === outputs ===

#[test]
fn to_spiffe_json_is_a_spiffe_bundle_that_parses_back() {
    let key = key(&rcgen::PKCS_ECDSA_P256_SHA256);
    let der = self_signed(&ca_params(), &key);
    let (x, y) = ec_coordinates(&key);
    let bundle = parse(&document(vec![jwt_p256("j"), x509_jwk(&der, "EC")])).expect("valid");
    let json = bundle.to_spiffe_json();
    let doc: Json = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(
        doc["keys"][0],
        json!({"use": "x509-svid", "kty": "EC", "crv": "P-256", "x": x, "y": y,
               "x5c": [STANDARD.encode(&der)]})
    );
    assert_eq!(doc["keys"][1]["kid"], "j");
    assert_eq!(doc["spiffe_sequence"], 1);
    assert_eq!(doc["spiffe_refresh_hint"], 300);
    assert_eq!(parse(json.as_bytes()).expect("round trip"), bundle);

    let unhinted = TrustBundle { refresh_hint_secs: None, sequence: 0, ..bundle };
    let json = unhinted.to_spiffe_json();
    assert!(!json.contains("spiffe_refresh_hint"), "{json}");
    assert!(json.ends_with(",\"spiffe_sequence\":0}"), "{json}");
    assert_eq!(parse(json.as_bytes()).expect("round trip"), unhinted);

    // Served, a bundle always carries a hint: its own, else the configured default.
    let served: Json = serde_json::from_str(&unhinted.to_served_json(120)).expect("JSON");
    assert_eq!(served["spiffe_refresh_hint"], 120);
    let own = TrustBundle { refresh_hint_secs: Some(900), ..unhinted.clone() };
    let served: Json = serde_json::from_str(&own.to_served_json(120)).expect("JSON");
    assert_eq!(served["spiffe_refresh_hint"], 900);
    // The canonical form (digests, the log) does not depend on the setting.
    assert_eq!(unhinted.to_spiffe_json(), json);
}

#[test]
fn to_pem_parses_back_to_the_same_authorities() {
    let (rsa, rsa_policy) = fixture(RSA2048);
    let bundle =
        parse_spiffe_bundle(TD, &document(vec![x509_jwk(&rsa, "RSA"), jwt_p256("j")]), &rsa_policy)
            .expect("valid");
    let pem = bundle.to_pem();
    assert!(pem.lines().all(|line| line.len() <= 64), "{pem}");
    let back = parse_pem_bundle(TD, pem.as_bytes(), 1, Some(300), &rsa_policy).expect("PEM");
    assert_eq!(back.x509_authorities, bundle.x509_authorities);
}

#[test]
fn digest_is_the_sha256_of_the_json() {
    let bundle = parse(&document(vec![x509_jwk(&ca(), "EC")])).expect("valid");
    assert_eq!(bundle.digest(), hex::encode(Sha256::digest(bundle.to_spiffe_json().as_bytes())));
    let next = TrustBundle { sequence: 2, ..bundle.clone() };
    assert_ne!(next.digest(), bundle.digest());
}

#[test]
fn fingerprints_list_every_key_and_are_spki_hashes() {
    let ec = key(&rcgen::PKCS_ECDSA_P384_SHA384);
    let ec_der = self_signed(&ca_params(), &ec);
    let ed_der = self_signed(&ca_params(), &key(&rcgen::PKCS_ED25519));
    let bundle =
        parse(&document(vec![jwt_p256("j"), x509_jwk(&ec_der, "EC"), x509_jwk(&ed_der, "OKP")]))
            .expect("valid");
    let fingerprints: Vec<&str> = bundle.fingerprints().collect();
    assert_eq!(fingerprints.len(), 3);
    assert_eq!(fingerprints[2], bundle.jwt_authorities[0].fingerprint);
    let spki_hash = |der: &[u8]| {
        let (_, cert) = X509Certificate::from_der(der).expect("DER");
        hex::encode(Sha256::digest(cert.public_key().raw))
    };
    assert_eq!(fingerprints[0], spki_hash(&ec_der));
    assert_eq!(fingerprints[1], spki_hash(&ed_der));
    // RSA too (openssl's encoding).
    let (rsa, rsa_policy) = fixture(RSA2048);
    let rsa_bundle =
        parse_spiffe_bundle(TD, &document(vec![x509_jwk(&rsa, "RSA")]), &rsa_policy).expect("ok");
    assert_eq!(rsa_bundle.x509_authorities[0].fingerprint, spki_hash(&rsa));
}

#[test]
fn error_messages_name_the_field_and_the_rule() {
    let err = invalid("keys[2].x5c", "must hold exactly one certificate");
    assert_eq!(err.to_string(), "keys[2].x5c: must hold exactly one certificate");
    let err = parse(b"{").expect_err("malformed");
    assert!(err.to_string().starts_with("body: not well-formed JSON at line 1"), "{err}");
    let bytes = postcard::to_allocvec(&err).expect("serialize");
    assert_eq!(postcard::from_bytes::<BundleError>(&bytes).expect("deserialize"), err);
}

#[test]
fn default_policy_limits() {
    let p = ValidationPolicy::at(5);
    assert_eq!(p.now, 5);
    assert_eq!(p.max_bytes, 256 * 1024);
    assert_eq!(p.max_keys, 64);
    assert_eq!(p.max_depth, 16);
    assert_eq!(p.pre_publication_window_secs, 300);
    assert_eq!(p.min_refresh_hint_secs, 10);
    assert_eq!(p.max_refresh_hint_secs, 604_800);
    assert!(ValidationPolicy::default().now > NOW - 10 * 365 * DAY);
}

// === properties ===

/// Keys made once for the property tests: CA certificates with their JWK key members,
/// and JWT EC keys.
struct Pool {
    x509: Vec<(Vec<u8>, Json)>,
    jwt: Vec<Json>,
}

static POOL: LazyLock<Pool> = LazyLock::new(|| {
    let mut x509 = Vec::new();
    for (alg, crv) in [
        (&rcgen::PKCS_ECDSA_P256_SHA256, "P-256"),
        (&rcgen::PKCS_ECDSA_P256_SHA256, "P-256"),
        (&rcgen::PKCS_ECDSA_P384_SHA384, "P-384"),
        (&rcgen::PKCS_ED25519, "Ed25519"),
    ] {
        let key = key(alg);
        let der = self_signed(&ca_params(), &key);
        let members = if crv == "Ed25519" {
            json!({"kty": "OKP", "crv": crv, "x": URL_SAFE_NO_PAD.encode(key.public_key_raw())})
        } else {
            let (x, y) = ec_coordinates(&key);
            json!({"kty": "EC", "crv": crv, "x": x, "y": y})
        };
        x509.push((der, members));
    }
    let jwt = vec![
        jwt_ec("", &key(&rcgen::PKCS_ECDSA_P256_SHA256), "P-256"),
        jwt_ec("", &key(&rcgen::PKCS_ECDSA_P256_SHA256), "P-256"),
        jwt_ec("", &key(&rcgen::PKCS_ECDSA_P384_SHA384), "P-384"),
    ];
    Pool { x509, jwt }
});

/// A JSON object as ordered members, so that tests can write duplicate members.
#[derive(Clone, Debug)]
struct Members(Vec<(String, Member)>);

#[derive(Clone, Debug)]
enum Member {
    Json(Json),
    Keys(Vec<Members>),
}

impl Members {
    fn render(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(name, member)| {
                let value = match member {
                    Member::Json(json) => json.to_string(),
                    Member::Keys(keys) => {
                        let keys: Vec<String> = keys.iter().map(Members::render).collect();
                        format!("[{}]", keys.join(","))
                    }
                };
                format!("{}:{value}", Json::from(name.as_str()))
            })
            .collect();
        format!("{{{}}}", parts.join(","))
    }

    fn from_json(json: &Json) -> Self {
        let object = json.as_object().expect("object");
        Self(object.iter().map(|(k, v)| (k.clone(), Member::Json(v.clone()))).collect())
    }
}

/// A valid document: the chosen pool keys (X.509 ones with their key members), kids made
/// unique, a sequence and maybe a refresh hint.
fn valid_document(
    x509: &[usize],
    jwt: &[usize],
    kids: &[String],
    sequence: u64,
    hint: Option<u64>,
) -> Members {
    let mut keys = Vec::new();
    for &i in x509 {
        let (der, members) = &POOL.x509[i];
        let mut jwk = x509_jwk(der, "EC");
        for (k, v) in members.as_object().expect("object") {
            jwk[k] = v.clone();
        }
        keys.push(Members::from_json(&jwk));
    }
    for (n, &i) in jwt.iter().enumerate() {
        let mut jwk = POOL.jwt[i].clone();
        jwk["kid"] = json!(format!("{}#{n}", kids[n % kids.len()]));
        keys.push(Members::from_json(&jwk));
    }
    let mut top = vec![("keys".to_string(), Member::Keys(keys))];
    top.push(("spiffe_sequence".to_string(), Member::Json(json!(sequence))));
    if let Some(hint) = hint {
        top.push(("spiffe_refresh_hint".to_string(), Member::Json(json!(hint))));
    }
    Members(top)
}

fn document_strategy() -> impl Strategy<Value = Members> {
    (
        proptest::sample::subsequence(vec![0usize, 1, 2, 3], 0..=4),
        proptest::sample::subsequence(vec![0usize, 1, 2], 0..=3),
        proptest::collection::vec("[a-zA-Z0-9_\"\\\\é -]{1,12}", 1..4),
        any::<u64>(),
        proptest::option::of(10u64..=604_800),
    )
        .prop_filter("at least one key", |(x, j, ..)| !x.is_empty() || !j.is_empty())
        .prop_map(|(x509, jwt, kids, sequence, hint)| {
            valid_document(&x509, &jwt, &kids, sequence, hint)
        })
}

/// Every object of a document (the document, then each key) as (path, members).
fn objects(doc: &Members) -> Vec<(String, Members)> {
    let mut all = vec![(String::new(), doc.clone())];
    for (name, member) in &doc.0 {
        if let (true, Member::Keys(keys)) = (name == "keys", member) {
            for (i, key) in keys.iter().enumerate() {
                all.push((format!("keys[{i}]."), key.clone()));
            }
        }
    }
    all
}

/// `doc` with object `object` (index into [`objects`]) replaced by `edit` of it.
fn edit_object(doc: &Members, object: usize, edit: impl FnOnce(&mut Members)) -> Members {
    let mut doc = doc.clone();
    if object == 0 {
        edit(&mut doc);
        return doc;
    }
    let keys = doc.0.iter_mut().find_map(|(name, member)| match member {
        Member::Keys(keys) if name == "keys" => Some(keys),
        _ => None,
    });
    edit(&mut keys.expect("documents have keys")[object - 1]);
    doc
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = parse(&bytes);
        let _ = parse_pem_bundle(TD, &bytes, 0, None, &policy());
    }

    #[test]
    fn arbitrary_json_like_text_never_panics(text in "[\\[\\]{}\":,0-9a-z\\\\ .-]{0,300}") {
        let _ = parse(text.as_bytes());
        let pem = format!("-----BEGIN CERTIFICATE-----\n{text}\n-----END CERTIFICATE-----\n");
        let _ = parse_pem_bundle(TD, pem.as_bytes(), 0, None, &policy());
    }

    #[test]
    fn generated_bundles_round_trip(doc in document_strategy()) {
        let bundle = parse(doc.render().as_bytes()).expect("generated documents are valid");
        let json = bundle.to_spiffe_json();
        prop_assert_eq!(&parse(json.as_bytes()).expect("own output is valid"), &bundle);
        let stored = postcard::to_allocvec(&bundle).expect("serialize");
        prop_assert_eq!(&postcard::from_bytes::<TrustBundle>(&stored).expect("deserialize"), &bundle);
        let pem = parse_pem_bundle(TD, bundle.to_pem().as_bytes(), 0, None, &policy());
        if bundle.x509_authorities.is_empty() {
            prop_assert!(pem.is_err());
        } else {
            prop_assert_eq!(pem.expect("PEM").x509_authorities, bundle.x509_authorities);
        }
    }

    #[test]
    fn duplicating_a_member_is_rejected(doc in document_strategy(), pick in any::<prop::sample::Index>(), member in any::<prop::sample::Index>()) {
        let all = objects(&doc);
        let object = pick.index(all.len());
        let (prefix, members) = &all[object];
        let m = member.index(members.0.len());
        let name = members.0[m].0.clone();
        let mutated = edit_object(&doc, object, |o| {
            let copy = o.0[m].clone();
            o.0.insert(m + 1, copy);
        });
        let err = parse(mutated.render().as_bytes()).expect_err("duplicate member");
        prop_assert_eq!(err.field(), format!("{prefix}{name}"));
        prop_assert_eq!(err.rule(), "duplicate member");
    }

    #[test]
    fn dropping_a_member_is_rejected_or_parsed_consistently(doc in document_strategy(), pick in any::<prop::sample::Index>(), member in any::<prop::sample::Index>()) {
        let original = parse(doc.render().as_bytes()).expect("valid");
        let all = objects(&doc);
        let object = pick.index(all.len());
        let (prefix, members) = &all[object];
        let m = member.index(members.0.len());
        let name = members.0[m].0.clone();
        let is_jwt = members.0.iter().any(|(n, v)| n == "use" && matches!(v, Member::Json(j) if j == "jwt-svid"));
        let mutated = edit_object(&doc, object, |o| { o.0.remove(m); });
        let result = parse(mutated.render().as_bytes());
        match (object, name.as_str()) {
            (0, "spiffe_sequence") => {
                prop_assert_eq!(result.expect("optional"), TrustBundle { sequence: 0, ..original });
            }
            (0, "spiffe_refresh_hint") => {
                prop_assert_eq!(result.expect("optional"), TrustBundle { refresh_hint_secs: None, ..original });
            }
            // The key members of an x509-svid JWK are optional: the certificate has them.
            (_, "crv" | "x" | "y") if object > 0 && !is_jwt => {
                prop_assert_eq!(result.expect("optional"), original);
            }
            _ => {
                let err = result.expect_err("required member");
                prop_assert_eq!(err.field(), format!("{prefix}{name}"));
                prop_assert!(err.rule().contains("must be set"), "{}", err);
            }
        }
    }

    #[test]
    fn flipping_a_byte_never_panics_and_what_parses_round_trips(doc in document_strategy(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = doc.render().into_bytes();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        if let Ok(bundle) = parse(&bytes) {
            let json = bundle.to_spiffe_json();
            prop_assert_eq!(parse(json.as_bytes()).expect("own output is valid"), bundle);
        }
    }
}
