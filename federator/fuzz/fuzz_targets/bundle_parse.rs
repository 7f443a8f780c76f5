//! Fuzzes the bundle parsers: no input may panic, and whatever parses must round-trip
//! through its canonical JSON (and its PEM, for the X.509 authorities).
//!
//! Run with `cargo +nightly fuzz run bundle_parse` from `federator/`.

#![no_main]

use federator::bundle::{ValidationPolicy, parse_pem_bundle, parse_spiffe_bundle};
use libfuzzer_sys::fuzz_target;

/// 2027-01-15: fixed, so that runs are reproducible.
const NOW: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let policy = ValidationPolicy::at(NOW);
    if let Ok(bundle) = parse_spiffe_bundle("example.org", data, &policy) {
        let json = bundle.to_spiffe_json();
        let again = parse_spiffe_bundle("example.org", json.as_bytes(), &policy);
        assert_eq!(again.as_ref(), Ok(&bundle), "canonical JSON must parse back");
        assert_eq!(bundle.digest().len(), 64);
    }
    if let Ok(bundle) = parse_pem_bundle("example.org", data, 1, None, &policy) {
        let pem = bundle.to_pem();
        let again = parse_pem_bundle("example.org", pem.as_bytes(), 1, None, &policy);
        assert_eq!(again.as_ref(), Ok(&bundle), "PEM must parse back");
    }
});
