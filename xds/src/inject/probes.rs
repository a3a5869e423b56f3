//! Istio's app-probe rewriting: the kubelet's httpGet, tcpSocket and grpc
//! probes of the application's containers are pointed at the sidecar's
//! 15020 (`/app-health/CONTAINER/livez|readyz|startupz`), and the original
//! probes go to the sidecar in `ISTIO_KUBE_APP_PROBERS` (Istio's JSON map),
//! so the sidecar runs them from inside the pod: they keep working under a
//! deny-all policy and with mesh mTLS.
//!
//! Same choices as Istio's injector: named ports are resolved against the
//! probed container's ports (a name that resolves nowhere leaves the probe
//! alone); a probe on a port the capture annotations leave uncaptured
//! (`traffic.sidecar.istio.io/includeInboundPorts|excludeInboundPorts`) is
//! left alone, it needs no help; HTTPS probes become HTTP to the sidecar,
//! which speaks HTTPS to the application.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

/// The sidecar's status port, where the kubelet's rewritten probes go.
pub const STATUS_PORT: u16 = 15020;
/// The sidecar's environment variable holding the original probes.
pub const APP_PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";

/// Istio's `status.Prober`: one probe as the sidecar runs it. Field order
/// and omission follow Istio's Go struct, so the JSON is the same bytes.
#[derive(Debug, Serialize)]
struct Prober {
    #[serde(rename = "httpGet", skip_serializing_if = "Option::is_none")]
    http_get: Option<HttpGet>,
    #[serde(rename = "tcpSocket", skip_serializing_if = "Option::is_none")]
    tcp_socket: Option<TcpSocket>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc: Option<Grpc>,
    #[serde(rename = "timeoutSeconds", skip_serializing_if = "is_zero")]
    timeout_seconds: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// Kubernetes' `HTTPGetAction` in its Go field order.
#[derive(Debug, Serialize)]
struct HttpGet {
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<Value>,
    port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheme: Option<Value>,
    #[serde(rename = "httpHeaders", skip_serializing_if = "Option::is_none")]
    http_headers: Option<Value>,
}

/// Kubernetes' `TCPSocketAction` in its Go field order.
#[derive(Debug, Serialize)]
struct TcpSocket {
    port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<Value>,
}

/// Kubernetes' `GRPCAction` (`service` has no omitempty in Go).
#[derive(Debug, Serialize)]
struct Grpc {
    port: u16,
    service: Value,
}

/// Which inbound ports the sidecar captures, from the pod's annotations, as
/// Istio's injector reads them for probe rewriting.
#[derive(Debug, Default)]
pub struct Captured {
    /// `includeInboundPorts` as a list (None: `*` or unset).
    only: Option<Vec<u16>>,
    /// `excludeInboundPorts`.
    except: Vec<u16>,
}

fn port_list(v: &str) -> Vec<u16> {
    v.split(',').filter_map(|p| p.trim().parse().ok()).collect()
}

impl Captured {
    /// From the pod's annotations.
    pub fn from_annotations(annotations: &serde_json::Map<String, Value>) -> Self {
        let get = |k: &str| annotations.get(k).and_then(Value::as_str).unwrap_or("");
        let include = get("traffic.sidecar.istio.io/includeInboundPorts").trim();
        let only = (!include.is_empty() && include != "*").then(|| port_list(include));
        Captured {
            only,
            except: port_list(get("traffic.sidecar.istio.io/excludeInboundPorts")),
        }
    }

