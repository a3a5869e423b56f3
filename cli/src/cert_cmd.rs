//! `membrane cert ca|issue`: the workload certificates sidecars present to
//! the control plane's mTLS port, in Istio's legacy Secret layout
//! (`cert-chain.pem`, `key.pem`, `root-cert.pem`, mounted at
//! `/etc/certs` by the injector from Secret `membrane.SERVICE_ACCOUNT`).
//! Keys are ECDSA P-256; the SPIFFE id `spiffe://DOMAIN/ns/NS/sa/SA` is the
//! certificate's one URI SAN.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use base64::Engine;
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    PKCS_ECDSA_P256_SHA256,
};

/// `membrane cert ...`.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Create a CA (`ca-cert.pem`, `ca-key.pem`) to sign workload certificates with.
    Ca(CaArgs),
    /// Issue a workload certificate into `--out` as `cert-chain.pem`,
    /// `key.pem` and `root-cert.pem` (and with --secret the Kubernetes
    /// Secret the injector mounts).
    Issue(IssueArgs),
}

/// `cert ca`.
#[derive(Debug, Args)]
pub struct CaArgs {
    /// Directory to write `ca-cert.pem` and `ca-key.pem` into (created).
    #[arg(long)]
    out: PathBuf,
    /// The CA's common name.
    #[arg(long, default_value = "membrane workload CA")]
    name: String,
    /// Validity in days.
    #[arg(long, default_value_t = 3650)]
    days: u32,
}

/// `cert issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// PEM CA certificate that signs (written as `root-cert.pem`).
    #[arg(long)]
    ca_cert: PathBuf,
    /// PEM private key of --ca-cert.
    #[arg(long)]
    ca_key: PathBuf,
    /// SPIFFE trust domain (membrane-xds --trust-domain).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The workload's namespace.
    #[arg(long)]
    namespace: String,
    /// The workload's service account (a pod's spec.serviceAccountName).
    #[arg(long, default_value = "default")]
    service_account: String,
    /// Extra DNS SANs (for a server certificate, e.g. the control plane's
    /// `membrane-xds.membrane-system.svc`).
    #[arg(long = "dns")]
    dns: Vec<String>,
    /// Extra IP SANs.
    #[arg(long = "ip")]
    ip: Vec<std::net::IpAddr>,
    /// Validity in days (rotate by issuing again before it ends; sidecars
    /// pick up the new files without a restart).
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Directory to write the files into (created).
    #[arg(long)]
    out: PathBuf,
    /// Also write `secret.yaml`: Secret `membrane.SERVICE_ACCOUNT` in the
    /// namespace, holding the three files.
    #[arg(long)]
    secret: bool,
}

fn validity(p: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that lag the issuer's.
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + time::Duration::days(i64::from(days));
}

fn write(path: &Path, text: &str, private: bool) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn ca(a: CaArgs) -> Result<ExitCode> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("--out {}", a.out.display()))?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, a.name.as_str());
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut p, a.days);
    let cert = p.self_signed(&key)?;
    write(&a.out.join("ca-cert.pem"), &cert.pem(), false)?;
    write(&a.out.join("ca-key.pem"), &key.serialize_pem(), true)?;
    println!("wrote {}/ca-cert.pem and ca-key.pem", a.out.display());
    Ok(ExitCode::SUCCESS)
}

fn issue(a: IssueArgs) -> Result<ExitCode> {
    let read = |flag: &str, p: &Path| {
        std::fs::read_to_string(p).with_context(|| format!("{flag} {}", p.display()))
    };
    let ca_pem = read("--ca-cert", &a.ca_cert)?;
    let ca_key = KeyPair::from_pem(&read("--ca-key", &a.ca_key)?)
        .with_context(|| format!("--ca-key {}: not a PEM private key", a.ca_key.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).with_context(|| {
        format!(
            "--ca-cert {}: not a PEM CA certificate",
            a.ca_cert.display()
        )
    })?;
    for (flag, v) in [
        ("--trust-domain", &a.trust_domain),
        ("--namespace", &a.namespace),
        ("--service-account", &a.service_account),
    ] {
        anyhow::ensure!(
            !v.is_empty() && !v.contains('/') && !v.contains(char::is_whitespace),
            "{flag} {v:?}: must be non-empty, without '/' or spaces"
        );
    }
    let spiffe = format!(
        "spiffe://{}/ns/{}/sa/{}",
        a.trust_domain, a.namespace, a.service_account
    );
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, a.service_account.as_str());
    p.subject_alt_names = vec![SanType::URI(spiffe.as_str().try_into()?)];
    for d in &a.dns {
        p.subject_alt_names.push(SanType::DnsName(
            d.as_str()
                .try_into()
                .with_context(|| format!("--dns {d:?}"))?,
        ));
    }
    p.subject_alt_names
        .extend(a.ip.iter().map(|ip| SanType::IpAddress(*ip)));
    membrane_xds::ca::workload_leaf(&mut p);
    validity(&mut p, a.days);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = p.signed_by(&key, &issuer)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("--out {}", a.out.display()))?;
    let files = [
        ("cert-chain.pem", cert.pem(), false),
        ("key.pem", key.serialize_pem(), true),
        ("root-cert.pem", ca_pem, false),
    ];
    for (name, text, private) in &files {
        write(&a.out.join(name), text, *private)?;
    }
    if a.secret {
        let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
        let secret = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": membrane_xds::inject::cert_secret_name(&a.service_account),
                "namespace": a.namespace,
                "labels": {"app.kubernetes.io/managed-by": "membrane"},
                "annotations": {"membrane.io/spiffe-id": spiffe},
            },
            "data": files.iter().map(|(n, t, _)| (n.to_string(), serde_json::Value::String(b64(t)))).collect::<serde_json::Map<_, _>>(),
        });
        write(
            &a.out.join("secret.yaml"),
            &serde_yaml_ng::to_string(&secret)?,
            true,
        )?;
    }
    println!("{spiffe}: wrote {}", a.out.display());
    Ok(ExitCode::SUCCESS)
}

/// Runs a `cert` verb.
pub fn run(cmd: CertCommand) -> Result<ExitCode> {
    match cmd {
        CertCommand::Ca(a) => ca(a),
        CertCommand::Issue(a) => issue(a),
    }
}
