use super::*;
use crate::model::HeaderMatch;

fn rule(
    method: Option<&str>,
    path: Option<&str>,
    host: Option<&str>,
    headers: &[&str],
) -> CompiledHttpRule {
    CompiledHttpRule::compile(
        &HttpRule {
            method: method.map(Into::into),
            path: path.map(Into::into),
            host: host.map(Into::into),
            headers: if headers.is_empty() {
                None
            } else {
                Some(headers.iter().map(|s| s.to_string()).collect())
            },
            header_matches: None,
        },
        None,
    )
    .unwrap()
}

fn req<'a>(
    method: &'a str,
    path: &'a str,
    host: Option<&'a str>,
    headers: &'a Vec<(String, String)>,
) -> HttpRequest<'a> {
    HttpRequest {
        method,
        path,
        host,
        headers,
        secrets: &NoSecrets,
    }
}

#[test]
fn regexes_match_the_whole_value() {
    let none: Vec<(String, String)> = vec![];
    let r = rule(Some("POST"), Some("/v1/request-landing"), None, &[]);
    let table = [
        ("POST", "/v1/request-landing", true),
        ("POST", "/v1/request-landing/extra", false),
        ("POST", "/x/v1/request-landing", false),
        ("POSTX", "/v1/request-landing", false),
        ("PUT", "/v1/request-landing", false),
        // the path includes the query, so a query is not silently ignored
        ("POST", "/v1/request-landing?x=1", false),
    ];
    for (m, p, want) in table {
        assert_eq!(r.check(&req(m, p, None, &none)).is_some(), want, "{m} {p}");
    }
    let any = rule(Some("GET"), Some("/v1/.*"), None, &[]);
    assert!(any.check(&req("GET", "/v1/x?y=1", None, &none)).is_some());
    // alternation binds inside the anchors
    let alt = rule(Some("GET|HEAD"), None, None, &[]);
    assert!(alt.check(&req("HEAD", "/", None, &none)).is_some());
    assert!(alt.check(&req("GETX", "/", None, &none)).is_none());
}

#[test]
fn host_and_headers() {
    let r = rule(
        None,
        None,
        Some("api\\.example\\.com"),
        &["X-Token", "X-Mode: strict"],
    );
    let good = vec![
        ("x-token".to_string(), "a".to_string()),
        ("X-Mode".to_string(), "strict".to_string()),
    ];
    let bad_value = vec![
        ("x-token".to_string(), "a".to_string()),
        ("x-mode".to_string(), "lax".to_string()),
    ];
    let missing = vec![("x-mode".to_string(), "strict".to_string())];
    assert!(r
        .check(&req("GET", "/", Some("api.example.com"), &good))
        .is_some());
    assert!(r.check(&req("GET", "/", Some("evil.com"), &good)).is_none());
    assert!(r.check(&req("GET", "/", None, &good)).is_none());
    assert!(r
        .check(&req("GET", "/", Some("api.example.com"), &bad_value))
        .is_none());
    assert!(r
        .check(&req("GET", "/", Some("api.example.com"), &missing))
        .is_none());
}

#[test]
fn header_match_mismatch_actions() {
    let mk = |mismatch: Option<&str>| {
        CompiledHttpRule::compile(
            &HttpRule {
                header_matches: Some(vec![HeaderMatch {
                    name: "X-Env".into(),
                    value: Some("prod".into()),
                    secret: None,
                    mismatch: mismatch.map(Into::into),
                }]),
                ..Default::default()
            },
            None,
        )
        .unwrap()
    };
    let wrong = vec![("x-env".to_string(), "dev".to_string())];
    assert!(mk(None).check(&req("GET", "/", None, &wrong)).is_none());
    assert_eq!(
        mk(Some("LOG")).check(&req("GET", "/", None, &wrong)),
        Some(vec![HeaderAction::Log {
            name: "x-env".into()
        }])
    );
    assert_eq!(
        mk(Some("REPLACE")).check(&req("GET", "/", None, &wrong)),
        Some(vec![HeaderAction::Replace {
            name: "x-env".into(),
            value: ActionValue::literal("prod")
        }])
    );
    let right = vec![("x-env".to_string(), "prod".to_string())];
    assert_eq!(
        mk(Some("ADD")).check(&req("GET", "/", None, &right)),
        Some(vec![])
    );
    let e = CompiledHttpRule::compile(
        &HttpRule {
            header_matches: Some(vec![HeaderMatch {
                name: "x".into(),
                value: None,
                secret: None,
                mismatch: Some("DROP".into()),
            }]),
            ..Default::default()
        },
        None,
    )
    .unwrap_err();
    assert_eq!(e.field, "headerMatches[0].mismatch");
}

