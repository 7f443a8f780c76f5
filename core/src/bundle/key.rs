//! Public key material shared by X.509 and JWT authorities: the checks on it, its JWK
//! members, and its canonical DER SubjectPublicKeyInfo, whose SHA-256 is the fingerprint.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};

/// Smallest accepted RSA modulus, bits.
const RSA_MIN_BITS: usize = 2048;
/// Largest accepted RSA modulus, bits (ring verifies no larger).
const RSA_MAX_BITS: usize = 8192;

/// A rule broken by key material; the text completes a sentence that names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum KeyError {
    /// The bytes are not a point on the curve, or are its identity.
    #[error("is not a valid point on {}", .0.jwk_name())]
    NotOnCurve(Curve),
    /// A JWK binary member is not base64url without padding.
    #[error("must be base64url without padding")]
    NotBase64Url,
    /// A base64urlUInt member is empty.
    #[error("must not be empty")]
    Empty,
    /// A base64urlUInt member has a leading zero octet.
    #[error("must use the fewest octets (no leading zero octet)")]
    LeadingZero,
}

/// An elliptic curve the federation can verify signatures on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Curve {
    /// NIST P-256 (secp256r1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
}

impl Curve {
    /// The curve of JWK `crv` value `name`.
    pub(super) fn from_jwk(name: &str) -> Option<Self> {
        match name {
            "P-256" => Some(Self::P256),
            "P-384" => Some(Self::P384),
            _ => None,
        }
    }

    /// The JWK `crv` value.
    pub(super) fn jwk_name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
        }
    }

    /// Bytes of one coordinate.
    pub(super) fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }

    /// The JWS `alg` that signs with this curve.
    pub(super) fn jws_alg(self) -> &'static str {
        match self {
            Self::P256 => "ES256",
            Self::P384 => "ES384",
        }
    }

    /// DER of the curve's OID (namedCurve parameter).
    fn oid_der(self) -> &'static [u8] {
        match self {
            // 1.2.840.10045.3.1.7
            Self::P256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            // 1.3.132.0.34
            Self::P384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
        }
    }
}

/// A validated public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum PublicKey {
    /// An ECDSA key: a point on the curve, its affine coordinates big-endian, full length.
    Ec { curve: Curve, x: Vec<u8>, y: Vec<u8> },
    /// An RSA key: modulus and exponent big-endian, without leading zero octets.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// An Ed25519 key (X.509 authorities only).
    Ed25519 { x: Vec<u8> },
}

impl PublicKey {
    /// The EC key with SEC1 encoding `sec1` (compressed or not), if it is a point on
    /// `curve` other than the identity.
    pub(super) fn ec_from_sec1(curve: Curve, sec1: &[u8]) -> Result<Self, KeyError> {
        let not_on_curve = || KeyError::NotOnCurve(curve);
        let uncompressed = match curve {
            Curve::P256 => {
                use p256::elliptic_curve::sec1::ToEncodedPoint as _;
                p256::PublicKey::from_sec1_bytes(sec1)
                    .map_err(|_| not_on_curve())?
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec()
            }
            Curve::P384 => {
                use p384::elliptic_curve::sec1::ToEncodedPoint as _;
                p384::PublicKey::from_sec1_bytes(sec1)
                    .map_err(|_| not_on_curve())?
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec()
            }
        };
        let len = curve.coordinate_len();
        match uncompressed.split_first() {
            Some((0x04, xy)) if xy.len() == 2 * len => {
                Ok(Self::Ec { curve, x: xy[..len].to_vec(), y: xy[len..].to_vec() })
            }
            _ => Err(not_on_curve()),
        }
    }

    /// The EC key with affine coordinates `x` and `y`, if they form a point on `curve`.
    pub(super) fn ec_from_coordinates(curve: Curve, x: &[u8], y: &[u8]) -> Result<Self, KeyError> {
        let mut sec1 = Vec::with_capacity(1 + x.len() + y.len());
        sec1.push(0x04);
        sec1.extend_from_slice(x);
        sec1.extend_from_slice(y);
        Self::ec_from_sec1(curve, &sec1)
    }

