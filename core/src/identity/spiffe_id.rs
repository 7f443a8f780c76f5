//! SPIFFE IDs: `spiffe://` + trust domain + path, parsed and built under the SPIFFE ID
//! rules, and the errors that name the rule broken.

use std::fmt;
use std::str::FromStr;

use super::{IdentityError, validate_trust_domain};

/// Longest SPIFFE ID accepted, in bytes (the SPIFFE ID specification's limit for URIs).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Longest stretch of a peer-supplied string quoted in an error message.
const QUOTE_LIMIT: usize = 128;

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

/// Checks a trust domain name; the error quotes it.
pub(super) fn check_trust_domain(name: &str) -> Result<(), SpiffeIdError> {
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
pub(super) fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_LIMIT) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

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
}
