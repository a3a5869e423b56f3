//! The NPDS encoder and decoder tested against each other: for a policy resolved by the
//! engine, `decode(encode(p))` (through the wire bytes) must give the same verdicts as `p`
//! for a grid of peers, ports and requests. Verdicts are compared, not structures: the
//! decoder may order rules differently and does not keep origins' policy keys.
//!
//! Policies come from a small deterministic generator (fixed seeds, so a failure names a
//! seed that reproduces it) and from the real policies in `shared/corpus/cnp`.

mod common;

use common::{localhost_setting, resolve, Gen, Tok};
use membrane_api::npds::{decode, encode};
use membrane_api::proto::NetworkPolicy;
use membrane_policy::http::HttpRequest;
use membrane_policy::resolve::{DirectionPolicy, NamedPorts, ResolvedPolicy};
use membrane_policy::{ConnPolicy, Direction, Identity, Proto};
use prost::Message;

/// `p` through the encoder, the wire bytes and the decoder.
fn round_trip(p: &ResolvedPolicy) -> ResolvedPolicy {
    let named = NamedPorts::new();
    let np = encode::network_policy(vec!["10.0.0.1".into()], 7, p, &named, &named);
    let wire = NetworkPolicy::decode(np.encode_to_vec().as_slice()).expect("own bytes decode");
    assert_eq!(wire, np, "the message survives the wire");
    decode::network_policy(&wire).expect("the decoder accepts what the encoder writes")
}

const PORTS: [u16; 6] = [80, 443, 8080, 9000, 9005, 9011];

/// Every verdict of `orig` and `decoded` on the grid, compared; `what` names the case.
fn same_verdicts(
    orig: &ResolvedPolicy,
    decoded: &ResolvedPolicy,
    remotes: &[Identity],
    what: &str,
) {
    let header_sets: Vec<Vec<(String, String)>> = vec![
        vec![],
        vec![("x-token".into(), "abc".into())],
        vec![
            ("x-token".into(), "s3cret".into()),
            ("x-present".into(), "1".into()),
        ],
        vec![("x-h".into(), "v".into())],
        vec![
            ("x-h".into(), "other".into()),
            ("x-token".into(), "abc".into()),
        ],
    ];
    let mut requests = Vec::new();
    for method in ["GET", "POST", "PUT"] {
        for path in ["/", "/v1/x", "/public", "/public/x"] {
            for host in [None, Some("api.example.com")] {
                for headers in &header_sets {
                    requests.push((method, path, host, headers));
                }
            }
        }
    }
    for dir in [Direction::Ingress, Direction::Egress] {
        let (a, b): (&DirectionPolicy, &DirectionPolicy) =
            (orig.direction(dir), decoded.direction(dir));
        for port in PORTS {
            // Whether the port has HTTP rules at all is not compared: the encoder leaves out
            // rules that select no identity, which decide nothing.
            let at = |detail: &str| format!("{what}: {dir:?} port {port}: {detail}");
            for &remote in remotes {
                let (ca, cb) = (
                    a.connection(remote, Proto::Tcp, port),
                    b.connection(remote, Proto::Tcp, port),
                );
                let at = |detail: &str| at(&format!("remote {}: {detail}", remote.0));
                assert_eq!(ca.l4_verdict(), cb.l4_verdict(), "{}", at("L4 verdict"));
                assert_eq!(ca.needs_http(), cb.needs_http(), "{}", at("needs HTTP"));
                for (method, path, host, headers) in &requests {
                    let req = HttpRequest {
                        method,
                        path,
                        host: *host,
                        headers: *headers,
                        secrets: &Tok,
                    };
                    let (da, db) = (ca.check_http(&req), cb.check_http(&req));
                    let at = at(&format!("{method} {path} host={host:?} {headers:?}"));
                    assert_eq!(da.verdict, db.verdict, "{at}: verdict");
                    assert_eq!(da.header_actions, db.header_actions, "{at}: header actions");
                }
            }
        }
    }
}

#[test]
fn decode_of_encode_decides_as_the_generated_policy() {
    let (mut seen_http, mut seen_localhost, mut seen_host_rules) = (0, 0, 0);
    for seed in 0..300u64 {
        let mut g = Gen::seeded(seed, false);
        let texts = g.policies();
        let mode = g.mode();
        let localhost = localhost_setting(seed);
        let (orig, remotes) = resolve(&texts, mode, localhost, NamedPorts::new());
        seen_http += usize::from(
            PORTS
                .iter()
                .any(|p| orig.ingress.has_http_on(Proto::Tcp, *p)),
        );
        // allow-localhost letting the host in on some port, and, on another case, rules
        // naming the host deciding it on a port while the setting is on.
        seen_localhost += usize::from(PORTS.iter().any(|p| {
            matches!(
                orig.ingress.connection(Identity::HOST, Proto::Tcp, *p),
                ConnPolicy::AllowedLocalhost
            )
        }));
        seen_host_rules += usize::from(
            orig.ingress.allow_localhost
                && PORTS
                    .iter()
                    .any(|p| orig.ingress.names_remote_on(Identity::HOST, Proto::Tcp, *p)),
        );
        let decoded = round_trip(&orig);
        same_verdicts(
            &orig,
            &decoded,
            &remotes,
            &format!(
                "seed {seed} ({mode:?}, allow-localhost {localhost})\n{}",
                texts.join("---\n")
            ),
        );
    }
    // The generator must reach the interesting part: HTTP rules on a port.
    assert!(
        seen_http > 50,
        "only {seen_http} of 300 policies had HTTP rules"
    );
    assert!(
        seen_localhost > 50 && seen_host_rules > 20,
        "allow-localhost decided in {seen_localhost} and rules naming the host under it in {seen_host_rules} of 300 cases"
    );
}

/// Every policy of the corpus that the engine accepts (see
/// [`common::for_each_corpus_policy`]).
#[test]
fn decode_of_encode_decides_as_every_corpus_policy() {
    let enforced = common::for_each_corpus_policy(|what, orig, remotes| {
        let decoded = round_trip(orig);
        same_verdicts(orig, &decoded, remotes, what);
    });
    assert!(
        enforced > 100,
        "only {enforced} corpus policies selected their endpoint"
    );
}