    /// The RSA key with modulus `n` and exponent `e` (big-endian, leading zeros allowed),
    /// if it is usable: 2048 to 8192 bits, odd modulus, odd exponent from 3 below 2^33.
    pub(super) fn rsa(n: &[u8], e: &[u8]) -> Result<Self, RsaProblem> {
        let n = strip_leading_zeros(n);
        let e = strip_leading_zeros(e);
        let bits = bit_len(n);
        if bits < RSA_MIN_BITS {
            return Err(RsaProblem::Modulus(format!(
                "RSA key must be at least {RSA_MIN_BITS} bits, is {bits}"
            )));
        }
        if bits > RSA_MAX_BITS {
            return Err(RsaProblem::Modulus(format!(
                "RSA key must be at most {RSA_MAX_BITS} bits, is {bits}"
            )));
        }
        if n.last().is_some_and(|b| b & 1 == 0) {
            return Err(RsaProblem::Modulus("RSA modulus must be odd".to_string()));
        }
        let e_ok = bit_len(e) <= 33 && e.last().is_some_and(|b| b & 1 == 1) && e != [1];
        if !e_ok {
            return Err(RsaProblem::Exponent(
                "RSA exponent must be odd, at least 3 and below 2^33".to_string(),
            ));
        }
        Ok(Self::Rsa { n: n.to_vec(), e: e.to_vec() })
    }

    /// The JWK `kty`.
    pub(super) fn kty(&self) -> &'static str {
        match self {
            Self::Ec { .. } => "EC",
            Self::Rsa { .. } => "RSA",
            Self::Ed25519 { .. } => "OKP",
        }
    }

    /// The type-specific JWK members (`crv`/`x`/`y`, `n`/`e` or `crv`/`x`), encoded.
    pub(super) fn jwk_params(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Ec { curve, x, y } => vec![
                ("crv", curve.jwk_name().to_string()),
                ("x", URL_SAFE_NO_PAD.encode(x)),
                ("y", URL_SAFE_NO_PAD.encode(y)),
            ],
            Self::Rsa { n, e } => {
                vec![("n", URL_SAFE_NO_PAD.encode(n)), ("e", URL_SAFE_NO_PAD.encode(e))]
            }
            Self::Ed25519 { x } => {
                vec![("crv", "Ed25519".to_string()), ("x", URL_SAFE_NO_PAD.encode(x))]
            }
        }
    }

    /// Appends `,"kty":…` and the type-specific members to a JSON object being written.
    pub(super) fn write_jwk_members(&self, out: &mut String) {
        push_member(out, "kty", self.kty());
        for (name, value) in self.jwk_params() {
            push_member(out, name, &value);
        }
    }

    /// The canonical DER SubjectPublicKeyInfo (RFC 5480, RFC 3279, RFC 8410 forms).
    pub(super) fn spki_der(&self) -> Vec<u8> {
        let (algorithm, key) = match self {
            Self::Ec { curve, x, y } => {
                // id-ecPublicKey 1.2.840.10045.2.1, namedCurve
                let mut alg = vec![0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
                alg.extend_from_slice(curve.oid_der());
                let mut point = vec![0x04];
                point.extend_from_slice(x);
                point.extend_from_slice(y);
                (alg, point)
            }
            Self::Rsa { n, e } => {
                // rsaEncryption 1.2.840.113549.1.1.1, NULL parameters
                let alg = vec![
                    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
                ];
                let mut ints = der_unsigned(n);
                ints.extend(der_unsigned(e));
                (alg, der(0x30, &ints))
            }
            // id-Ed25519 1.3.101.112, no parameters
            Self::Ed25519 { x } => (vec![0x06, 0x03, 0x2b, 0x65, 0x70], x.clone()),
        };
        let mut bits = vec![0x00];
        bits.extend(key);
        let mut body = der(0x30, &algorithm);
        body.extend(der(0x03, &bits));
        der(0x30, &body)
    }

    /// Hex SHA-256 of [`PublicKey::spki_der`].
    pub(super) fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.spki_der()))
    }
}

/// What is wrong with an RSA key, by the JWK member it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RsaProblem {
    /// A fault of the modulus (`n`).
    Modulus(String),
    /// A fault of the exponent (`e`).
    Exponent(String),
}

impl RsaProblem {
    /// The JWK member at fault.
    pub(super) fn member(&self) -> &'static str {
        match self {
            Self::Modulus(_) => "n",
            Self::Exponent(_) => "e",
        }
    }

    /// The rule broken.
    pub(super) fn into_rule(self) -> String {
        match self {
            Self::Modulus(rule) | Self::Exponent(rule) => rule,
        }
    }
}

