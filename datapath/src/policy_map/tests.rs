use super::*;

fn rule(
    direction: Direction,
    id: u32,
    proto: u8,
    lo: u16,
    hi: u16,
    verdict: MapVerdict,
) -> PolicyRule {
    PolicyRule {
        direction,
        remote_identity: id,
        proto,
        ports: (lo, hi),
        verdict,
    }
}

fn entry(
    direction: i32,
    protocol: u32,
    port: u32,
    end_port: u32,
    verdict: i32,
) -> proto::PolicyEntry {
    proto::PolicyEntry {
        direction,
        remote_identity: 300,
        protocol,
        port,
        end_port,
        verdict,
    }
}

#[test]
fn control_plane_entries_convert_or_name_the_bad_field() {
    let egress = proto::Direction::Egress as i32;
    let allow = proto::Verdict::Allow as i32;
    let r = PolicyRule::try_from(&entry(egress, 6, 80, 90, allow)).unwrap();
    assert_eq!(
        r,
        rule(Direction::Egress, 300, 6, 80, 90, MapVerdict::Allow)
    );
    // end_port 0: the single port.
    let r = PolicyRule::try_from(&entry(0, 17, 53, 0, proto::Verdict::Redirect as i32)).unwrap();
    assert_eq!(
        r,
        rule(Direction::Ingress, 300, 17, 53, 53, MapVerdict::Redirect)
    );

    let table: [(proto::PolicyEntry, &str); 7] = [
        (
            entry(2, 6, 80, 80, allow),
            "direction: 2 is not INGRESS (0) or EGRESS (1)",
        ),
        (entry(egress, 6, 80, 80, 0), "verdict: 0 is not ALLOW"),
        (entry(egress, 6, 80, 80, 9), "verdict: 9 is not ALLOW"),
        (
            entry(egress, 47, 80, 80, allow),
            "protocol: 47 is not TCP (6), UDP (17), SCTP (132), ICMP (1) or ICMPv6 (58)",
        ),
        (entry(egress, 6, 0, 80, allow), "port: 0 is not a port"),
        (
            entry(egress, 6, 70000, 0, allow),
            "port: 70000 is not a port",
        ),
        (
            entry(egress, 6, 90, 80, allow),
            "end_port: 80 is not a port from `port` to 65535",
        ),
    ];
    for (e, want) in table {
        let err = PolicyRule::try_from(&e).unwrap_err().to_string();
        assert!(err.contains(want), "{e:?}: {err:?} lacks {want:?}");
    }
}

#[test]
fn validation_refuses_what_the_map_cannot_hold() {
    use Direction::*;
    use MapVerdict::*;
    let ok = [
        rule(Egress, 300, 6, 80, 90, Allow),
        rule(Egress, 300, 6, 91, 100, Deny),
        // Same ports, another identity, protocol or direction: no overlap.
        rule(Egress, 301, 6, 80, 90, Deny),
        rule(Egress, 300, 17, 80, 90, Deny),
        rule(Ingress, 300, 6, 80, 90, Deny),
        rule(Egress, 0, 6, 1, 65535, Allow),
    ];
    validate(&ok).unwrap();

    let err = validate(&[rule(Egress, 300, 6, 90, 80, Allow)])
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "policy rule 0 (egress to identity 300 TCP/90-80: Allow): port range 90-80 is empty (start after end)"
    );
    let err = validate(&[rule(Egress, 0, 6, 0, 80, Allow)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("port 0 is never"), "{err}");
    let err = validate(&[rule(Egress, 0, 47, 80, 80, Allow)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("protocol 47 is not TCP"), "{err}");
    let mut overlapping = ok.to_vec();
    overlapping.push(rule(Egress, 300, 6, 100, 100, Allow));
    let err = validate(&overlapping).unwrap_err().to_string();
    assert_eq!(
        err,
        "policy rules 1 (egress to identity 300 TCP/91-100: Deny) and 6 (egress to identity 300 TCP/100: Allow) overlap: one (direction, protocol, identity) has one verdict per port"
    );
}

#[test]
fn rules_read_back_as_written() {
    use Direction::*;
    use MapVerdict::*;
    let rules = vec![
        rule(Ingress, 0, 6, 1, 65535, Deny),
        rule(Ingress, 300, 6, 80, 80, Redirect),
        rule(Egress, 0, 17, 53, 53, Allow),
        rule(Egress, 300, 6, 1000, 1999, Allow),
        rule(Egress, 300, 6, 2000, 2000, Deny),
    ];
    validate(&rules).unwrap();
    let e = entries(&rules);
    // 1-65535: 16 blocks; 1000-1999: 1000/13 1008/12 1024/7 1536/8 1792/9 1920/10 1984/12.
    assert_eq!(e.len(), 16 + 1 + 1 + 7 + 1);
    let mut want = rules.clone();
    want.sort_by_key(|r| (r.direction, r.proto, r.remote_identity, r.ports));
    assert_eq!(rules_of(&e), want);
    // Adjacent rules with one verdict read back as one range.
    let split = [
        rule(Egress, 7, 6, 80, 84, Allow),
        rule(Egress, 7, 6, 85, 90, Allow),
    ];
    assert_eq!(
        rules_of(&entries(&split)),
        vec![rule(Egress, 7, 6, 80, 90, Allow)]
    );
}
