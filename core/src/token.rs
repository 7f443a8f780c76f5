//! Join tokens: the single-use secret an operator hands to a cluster's agent, together
//! with where and how to reach the federation.
//!
//! On the wire a token is `fedjoin1.` followed by the base64url (no padding) encoding of
//! a JSON object. The federation stores only [`hash_secret`] of the secret; decoding is
//! strict because the text comes from outside (a file, an environment variable, a flag).

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::{PemObject as _, SectionKind};
use sha2::{Digest as _, Sha256};

use crate::identity::validate_trust_domain;

/// What every encoded token starts with; the digit is the format version.
pub const TOKEN_PREFIX: &str = "fedjoin1.";

/// Longest encoded token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Most replica endpoints a token may list.
pub const MAX_ENDPOINTS: usize = 32;

/// Length of the secret, in bytes.
pub const SECRET_LEN: usize = 32;

/// Longest cluster name: one DNS label.
const MAX_CLUSTER_NAME_LEN: usize = 63;

/// Longest DNS name of an endpoint host.
const MAX_HOST_LEN: usize = 253;

/// What the operator hands to a cluster's agent: a secret plus where and how to reach the
/// federation.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The single-use secret; the federation knows only its hash.
    pub secret: [u8; SECRET_LEN],
    /// Name of the member cluster the token admits.
    pub cluster: String,
    /// The trust domain the member is bound to.
    pub trust_domain: String,
    /// Replica API addresses, `host:port`.
    pub endpoints: Vec<String>,
    /// The federation CA that the replicas' server certificates chain to, PEM.
    pub federation_ca_pem: String,
    /// Unix time (seconds) after which the federation refuses the token.
    pub expires_at: i64,
}

/// Why a join token (or a cluster name) was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The text does not start with [`TOKEN_PREFIX`].
    #[error("join token: must start with {TOKEN_PREFIX:?}")]
    Prefix,
    /// The text is longer than [`MAX_TOKEN_LEN`].
    #[error("join token: {len} bytes; at most {MAX_TOKEN_LEN} are allowed")]
    TooLarge {
        /// Its length in bytes.
        len: usize,
    },
    /// The part after the prefix is not base64url without padding.
    #[error("join token: not base64url without padding: {problem}")]
    Base64 {
        /// What the decoder said.
        problem: String,
    },
    /// The decoded bytes are not the expected JSON object (this names unknown, missing
    /// and duplicate fields).
    #[error("join token: invalid JSON: {problem}")]
    Json {
        /// What the parser said.
        problem: String,
    },
    /// A field holds an invalid value.
    #[error("join token field {field}: {problem}")]
    Field {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A cluster name breaks a rule.
    #[error("cluster {name:?}: {rule}")]
    ClusterName {
        /// The name as given (shortened if long).
        name: String,
        /// The rule it broke.
        rule: &'static str,
    },
}

/// The JSON object inside an encoded token. The values are typed by hand afterwards so
/// that a wrong type is reported with the field's name; the derive still refuses unknown,
/// missing and duplicate fields.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    /// The secret, 64 hex digits.
    secret: serde_json::Value,
    /// See [`JoinToken::cluster`].
    cluster: serde_json::Value,
    /// See [`JoinToken::trust_domain`].
    trust_domain: serde_json::Value,
    /// See [`JoinToken::endpoints`].
    endpoints: serde_json::Value,
    /// See [`JoinToken::federation_ca_pem`].
    federation_ca_pem: serde_json::Value,
    /// See [`JoinToken::expires_at`].
    expires_at: serde_json::Value,
}

// === impl JoinToken ===

