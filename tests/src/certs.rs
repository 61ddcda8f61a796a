//! A throwaway certificate authority, and serving and client certificates signed by it.
//!
//! rustls rejects a leaf certificate used as its own CA, so the servers get a real chain: a
//! CA certificate and a leaf signed by it for `localhost` and `127.0.0.1` (and, for the API
//! server of a real node, the addresses pods use).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct PemPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A CA that signs serving and client certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(common_name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Self { issuer })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn cert_der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    /// A serving certificate for `localhost`, 127.0.0.1 and ::1.
    pub fn loopback_server(&self, common_name: &str) -> anyhow::Result<PemPair> {
        self.server(common_name, &[], &[])
    }

    /// A serving certificate for `localhost`, 127.0.0.1, ::1 and the given DNS names and IP
    /// addresses: the API server as pods reach it (the `kubernetes` Service's address and names,
    /// the node's address).
    pub fn server(
        &self,
        common_name: &str,
        dns_names: &[&str],
        ips: &[std::net::IpAddr],
    ) -> anyhow::Result<PemPair> {
        let mut names = vec!["localhost".to_owned()];
        names.extend(dns_names.iter().map(|name| (*name).to_owned()));
        let mut params = CertificateParams::new(names)?;
        for ip in [
            std::net::IpAddr::from([127, 0, 0, 1]),
            std::net::Ipv6Addr::LOCALHOST.into(),
        ]
        .iter()
        .chain(ips)
        {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params)
    }

    /// A client certificate whose common name is `user`.
    pub fn client(&self, user: &str) -> anyhow::Result<PemPair> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// A client certificate for `user` in `group`: Kubernetes reads the organization as the
    /// group (a kubelet is `system:node:<name>` in `system:nodes`). rcgen keeps one value per
    /// attribute type, hence one group.
    pub fn client_in_group(&self, user: &str, group: &str) -> anyhow::Result<PemPair> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        params
            .distinguished_name
            .push(DnType::OrganizationName, group);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> anyhow::Result<PemPair> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &*self.issuer)?;
        Ok(PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A signing key pair for service-account tokens: (private PKCS#8 PEM, public PEM).
pub fn service_account_key() -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}
