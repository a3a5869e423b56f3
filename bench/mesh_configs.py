"""The mesh benchmark's configurations (bench/mesh.py): the server app (nginx), the L7 rule
as a CiliumNetworkPolicy for membrane and as an Envoy RBAC filter, the Envoy sidecar as
Istio configures one, the capture rules istio-iptables writes, and the do-nothing TCP relay
(nginx's stream module). The rule: POST /v1/request-landing and GET /v1/.* to the server's
ports 18080 (HTTP/1.1) and 18082 (h2c) are allowed, everything else gets 403."""

APP_PORT = 18080
# The app's h2c port (prior knowledge), and the relay's pair of ports in front of it.
H2C_PORT = 18082
RELAY_H2C_OUT, RELAY_H2C_IN = 15011, 15016
# Per protocol: the port its requests dial (before capture), oha's flags, the request
# (method, path, 1 KiB body or none). h2c asks GET without a body: with a request body on
# h2c, nginx's `return` answered and then reset the stream (curl: error 92), which would
# count as failures that are nginx's, not the mesh's.
PROTOS = {"h1": (APP_PORT, [], "POST", "/v1/request-landing", True),
          "h2c": (H2C_PORT, ["--http2"], "GET", "/v1/x", False)}
OUTBOUND = 15001
INBOUND = 15006
PROXY_UID = 1337

# Istio's benchmark shape: 1 KiB request bodies, answered with 1 KiB.
BODY = ("0123456789abcdef" * 64)[:1024]

CNP = f"""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: mesh-bench, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: backend}}}}
  ingress:
  - fromEntities: [all]
    toPorts:
    - ports: [{{port: "{APP_PORT}", protocol: TCP}}, {{port: "{H2C_PORT}", protocol: TCP}}]
      rules:
        http:
        - {{method: POST, path: /v1/request-landing}}
        - {{method: GET, path: /v1/.*}}
"""


def nginx_app(tmp, name):
    """The server app: 1 KiB answers on 0.0.0.0:18080, keep-alive connections never closed
    by a request count (nginx's default closes after 1,000, which would make every row
    reconnect at its own pace)."""
    return f"""worker_processes 1;
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.err;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_buffer_size 16k;
  server {{
    listen 0.0.0.0:{APP_PORT} reuseport;
    listen 0.0.0.0:{H2C_PORT} http2;
    location / {{ return 200 "{BODY}"; }}
  }}
}}
"""


def nginx_relay(tmp, name, pairs):
    """A TCP relay that does nothing but copy bytes (nginx stream, one worker), one server
    per (listen, upstream) pair: the floor a sidecar costs when it parses nothing."""
    servers = "".join(f"""  server {{
    listen {listen};
    proxy_pass {upstream};
    proxy_timeout 300s;
  }}
""" for listen, upstream in pairs)
    return f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.err;
