//! JWT-SVID authorities: the checks on a `jwt-svid` JWK and its canonical form.

use super::json::Object;
use super::key::{self, Curve, PublicKey, decode_base64url, decode_base64url_uint};
use super::{BundleError, JwtAuthority, USE_JWT_SVID, invalid, quoted};

/// JWS algorithms an RSA JWT-SVID key may carry (JWT-SVID specification §3).
const RSA_ALGS: [&str; 6] = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"];

/// Parses the `jwt-svid` JWK `jwk` (whose `use` and `kty` were checked, and which holds no
/// private or remote members).
pub(super) fn parse_jwt_svid_key(jwk: &Object<'_>) -> Result<JwtAuthority, BundleError> {
    let kid = jwk.optional_str("kid")?.ok_or_else(|| {
        invalid(jwk.field("kid"), "must be set on a jwt-svid key (JWT-SVID specification)")
    })?;
    if kid.is_empty() {
        return Err(invalid(jwk.field("kid"), "must not be empty"));
    }
    jwk.forbid("x5c", "must not be set on a jwt-svid key: certificates belong to x509-svid keys")?;

    let key = match jwk.required_str("kty")? {
        "EC" => ec_key(jwk)?,
        "RSA" => rsa_key(jwk)?,
        other => {
            return Err(invalid(
                jwk.field("kty"),
                format!("{} is not supported for jwt-svid keys; must be EC or RSA", quoted(other)),
            ));
        }
    };

    let alg = jwk.optional_str("alg")?;
    if let Some(alg) = alg {
        let fits = match &key {
            PublicKey::Ec { curve, .. } => alg == curve.jws_alg(),
            PublicKey::Rsa { .. } => RSA_ALGS.contains(&alg),
            PublicKey::Ed25519 { .. } => false,
        };
        if !fits {
            return Err(invalid(
                jwk.field("alg"),
                format!("{} cannot be used with this {} key", quoted(alg), key.kty()),
            ));
        }
    }

    let mut jwk_json = String::from("{");
    jwk_json.push_str("\"kty\":");
    key::push_json_string(&mut jwk_json, key.kty());
    key::push_member(&mut jwk_json, "use", USE_JWT_SVID);
    key::push_member(&mut jwk_json, "kid", kid);
    if let Some(alg) = alg {
        key::push_member(&mut jwk_json, "alg", alg);
    }
    for (name, value) in key.jwk_params() {
        key::push_member(&mut jwk_json, name, &value);
    }
    jwk_json.push('}');

    Ok(JwtAuthority { kid: kid.to_string(), jwk_json, fingerprint: key.fingerprint() })
}

fn ec_key(jwk: &Object<'_>) -> Result<PublicKey, BundleError> {
    for name in ["n", "e"] {
        jwk.forbid(name, "does not belong to an EC key")?;
    }
    let crv = jwk.required_str("crv")?;
    let curve = Curve::from_jwk(crv).ok_or_else(|| {
        invalid(
            jwk.field("crv"),
            format!("unsupported curve {}; must be P-256 or P-384", quoted(crv)),
        )
    })?;
    let mut coordinates = Vec::with_capacity(2);
    for name in ["x", "y"] {
        let field = jwk.field(name);
        let bytes = decode_base64url(jwk.required_str(name)?)
            .map_err(|rule| invalid(&field, rule.to_string()))?;
        if bytes.len() != curve.coordinate_len() {
            return Err(invalid(
                field,
                format!(
                    "must be {} bytes for {}, is {}",
                    curve.coordinate_len(),
                    curve.jwk_name(),
                    bytes.len()
                ),
            ));
        }
        coordinates.push(bytes);
    }
    PublicKey::ec_from_coordinates(curve, &coordinates[0], &coordinates[1])
        .map_err(|rule| invalid(jwk.path(), format!("(x, y) {rule}")))
}

fn rsa_key(jwk: &Object<'_>) -> Result<PublicKey, BundleError> {
    for name in ["crv", "x", "y"] {
        jwk.forbid(name, "does not belong to an RSA key")?;
    }
    let mut parts = Vec::with_capacity(2);
    for name in ["n", "e"] {
        let field = jwk.field(name);
        let bytes = decode_base64url_uint(jwk.required_str(name)?)
            .map_err(|rule| invalid(&field, rule.to_string()))?;
        parts.push(bytes);
    }
    PublicKey::rsa(&parts[0], &parts[1])
        .map_err(|problem| invalid(jwk.field(problem.member()), problem.into_rule()))
}
