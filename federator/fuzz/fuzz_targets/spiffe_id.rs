//! Fuzzes the SPIFFE ID parser and the trust-domain check: no input may panic; a parsed ID
//! displays as the text it was parsed from, that text parses back to the same ID, the
//! ID's trust domain passes `validate_trust_domain`, and `SpiffeId::new` of its parts
//! gives the same ID. A trust domain that passes the check makes a SPIFFE ID that parses.
//!
//! The input is tried as it is and after `spiffe://`, so that the fuzzer spends its time
//! past the scheme.
//!
//! Run with `cargo +nightly fuzz run spiffe_id` from `federator/`.

#![no_main]

use federator::identity::{MAX_SPIFFE_ID_LEN, SpiffeId, validate_trust_domain};
use libfuzzer_sys::fuzz_target;

fn check(text: &str) {
    let Ok(id) = SpiffeId::parse(text) else {
        return;
    };
    let shown = id.to_string();
    assert_eq!(shown, text, "a SPIFFE ID displays as the text it was parsed from");
    assert_eq!(SpiffeId::parse(&shown), Ok(id.clone()), "its display must parse back");
    assert!(
        validate_trust_domain(&id.trust_domain).is_ok(),
        "the trust domain of a parsed ID must be valid: {:?}",
        id.trust_domain
    );
    assert!(id.is_member_of(&id.trust_domain));
    assert!(id.path.is_empty() || id.path.starts_with('/'));
    assert_eq!(SpiffeId::new(&id.trust_domain, &id.path), Ok(id), "its parts make the same ID");
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check(&text);
    check(&format!("spiffe://{text}"));
    if validate_trust_domain(&text).is_ok() {
        let id = SpiffeId::parse(&format!("spiffe://{text}"))
            .expect("a valid trust domain makes a valid SPIFFE ID");
        assert_eq!(id.trust_domain, text);
        assert!(id.path.is_empty());
        assert!(id.to_string().len() <= MAX_SPIFFE_ID_LEN);
    }
});
