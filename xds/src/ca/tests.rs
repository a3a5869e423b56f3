use super::*;

use membrane_test_support::pki::{Ca, Leaf};

fn id(sa: &str) -> SpiffeId {
    SpiffeId {
        trust_domain: "cluster.local".into(),
        namespace: "default".into(),
        service_account: sa.into(),
    }
}

fn csr_for(sans: Vec<SanType>) -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = sans;
    p.serialize_request(&key).unwrap().pem().unwrap()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

#[test]
fn the_signer_takes_the_first_ca_certificate_and_its_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::in_dir(dir.path(), "ca", "root");
    let other = Ca::in_dir(dir.path(), "other", "other");
    let pem = std::fs::read_to_string(ca.cert()).unwrap();
    let key = std::fs::read_to_string(&ca.files.key).unwrap();
    let other_key = std::fs::read_to_string(&other.files.key).unwrap();
    assert!(Signer::from_pem(&pem, &key, ("ca.pem", "ca.key")).is_ok());
    let e = Signer::from_pem(&pem, &other_key, ("ca.pem", "other.key"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--ca-key other.key") && e.contains("not the key of the first certificate"),
        "{e}"
    );
    let e = Signer::from_pem("", &key, ("empty.pem", "ca.key"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--ca-cert empty.pem: no CERTIFICATE block"),
        "{e}"
    );
    // A leaf is no CA, even with its own key.
    let leaf = ca.issue_in(dir.path(), "leaf", &Leaf::new("leaf").san("DNS:leaf.test"));
    let e = Signer::from_pem(
        &std::fs::read_to_string(&leaf.cert).unwrap(),
        &std::fs::read_to_string(&leaf.key).unwrap(),
        ("leaf.pem", "leaf.key"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not a CA"), "{e}");
}

#[test]
fn a_csr_names_exactly_the_callers_identity() {
    let me = id("a");
    let ok = csr_for(vec![uri("spiffe://cluster.local/ns/default/sa/a")]);
    assert!(check_csr(&ok, &me).is_ok());
    let cases = [
        (
            vec![uri("spiffe://cluster.local/ns/default/sa/b")],
            "URI:spiffe://cluster.local/ns/default/sa/b",
        ),
        (
            vec![
                uri("spiffe://cluster.local/ns/default/sa/a"),
                uri("spiffe://cluster.local/ns/default/sa/b"),
            ],
            "sa/a, URI:spiffe://cluster.local/ns/default/sa/b",
        ),
        (
            vec![
                uri("spiffe://cluster.local/ns/default/sa/a"),
                SanType::DnsName("a.default.svc".try_into().unwrap()),
            ],
            "DNS:a.default.svc",
        ),
        (
            vec![uri("spiffe://other.domain/ns/default/sa/a")],
            "spiffe://other.domain/ns/default/sa/a",
        ),
        (vec![], "no SAN"),
    ];
    for (sans, shown) in cases {
        let e = check_csr(&csr_for(sans), &me).unwrap_err();
        assert_eq!(e.reason(), "identity");
        let m = e.to_string();
        assert!(
            m.contains(shown) && m.contains("the caller is spiffe://cluster.local/ns/default/sa/a"),
            "{m}"
        );
    }
    // A request whose signature does not verify is no request.
    let mut broken = ok.clone().into_bytes();
    let at = broken.len() / 2;
    broken[at] = if broken[at] == b'A' { b'B' } else { b'A' };
    let e = check_csr(&String::from_utf8(broken).unwrap(), &me).unwrap_err();
    assert_eq!(e.reason(), "bad_request", "{e}");
}

#[test]
fn the_certificate_is_built_from_the_identity_not_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::in_dir(dir.path(), "ca", "root");
    let signer = Signer::from_pem(
        &std::fs::read_to_string(ca.cert()).unwrap(),
        &std::fs::read_to_string(&ca.files.key).unwrap(),
        ("ca.pem", "ca.key"),
    )
    .unwrap();
    // The request asks to be a CA with a subject of its choosing: neither is taken.
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![uri("spiffe://cluster.local/ns/default/sa/a")];
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "evil root");
    let pem = p.serialize_request(&key).unwrap().pem().unwrap();
    let csr = check_csr(&pem, &id("a")).unwrap();
    let chain = signer
        .sign(csr, &id("a"), Duration::from_secs(600))
        .unwrap();
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(chain[0].as_bytes()).unwrap();
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(!c.tbs_certificate.is_ca());
    assert_eq!(c.subject().to_string(), "");
    assert_eq!(c.issuer().to_string(), "CN=root");
    let v = c.validity();
    assert_eq!(v.not_after.timestamp() - v.not_before.timestamp(), 660);
    // The key is the request's.
    assert_eq!(
        c.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
    );
}

#[cfg(feature = "kube")]
#[test]
fn token_reviews_are_read_as_istio_reads_them() {
    use k8s_openapi::api::authentication::v1::TokenReview;
    let aud = vec!["istio-ca".to_string()];
    let review = |status: serde_json::Value| -> TokenReview {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "metadata": {}, "spec": {}, "status": status
        }))
        .unwrap()
    };
    let ok = review(
        serde_json::json!({"authenticated": true, "audiences": ["istio-ca"],
        "user": {"username": "system:serviceaccount:ns1:sa1"}}),
    );
    assert_eq!(
        tokenreview::identity_of(&ok, &aud).unwrap(),
        ("ns1".to_string(), "sa1".to_string())
    );
    let cases = [
        (
            serde_json::json!({"error": "token expired", "user": {}}),
            "the API server says: token expired",
        ),
        (
            serde_json::json!({"authenticated": false, "user": {}}),
            "does not authenticate it",
        ),
        (
            serde_json::json!({"authenticated": true, "audiences": ["api"],
                "user": {"username": "system:serviceaccount:ns1:sa1"}}),
            "not meant for this CA",
        ),
        (
            serde_json::json!({"authenticated": true, "audiences": ["istio-ca"],
                "user": {"username": "system:serviceaccount:ns1"}}),
            "is not a service account",
        ),
        (
            serde_json::json!({"authenticated": true, "audiences": ["istio-ca"],
                "user": {"username": "system:node:worker"}}),
            "is not a service account",
        ),
    ];
    for (status, want) in cases {
        let e = tokenreview::identity_of(&review(status), &aud)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{want:?} not in {e}");
    }
}