impl JoinToken {
    /// A token with a fresh random secret. The fields are checked by [`Self::validate`]
    /// (and by [`Self::decode`] on the agent's side), not here.
    #[must_use]
    pub fn generate(
        cluster: impl Into<String>,
        trust_domain: impl Into<String>,
        endpoints: Vec<String>,
        federation_ca_pem: impl Into<String>,
        expires_at: i64,
    ) -> Self {
        let mut secret = [0_u8; SECRET_LEN];
        // ThreadRng is a CSPRNG seeded from the operating system.
        rand::rng().fill_bytes(&mut secret);
        Self {
            secret,
            cluster: cluster.into(),
            trust_domain: trust_domain.into(),
            endpoints,
            federation_ca_pem: federation_ca_pem.into(),
            expires_at,
        }
    }

    /// The text form: `fedjoin1.` + base64url-without-padding of the JSON object.
    #[must_use]
    pub fn encode(&self) -> String {
        // A `Value` renders infallibly, with its keys sorted.
        let json = serde_json::json!({
            "secret": hex::encode(self.secret),
            "cluster": self.cluster,
            "trust_domain": self.trust_domain,
            "endpoints": self.endpoints,
            "federation_ca_pem": self.federation_ca_pem,
            "expires_at": self.expires_at,
        });
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(json.to_string()))
    }

    /// Parses and checks the text form. Strict: the prefix, a size limit, canonical
    /// base64url, a JSON object with exactly the known fields, and every rule of
    /// [`Self::validate`].
    ///
    /// # Errors
    /// The text breaks a rule; the error names the field.
    pub fn decode(text: &str) -> Result<Self, TokenError> {
        if text.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge { len: text.len() });
        }
        let body = text.strip_prefix(TOKEN_PREFIX).ok_or(TokenError::Prefix)?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| TokenError::Base64 { problem: e.to_string() })?;
        let wire: Wire = serde_json::from_slice(&json)
            .map_err(|e| TokenError::Json { problem: e.to_string() })?;
        let token = Self {
            secret: decode_secret(&string_field("secret", wire.secret)?)?,
            cluster: string_field("cluster", wire.cluster)?,
            trust_domain: string_field("trust_domain", wire.trust_domain)?,
            endpoints: string_list_field("endpoints", wire.endpoints)?,
            federation_ca_pem: string_field("federation_ca_pem", wire.federation_ca_pem)?,
            expires_at: wire
                .expires_at
                .as_i64()
                .ok_or_else(|| field("expires_at", "must be an integer (unix seconds)"))?,
        };
        token.validate()?;
        Ok(token)
    }

    /// Checks every field: the cluster name is a DNS label, the trust domain is valid,
    /// the endpoints are 1 to [`MAX_ENDPOINTS`] distinct `host:port`s, the CA PEM holds
    /// only CA certificates that parse, and `expires_at` is a positive unix time.
    ///
    /// # Errors
    /// A field breaks a rule; the error names it.
    pub fn validate(&self) -> Result<(), TokenError> {
        validate_cluster_name(&self.cluster)?;
        validate_trust_domain(&self.trust_domain).map_err(|e| field("trust_domain", e))?;
        validate_endpoints(&self.endpoints)?;
        validate_ca_pem(&self.federation_ca_pem)?;
        if self.expires_at <= 0 {
            return Err(field("expires_at", "must be a positive unix time"));
        }
        Ok(())
    }

    /// Hex SHA-256 of the secret: what the federation stores and looks tokens up by.
    #[must_use]
    pub fn secret_hash(&self) -> String {
        hash_secret(&self.secret)
    }

    /// Whether the token is past its expiry at unix time `now`.
    #[must_use]
    pub fn is_expired(&self, now: i64) -> bool {
        now >= self.expires_at
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret: tokens end up in logs through `?token`.
        f.debug_struct("JoinToken")
            .field("secret", &"<redacted>")
            .field("cluster", &self.cluster)
            .field("trust_domain", &self.trust_domain)
            .field("endpoints", &self.endpoints)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Hex SHA-256 of a token secret.
#[must_use]
pub fn hash_secret(secret: &[u8]) -> String {
    hex::encode(Sha256::digest(secret))
}

/// Checks a cluster name: one DNS label of 1 to 63 characters `[a-z0-9-]`, neither
/// starting nor ending with `-`.
///
/// # Errors
/// The name breaks a rule; the error says which.
pub fn validate_cluster_name(name: &str) -> Result<(), TokenError> {
    let fail = |rule| Err(TokenError::ClusterName { name: shorten(name), rule });
    if name.is_empty() {
        return fail("must not be empty");
    }
    if name.len() > MAX_CLUSTER_NAME_LEN {
        return fail("must be at most 63 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return fail("may only hold the characters a-z 0-9 -");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return fail("must not start or end with '-'");
    }
    Ok(())
}

fn field(name: &'static str, problem: impl fmt::Display) -> TokenError {
    TokenError::Field { field: name, problem: problem.to_string() }
}

/// `text` cut to 64 characters, for error messages about outside input.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

fn string_field(name: &'static str, value: serde_json::Value) -> Result<String, TokenError> {
    match value {
        serde_json::Value::String(text) => Ok(text),
        _ => Err(field(name, "must be a string")),
    }
}

fn string_list_field(
    name: &'static str,
    value: serde_json::Value,
) -> Result<Vec<String>, TokenError> {
    let serde_json::Value::Array(items) = value else {
        return Err(field(name, "must be a list of strings"));
    };
    items
        .into_iter()
        .map(|item| match item {
            serde_json::Value::String(text) => Ok(text),
            _ => Err(field(name, "must be a list of strings")),
        })
        .collect()
}

fn decode_secret(text: &str) -> Result<[u8; SECRET_LEN], TokenError> {
    let bad = || field("secret", "must be 64 hex digits (32 bytes)");
    if text.len() != 2 * SECRET_LEN {
        return Err(bad());
    }
    let mut secret = [0_u8; SECRET_LEN];
    hex::decode_to_slice(text, &mut secret).map_err(|_| bad())?;
    Ok(secret)
}

fn validate_endpoints(endpoints: &[String]) -> Result<(), TokenError> {
    if endpoints.is_empty() {
        return Err(field("endpoints", "must list at least one replica address"));
    }
    if endpoints.len() > MAX_ENDPOINTS {
        return Err(field(
            "endpoints",
            format!("lists {}; at most {MAX_ENDPOINTS} are allowed", endpoints.len()),
        ));
    }
    let mut seen = HashSet::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        check_endpoint(endpoint)
            .map_err(|rule| field("endpoints", format!("[{i}] {:?}: {rule}", shorten(endpoint))))?;
        if !seen.insert(endpoint.as_str()) {
            return Err(field("endpoints", format!("[{i}] {endpoint:?}: listed twice")));
        }
    }
    Ok(())
}

/// Checks one `host:port`: a DNS name, an IPv4 address or a bracketed IPv6 address, and
/// a port from 1 to 65535.
///
/// # Errors
/// The rule `endpoint` breaks.
pub fn check_endpoint(endpoint: &str) -> Result<(), &'static str> {
    let (host, port) = endpoint.rsplit_once(':').ok_or("must be host:port")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err("port must be a number from 1 to 65535");
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => {}
        _ => return Err("port must be a number from 1 to 65535"),
    }
    if host.is_empty() {
        return Err("host must not be empty");
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or("bracketed host must end with ']'")?;
        return inner
            .parse::<Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| "bracketed host must be an IPv6 address");
    }
    if host.contains(':') {
        return Err("an IPv6 address must be in brackets, as [::1]:8443");
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    check_dns_name(host)
}

