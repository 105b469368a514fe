//! Certificates and keys for the test bed: one CA, a serving certificate
//! for `127.0.0.1`/`localhost`, an admin client certificate in group
//! `system:masters`, and a service-account signing key per cluster.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Everything the API servers and their clients need to trust each other.
pub struct Pki {
    pub ca_pem: String,
    /// The CA's key, to issue more client certificates (agent identities).
    pub ca_key_pem: String,
    pub serving: CertPair,
    pub admin: CertPair,
}

impl Pki {
    pub fn generate() -> Result<Self, rcgen::Error> {
        let ca_params = ca_params()?;
        let ca_key = KeyPair::generate()?;
        let ca_key_pem = ca_key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

        let mut serving = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_key = KeyPair::generate()?;
        let serving_cert = serving.signed_by(&serving_key, &ca)?;

        let mut admin = CertificateParams::new(Vec::<String>::new())?;
        admin
            .distinguished_name
            .push(DnType::CommonName, "tekfed-testbed-admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_key = KeyPair::generate()?;
        let admin_cert = admin.signed_by(&admin_key, &ca)?;

        Ok(Self {
            ca_pem: ca.pem(),
            ca_key_pem,
            serving: CertPair {
                cert_pem: serving_cert.pem(),
                key_pem: serving_key.serialize_pem(),
            },
            admin: CertPair {
                cert_pem: admin_cert.pem(),
                key_pem: admin_key.serialize_pem(),
            },
        })
    }
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tekfed test bed CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(ca_params)
}

/// A client certificate for user `name` (no groups), signed by the CA.
pub fn client_cert(ca_key_pem: &str, name: &str) -> Result<CertPair, rcgen::Error> {
    // The same parameters and key as the CA certificate: the same issuer
    // name and key identifier, so the API servers verify what this signs.
    let issuer = rcgen::Issuer::new(ca_params()?, KeyPair::from_pem(ca_key_pem)?);
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A fresh key for signing one cluster's service-account tokens, so a token
/// minted by one cluster is never accepted by another: `(private, public)`.
pub fn service_account_key() -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}