events {{ worker_connections 4096; }}
stream {{
{servers}}}
"""


# The nat rules istio-iptables (Istio 1.2x, `istio-iptables -p 15001 -z 15006 -u 1337 -m
# REDIRECT -i '*' -b '*'`) writes into a pod: inbound TCP to 15006 but Istio's own ports,
# outbound to 15001 but the sidecar's (uid/gid 1337) and loopback; 127.0.0.6 is the
# sidecar's source for inbound delivery.
ISTIO_IPTABLES = [
    "-N ISTIO_INBOUND", "-N ISTIO_REDIRECT", "-N ISTIO_IN_REDIRECT", "-N ISTIO_OUTPUT",
    "-A PREROUTING -p tcp -j ISTIO_INBOUND",
    "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
    "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN",
    "-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN",
    "-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN",
    "-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN",
    "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
    f"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {INBOUND}",
    "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
    f"-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner {PROXY_UID} -j ISTIO_IN_REDIRECT",
    f"-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner {PROXY_UID} -j RETURN",
    f"-A ISTIO_OUTPUT -m owner --uid-owner {PROXY_UID} -j RETURN",
    f"-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --gid-owner {PROXY_UID} -j ISTIO_IN_REDIRECT",
    f"-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner {PROXY_UID} -j RETURN",
    f"-A ISTIO_OUTPUT -m owner --gid-owner {PROXY_UID} -j RETURN",
    "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
    "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
    f"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {OUTBOUND}",
]

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = """- name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}"""
_RBAC = """- name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  ns[default]-policy[mesh-bench]-rule[0]:
                    permissions:
                    - and_rules:
                        rules:
                        - header: { name: ":method", string_match: { exact: "POST" } }
                        - url_path: { path: { exact: "/v1/request-landing" } }
                    - and_rules:
                        rules:
                        - header: { name: ":method", string_match: { exact: "GET" } }
                        - url_path: { path: { safe_regex: { regex: "/v1/.*" } } }
                    principals: [{ any: true }]"""
# Istio gives a port whose protocol is HTTP/2 an upstream speaking HTTP/2.
_H2_UPSTREAM = """
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }"""


def _hcm(stat, cluster, filters):
    return f"""- name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {_HCM}
          stat_prefix: {stat}
          codec_type: AUTO
          route_config:
            name: "{cluster}"
            virtual_hosts:
            - name: "{cluster}"
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: "{cluster}", timeout: 0s }}
          http_filters:
          {filters}"""


def _cluster(name, h2, inbound):
    bind = "\n    upstream_bind_config: { source_address: { address: 127.0.0.6, port_value: 0 } }" if inbound else ""
    return f"""  - name: "{name}"
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 10s{bind}{_H2_UPSTREAM if h2 else ""}
"""


def envoy_sidecar(admin_port=15000):
    """An Envoy sidecar as istiod configures one for these two pods (static here): the
    virtualOutbound listener on 15001 handing connections by their original destination to
    the `0.0.0.0_PORT` HTTP listeners (not bound) whose routes go to original-dst clusters;
    virtualInbound on 15006 with the original_dst listener filter, a filter chain per port
    with the L7 rule as an RBAC filter, delivering to the pod's address from 127.0.0.6
    (Istio's inbound passthrough source); TCP passthrough for every other port. The h2c
    port's clusters speak HTTP/2 upstream, as Istio's do for an HTTP/2 port. No access log
    and no telemetry filter (Istio's stats filter is not in upstream Envoy), so this Envoy
    does less than an Istio sidecar."""
    ports = [(APP_PORT, False), (H2C_PORT, True)]
    outbound = "".join(f"""  - name: 0.0.0.0_{port}
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: {port} }} }}
    bind_to_port: false
    filter_chains:
    - filters:
      {_hcm(f"outbound_0.0.0.0_{port}", f"outbound|{port}||backend.default.svc.cluster.local", _ROUTER)}
""" for port, _ in ports)
    inbound = "".join(f"""    - name: 0.0.0.0_{port}
      filter_chain_match: {{ destination_port: {port} }}
      filters:
      {_hcm(f"inbound_0.0.0.0_{port}", f"inbound|{port}||", _RBAC + chr(10) + "          " + _ROUTER)}
""" for port, _ in ports)
    clusters = "".join(_cluster(f"outbound|{port}||backend.default.svc.cluster.local", h2, False)
                       + _cluster(f"inbound|{port}||", h2, True) for port, h2 in ports)
    return f"""admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }}
static_resources:
  listeners:
  - name: virtualOutbound
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: {OUTBOUND} }} }}
    use_original_dst: true
    filter_chains:
    - name: PassthroughFilterChain
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: PassthroughCluster
          cluster: PassthroughCluster
{outbound}  - name: virtualInbound
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: {INBOUND} }} }}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst }}
    filter_chains:
{inbound}    - name: InboundPassthroughFilterChain
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: InboundPassthroughCluster
          cluster: InboundPassthroughCluster
  clusters:
{_cluster("PassthroughCluster", False, False)}{_cluster("InboundPassthroughCluster", False, True)}{clusters}"""
