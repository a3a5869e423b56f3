//! The pod annotations Istio's injector checks before it injects
//! (`pkg/kube/inject/validate.go`): the capture lists
//! (`traffic.sidecar.istio.io/*`), the interception mode, the status port
//! and its readiness probe settings, `prometheus.istio.io/merge-metrics`.
//! A bad value refuses the pod at admission, naming the annotation and the
//! value in Istio's words (`invalid value 'V' for annotation 'A': ...`),
//! rather than leaving the node agent to find it when it attaches the pod.
//!
//! The rules are Istio's (a CIDR is `ADDRESS/BITS`, no spaces; ports are
//! decimal and may be padded with spaces; `*` only where Istio allows it),
//! with two additions the datapath needs, so a pod admitted here is one the
//! agent accepts: a capture port list may not name port 0, and
//! `excludeInterfaces` (which Istio hands to istio-iptables unchecked, whose
//! init container then fails) must list Linux interface names.
//!
//! No I/O here.

use std::net::IpAddr;

use serde_json::{Map, Value};

/// `sidecar.istio.io/interceptionMode`.
pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
/// `status.sidecar.istio.io/port`.
pub const STATUS_PORT: &str = "status.sidecar.istio.io/port";
/// `readiness.status.sidecar.istio.io/initialDelaySeconds`.
pub const READINESS_INITIAL_DELAY: &str = "readiness.status.sidecar.istio.io/initialDelaySeconds";
/// `readiness.status.sidecar.istio.io/periodSeconds`.
pub const READINESS_PERIOD: &str = "readiness.status.sidecar.istio.io/periodSeconds";
/// `readiness.status.sidecar.istio.io/failureThreshold`.
pub const READINESS_FAILURE_THRESHOLD: &str = "readiness.status.sidecar.istio.io/failureThreshold";
/// `traffic.sidecar.istio.io/includeOutboundIPRanges`.
pub const INCLUDE_OUTBOUND_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
/// `traffic.sidecar.istio.io/excludeOutboundIPRanges`.
pub const EXCLUDE_OUTBOUND_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
/// `traffic.sidecar.istio.io/includeInboundPorts`.
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
/// `traffic.sidecar.istio.io/excludeInboundPorts`.
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
/// `traffic.sidecar.istio.io/excludeOutboundPorts`.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
/// `traffic.sidecar.istio.io/excludeInterfaces`.
pub const EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
/// `prometheus.istio.io/merge-metrics`.
pub const MERGE_METRICS: &str = "prometheus.istio.io/merge-metrics";

/// One annotation whose value Istio's injector would refuse.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("invalid value '{value}' for annotation '{annotation}': {what}")]
pub struct BadAnnotation {
    /// The annotation's name.
    pub annotation: String,
    /// Its value (a non-string value shown as JSON).
    pub value: String,
    /// What is wrong, as Istio words it for that annotation.
    pub what: String,
}

/// How one annotation is checked: its name, and the reason its value fails.
type Rule = (&'static str, fn(&str) -> Result<(), String>);

const RULES: [Rule; 11] = [
    (INTERCEPTION_MODE, interception_mode),
    (STATUS_PORT, status_port),
    (READINESS_INITIAL_DELAY, uint32),
    (READINESS_PERIOD, uint32),
    (READINESS_FAILURE_THRESHOLD, uint32),
    (INCLUDE_OUTBOUND_RANGES, include_ranges),
    (EXCLUDE_OUTBOUND_RANGES, exclude_ranges),
    (INCLUDE_INBOUND_PORTS, include_inbound_ports),
    (EXCLUDE_INBOUND_PORTS, exclude_inbound_ports),
    (EXCLUDE_OUTBOUND_PORTS, exclude_outbound_ports),
    (MERGE_METRICS, go_bool),
];

/// Every checked annotation of `annotations` that holds a bad value, in
/// name order (empty: all good). Others are not looked at.
pub fn annotations(annotations: &Map<String, Value>) -> Vec<BadAnnotation> {
    let rules = RULES.iter().copied().chain([(
        EXCLUDE_INTERFACES,
        interfaces as fn(&str) -> Result<(), String>,
    )]);
    let mut bad: Vec<BadAnnotation> = rules
        .filter_map(|(name, check)| {
            let v = annotations.get(name)?;
            let (value, result) = match v {
                Value::String(s) => (s.clone(), check(s)),
                // The API server only stores strings; a webhook test may not.
                other => (other.to_string(), Err("not a string".to_owned())),
            };
            result.err().map(|what| BadAnnotation {
                annotation: name.to_owned(),
                value,
                what,
            })
        })
        .collect();
    bad.sort_by(|a, b| a.annotation.cmp(&b.annotation));
    bad
}

fn interception_mode(v: &str) -> Result<(), String> {
    match v {
        "REDIRECT" | "TPROXY" | "NONE" => Ok(()),
        _ => Err(format!(
            "interceptionMode invalid, use REDIRECT,TPROXY,NONE: {v}"
        )),
    }
}

/// Go's `strconv.ParseUint(s, 10, bits)`: decimal digits only (no sign,
/// no spaces), within `max`.
fn go_uint(s: &str, max: u64) -> Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a decimal number"));
    }
    match s.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("{s:?} is out of range (at most {max})")),
    }
}