/// Decodes a JWK binary member: base64url without padding, canonical.
pub(super) fn decode_base64url(value: &str) -> Result<Vec<u8>, KeyError> {
    URL_SAFE_NO_PAD.decode(value).map_err(|_| KeyError::NotBase64Url)
}

/// Decodes a JWK base64urlUInt member (RFC 7518 §2): non-empty, no leading zero octet.
pub(super) fn decode_base64url_uint(value: &str) -> Result<Vec<u8>, KeyError> {
    let bytes = decode_base64url(value)?;
    match bytes.first() {
        None => Err(KeyError::Empty),
        Some(0) if bytes.len() > 1 => Err(KeyError::LeadingZero),
        Some(_) => Ok(bytes),
    }
}

/// Appends `,"name":"value"` with `value` JSON-escaped.
pub(super) fn push_member(out: &mut String, name: &str, value: &str) {
    out.push(',');
    push_json_string(out, name);
    out.push(':');
    push_json_string(out, value);
}

/// Appends `value` as a JSON string.
pub(super) fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Bits of a big-endian unsigned integer without leading zero octets.
fn bit_len(bytes: &[u8]) -> usize {
    match bytes.first() {
        None => 0,
        Some(&top) => (bytes.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
    }
}

/// DER tag-length-value.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// DER INTEGER of a non-negative big-endian value without leading zero octets.
fn der_unsigned(value: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(value.len() + 1);
    if value.first().is_none_or(|&b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(value);
    der(0x02, &content)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn odd_modulus(bits: usize) -> Vec<u8> {
        let mut n = vec![0xffu8; bits.div_ceil(8)];
        if !bits.is_multiple_of(8) {
            n[0] = (1u8 << (bits % 8)) - 1;
        }
        n
    }

    #[test]
    fn rsa_modulus_bounds() {
        let e = [1, 0, 1];
        assert!(PublicKey::rsa(&odd_modulus(2048), &e).is_ok());
        assert!(PublicKey::rsa(&odd_modulus(8192), &e).is_ok());
        let small = PublicKey::rsa(&odd_modulus(2047), &e).expect_err("too small");
        assert_eq!(small.member(), "n");
        assert!(small.into_rule().contains("at least 2048 bits, is 2047"));
        let big = PublicKey::rsa(&odd_modulus(8193), &e).expect_err("too big");
        assert!(big.into_rule().contains("at most 8192"));
        let mut even = odd_modulus(2048);
        even[255] = 0xfe;
        assert!(PublicKey::rsa(&even, &e).is_err());
        // Leading zero octets of a DER INTEGER do not count.
        let mut padded = vec![0];
        padded.extend(odd_modulus(2048));
        assert!(PublicKey::rsa(&padded, &e).is_ok());
    }

    #[test]
    fn rsa_exponent_must_be_odd_and_small() {
        let n = odd_modulus(2048);
        for bad in [&[1u8][..], &[2], &[0x01, 0x00, 0x00], &[3, 0, 0, 0, 1]] {
            let err = PublicKey::rsa(&n, bad).expect_err("bad exponent");
            assert_eq!(err.member(), "e", "{bad:?}");
        }
        assert!(PublicKey::rsa(&n, &[3]).is_ok());
    }

    #[test]
    fn base64url_uint_must_be_minimal() {
        assert_eq!(decode_base64url_uint("AQAB"), Ok(vec![1, 0, 1]));
        assert_eq!(decode_base64url_uint("AA"), Ok(vec![0]));
        assert!(decode_base64url_uint("AAEAAQ").is_err());
        assert!(decode_base64url_uint("").is_err());
        assert!(decode_base64url("AQAB==").is_err());
        assert!(decode_base64url("+/8").is_err());
    }

    #[test]
    fn der_lengths_use_the_short_and_long_forms() {
        assert_eq!(der(0x04, &[0; 3])[..2], [0x04, 3]);
        assert_eq!(der(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(der(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(der_unsigned(&[0x80]), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(der_unsigned(&[0x7f]), [0x02, 0x01, 0x7f]);
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\n\u{1}é");
        assert_eq!(out, r#""a\"b\\c\n\u0001é""#);
        let back: String = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(back, "a\"b\\c\n\u{1}é");
    }
}