/// A resolver over a fixed map, as the proxy's secret store is at one instant.
struct Secrets(Vec<(SecretName, SecretData)>);

impl SecretResolver for Secrets {
    fn secret(&self, name: &SecretName) -> Option<Arc<SecretData>> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| Arc::new(d.clone()))
    }
}

fn secret(ns: &str, name: &str, entries: &[(&str, &[u8])]) -> (SecretName, SecretData) {
    (
        SecretName {
            namespace: ns.into(),
            name: name.into(),
        },
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect(),
    )
}

fn secret_rule(
    namespace: Option<&str>,
    secret_ns: Option<&str>,
    value: Option<&str>,
    mismatch: Option<&str>,
) -> CompiledHttpRule {
    CompiledHttpRule::compile(
        &HttpRule {
            header_matches: Some(vec![HeaderMatch {
                name: "X-Token".into(),
                value: value.map(Into::into),
                secret: Some(crate::model::SecretRef {
                    name: "tok".into(),
                    namespace: secret_ns.map(Into::into),
                }),
                mismatch: mismatch.map(Into::into),
            }]),
            ..Default::default()
        },
        namespace,
    )
    .unwrap()
}

#[test]
fn header_match_against_a_secret() {
    let good = secret("ns", "tok", &[("token", b"s3cret")]);
    // (policy namespace, secret namespace, inline value, secrets known, header sent, allowed)
    type Case<'a> = (
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        Vec<(SecretName, SecretData)>,
        Option<&'a str>,
        bool,
    );
    let table: Vec<Case<'_>> = vec![
        (
            Some("ns"),
            None,
            None,
            vec![good.clone()],
            Some("s3cret"),
            true,
        ),
        (
            Some("ns"),
            None,
            None,
            vec![good.clone()],
            Some("s3cret "),
            false,
        ),
        (
            Some("ns"),
            None,
            None,
            vec![good.clone()],
            Some("s3cre"),
            false,
        ),
        (
            Some("ns"),
            None,
            None,
            vec![good.clone()],
            Some("wrong!"),
            false,
        ),
        (Some("ns"), None, None, vec![good.clone()], None, false),
        // a reference without namespace means the policy's
        (
            Some("other"),
            None,
            None,
            vec![good.clone()],
            Some("s3cret"),
            false,
        ),
        (
            Some("other"),
            Some("ns"),
            None,
            vec![good.clone()],
            Some("s3cret"),
            true,
        ),
        // cluster-wide: `default`
        (
            None,
            None,
            None,
            vec![secret("default", "tok", &[("t", b"d")])],
            Some("d"),
            true,
        ),
        (None, None, None, vec![good.clone()], Some("s3cret"), false),
        // missing, or not exactly one entry, or not a header value: the match fails
        (Some("ns"), None, None, vec![], Some("s3cret"), false),
        (
            Some("ns"),
            None,
            None,
            vec![secret("ns", "tok", &[])],
            Some(""),
            false,
        ),
        (
            Some("ns"),
            None,
            None,
            vec![secret("ns", "tok", &[("a", b"s3cret"), ("b", b"s3cret")])],
            Some("s3cret"),
            false,
        ),
        (
            Some("ns"),
            None,
            None,
            vec![secret("ns", "tok", &[("a", b"s3cret\n")])],
            Some("s3cret"),
            false,
        ),
        (
            Some("ns"),
            None,
            None,
            vec![secret("ns", "tok", &[("a", b"")])],
            Some(""),
            false,
        ),
        // the inline value stands in while the secret is unavailable, and only then
        (
            Some("ns"),
            None,
            Some("fallback"),
            vec![],
            Some("fallback"),
            true,
        ),
        (
            Some("ns"),
            None,
            Some("fallback"),
            vec![],
            Some("s3cret"),
            false,
        ),
        (
            Some("ns"),
            None,
            Some("fallback"),
            vec![good.clone()],
            Some("s3cret"),
            true,
        ),
        (
            Some("ns"),
            None,
            Some("fallback"),
            vec![good.clone()],
            Some("fallback"),
            false,
        ),
    ];
    for (i, (ns, secret_ns, value, known, sent, want)) in table.into_iter().enumerate() {
        let r = secret_rule(ns, secret_ns, value, None);
        let headers: Vec<(String, String)> = sent
            .map(|v| vec![("x-token".to_string(), v.to_string())])
            .unwrap_or_default();
        let secrets = Secrets(known);
        let got = r.check(&HttpRequest {
            method: "GET",
            path: "/",
            host: None,
            headers: &headers,
            secrets: &secrets,
        });
        assert_eq!(got.is_some(), want, "case {i}");
    }
}

