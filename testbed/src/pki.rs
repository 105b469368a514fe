//! Certificates and keys for the test bed: one CA, a serving certificate
//! for `127.0.0.1`/`localhost`, an admin client certificate in group
//! `system:masters`, and a service-account signing key per cluster; and,
//! for the hub's API aggregation, a front-proxy CA of its own with the
//! client certificate the hub's API server proxies to extension API
//! servers with.

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
    /// The CA extension API servers trust for the aggregator's proxied
    /// requests (`--requestheader-client-ca-file`). A CA apart from the
    /// client CA: an extension server believes the `X-Remote-User` header
    /// of whoever this CA vouches for, so no ordinary client certificate
    /// may pass for the aggregator.
    pub front_proxy_ca_pem: String,
    /// The aggregator's client certificate (`--proxy-client-cert-file`),
    /// CN [`FRONT_PROXY_CLIENT`], signed by the front-proxy CA.
    pub front_proxy_client: CertPair,
}

/// The common name of the aggregator's client certificate, and the only
/// name `--requestheader-allowed-names` lets assert users.
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";

impl Pki {
    pub fn generate() -> Result<Self, rcgen::Error> {
        let ca_key = KeyPair::generate()?;
        let ca_key_pem = ca_key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(ca_params(CA)?, ca_key)?;

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

        let front_proxy_ca =
            CertifiedIssuer::self_signed(ca_params(FRONT_PROXY_CA)?, KeyPair::generate()?)?;
        let mut front_proxy = CertificateParams::new(Vec::<String>::new())?;
        front_proxy
            .distinguished_name
            .push(DnType::CommonName, FRONT_PROXY_CLIENT);
        front_proxy.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let front_proxy_key = KeyPair::generate()?;
        let front_proxy_cert = front_proxy.signed_by(&front_proxy_key, &front_proxy_ca)?;

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
            front_proxy_ca_pem: front_proxy_ca.pem(),
            front_proxy_client: CertPair {
                cert_pem: front_proxy_cert.pem(),
                key_pem: front_proxy_key.serialize_pem(),
            },
        })
    }
}

/// The common names of the test bed's two CAs.
const CA: &str = "tekfed test bed CA";
const FRONT_PROXY_CA: &str = "tekfed test bed front-proxy CA";

fn ca_params(common_name: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, common_name);
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
    let issuer = rcgen::Issuer::new(ca_params(CA)?, KeyPair::from_pem(ca_key_pem)?);
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
