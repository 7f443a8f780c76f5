//! PEM CA files: reading `CERTIFICATE` blocks, refusing any other known block, and writing.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::pem::{PemObject as _, SectionKind};

use super::{BundleError, invalid};

/// The DER of each `CERTIFICATE` block of `pem`, in order.
///
/// Blocks of another known kind (a private key, a CSR, a CRL…) reject the input: such a file
/// was not meant as a bundle. Blocks with labels the PEM reader does not know are skipped
/// by it, as is text between blocks.
pub(super) fn read_certificates(
    pem: &[u8],
    max_certificates: usize,
) -> Result<Vec<Vec<u8>>, BundleError> {
    let mut certificates = Vec::new();
    for (i, section) in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem).enumerate() {
        let (kind, der) = section.map_err(|e| invalid("pem", format!("is not valid PEM: {e}")))?;
        if kind != SectionKind::Certificate {
            return Err(invalid(
                format!("pem[{i}]"),
                format!("is a {kind:?} block; only CERTIFICATE blocks are accepted"),
            ));
        }
        if certificates.len() == max_certificates {
            return Err(invalid(
                "pem",
                format!("must hold at most {max_certificates} certificates"),
            ));
        }
        certificates.push(der);
    }
    if certificates.is_empty() {
        return Err(invalid("pem", "must hold at least one CERTIFICATE block"));
    }
    Ok(certificates)
}

/// Appends `der` as a PEM `CERTIFICATE` block, 64 characters a line.
pub(super) fn write_certificate(out: &mut String, der: &[u8]) {
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    let encoded = STANDARD.encode(der);
    let mut rest = encoded.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str("-----END CERTIFICATE-----\n");
}
