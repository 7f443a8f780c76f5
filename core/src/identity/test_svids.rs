//! Test fixtures: CAs of test trust domains (roots and intermediates) and the X.509-SVIDs
//! they sign.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName as Dn, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A test CA of one trust domain: a root, or an intermediate below one.
pub(super) struct TestCa {
    /// The trust domain.
    pub(super) td: String,
    /// Signs leaves and further intermediates.
    pub(super) issuer: CertifiedIssuer<'static, KeyPair>,
    /// The root at the top, DER.
    pub(super) root: CertificateDer<'static>,
    /// The intermediates between a leaf of this CA and the root, nearest first.
    pub(super) intermediates: Vec<CertificateDer<'static>>,
}

/// A leaf: its chain (leaf first, then intermediates) and key.
pub(super) struct TestSvid {
    pub(super) chain: Vec<CertificateDer<'static>>,
    pub(super) key: PrivateKeyDer<'static>,
}

/// The time now, unix seconds.
pub(super) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn ca_params(td: &str, name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    let mut dn = Dn::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names =
        vec![SanType::URI(format!("spiffe://{td}").try_into().expect("uri"))];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(1);
    params
}

impl TestCa {
    /// A self-signed root CA of `td`.
    pub(super) fn root(td: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let issuer =
            CertifiedIssuer::self_signed(ca_params(td, &format!("{td} root")), key).expect("root");
        Self { td: td.to_string(), root: issuer.der().clone(), issuer, intermediates: Vec::new() }
    }

    /// An intermediate CA signed by this one.
    pub(super) fn intermediate(&self) -> Self {
        let key = KeyPair::generate().expect("key");
        let issuer = CertifiedIssuer::signed_by(
            ca_params(&self.td, &format!("{} intermediate", self.td)),
            key,
            &self.issuer,
        )
        .expect("intermediate");
        let mut intermediates = vec![issuer.der().clone()];
        intermediates.extend(self.intermediates.iter().cloned());
        Self { td: self.td.clone(), root: self.root.clone(), issuer, intermediates }
    }

    /// A well-formed SVID for `id`, after `edit` had its way with the parameters.
    pub(super) fn leaf_with(
        &self,
        id: &str,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> TestSvid {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![SanType::URI(id.try_into().expect("uri"))];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::hours(1);
        edit(&mut params);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.intermediates.iter().cloned());
        TestSvid { chain, key: PrivatePkcs8KeyDer::from(key.serialize_der()).into() }
    }

    /// A well-formed SVID for `id`.
    pub(super) fn leaf(&self, id: &str) -> TestSvid {
        self.leaf_with(id, |_| {})
    }

    /// The bundle: the root.
    pub(super) fn roots(&self) -> Vec<CertificateDer<'static>> {
        vec![self.root.clone()]
    }
}
