//! Golden injection: each `tests/inject_golden/NAME.in.json` is a Pod as the
//! API server sends it to the webhook; `NAME.out.json` is that pod with the
//! webhook's JSON patch applied (identical to the input when the pod is not
//! injected). The patched pods validate against Kubernetes 1.34's schemas,
//! and every injected pod sent again is left alone (Istio's idempotence).
//! A `bad-NAME` case is a valid Pod whose annotation values Istio's injector
//! refuses: its `bad-NAME.out.json` is the AdmissionReview the webhook
//! answers (not allowed, the message naming each annotation and value).
//!
//! After an intended change, regenerate and review the diff:
//! `MEMBRANE_UPDATE_GOLDEN=1 cargo nextest run -p membrane-xds --test inject_golden`
//! then `git diff xds/tests/inject_golden`.

mod golden_pods;

use golden_pods::{dir, patched, validate};
use membrane_xds::inject::{self, Outcome, Sidecar};
use serde_json::{json, Value};

const IMAGE: &str = "registry.example/membrane:1.0";
const XDS: &str = "https://membrane-xds.membrane-system.svc:15012";

/// The webhook's settings for a case: the defaults (native sidecars,
/// revision `default`) but where the case is about another one.
fn settings(case: &str) -> Sidecar {
    let mut s = Sidecar::new(IMAGE, XDS, "default");
    match case {
        "revision" => s.revision = "canary".into(),
        "fallback-hold" => s.native_sidecars = false,
        _ => {}
    }
    s
}

fn review_of(pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "3f0c1d2e-golden",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "object": pod,
        }
    })
}

/// The webhook's answer for `pod`: the outcome and the patched pod.
fn inject(pod: &Value, s: &Sidecar) -> (Outcome, Value) {
    let (outcome, out, _) = answer(pod, s);
    (outcome, out)
}

/// The webhook's answer for `pod`: the outcome, the patched pod and the
/// AdmissionReview sent back.
fn answer(pod: &Value, s: &Sidecar) -> (Outcome, Value, Value) {
    let body = serde_json::to_vec(&review_of(pod)).unwrap();
    let r = inject::review(&body, "/inject", s).unwrap();
    let resp = &r.review["response"];
    assert_eq!(resp["uid"], "3f0c1d2e-golden");
    let out = patched(pod, resp).unwrap_or_else(|| pod.clone());
    (r.outcome, out, r.review)
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap() + "\n"
}

fn cases() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.strip_suffix(".in.json").map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

/// The annotations (and values) each `bad-` case's refusal must name.
fn refused_for(case: &str) -> &'static [(&'static str, &'static str)] {
    match case {
        "bad-capture-ranges" => &[
            (
                "traffic.sidecar.istio.io/excludeOutboundIPRanges",
                "169.254.169.254",
            ),
            (
                "traffic.sidecar.istio.io/includeOutboundIPRanges",
                "10.0.0.0/8,10.300.0.0/16",
            ),
        ],
        "bad-capture-ports" => &[
            ("traffic.sidecar.istio.io/excludeOutboundPorts", "5432,8o"),
            ("traffic.sidecar.istio.io/includeInboundPorts", "*,8080"),
            (
                "traffic.sidecar.istio.io/excludeInterfaces",
                "eth0,eth0.with.a.long.name",
            ),
        ],
        "bad-proxy-settings" => &[
            ("sidecar.istio.io/interceptionMode", "redirect"),
            ("status.sidecar.istio.io/port", "15o20"),
            ("readiness.status.sidecar.istio.io/periodSeconds", "-1"),
            ("prometheus.istio.io/merge-metrics", "yes"),
        ],
        other => panic!("{other}: a bad- case needs its refusal listed in refused_for"),
    }
}

/// A `bad-` case: refused, nothing patched, every bad value named.
fn expect_refused(case: &str, outcome: &Outcome, review: &Value) {
    let Outcome::Denied(why) = outcome else {
        panic!("{case}: {outcome:?}, expected a refusal");
    };
    let resp = &review["response"];
    assert_eq!(resp["allowed"], false, "{case}");
    assert!(resp.get("patch").is_none(), "{case}");
    assert_eq!(resp["status"]["message"].as_str(), Some(why.as_str()));
    for (annotation, value) in refused_for(case) {
        let named = format!("invalid value '{value}' for annotation '{annotation}': ");
        assert!(why.contains(&named), "{case}: {why:?} lacks {named:?}");
    }
    assert_eq!(
        why.matches("invalid value '").count(),
        refused_for(case).len(),
        "{why}"
    );
}