fn status_port(v: &str) -> Result<(), String> {
    // Istio's own message names excludeInboundPorts here; the annotation
    // is named by the caller, so this says what it is.
    go_uint(v.trim(), u16::MAX.into())
        .map(drop)
        .map_err(|e| format!("statusPort invalid: {e}"))
}

fn uint32(v: &str) -> Result<(), String> {
    go_uint(v, u32::MAX.into()).map(drop)
}

fn go_bool(v: &str) -> Result<(), String> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" | "0" | "f" | "F" | "FALSE" | "false"
        | "False" => Ok(()),
        _ => Err(format!("{v:?} is not a boolean (true or false)")),
    }
}

/// Go's `netip.ParsePrefix`: `ADDRESS/BITS`, BITS decimal without a sign
/// or leading zero, at most the address's length.
fn cidr(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("failed parsing cidr '{s}': {why}"));
    let Some((addr, bits)) = s.split_once('/') else {
        return bad("no '/'");
    };
    let Ok(addr) = addr.parse::<IpAddr>() else {
        return bad("not an IP address before the '/'");
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let ok = !bits.is_empty()
        && bits.bytes().all(|b| b.is_ascii_digit())
        && (bits == "0" || !bits.starts_with('0'))
        && bits.parse::<u32>().is_ok_and(|n| n <= max);
    if !ok {
        return bad(&format!("bad bits after slash: {bits:?} (0-{max})"));
    }
    Ok(())
}

fn cidrs(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    v.split(',').try_for_each(cidr)
}

fn include_ranges(v: &str) -> Result<(), String> {
    if v == "*" {
        return Ok(());
    }
    cidrs(v).map_err(|e| format!("includeIPRanges invalid: {e}"))
}

fn exclude_ranges(v: &str) -> Result<(), String> {
    cidrs(v).map_err(|e| format!("excludeIPRanges invalid: {e}"))
}

