//! `proxy-config secret` and `bootstrap`: istioctl's secret table
//! (`RESOURCE NAME`, `TYPE`, `STATUS`, `VALID CERT`, `SERIAL NUMBER`, `NOT
//! AFTER`, `NOT BEFORE`) over the dynamic (SDS) secrets, and the bootstrap
//! summary `proxy-config all` starts with.

use std::time::SystemTime;

use base64::Engine;
use serde_json::Value;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::dump::{s, u, ConfigDump};
use super::tabwriter::{table, TabWriter};

/// What istioctl reads from a secret's first certificate.
#[derive(Debug, Default, PartialEq)]
struct CertMeta {
    kind: &'static str,
    valid: bool,
    serial: String,
    not_after: String,
    not_before: String,
}

/// The PEM istioctl looks at: the certificate chain's inline bytes, else
/// the trusted CA's.
fn pem_of(secret: &Value) -> Option<Vec<u8>> {
    let inline = |v: Option<&Value>| -> Option<Vec<u8>> {
        let b = v?.get("inline_bytes")?.as_str()?;
        base64::engine::general_purpose::STANDARD
            .decode(b)
            .ok()
            .filter(|b| !b.is_empty())
    };
    let chain = secret
        .get("tls_certificate")
        .and_then(|t| t.get("certificate_chain"));
    let ca = secret
        .get("validation_context")
        .and_then(|v| v.get("trusted_ca"));
    inline(chain).or_else(|| inline(ca))
}

/// RFC 3339 in UTC, seconds, as Go's `time.RFC3339` prints a certificate's
/// UTC times.
fn rfc3339(t: x509_parser::time::ASN1Time) -> String {
    let d = t.to_datetime();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        d.year(),
        u8::from(d.month()),
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    )
}

/// Go's `fmt.Sprintf("%x", *big.Int)`: lowercase hex, no leading zeros.
fn big_hex(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_string()
    } else {
        trimmed.to_string()
    }
}

fn cert_meta(pem: &[u8], now: SystemTime) -> Option<CertMeta> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let (_, cert) = X509Certificate::from_der(&p.contents).ok()?;
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let v = cert.validity();
    Some(CertMeta {
        kind: if cert.is_ca() { "CA" } else { "Cert Chain" },
        valid: v.not_before.timestamp() <= now_secs && now_secs <= v.not_after.timestamp(),
        serial: big_hex(cert.raw_serial()),
        not_after: rfc3339(v.not_after),
        not_before: rfc3339(v.not_before),
    })
}

/// The secret table, validity judged at `now`; `with_type` names rows
/// `secret/NAME` (`proxy-config all`).
pub fn summary(dump: &ConfigDump, now: SystemTime, with_type: bool) -> String {
    let secrets = dump.dynamic_secrets();
    if secrets.is_empty() {
        return "No active or warming secrets found.\n".to_string();
    }
    let mut text = String::from(
        "RESOURCE NAME\tTYPE\tSTATUS\tVALID CERT\tSERIAL NUMBER\tNOT AFTER\tNOT BEFORE\n",
    );
    for sec in secrets {
        let meta = pem_of(sec.secret)
            .and_then(|p| cert_meta(&p, now))
            .unwrap_or_default();
        let name = if with_type {
            format!("secret/{}", sec.name)
        } else {
            sec.name.to_string()
        };
        text.push_str(&format!(
            "{name}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            meta.kind, sec.state, meta.valid, meta.serial, meta.not_after, meta.not_before
        ));
    }
    let mut w = TabWriter::new(0, 5, 5, ' ');
    w.write_str(&text);
    w.finish()
}

/// `Istio Version`, `Istio Proxy Version` and `Envoy Version` from the
/// bootstrap's node, as `proxy-config all` prints them.
pub fn bootstrap_summary(dump: &ConfigDump) -> anyhow::Result<String> {
    let node = dump.bootstrap()?.get("node").cloned().unwrap_or_default();
    let md = node.get("metadata").cloned().unwrap_or_default();
    let mut text = String::new();
    let istio = s(&md, "ISTIO_VERSION");
    if !istio.is_empty() {
        text.push_str(&format!("Istio Version:\t{istio}\n"));
    }
    let sha = s(&md, "ISTIO_PROXY_SHA");
    if !sha.is_empty() {
        let sha = sha
            .split_once(':')
            .map_or(sha, |(_, r)| r.split(':').next().unwrap_or(r));
        text.push_str(&format!("Istio Proxy Version:\t{sha}\n"));
    }
    let build = node
        .get("user_agent_build_version")
        .cloned()
        .unwrap_or_default();
    let v = build.get("version").cloned().unwrap_or_default();
    let bmd = build.get("metadata").cloned().unwrap_or_default();
    let mut envoy = format!(
        "{}.{}.{}",
        u(&v, "major_number"),
        u(&v, "minor_number"),
        u(&v, "patch")
    );
    for (key, sep) in [
        ("build.label", "-"),
        ("revision.status", "/"),
        ("build.type", "/"),
        ("ssl.version", "/"),
    ] {
        if let Some(x) = bmd.get(key) {
            envoy.push_str(sep);
            envoy.push_str(x.as_str().unwrap_or(""));
        }
    }
    // Go always prints it: the version is never empty ("0.0.0" at worst).
    text.push_str(&format!("Envoy Version:\t{envoy}\n"));
    Ok(table(1, &text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_print_as_go_big_int_hex() {
        assert_eq!(big_hex(&[0x00, 0x19, 0x3a, 0x05]), "193a05");
        assert_eq!(big_hex(&[0x00]), "0");
        assert_eq!(big_hex(&[0x6f, 0xbe]), "6fbe");
    }
}