fn check_dns_name(host: &str) -> Result<(), &'static str> {
    if host.len() > MAX_HOST_LEN {
        return Err("host name must be at most 253 characters");
    }
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("host name labels must be 1 to 63 characters");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err("host must be a DNS name, an IPv4 address or a bracketed IPv6 address");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("host name labels must not start or end with '-'");
        }
    }
    // An all-numeric last label means a malformed IPv4 address, not a name.
    if host.rsplit('.').next().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
        return Err("host is neither a valid IPv4 address nor a DNS name");
    }
    Ok(())
}

fn validate_ca_pem(pem: &str) -> Result<(), TokenError> {
    let fail = |problem: String| field("federation_ca_pem", problem);
    let mut certificates = 0_usize;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes()) {
        let (kind, der) = section.map_err(|e| fail(format!("invalid PEM: {e}")))?;
        if kind != SectionKind::Certificate {
            return Err(fail(format!(
                "holds a {kind:?} block; only CERTIFICATE blocks are allowed"
            )));
        }
        let index = certificates;
        certificates += 1;
        let der = CertificateDer::from(der);
        let (rest, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| fail(format!("certificate {index} does not parse: {e}")))?;
        if !rest.is_empty() {
            return Err(fail(format!("certificate {index} has trailing bytes")));
        }
        if !cert.is_ca() {
            return Err(fail(format!("certificate {index} is not a CA certificate")));
        }
    }
    if certificates == 0 {
        return Err(fail("holds no CERTIFICATE block".to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;
    use std::time::Duration;

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::identity::FederationCa;

    /// One federation CA for every test (generating keys is slow-ish).
    static CA: LazyLock<FederationCa> = LazyLock::new(|| {
        FederationCa::generate("fed.test", "test CA", Duration::from_secs(3600)).expect("ca")
    });

    fn token() -> JoinToken {
        JoinToken::generate(
            "cluster-a",
            "cluster-a.example",
            vec!["replica-1.fed.example:8443".to_string(), "127.0.0.12:8443".to_string()],
            CA.cert_pem(),
            1_900_000_000,
        )
    }

    /// The JSON object of a valid token, for tests to spoil.
    fn valid_json() -> Value {
        let text = token().encode();
        let body = URL_SAFE_NO_PAD
            .decode(text.strip_prefix(TOKEN_PREFIX).expect("prefix"))
            .expect("base64");
        serde_json::from_slice(&body).expect("json")
    }

    fn encode_raw(json: &str) -> String {
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// Decodes `json` after `spoil` changed it, and returns the error message.
    fn refusal(spoil: impl FnOnce(&mut Value)) -> String {
        let mut json = valid_json();
        spoil(&mut json);
        JoinToken::decode(&encode_raw(&json.to_string()))
            .expect_err("the spoiled token must be refused")
            .to_string()
    }

    fn assert_names(message: &str, name: &str) {
        assert!(message.contains(name), "{message:?} must name {name:?}");
    }

    #[test]
    fn encoded_token_decodes_to_the_same_token() {
        let token = token();
        let text = token.encode();
        assert!(text.starts_with("fedjoin1."));
        assert!(
            text[TOKEN_PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "base64url without padding"
        );
        assert_eq!(JoinToken::decode(&text).expect("decodes"), token);
        token.validate().expect("valid");
    }

    #[test]
    fn generated_secrets_differ_and_are_stored_hashed() {
        let (one, two) = (token(), token());
        assert_ne!(one.secret, two.secret);
        assert_eq!(one.secret_hash(), hash_secret(&one.secret));
        assert_ne!(one.secret_hash(), two.secret_hash());
        assert_eq!(one.secret_hash().len(), 64);
    }

    #[test]
    fn secret_hash_is_stable_sha256() {
        assert_eq!(
            hash_secret(&[0_u8; 32]),
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
        );
        assert_eq!(
            hash_secret(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let token = token();
        let debug = format!("{token:?}");
        assert!(!debug.contains(&hex::encode(token.secret)), "{debug}");
        assert!(debug.contains("<redacted>"));
    }

    #[test]
    fn expiry_is_compared_with_now() {
        let token = token();
        assert!(!token.is_expired(token.expires_at - 1));
        assert!(token.is_expired(token.expires_at));
    }

    #[test]
    fn envelope_rules_are_enforced() {
        let text = token().encode();
        assert_eq!(
            JoinToken::decode(&text.replacen("fedjoin1.", "fedjoin2.", 1)),
            Err(TokenError::Prefix)
        );
        assert_eq!(JoinToken::decode(""), Err(TokenError::Prefix));
        let huge = format!("{TOKEN_PREFIX}{}", "A".repeat(MAX_TOKEN_LEN));
        assert!(matches!(JoinToken::decode(&huge), Err(TokenError::TooLarge { .. })));
        for bad in [format!("{text}="), format!("{text}!"), text.replace('-', "+")] {
            if bad == text {
                continue;
            }
            assert!(matches!(JoinToken::decode(&bad), Err(TokenError::Base64 { .. })), "{bad:?}");
        }
        for json in ["not json", "[]", "{}", "{\"secret\": \"00\"}"] {
            assert!(
                matches!(JoinToken::decode(&encode_raw(json)), Err(TokenError::Json { .. })),
                "{json:?}"
            );
        }
        let trailing = format!("{} x", valid_json());
        assert!(matches!(JoinToken::decode(&encode_raw(&trailing)), Err(TokenError::Json { .. })));
    }

    #[test]
    fn unknown_missing_and_duplicate_fields_are_refused() {
        let message = refusal(|j| {
            j["admin"] = json!(true);
        });
        assert_names(&message, "admin");
        for name in
            ["secret", "cluster", "trust_domain", "endpoints", "federation_ca_pem", "expires_at"]
        {
            let message = refusal(|j| {
                j.as_object_mut().expect("object").remove(name);
            });
            assert_names(&message, name);
        }
        let json = valid_json().to_string();
        let duplicated = json.replacen('{', "{\"cluster\":\"other\",", 1);
        let message =
            JoinToken::decode(&encode_raw(&duplicated)).expect_err("duplicate").to_string();
        assert_names(&message, "duplicate field `cluster`");
    }

    #[test]
    fn secret_must_be_exactly_32_bytes_of_hex() {
        for bad in [
            json!("00"),
            json!("0".repeat(62)),
            json!("0".repeat(66)),
            json!("zz".repeat(32)),
            json!(""),
            json!(42),
        ] {
            let message = refusal(|j| j["secret"] = bad.clone());
            assert_names(&message, "secret");
        }
    }

    #[test]
    fn cluster_name_rules() {
        validate_cluster_name("a").expect("one character");
        validate_cluster_name("cluster-1").expect("dash inside");
        validate_cluster_name(&"a".repeat(63)).expect("63 characters");
        for bad in [
            String::new(),
            "-a".to_string(),
            "a-".to_string(),
            "Cluster".to_string(),
            "a_b".to_string(),
            "a.b".to_string(),
            "ä".to_string(),
            "a".repeat(64),
        ] {
            let error = validate_cluster_name(&bad).expect_err("refused");
            assert!(matches!(error, TokenError::ClusterName { .. }), "{bad:?}");
            let message = refusal(|j| j["cluster"] = json!(bad));
            assert_names(&message, "cluster");
        }
    }

    #[test]
    fn trust_domain_must_be_valid() {
        for bad in ["", "Upper.example", "a/b", "a%2e"] {
            let message = refusal(|j| j["trust_domain"] = json!(bad));
            assert_names(&message, "trust_domain");
        }
    }

    #[test]
    fn endpoints_must_be_host_port() {
        let good = [
            "replica-1.fed.example:8443",
            "localhost:1",
            "127.0.0.11:65535",
            "[::1]:8443",
            "[2001:db8::1]:443",
        ];
        for endpoint in good {
            check_endpoint(endpoint).unwrap_or_else(|e| panic!("{endpoint}: {e}"));
        }
        let bad = [
            "replica-1",
            ":8443",
            "host:",
            "host:0",
            "host:65536",
            "host:+1",
            "host:http",
            "::1:8443",
            "[::1:8443",
            "[nonsense]:8443",
            "-host:8443",
            "a..b:8443",
            "host name:8443",
            "https://host:8443",
            "999.1.1.1:8443",
            "1.2.3:8443",
        ];
        for endpoint in bad {
            assert!(check_endpoint(endpoint).is_err(), "{endpoint:?} must be refused");
            let message = refusal(|j| j["endpoints"] = json!([endpoint]));
            assert_names(&message, "endpoints");
        }
        assert_names(&refusal(|j| j["endpoints"] = json!([])), "endpoints");
        assert_names(&refusal(|j| j["endpoints"] = json!(["a:1", "a:1"])), "listed twice");
        let many: Vec<String> = (0..=MAX_ENDPOINTS).map(|i| format!("h{i}:1")).collect();
        assert_names(&refusal(|j| j["endpoints"] = json!(many)), "endpoints");
    }

    #[test]
    fn federation_ca_must_be_ca_certificates_only() {
        let leaf = CA
            .issue("spiffe://fed.test/federator/replica/1", &[], &[], Duration::from_secs(60))
            .expect("leaf");
        let spoiled = [
            String::new(),
            "no PEM at all".to_string(),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_string(),
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_string(),
            leaf.cert_pem.clone(),
            format!("{}{}", CA.cert_pem(), CA.key_pem()),
        ];
        for pem in spoiled {
            let message = refusal(|j| j["federation_ca_pem"] = json!(pem));
            assert_names(&message, "federation_ca_pem");
        }
        let two = format!("{}{}", CA.cert_pem(), CA.cert_pem());
        let mut json = valid_json();
        json["federation_ca_pem"] = json!(two);
        JoinToken::decode(&encode_raw(&json.to_string())).expect("two CA certificates");
    }

    #[test]
    fn expiry_must_be_a_positive_unix_time_and_types_must_match() {
        for bad in [json!(0), json!(-5)] {
            let message = refusal(|j| j["expires_at"] = bad.clone());
            assert_names(&message, "expires_at");
        }
        for wrong_type in [json!("soon"), json!(1.5), json!(null)] {
            let message = refusal(|j| j["expires_at"] = wrong_type.clone());
            assert_names(&message, "expires_at");
        }
        for (name, wrong_type) in [
            ("cluster", json!(1)),
            ("trust_domain", json!(["a"])),
            ("endpoints", json!("a:1")),
            ("endpoints", json!([1])),
            ("federation_ca_pem", json!({})),
        ] {
            let message = refusal(|j| j[name] = wrong_type.clone());
            assert_names(&message, name);
        }
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = JoinToken::decode(&text);
            let _ = JoinToken::decode(&format!("{TOKEN_PREFIX}{text}"));
        }

        #[test]
        fn decoding_arbitrary_payloads_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = JoinToken::decode(&format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(&bytes)));
        }

        #[test]
        fn decoding_spoiled_json_never_panics(
            key in "[a-z_]{1,20}",
            value in prop_oneof![
                Just(Value::Null),
                any::<i64>().prop_map(Value::from),
                "\\PC{0,40}".prop_map(Value::from),
                prop::collection::vec("\\PC{0,20}", 0..4).prop_map(Value::from),
            ],
        ) {
            let mut json = valid_json();
            json[key.as_str()] = value;
            let _ = JoinToken::decode(&encode_raw(&json.to_string()));
        }

        #[test]
        fn valid_tokens_round_trip(
            secret in any::<[u8; 32]>(),
            cluster in "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?",
            trust_domain in "[a-z0-9_][a-z0-9_-]{0,12}(\\.[a-z0-9_-]{1,12}){0,3}",
            hosts in prop::collection::hash_set("[a-z]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z]{1,8}){0,3}", 1..5),
            port in 1_u16..,
            expires_at in 1_i64..,
        ) {
            let token = JoinToken {
                secret,
                cluster,
                trust_domain,
                endpoints: hosts.into_iter().map(|h| format!("{h}:{port}")).collect(),
                federation_ca_pem: CA.cert_pem().to_string(),
                expires_at,
            };
            let decoded = JoinToken::decode(&token.encode());
            prop_assert_eq!(decoded, Ok(token));
        }
    }
}