/// A comma-separated port list (empty: none): each port decimal, spaces
/// around it allowed, as Istio's `parsePorts`; 0 refused (not Istio's
/// rule: the datapath has no port 0 to capture, and its agent refuses it).
fn ports(param: &str, v: &str) -> Result<(), String> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(());
    }
    for p in v.split(',') {
        let p = p.trim();
        match go_uint(p, u16::MAX.into()) {
            Ok(0) | Err(_) => {
                return Err(format!(
                    "{param} invalid: failed parsing port '{p}': not a port number (1-65535)"
                ))
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

fn include_inbound_ports(v: &str) -> Result<(), String> {
    if v == "*" {
        return Ok(());
    }
    ports("includeInboundPorts", v)
}

fn exclude_inbound_ports(v: &str) -> Result<(), String> {
    ports("excludeInboundPorts", v)
}

fn exclude_outbound_ports(v: &str) -> Result<(), String> {
    ports("excludeOutboundPorts", v)
}

/// Linux interface names (the kernel's `dev_valid_name`): 1-15 bytes, not
/// `.` or `..`, no `/`, `:` or white space; comma-separated, empty: none.
fn interfaces(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    for name in v.split(',') {
        let ok = !name.is_empty()
            && name.len() <= 15
            && name != "."
            && name != ".."
            && !name
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace());
        if !ok {
            return Err(format!(
                "excludeInterfaces invalid: '{name}' is not a network interface name \
                 (1-15 characters, no '/', ':' or spaces)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(pairs: &[(&str, &str)]) -> Vec<String> {
        let m: Map<String, Value> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        annotations(&m).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn good_values_pass() {
        let good = [
            (INTERCEPTION_MODE, "TPROXY"),
            (STATUS_PORT, "15020"),
            (READINESS_PERIOD, "4294967295"),
            (INCLUDE_OUTBOUND_RANGES, "*"),
            (
                EXCLUDE_OUTBOUND_RANGES,
                "10.0.0.0/8,fd00::/8,169.254.169.254/32,0.0.0.0/0",
            ),
            (INCLUDE_INBOUND_PORTS, "*"),
            (EXCLUDE_INBOUND_PORTS, " 8080 , 9090"),
            (EXCLUDE_OUTBOUND_PORTS, ""),
            (EXCLUDE_INTERFACES, "eth1,net1.100"),
            (MERGE_METRICS, "False"),
            ("some.other/annotation", "*,,?"),
        ];
        for (k, v) in good {
            assert_eq!(check(&[(k, v)]), Vec::<String>::new(), "{k}={v}");
        }
        // Empty lists are Istio's "nothing".
        assert!(check(&[(INCLUDE_OUTBOUND_RANGES, ""), (INCLUDE_INBOUND_PORTS, "")]).is_empty());
    }

    #[test]
    fn bad_values_are_named_in_istios_words() {
        assert_eq!(
            check(&[(EXCLUDE_OUTBOUND_PORTS, "80,8o")]),
            ["invalid value '80,8o' for annotation 'traffic.sidecar.istio.io/excludeOutboundPorts': \
              excludeOutboundPorts invalid: failed parsing port '8o': not a port number (1-65535)"]
        );
        assert_eq!(
            check(&[(INCLUDE_OUTBOUND_RANGES, "10.0.0.0/8,10.300.0.0/16")]),
            ["invalid value '10.0.0.0/8,10.300.0.0/16' for annotation \
              'traffic.sidecar.istio.io/includeOutboundIPRanges': includeIPRanges invalid: \
              failed parsing cidr '10.300.0.0/16': not an IP address before the '/'"]
        );
        // Istio's rules, each refused.
        let bad = [
            (INTERCEPTION_MODE, "redirect"),
            (STATUS_PORT, "65536"),
            (READINESS_INITIAL_DELAY, "-1"),
            (READINESS_FAILURE_THRESHOLD, "+3"),
            (READINESS_PERIOD, "4294967296"),
            (INCLUDE_OUTBOUND_RANGES, "*,10.0.0.0/8"),
            (EXCLUDE_OUTBOUND_RANGES, "*"),
            (EXCLUDE_OUTBOUND_RANGES, "10.0.0.1"),
            (EXCLUDE_OUTBOUND_RANGES, "10.0.0.0/8, 10.1.0.0/16"),
            (EXCLUDE_OUTBOUND_RANGES, "10.0.0.0/33"),
            (EXCLUDE_OUTBOUND_RANGES, "10.0.0.0/08"),
            (EXCLUDE_OUTBOUND_RANGES, "fe80::1%eth0/64"),
            (INCLUDE_INBOUND_PORTS, "*,80"),
            (EXCLUDE_INBOUND_PORTS, "80,,81"),
            (EXCLUDE_OUTBOUND_PORTS, "70000"),
            (EXCLUDE_OUTBOUND_PORTS, "0"),
            (EXCLUDE_INTERFACES, "eth0,averyveryverylongname"),
            (EXCLUDE_INTERFACES, "eth0,"),
            (EXCLUDE_INTERFACES, "a/b"),
            (MERGE_METRICS, "yes"),
        ];
        for (k, v) in bad {
            let got = check(&[(k, v)]);
            assert_eq!(got.len(), 1, "{k}={v}: {got:?}");
            assert!(
                got[0].starts_with(&format!("invalid value '{v}' for annotation '{k}': ")),
                "{got:?}"
            );
        }
    }

    #[test]
    fn every_bad_annotation_is_reported_in_name_order() {
        let got = check(&[
            (MERGE_METRICS, "maybe"),
            (EXCLUDE_INBOUND_PORTS, "x"),
            (INTERCEPTION_MODE, "NONE"),
        ]);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].contains(MERGE_METRICS), "{got:?}");
        assert!(got[1].contains(EXCLUDE_INBOUND_PORTS), "{got:?}");
        let m: Map<String, Value> = [(STATUS_PORT.to_owned(), json!(15020))]
            .into_iter()
            .collect();
        assert_eq!(annotations(&m)[0].what, "not a string");
    }
}
