//! The federation's own CA, for local and test use (production takes files).

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::IdentityError;

/// A generated certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
}

/// A CA that issues the federation's replica and admin certificates.
pub struct FederationCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for FederationCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederationCa").finish_non_exhaustive()
    }
}

// === impl FederationCa ===

impl FederationCa {
    /// Generates a new self-signed CA for trust domain `td` (ECDSA P-256).
    ///
    /// # Errors
    /// Key or certificate generation failed.
    pub fn generate(
        td: &str,
        common_name: &str,
        validity: Duration,
    ) -> Result<Self, IdentityError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "Federator");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(format!("spiffe://{td}").try_into()?)];
        set_validity(&mut params, validity);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self { cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// Loads a CA from its certificate and key, both PEM.
    ///
    /// # Errors
    /// The PEM does not parse.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, IdentityError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self { cert_pem: cert_pem.to_string(), issuer })
    }

    /// The CA certificate, PEM.
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM.
    #[must_use]
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a leaf certificate for `spiffe_id`, valid for both TLS server and client
    /// authentication, with `ips` and `dns_names` as extra subject alternative names.
    ///
    /// # Errors
    /// Key or certificate generation failed.
    pub fn issue(
        &self,
        spiffe_id: &str,
        ips: &[IpAddr],
        dns_names: &[String],
        validity: Duration,
    ) -> Result<IssuedCertificate, IdentityError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, spiffe_id);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages =
            vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let mut sans = vec![SanType::URI(spiffe_id.try_into()?)];
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        for name in dns_names {
            sans.push(SanType::DnsName(name.as_str().try_into()?));
        }
        params.subject_alt_names = sans;
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, validity);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCertificate { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // Backdate a little so peers with a slightly slow clock accept the certificate.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + validity;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::peer_spiffe_id;

    #[test]
    fn issued_certificate_carries_its_spiffe_id() {
        let ca =
            FederationCa::generate("fed.test", "test CA", Duration::from_secs(3600)).expect("ca");
        let leaf = ca
            .issue(
                "spiffe://fed.test/federator/replica/1",
                &["127.0.0.1".parse().expect("ip")],
                &[],
                Duration::from_secs(3600),
            )
            .expect("leaf");
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(leaf.cert_pem.as_bytes())
            .expect("pem");
        assert_eq!(peer_spiffe_id(&der).as_deref(), Some("spiffe://fed.test/federator/replica/1"));
        let reloaded = FederationCa::from_pem(ca.cert_pem(), &ca.key_pem()).expect("reload");
        reloaded
            .issue("spiffe://fed.test/federator/admin", &[], &[], Duration::from_secs(60))
            .expect("reloaded CA issues");
    }
}
