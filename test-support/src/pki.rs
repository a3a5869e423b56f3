//! A test PKI made in process with rcgen (ECDSA P-256, as the openssl commands the tests
//! used before made): a CA, leaf certificates it signs with the names, usages and validity
//! a test asks for (expired ones included), and self-signed certificates. Everything is
//! written as PEM files, since the code under test reads certificates from files.
//!
//! A leaf is never its own CA: webpki refuses a CA certificate used as a server's own.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

/// A certificate and its private key, as PEM files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key (PKCS#8).
    pub key: PathBuf,
}

/// How long a certificate is valid.
#[derive(Clone, Copy, Debug)]
pub enum Validity {
    /// From five minutes ago (clock skew) for this many days.
    Days(u32),
    /// 2020-01-01 to 2020-01-02: long expired.
    Expired,
}

/// What a leaf certificate may be used for (its extended key usage).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// TLS server only.
    Server,
    /// TLS client only.
    Client,
    /// Both (the workload certificates Istio issues).
    ServerAndClient,
}

/// A leaf certificate to issue: subject, subject alternative names, usage, validity.
#[derive(Clone, Debug)]
pub struct Leaf {
    subject: DistinguishedName,
    sans: Vec<SanType>,
    usage: Usage,
    validity: Validity,
}

impl Leaf {
    /// A leaf with the subject `subject`, either a bare common name (`a.test`) or openssl's
    /// slash form (`/CN=a.test/O=gen2`); no names yet, both usages, valid for a day.
    pub fn new(subject: &str) -> Leaf {
        Leaf {
            subject: subject_of(subject),
            sans: Vec::new(),
            usage: Usage::ServerAndClient,
            validity: Validity::Days(1),
        }
    }

    /// Adds subject alternative names in openssl's syntax, comma separated:
    /// `DNS:a.test`, `IP:127.0.0.1`, `URI:spiffe://cluster.local/ns/x/sa/y`.
    pub fn san(mut self, names: &str) -> Leaf {
        for n in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            self.sans.push(san_of(n));
        }
        self
    }

    /// Adds a DNS name for each of `names`.
    pub fn dns(mut self, names: &[&str]) -> Leaf {
        for n in names {
            self.sans
                .push(SanType::DnsName((*n).try_into().expect("a DNS name")));
        }
        self
    }

    /// Sets the extended key usage.
    pub fn usage(mut self, usage: Usage) -> Leaf {
        self.usage = usage;
        self
    }

    /// Sets the validity.
    pub fn validity(mut self, validity: Validity) -> Leaf {
        self.validity = validity;
        self
    }
}

/// A certificate authority whose certificate and key are PEM files.
pub struct Ca {
    /// The CA's certificate and key.
    pub files: CertFiles,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("files", &self.files).finish()
    }
}

impl Ca {
    /// A new CA with common name `common_name`, written to `cert` and `key` (parents created).
    pub fn new(common_name: &str, cert: &Path, key: &Path) -> Ca {
        let mut p = params(subject_of(common_name), Validity::Days(2));
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let k = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate a P-256 key");
        let c = p.self_signed(&k).expect("self-sign the CA");
        let files = write(cert, key, &c.pem(), &k.serialize_pem());
        Ca {
            files,
            issuer: Issuer::new(p, k),
        }
    }

    /// A new CA named `common_name` as `DIR/FILE.pem` and `DIR/FILE.key`.
    pub fn in_dir(dir: &Path, file: &str, common_name: &str) -> Ca {
        Ca::new(
            common_name,
            &dir.join(format!("{file}.pem")),
            &dir.join(format!("{file}.key")),
        )
    }

    /// The CA certificate's path.
    pub fn cert(&self) -> &Path {
        &self.files.cert
    }

    /// Issues `leaf`, written to `cert` and `key`.
    pub fn issue(&self, leaf: &Leaf, cert: &Path, key: &Path) -> CertFiles {
        let p = leaf_params(leaf);
        let k = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate a P-256 key");
        let c = p.signed_by(&k, &self.issuer).expect("sign the leaf");
        write(cert, key, &c.pem(), &k.serialize_pem())
    }

    /// Issues `leaf` as `DIR/FILE.pem` and `DIR/FILE.key`.
    pub fn issue_in(&self, dir: &Path, file: &str, leaf: &Leaf) -> CertFiles {
        self.issue(
            leaf,
            &dir.join(format!("{file}.pem")),
            &dir.join(format!("{file}.key")),
        )
    }
}

/// A self-signed leaf (not a CA) for `leaf`, written to `cert` and `key`: what a peer that
/// is trusted by its exact certificate, or not verified at all, presents.
pub fn self_signed(leaf: &Leaf, cert: &Path, key: &Path) -> CertFiles {
    let p = leaf_params(leaf);
    let k = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate a P-256 key");
    let c = p.self_signed(&k).expect("self-sign");
    write(cert, key, &c.pem(), &k.serialize_pem())
}

fn leaf_params(leaf: &Leaf) -> CertificateParams {
    let mut p = params(leaf.subject.clone(), leaf.validity);
    p.subject_alt_names = leaf.sans.clone();
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = match leaf.usage {
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::ServerAndClient => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    p
}

fn params(subject: DistinguishedName, validity: Validity) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = subject;
    match validity {
        Validity::Days(n) => {
            let now = OffsetDateTime::now_utc();
            p.not_before = now - Duration::minutes(5);
            p.not_after = now + Duration::days(i64::from(n));
        }
        Validity::Expired => {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 2);
        }
    }
    p
}

fn subject_of(s: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if !s.starts_with('/') {
        dn.push(DnType::CommonName, s);
        return dn;
    }
    for part in s.split('/').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .unwrap_or_else(|| panic!("subject part {part:?} is not KEY=VALUE"));
        let ty = match k {
            "CN" => DnType::CommonName,
            "O" => DnType::OrganizationName,
            "OU" => DnType::OrganizationalUnitName,
            "C" => DnType::CountryName,
            other => panic!("subject key {other:?} is not one of CN, O, OU, C"),
        };
        dn.push(ty, v);
    }
    dn
}

fn san_of(n: &str) -> SanType {
    let (kind, v) = n
        .split_once(':')
        .unwrap_or_else(|| panic!("name {n:?} is not KIND:VALUE"));
    match kind {
        "DNS" => SanType::DnsName(v.try_into().expect("a DNS name")),
        "URI" => SanType::URI(v.try_into().expect("a URI")),
        "IP" => SanType::IpAddress(v.parse::<IpAddr>().expect("an IP address")),
        other => panic!("name kind {other:?} is not one of DNS, URI, IP"),
    }
}

fn write(cert: &Path, key: &Path, cert_pem: &str, key_pem: &str) -> CertFiles {
    for p in [cert, key] {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
    }
    std::fs::write(cert, cert_pem).unwrap();
    std::fs::write(key, key_pem).unwrap();
    CertFiles {
        cert: cert.into(),
        key: key.into(),
    }
}
