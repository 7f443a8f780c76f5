//! Fuzzes the join-token decoder: no input may panic, and whatever decodes must be a
//! valid token that re-encodes and decodes to the same token.
//!
//! The input is tried three ways, so that the fuzzer reaches every layer of the decoder:
//! as the token text itself (the prefix and size checks), after `fedjoin1.` (the base64
//! layer), and base64url-encoded after `fedjoin1.` (the JSON object and its fields). In
//! the last form every `@CA` in the input is first replaced by the PEM of a fixed
//! federation CA, so that an input can name a CA that passes the `federation_ca_pem`
//! checks and decode in full (e.g. `{"secret":"00…00","cluster":"a","trust_domain":"a",
//! "endpoints":["a:1"],"federation_ca_pem":"@CA","expires_at":1}`).
//!
//! Run with `cargo +nightly fuzz run token_decode` from `federator/`.

#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use federator::identity::FederationCa;
use federator::token::{JoinToken, TOKEN_PREFIX};
use libfuzzer_sys::fuzz_target;

/// The PEM of one CA for the whole run, escaped for a JSON string.
static CA_PEM_JSON: LazyLock<String> = LazyLock::new(|| {
    let ca = FederationCa::generate("fed.fuzz", "fuzz CA", Duration::from_secs(3600))
        .expect("generating the fuzz CA");
    ca.cert_pem().replace('\n', "\\n")
});

/// Decodes `text`; a token that decodes must be valid and round-trip.
fn check(text: &str) {
    let Ok(token) = JoinToken::decode(text) else {
        return;
    };
    assert_eq!(token.validate(), Ok(()), "a decoded token must be valid");
    let encoded = token.encode();
    assert!(encoded.starts_with(TOKEN_PREFIX));
    assert_eq!(JoinToken::decode(&encoded), Ok(token.clone()), "re-encoded token must decode");
    // The encoding is canonical: encoding the decoded token again gives the same text.
    let again = JoinToken::decode(&encoded).expect("decoded above");
    assert_eq!(again.encode(), encoded, "encoding must be canonical");
    assert_eq!(token.secret_hash().len(), 64);
}

/// `bytes` with every `@CA` replaced by the fuzz CA's PEM (escaped for JSON).
fn with_ca(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(at) = rest.windows(3).position(|w| w == b"@CA") {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(CA_PEM_JSON.as_bytes());
        rest = &rest[at + 3..];
    }
    out.extend_from_slice(rest);
    out
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check(&text);
    check(&format!("{TOKEN_PREFIX}{text}"));
    check(&format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(with_ca(data))));
});