    fn captures(&self, port: u16) -> bool {
        match &self.only {
            Some(only) => only.contains(&port),
            None => !self.except.contains(&port),
        }
    }
}

/// The numeric port of a probe's `port` (a number, a name of one of
/// `container`'s ports, or a number as a string).
fn resolve_port(port: &Value, container: &Value) -> Option<u16> {
    match port {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(name) => container
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
            .and_then(|p| p.get("containerPort")?.as_u64())
            .and_then(|n| u16::try_from(n).ok())
            .or_else(|| name.parse().ok()),
        _ => None,
    }
}

/// The sidecar's copy of `probe` and the probe the kubelet gets instead,
/// or None when the probe stays as it is.
fn rewrite(
    probe: &Value,
    container: &Value,
    url: &str,
    captured: &Captured,
) -> Option<(Prober, Value)> {
    let timeout_seconds = probe
        .get("timeoutSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let opt = |v: &Value, k: &str| v.get(k).filter(|x| !x.is_null()).cloned();
    let (prober, port) = if let Some(h) = probe.get("httpGet").filter(|h| h.is_object()) {
        let port = resolve_port(h.get("port")?, container)?;
        let prober = Prober {
            http_get: Some(HttpGet {
                path: opt(h, "path"),
                port,
                host: opt(h, "host"),
                scheme: opt(h, "scheme"),
                http_headers: opt(h, "httpHeaders"),
            }),
            tcp_socket: None,
            grpc: None,
            timeout_seconds,
        };
        (prober, port)
    } else if let Some(t) = probe.get("tcpSocket").filter(|t| t.is_object()) {
        let port = resolve_port(t.get("port")?, container)?;
        let prober = Prober {
            http_get: None,
            tcp_socket: Some(TcpSocket {
                port,
                host: opt(t, "host"),
            }),
            grpc: None,
            timeout_seconds,
        };
        (prober, port)
    } else if let Some(g) = probe.get("grpc").filter(|g| g.is_object()) {
        let port = g
            .get("port")?
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())?;
        let prober = Prober {
            http_get: None,
            tcp_socket: None,
            grpc: Some(Grpc {
                port,
                service: g.get("service").cloned().unwrap_or(Value::Null),
            }),
            timeout_seconds,
        };
        (prober, port)
    } else {
        // exec probes run inside the container: nothing to forward.
        return None;
    };
    if !captured.captures(port) {
        return None;
    }
    let mut kubelet = probe.clone();
    let obj = kubelet.as_object_mut()?;
    let mut http = match obj.remove("httpGet") {
        Some(Value::Object(h)) => h,
        _ => serde_json::Map::new(),
    };
    obj.remove("tcpSocket");
    obj.remove("grpc");
    http.insert("path".into(), json!(url));
    http.insert("port".into(), json!(STATUS_PORT));
    if http.get("scheme").and_then(Value::as_str) == Some("HTTPS") {
        // kubelet → HTTP → sidecar → HTTPS → application.
        http.insert("scheme".into(), json!("HTTP"));
    }
    obj.insert("httpGet".into(), Value::Object(http));
    Some((prober, kubelet))
}

/// Rewrites the probes of `containers` (the application's, not the
/// sidecar) in place; returns the `ISTIO_KUBE_APP_PROBERS` value, None
/// when no probe was taken over.
pub fn rewrite_all(containers: &mut [&mut Value], captured: &Captured) -> Option<String> {
    let mut probers: BTreeMap<String, Prober> = BTreeMap::new();
    for c in containers.iter_mut() {
        let Some(name) = c.get("name").and_then(Value::as_str).map(str::to_owned) else {
            continue;
        };
        for (field, what) in [
            ("readinessProbe", "readyz"),
            ("livenessProbe", "livez"),
            ("startupProbe", "startupz"),
        ] {
            let Some(probe) = c.get(field).filter(|p| p.is_object()) else {
                continue;
            };
            let url = format!("/app-health/{name}/{what}");
            if let Some((prober, kubelet)) = rewrite(probe, c, &url, captured) {
                probers.insert(url, prober);
                c[field] = kubelet;
            }
        }
    }
    (!probers.is_empty()).then(|| serde_json::to_string(&probers).expect("probers serialize"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_tcp_and_grpc_probes_go_to_the_status_port() {
        let mut c = json!({
            "name": "web",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http", "scheme": "HTTPS"}, "timeoutSeconds": 2},
            "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 5},
            "startupProbe": {"grpc": {"port": 9090, "service": ""}},
        });
        let mut e = json!({"name": "exec", "livenessProbe": {"exec": {"command": ["true"]}}});
        let before_exec = e.clone();
        let env = rewrite_all(&mut [&mut c, &mut e], &Captured::default()).unwrap();
        assert_eq!(
            env,
            r#"{"/app-health/web/livez":{"tcpSocket":{"port":8080}},"/app-health/web/readyz":{"httpGet":{"path":"/ready","port":8080,"scheme":"HTTPS"},"timeoutSeconds":2},"/app-health/web/startupz":{"grpc":{"port":9090,"service":""}}}"#
        );
        assert_eq!(
            c["readinessProbe"],
            json!({"httpGet": {"path": "/app-health/web/readyz", "port": 15020, "scheme": "HTTP"}, "timeoutSeconds": 2})
        );
        assert_eq!(
            c["livenessProbe"],
            json!({"httpGet": {"path": "/app-health/web/livez", "port": 15020}, "periodSeconds": 5})
        );
        assert_eq!(
            c["startupProbe"],
            json!({"httpGet": {"path": "/app-health/web/startupz", "port": 15020}})
        );
        assert_eq!(e, before_exec, "exec probes stay");
    }

    #[test]
    fn uncaptured_ports_and_unknown_names_are_left_alone() {
        let probe = json!({"httpGet": {"path": "/", "port": 8081}});
        let mut c = json!({"name": "a", "readinessProbe": probe, "livenessProbe": {"httpGet": {"port": "nope"}}});
        let ann = json!({"traffic.sidecar.istio.io/excludeInboundPorts": "8081"});
        let captured = Captured::from_annotations(ann.as_object().unwrap());
        assert_eq!(rewrite_all(&mut [&mut c], &captured), None);
        assert_eq!(c["readinessProbe"], probe);
        let ann = json!({"traffic.sidecar.istio.io/includeInboundPorts": "9000"});
        let captured = Captured::from_annotations(ann.as_object().unwrap());
        assert_eq!(rewrite_all(&mut [&mut c], &captured), None);
        let ann = json!({"traffic.sidecar.istio.io/includeInboundPorts": "*"});
        let captured = Captured::from_annotations(ann.as_object().unwrap());
        assert!(rewrite_all(&mut [&mut c], &captured).is_some());
    }
}
