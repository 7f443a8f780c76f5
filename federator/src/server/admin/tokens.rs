//! The admin API's join tokens: what is outstanding, used or expired, and revoking the
//! ones not used. A token is named by [`short_hash`] of its secret's hash; the secret
//! itself is never stored.

use federator_proto::admin as pb;
use tonic::Status;

use crate::state::{FederationState, TOKEN_ID_LEN, TokenRecord, short_hash};

/// Fewest hex digits of a token id `token revoke` takes.
pub const MIN_TOKEN_ID_LEN: usize = 8;

/// Every token the federation remembers, oldest first.
#[must_use]
pub fn list(s: &FederationState, now: i64) -> Vec<pb::TokenInfo> {
    let mut tokens: Vec<pb::TokenInfo> =
        s.tokens.iter().map(|(hash, token)| info(s, hash, token, now)).collect();
    tokens.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    tokens
}

/// One token as operators see it.
#[must_use]
pub fn info(
    s: &FederationState,
    secret_hash: &str,
    token: &TokenRecord,
    now: i64,
) -> pb::TokenInfo {
    let state = match token.used_at {
        Some(_) => pb::TokenState::Used,
        None if token.expires_at <= now => pb::TokenState::Expired,
        None => pb::TokenState::Outstanding,
    };
    // The member it admitted, while that very join stands (not a later rejoin).
    let used_by = token
        .used_at
        .and_then(|used_at| {
            s.members
                .get(&token.cluster)
                .filter(|m| m.trust_domain == token.trust_domain && m.joined_at == used_at)
        })
        .map(|m| m.agent_id.clone())
        .unwrap_or_default();
    pb::TokenInfo {
        id: short_hash(secret_hash),
        cluster: token.cluster.clone(),
        trust_domain: token.trust_domain.clone(),
        state: state.into(),
        created_at: token.created_at,
        expires_at: token.expires_at,
        used_at: token.used_at.unwrap_or(0),
        used_by,
    }
}

/// The secret hashes of the tokens a revoke request names: one by its id (a unique
/// prefix of at least [`MIN_TOKEN_ID_LEN`] hex digits), or every outstanding token of a
/// cluster. Whether each may be revoked is the state machine's check.
///
/// # Errors
/// `InvalidArgument` for a malformed or ambiguous request, `NotFound` when it names
/// nothing.
pub fn resolve(
    s: &FederationState,
    request: &pb::RevokeTokenRequest,
    now: i64,
) -> Result<Vec<String>, Status> {
    let id = request.id.trim().to_ascii_lowercase();
    match (id.is_empty(), request.cluster.is_empty()) {
        (true, true) => Err(Status::invalid_argument(
            "id: give a token id (from `federator token list`) or a cluster",
        )),
        (false, false) => {
            Err(Status::invalid_argument("id and cluster: give one of them, not both"))
        }
        (false, true) => {
            if id.len() < MIN_TOKEN_ID_LEN
                || id.len() > 64
                || !id.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(Status::invalid_argument(format!(
                    "id: {MIN_TOKEN_ID_LEN} to 64 hex digits of a token id, as `federator \
                     token list` shows them ({TOKEN_ID_LEN})"
                )));
            }
            let matches: Vec<&String> = s.tokens.keys().filter(|h| h.starts_with(&id)).collect();
            match matches.as_slice() {
                [] => Err(Status::not_found(format!(
                    "id: no token {id} (never created, revoked already, or expired long \
                     ago; `federator token list` shows those the federation holds)"
                ))),
                [one] => Ok(vec![(*one).clone()]),
                _ => Err(Status::invalid_argument(format!(
                    "id: {} tokens start with {id}; give more digits",
                    matches.len()
                ))),
            }
        }
        (true, false) => {
            let hashes: Vec<String> = s
                .tokens
                .iter()
                .filter(|(_, t)| {
                    t.cluster == request.cluster && t.used_at.is_none() && t.expires_at > now
                })
                .map(|(hash, _)| hash.clone())
                .collect();
            if hashes.is_empty() {
                return Err(Status::not_found(format!(
                    "cluster: no outstanding token for cluster {}",
                    request.cluster
                )));
            }
            Ok(hashes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    const NOW: i64 = 1_000;

    fn state_with(tokens: &[(&str, &str, i64)]) -> FederationState {
        let mut state = FederationState::default();
        for (index, (hash, cluster, expires_at)) in (1..).zip(tokens) {
            let command = Command::CreateToken {
                secret_hash: (*hash).to_string(),
                cluster: (*cluster).to_string(),
                trust_domain: format!("{cluster}.test"),
                expires_at: *expires_at,
                now: NOW - 10,
            };
            state.apply_command(index, command).expect("token created");
        }
        state
    }

    fn request(id: &str, cluster: &str) -> pb::RevokeTokenRequest {
        pb::RevokeTokenRequest { id: id.into(), cluster: cluster.into() }
    }

    #[test]
    fn tokens_are_named_by_a_unique_prefix_or_by_cluster() {
        let a = format!("aaaa1111{}", "0".repeat(56));
        let b = format!("aaaa2222{}", "0".repeat(56));
        let c = format!("cccc0000{}", "0".repeat(56));
        let s = state_with(&[(&a, "a", NOW + 60), (&b, "b", NOW + 60), (&c, "a", NOW - 1)]);

        assert_eq!(resolve(&s, &request("AAAA1111", ""), NOW).expect("unique"), vec![a.clone()]);
        assert_eq!(resolve(&s, &request(&a, ""), NOW).expect("whole hash"), vec![a.clone()]);
        let ambiguous = resolve(&s, &request("aaaa", ""), NOW).expect_err("too short");
        assert_eq!(ambiguous.code(), tonic::Code::InvalidArgument);
        // Eight digits that two share.
        let s2 = state_with(&[
            (&a, "a", NOW + 60),
            (&format!("aaaa1111f{}", "0".repeat(55)), "b", NOW + 60),
        ]);
        let two = resolve(&s2, &request("aaaa1111", ""), NOW).expect_err("ambiguous");
        assert!(two.message().contains("2 tokens start with"), "{}", two.message());
        for bad in ["zzzzzzzz", "aaaa 1111", &"a".repeat(65)] {
            let refused = resolve(&s, &request(bad, ""), NOW);
            assert!(refused.is_err(), "{bad:?}");
        }
        assert_eq!(
            resolve(&s, &request("dddd0000", ""), NOW).expect_err("unknown").code(),
            tonic::Code::NotFound
        );
        // By cluster: only what is outstanding (c expired).
        assert_eq!(resolve(&s, &request("", "a"), NOW).expect("a's"), vec![a]);
        assert_eq!(
            resolve(&s, &request("", "z"), NOW).expect_err("none").code(),
            tonic::Code::NotFound
        );
        assert!(resolve(&s, &request("", ""), NOW).is_err());
        assert!(resolve(&s, &request("aaaa1111", "a"), NOW).is_err());
    }

    #[test]
    fn a_listing_says_which_are_outstanding_used_or_expired() {
        let a = "a".repeat(64);
        let c = "c".repeat(64);
        let s = state_with(&[(&a, "a", NOW + 60), (&c, "c", NOW - 1)]);
        let listed = list(&s, NOW);
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].id, "a".repeat(TOKEN_ID_LEN));
        assert_eq!(listed[0].state(), pb::TokenState::Outstanding);
        assert_eq!(listed[1].state(), pb::TokenState::Expired);
        assert!(listed.iter().all(|t| t.used_by.is_empty() && t.used_at == 0));
    }
}
