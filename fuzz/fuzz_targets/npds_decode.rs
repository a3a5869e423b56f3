//! Arbitrary bytes as the NPDS/NPHDS messages a control plane sends, through the sidecar's
//! decoder (`membrane_api::npds::decode`). Nothing may panic, and a policy the decoder
//! accepts must decide the same after another trip through the encoder and the decoder
//! (what the sidecar enforces is what it would tell another sidecar).

#![no_main]

use libfuzzer_sys::fuzz_target;
use membrane_api::npds::{decode, encode};
use membrane_api::proto::{NetworkPolicy, NetworkPolicyHosts};
use membrane_policy::http::{HttpRequest, NoSecrets};
use membrane_policy::resolve::NamedPorts;
use membrane_policy::{Direction, Identity, Proto};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    // The first byte splits the input: NPHDS bytes, then NPDS bytes.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (hosts, policy) = rest.split_at(usize::from(split).min(rest.len()));
    if let Ok(h) = NetworkPolicyHosts::decode(hosts) {
        let _ = decode::ipcache(&[h]);
    }
    let Ok(np) = NetworkPolicy::decode(policy) else {
        return;
    };
    let Ok(first) = decode::network_policy(&np) else {
        return;
    };
    let named = NamedPorts::new();
    let again = encode::network_policy(np.endpoint_ips.clone(), 1, &first, &named, &named);
    let second =
        decode::network_policy(&again).expect("the decoder accepts what it decoded, re-encoded");
    let headers: Vec<(String, String)> = vec![("x-token".into(), "abc".into())];
    let req = HttpRequest {
        method: "GET",
        path: "/v1/x",
        host: Some("api.example.com"),
        headers: &headers,
        secrets: &NoSecrets,
    };
    for dir in [Direction::Ingress, Direction::Egress] {
        let (a, b) = (first.direction(dir), second.direction(dir));
        for remote in [
            Identity::WORLD,
            Identity(256),
            Identity(257),
            Identity(16_777_217),
        ] {
            for port in [0, 80, 443, 8080, 65535] {
                let (ca, cb) = (
                    a.connection(remote, Proto::Tcp, port),
                    b.connection(remote, Proto::Tcp, port),
                );
                assert_eq!(ca.l4_verdict(), cb.l4_verdict());
                assert_eq!(ca.check_http(&req).verdict, cb.check_http(&req).verdict);
            }
        }
    }
});