#[test]
fn secret_values_in_mismatch_actions_are_redacted() {
    let secrets = Secrets(vec![secret("ns", "tok", &[("token", b"s3cret")])]);
    let wrong = vec![("x-token".to_string(), "guess".to_string())];
    let check = |r: &CompiledHttpRule, secrets: &dyn SecretResolver| {
        r.check(&HttpRequest {
            method: "GET",
            path: "/",
            host: None,
            headers: &wrong,
            secrets,
        })
    };
    let actions = check(
        &secret_rule(Some("ns"), None, None, Some("REPLACE")),
        &secrets,
    )
    .expect("REPLACE allows");
    let HeaderAction::Replace { name, value } = &actions[0] else {
        panic!("{actions:?}")
    };
    assert_eq!((name.as_str(), value.as_str()), ("x-token", "s3cret"));
    assert!(value.is_secret());
    let printed = format!("{actions:?} {value}");
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(printed.contains("[redacted]"), "{printed}");
    // ADD with the secret unavailable and no inline value: nothing to add, so the
    // rule does not match (the request is not forwarded without the header).
    assert!(check(
        &secret_rule(Some("ns"), None, None, Some("ADD")),
        &NoSecrets
    )
    .is_none());
    // ...with an inline value, that value is added, and it is not secret.
    let actions = check(
        &secret_rule(Some("ns"), None, Some("fallback"), Some("ADD")),
        &NoSecrets,
    )
    .unwrap();
    assert_eq!(
        actions,
        vec![HeaderAction::Add {
            name: "x-token".into(),
            value: ActionValue::literal("fallback")
        }]
    );
    assert!(format!("{actions:?}").contains("fallback"));
}

#[test]
fn secret_problems_name_the_secret_not_the_value() {
    let name = SecretName {
        namespace: "ns".into(),
        name: "tok".into(),
    };
    let e = |entries: &[(&str, &[u8])]| {
        header_secret_value(&Secrets(vec![secret("ns", "tok", entries)]), &name)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        header_secret_value(&NoSecrets, &name)
            .unwrap_err()
            .to_string(),
        "secret ns/tok: not found"
    );
    assert_eq!(
        e(&[("a", b"x"), ("b", b"y")]),
        "secret ns/tok: has 2 data entries; a header match needs exactly one"
    );
    assert_eq!(
            e(&[("token", b"abc\n")]),
            "secret ns/tok: entry \"token\": not a valid HTTP header value (control character at byte 3)"
        );
    assert_eq!(
            e(&[("token", b" abc")]),
            "secret ns/tok: entry \"token\": not a valid HTTP header value (leading or trailing whitespace)"
        );
    assert_eq!(
        e(&[("token", b"\xff")]),
        "secret ns/tok: entry \"token\": not UTF-8 text"
    );
    let ok =
        header_secret_value(&Secrets(vec![secret("ns", "tok", &[("t", b"a b")])]), &name).unwrap();
    assert_eq!(ok.as_str(), "a b");
    assert_eq!(format!("{ok:?}"), "[redacted]");
}

#[test]
fn invalid_regex_is_rejected_with_its_field() {
    let e = CompiledHttpRule::compile(
        &HttpRule {
            path: Some("/v1/(".into()),
            ..Default::default()
        },
        None,
    )
    .unwrap_err();
    assert_eq!(e.field, "path");
    assert!(e.message.contains("not a valid RE2"), "{}", e.message);
    // Perl-only constructs RE2 refuses are refused here too.
    assert!(CompiledHttpRule::compile(
        &HttpRule {
            path: Some("/(?=x)".into()),
            ..Default::default()
        },
        None
    )
    .is_err());
    assert!(CompiledHttpRule::compile(
        &HttpRule {
            path: Some("(a)\\1".into()),
            ..Default::default()
        },
        None
    )
    .is_err());
}
