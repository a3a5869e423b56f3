//! The Star Wars fixtures: Cilium's example policies as the repository ships them in
//! `manifests/examples/starwars` (tests read those, never a copy), and the mini-cluster of
//! pods a file source needs, which the manifests do not have.

/// `sw_l3_l4_policy.yaml`: only the Empire reaches the deathstar, on 80/TCP.
pub const L3_L4: &str = include_str!("../../manifests/examples/starwars/sw_l3_l4_policy.yaml");

/// `sw_l3_l4_l7_policy.yaml`: the Empire may only `POST /v1/request-landing` on 80/TCP.
pub const L3_L4_L7: &str =
    include_str!("../../manifests/examples/starwars/sw_l3_l4_l7_policy.yaml");

/// `sw_egress_cidr_except.yaml`: the xwing's egress by CIDR with an exception.
pub const EGRESS_CIDR_EXCEPT: &str =
    include_str!("../../manifests/examples/starwars/sw_egress_cidr_except.yaml");

const PODS: &str = include_str!("../fixtures/starwars-pods.yaml");

/// The mini-cluster: deathstar at 127.0.0.2 with its app's port named `http` on `port`,
/// tiefighter at 127.0.0.3, xwing at 127.0.0.4, service `deathstar` on 80 -> `http`.
pub fn pods(port: u16) -> String {
    PODS.replace("PORT", &port.to_string())
}

/// [`L3_L4_L7`] with its port set to `port` and its one path to `path`: the tests run the
/// deathstar's app on a port of their own (8080 in [`pods`]), and some change the path to
/// see a policy change arrive.
pub fn l7(port: u16, path: &str) -> String {
    let text = L3_L4_L7
        .replace("port: \"80\"", &format!("port: \"{port}\""))
        .replace("path: \"/v1/request-landing\"", &format!("path: '{path}'"));
    assert!(
        text.contains(&format!("port: \"{port}\"")) && text.contains(path),
        "the Star Wars manifest changed shape: {text}"
    );
    text
}

/// Writes a file source for the mini-cluster into `dir`: `cluster.yaml` ([`pods`] with the
/// app on `port`) and `policy.yaml` ([`l7`] on `port` allowing `POST /v1/request-landing`).
pub fn write_source(dir: &std::path::Path, port: u16) {
    std::fs::write(dir.join("cluster.yaml"), pods(port)).unwrap();
    std::fs::write(dir.join("policy.yaml"), l7(port, "/v1/request-landing")).unwrap();
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_l7_variant_changes_only_the_port_and_the_path() {
        let v = super::l7(8080, "/v2/.*");
        let changed: Vec<_> = super::L3_L4_L7
            .lines()
            .zip(v.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(
            changed,
            [
                ("      - port: \"80\"", "      - port: \"8080\""),
                (
                    "          path: \"/v1/request-landing\"",
                    "          path: '/v2/.*'"
                ),
            ]
        );
    }
}
