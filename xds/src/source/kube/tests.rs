use serde_json::json;

use super::*;

const CNP: usize = 0;
const POD: usize = 2;

fn cnp(port: &str) -> Value {
    json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "rule1", "namespace": "default", "resourceVersion": "7", "generation": 1},
        "spec": {
            "endpointSelector": {"matchLabels": {"org": "empire"}},
            "ingress": [{"toPorts": [{"ports": [{"port": port}]}]}]
        }
    })
}

/// Kafka (or DNS, or l7proto) rules are accepted, and the Valid condition says that
/// membrane does not enforce them and what it does instead.
#[test]
fn unenforced_l7_rules_are_named_in_the_valid_condition() {
    let mut s = Store::default();
    let mut v = cnp("9092");
    v["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["protocol"] = json!("TCP");
    v["spec"]["ingress"][0]["toPorts"][0]["rules"] =
        json!({"kafka": [{"role": "produce", "topic": "deathstar-plans"}]});
    let p = s.apply(CNP, v).expect("a verdict is written");
    let c = &p.body["status"]["conditions"][0];
    assert_eq!(c["status"], "True", "{c}");
    let msg = c["message"].as_str().unwrap();
    assert!(
        msg.starts_with("policy is valid and in force; warnings: spec.ingress[0].toPorts[0].rules.kafka: Kafka rules are not enforced by membrane")
            && msg.contains("fail closed"),
        "{msg}"
    );
    assert_eq!(s.state().policies.len(), 1, "the policy is in force");
}

#[test]
fn bad_version_keeps_last_good_and_status_says_why() {
    let mut s = Store::default();
    let p = s.apply(CNP, cnp("80")).expect("first verdict is written");
    assert_eq!(p.namespace.as_deref(), Some("default"));
    let c = &p.body["status"]["conditions"][0];
    assert_eq!(
        (c["type"].as_str(), c["status"].as_str()),
        (Some("Valid"), Some("True"))
    );
    assert!(std::mem::take(&mut s.changed));
    assert_eq!(s.state().policies.len(), 1);

    let p = s.apply(CNP, cnp("99999")).expect("rejection is written");
    let c = &p.body["status"]["conditions"][0];
    assert_eq!(c["status"], "False");
    let msg = c["message"].as_str().unwrap();
    assert!(
        msg.starts_with("spec.ingress[0].toPorts[0].ports[0].port"),
        "{msg}"
    );
    assert!(!s.changed, "a rejection changes no good state");
    assert_eq!(s.state().policies.len(), 1, "last good version stays");
    assert_eq!(s.rejected.len(), 1);
    assert!(
        s.rejected[0].starts_with("CiliumNetworkPolicy default/rule1: spec.ingress[0]"),
        "{}",
        s.rejected[0]
    );

    // The object now carries our condition: the same verdict is not written again,
    // nor is the object re-parsed for a status-only change.
    let mut again = cnp("99999");
    again["status"] = p.body["status"].clone();
    again["metadata"]["resourceVersion"] = json!("8");
    assert_eq!(s.apply(CNP, again), None);
    assert_eq!(s.rejected.len(), 1);
}

#[test]
fn transition_time_moves_only_when_status_flips() {
    let first = condition_patch(None, false, "x: bad", "2026-01-01T00:00:00Z").unwrap();
    let cur = first["status"].clone();
    assert_eq!(condition_patch(Some(&cur), false, "x: bad", "later"), None);
    let msg = condition_patch(Some(&cur), false, "y: bad", "2026-02-02T00:00:00Z").unwrap();
    assert_eq!(
        msg["status"]["conditions"][0]["lastTransitionTime"],
        "2026-01-01T00:00:00Z"
    );
    let flip = condition_patch(Some(&cur), true, "ok", "2026-03-03T00:00:00Z").unwrap();
    assert_eq!(
        flip["status"]["conditions"][0]["lastTransitionTime"],
        "2026-03-03T00:00:00Z"
    );
    // Other conditions survive the merge patch (which replaces lists whole).
    let other = json!({"conditions": [{"type": "Other", "status": "True"}]});
    let p = condition_patch(Some(&other), true, "ok", "t").unwrap();
    assert_eq!(p["status"]["conditions"].as_array().unwrap().len(), 2);
}

#[test]
fn relist_replaces_a_kinds_objects() {
    let mut s = Store::default();
    let pod = |name: &str| json!({"metadata": {"name": name, "namespace": "default"}, "status": {"podIP": "10.0.0.1"}});
    assert!(s.relisted(POD, vec![pod("a"), pod("b")]).is_empty());
    assert_eq!(s.state().pods.len(), 2);
    s.changed = false;
    s.relisted(POD, vec![pod("a")]);
    assert!(s.changed);
    assert_eq!(s.state().pods.len(), 1);
    assert_eq!(s.relists[&POD], 1);
    // Core list items carry no kind: it is filled in from the watched kind.
    assert_eq!(s.state().pods[0].metadata.name, "a");
}
