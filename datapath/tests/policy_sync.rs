//! Privileged: the policy map and the ipcache through their Rust API, against the real
//! pinned maps: what a sync writes reads back, a second sync writes only the difference,
//! and bad input is refused whole, leaving what was in force.

mod common;

use common::{tcp, Env};
use membrane_datapath::policy_map::{Direction::*, MapVerdict::*, PolicyRule, SyncReport};
use membrane_datapath::{DatapathSettings, Error, IpNet};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn sorted(mut rules: Vec<PolicyRule>) -> Vec<PolicyRule> {
    rules.sort_by_key(|r| (r.direction, r.proto, r.remote_identity, r.ports));
    rules
}

#[test]
fn policy_syncs_as_diffs_and_reads_back() {
    let env = Env::new();
    let dp = env.attach(&DatapathSettings::default());
    assert_eq!(dp.policy_rules().unwrap(), vec![]);

    let first = vec![
        tcp(Ingress, 0, 1, 65535, Deny),
        tcp(Ingress, 300, 80, 80, Redirect),
        tcp(Egress, 300, 8080, 8090, Allow),
        PolicyRule {
            proto: 17,
            ..tcp(Egress, 0, 53, 53, Allow)
        },
    ];
    let report = dp.sync_policy(&first).unwrap();
    // 16 blocks for 1-65535, 1 for port 80, 3 for 8080-8090, 1 for 53/UDP.
    assert_eq!(
        report,
        SyncReport {
            added: 21,
            changed: 0,
            removed: 0
        }
    );
    assert_eq!(dp.policy_rules().unwrap(), sorted(first.clone()));
    // The same policy again writes nothing.
    assert_eq!(dp.sync_policy(&first).unwrap(), SyncReport::default());

    // Narrow a range, change a verdict, drop a rule.
    let second = vec![
        tcp(Ingress, 0, 1, 65535, Deny),
        tcp(Ingress, 300, 80, 80, Allow),
        tcp(Egress, 300, 8080, 8087, Allow),
    ];
    let report = dp.sync_policy(&second).unwrap();
    assert_eq!(
        report,
        SyncReport {
            added: 0,
            changed: 1,
            removed: 3
        }
    );
    assert_eq!(dp.policy_rules().unwrap(), sorted(second.clone()));

    // Overlapping rules: refused whole, the second policy stays.
    let bad = vec![tcp(Egress, 7, 80, 90, Allow), tcp(Egress, 7, 90, 95, Deny)];
    let err = dp.sync_policy(&bad).unwrap_err();
    assert!(matches!(err, Error::Policy(_)), "{err}");
    assert!(err.to_string().contains("overlap"), "{err}");
    assert_eq!(dp.policy_rules().unwrap(), sorted(second.clone()));

    // More port blocks than the map holds (600 identities x 30 blocks for 1-65534):
    // refused before anything is written.
    let huge: Vec<PolicyRule> = (1000..1600)
        .map(|id| tcp(Egress, id, 1, 65534, Allow))
        .collect();
    let err = dp.sync_policy(&huge).unwrap_err().to_string();
    assert_eq!(
        err,
        "policy of 600 rules needs 18000 map entries (port blocks); the map holds 16384"
    );
    assert_eq!(dp.policy_rules().unwrap(), sorted(second.clone()));

    let report = dp.sync_policy(&[]).unwrap();
    assert_eq!(report.removed, 18);
    assert_eq!(dp.policy_rules().unwrap(), vec![]);

    // Two policies that each fit, but not side by side (a sync writes the new entries
    // before it deletes the old): the sync stops at the first entry with no room, with
    // an error naming the sizes, and every entry of the policy in force is still there.
    let on_port = |port| -> Vec<PolicyRule> {
        (1000..17000)
            .map(|id| tcp(Egress, id, port, port, Allow))
            .collect()
    };
    dp.sync_policy(&on_port(80)).unwrap();
    let err = dp.sync_policy(&on_port(90)).unwrap_err();
    assert!(matches!(err, Error::Policy(_)), "{err}");
    assert!(
        err.to_string().starts_with(
            "policy map full (16384 entries) while changing from a policy of 16000 entries to one of 16000"
        ),
        "{err}"
    );
    let held = dp.policy_rules().unwrap();
    let old: Vec<&PolicyRule> = held.iter().filter(|r| r.ports == (80, 80)).collect();
    assert_eq!(old.len(), 16000, "the old policy's entries are all there");
    dp.sync_policy(&[]).unwrap();
    assert_eq!(dp.policy_rules().unwrap(), vec![]);
}

#[test]
fn ipcache_syncs_as_diffs_and_reads_back() {
    let env = Env::new();
    let dp = env.attach(&DatapathSettings::default());
    let first = vec![
        (net("10.0.0.0/8"), 16_777_217),
        (net("10.1.2.3/32"), 300),
        (net("fd00::/64"), 16_777_218),
        (net("fd00::5/128"), 301),
    ];
    let report = dp.sync_ipcache(&first).unwrap();
    assert_eq!(
        report,
        SyncReport {
            added: 4,
            changed: 0,
            removed: 0
        }
    );
    let mut want = first.clone();
    want.sort();
    assert_eq!(dp.ipcache().unwrap(), want);

    // Host bits cleared, v4-mapped IPv6 stored as IPv4, one changed, one gone.
    let second = vec![
        (net("10.9.9.9/8"), 16_777_217),
        (net("::ffff:10.1.2.3/128"), 302),
        (net("fd00::/64"), 16_777_218),
    ];
    let report = dp.sync_ipcache(&second).unwrap();
    assert_eq!(
        report,
        SyncReport {
            added: 0,
            changed: 1,
            removed: 1
        }
    );
    let want = vec![
        (net("10.0.0.0/8"), 16_777_217),
        (net("10.1.2.3/32"), 302),
        (net("fd00::/64"), 16_777_218),
    ];
    assert_eq!(dp.ipcache().unwrap(), want);

    for (bad, says) in [
        (
            vec![(net("10.2.0.0/16"), 0)],
            "10.2.0.0/16: identity 0 is not an identity",
        ),
        (
            vec![(net("10.2.0.0/16"), 5), (net("10.2.0.1/16"), 6)],
            "10.2.0.0/16 given twice, with identities 5 and 6",
        ),
    ] {
        let err = dp.sync_ipcache(&bad).unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
        assert_eq!(
            dp.ipcache().unwrap(),
            want,
            "a refused ipcache changed the map"
        );
    }
}
