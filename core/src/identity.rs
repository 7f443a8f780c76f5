//! Identities of the federation itself: its CA, the replicas' and operators' X.509
//! certificates, their SPIFFE IDs, and the rustls configurations built from them.

mod ca;
mod reload;
mod spiffe_id;
mod svid;
#[cfg(test)]
mod test_svids;
mod tls;
mod verifiers;
pub mod workload_api;

pub use ca::{FederationCa, IssuedCertificate};
pub use reload::CertifiedIdentity;
pub use spiffe_id::{MAX_SPIFFE_ID_LEN, SpiffeId, SpiffeIdError};
pub use svid::{MAX_CHAIN_LEN, SvidError, svid_identity, verify_client_svid};
pub use tls::{TlsFiles, TlsMaterial, certificates_to_pem, peer_spiffe_id};
pub use verifiers::{DeferredClientVerifier, SpiffeServerVerifier};

/// Errors of identity handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A certificate or key file could not be read.
    #[error("{field}: cannot read {path}: {source}")]
    Read {
        /// Setting that named the file.
        field: &'static str,
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM file did not hold what it should.
    #[error("{field}: {path}: {problem}")]
    Pem {
        /// Setting that named the file.
        field: &'static str,
        /// The path.
        path: String,
        /// What was wrong.
        problem: String,
    },
    /// Certificate generation failed.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the material.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A name is not a valid SPIFFE trust domain.
    #[error("trust domain {name:?}: {rule}")]
    TrustDomain {
        /// The name given.
        name: String,
        /// The rule it broke.
        rule: &'static str,
    },
}

/// SPIFFE ID of replica `id` in the federation's trust domain `td`.
#[must_use]
pub fn replica_spiffe_id(td: &str, id: u64) -> String {
    format!("spiffe://{td}/federator/replica/{id}")
}

/// SPIFFE ID of the federation's administrators.
#[must_use]
pub fn admin_spiffe_id(td: &str) -> String {
    format!("spiffe://{td}/federator/admin")
}

/// When the leaf certificate of `key` expires (unix seconds); `None` when it does not
/// parse.
#[must_use]
pub fn leaf_not_after(key: &rustls::sign::CertifiedKey) -> Option<i64> {
    let der = key.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Whether `spiffe_id` names a replica of the federation `td`.
#[must_use]
pub fn is_replica_spiffe_id(td: &str, spiffe_id: &str) -> bool {
    spiffe_id
        .strip_prefix(&format!("spiffe://{td}/federator/replica/"))
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
}

/// Checks a trust domain name against the SPIFFE ID specification: 1 to 255 characters of
/// lower-case letters, digits, dots, dashes and underscores.
///
/// # Errors
/// The name breaks a rule; the error says which.
pub fn validate_trust_domain(name: &str) -> Result<(), IdentityError> {
    let fail = |rule| Err(IdentityError::TrustDomain { name: name.to_string(), rule });
    if name.is_empty() {
        return fail("must not be empty");
    }
    if name.len() > 255 {
        return fail("must be at most 255 characters");
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return fail("must be lower case");
    }
    if name.contains('%') {
        return fail("must not be percent-encoded");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)) {
        return fail("may only hold the characters a-z 0-9 . _ -");
    }
    // `.`, `..`, `a..b` and `a.` name no domain (and `.`/`..` would be paths where a sink
    // writes a file per trust domain).
    if name.split('.').any(str::is_empty) {
        return fail("must not have an empty label (a leading, trailing or doubled '.')");
    }
    if name.starts_with('-') {
        return fail("must not start with '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn replica_ids_are_recognized() {
        assert!(is_replica_spiffe_id("fed.local", "spiffe://fed.local/federator/replica/3"));
        assert!(!is_replica_spiffe_id("fed.local", "spiffe://fed.local/federator/admin"));
        assert!(!is_replica_spiffe_id("fed.local", "spiffe://other/federator/replica/3"));
        assert!(!is_replica_spiffe_id("fed.local", "spiffe://fed.local/federator/replica/"));
        assert!(!is_replica_spiffe_id("fed.local", "spiffe://fed.local/federator/replica/3/x"));
    }

    #[test]
    fn trust_domain_rules() {
        assert!(validate_trust_domain("cluster-a.example_1").is_ok());
        for bad in [
            "",
            "Upper.example",
            "a%2eb",
            "a/b",
            "a b",
            "ü.example",
            ".",
            "..",
            "a..b",
            ".a",
            "a.",
            "-",
            "-a.example",
        ] {
            assert!(validate_trust_domain(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(validate_trust_domain(&"a".repeat(256)).is_err());
    }

    proptest! {
        #[test]
        fn trust_domain_validation_never_panics(name in "\\PC{0,80}") {
            let _ = validate_trust_domain(&name);
        }

        #[test]
        fn valid_alphabet_is_accepted(name in "[a-z0-9_][a-z0-9_-]{0,60}(\\.[a-z0-9_-]{1,60}){0,3}") {
            prop_assert!(validate_trust_domain(&name).is_ok());
        }

        /// Exactly the names whose labels are all non-empty, that do not start with '-',
        /// are accepted among names of the alphabet.
        #[test]
        fn names_with_an_empty_label_are_refused(name in "[a-z._-]{1,20}") {
            let expected = !name.split('.').any(str::is_empty) && !name.starts_with('-');
            prop_assert_eq!(validate_trust_domain(&name).is_ok(), expected);
        }
    }
}