/// What each case must come to, besides its golden file: a wrong golden
/// file cannot make these pass.
fn expect(case: &str, outcome: &Outcome, out: &Value) {
    let injected = matches!(outcome, Outcome::Injected);
    let skipped = ["opt-out", "opt-out-label-wins", "other-revision"];
    assert_eq!(injected, !skipped.contains(&case), "{case}: {outcome:?}");
    if !injected {
        return;
    }
    let (native, list) = match out["spec"].get("initContainers") {
        Some(i) if i[0]["name"] == "istio-proxy" => (true, i),
        _ => (false, &out["spec"]["containers"]),
    };
    assert_eq!(
        native,
        case != "fallback-hold" && case != "annotations",
        "{case}"
    );
    let proxy = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "istio-proxy")
        .unwrap_or_else(|| panic!("{case}: no istio-proxy"));
    let env = |n: &str| {
        proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == n)
            .map(|e| e["value"].as_str().unwrap_or("").to_string())
    };
    let probers = env("ISTIO_KUBE_APP_PROBERS");
    match case {
        "probes" | "named-ports" | "fallback-hold" | "annotations" => {
            let p: Value = serde_json::from_str(&probers.expect("probers")).unwrap();
            assert!(p
                .as_object()
                .unwrap()
                .keys()
                .all(|k| k.starts_with("/app-health/")));
        }
        _ => assert_eq!(probers, None, "{case}"),
    }
    if case == "cronjob" {
        assert_eq!(env("ISTIO_META_WORKLOAD_NAME").unwrap(), "report");
        assert_eq!(
            env("ISTIO_META_OWNER").unwrap(),
            "kubernetes://apis/batch/v1/namespaces/shop/cronjobs/report"
        );
    }
    if case == "fallback-hold" {
        assert_eq!(out["spec"]["containers"][0]["name"], "istio-proxy");
        assert!(proxy["lifecycle"]["postStart"].is_object());
    }
}

#[test]
fn pods_in_give_the_golden_patched_pods_out() {
    let update = std::env::var_os("MEMBRANE_UPDATE_GOLDEN").is_some();
    let cases = cases();
    assert!(cases.len() >= 12, "{cases:?}");
    let tmp = tempfile::tempdir().unwrap();
    let mut to_validate = Vec::new();
    let mut stale = Vec::new();
    for case in &cases {
        let input = golden_pods::pod(case);
        let s = settings(case);
        let (outcome, out, review) = answer(&input, &s);
        let refused = case.starts_with("bad-");
        if refused {
            expect_refused(case, &outcome, &review);
        } else {
            expect(case, &outcome, &out);
        }
        // A refusal's golden file is the answer; the pod it refuses must
        // be a valid one, refused for its annotations' values alone.
        let (out, to_check) = if refused {
            (review, input.clone())
        } else {
            (out.clone(), out)
        };
        let golden = dir().join(format!("{case}.out.json"));
        if update {
            std::fs::write(&golden, pretty(&out)).unwrap();
        } else {
            let want = std::fs::read_to_string(&golden)
                .unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
            if want != pretty(&out) {
                stale.push(case.clone());
            }
        }
        let f = tmp.path().join(format!("{case}.json"));
        std::fs::write(&f, pretty(&to_check)).unwrap();
        to_validate.push(f);

        // Sent again, an injected pod is left alone.
        if matches!(outcome, Outcome::Injected) {
            let (again, same) = inject(&out, &s);
            assert!(matches!(again, Outcome::Skipped(_)), "{case}: {again:?}");
            assert_eq!(same, out);
        }
    }
    assert!(
        stale.is_empty(),
        "golden files differ for {stale:?}: regenerate with MEMBRANE_UPDATE_GOLDEN=1 and review `git diff`"
    );
    validate(&to_validate);
}
