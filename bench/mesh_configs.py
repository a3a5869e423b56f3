"""The mesh benchmark's configurations (bench/mesh.py): the server app (nginx), the L7 rule
as a CiliumNetworkPolicy for membrane and as an Envoy RBAC filter, the Envoy sidecar as
Istio configures one, the capture rules istio-iptables writes, and the do-nothing TCP relay
(nginx's stream module). The rule: POST /v1/request-landing and GET /v1/.* to the server's
port 18080 are allowed, everything else gets 403."""

APP_PORT = 18080
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
    - ports: [{{port: "{APP_PORT}", protocol: TCP}}]
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
    location / {{ return 200 "{BODY}"; }}
  }}
}}
"""


def nginx_relay(tmp, name, listen, upstream):
    """A TCP relay that does nothing but copy bytes (nginx stream, one worker): the floor a
    sidecar costs when it parses nothing."""
    return f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.err;
events {{ worker_connections 4096; }}
stream {{
  server {{
    listen {listen};
    proxy_pass {upstream};
    proxy_timeout 300s;
  }}
}}
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


def envoy_sidecar(admin_port=15000):
    """An Envoy sidecar as istiod configures one for these two pods (static here): the
    virtualOutbound listener on 15001 handing connections by their original destination to
    the `0.0.0.0_18080` HTTP listener (not bound) whose route goes to an original-dst
    cluster; virtualInbound on 15006 with the original_dst listener filter, a filter chain
    for port 18080 with the L7 rule as an RBAC filter, delivering to the pod's address from
    127.0.0.6 (Istio's inbound passthrough source); TCP passthrough for every other port.
    No access log and no telemetry filter (Istio's stats filter is not in Envoy 1.40's
    upstream build), so this Envoy does less than an Istio sidecar."""
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
  - name: 0.0.0.0_{APP_PORT}
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: {APP_PORT} }} }}
    bind_to_port: false
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {_HCM}
          stat_prefix: outbound_0.0.0.0_{APP_PORT}
          route_config:
            name: "{APP_PORT}"
            virtual_hosts:
            - name: allow_any
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: "outbound|{APP_PORT}||backend.default.svc.cluster.local", timeout: 0s }}
          http_filters:
          {_ROUTER}
  - name: virtualInbound
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: {INBOUND} }} }}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst }}
    filter_chains:
    - name: 0.0.0.0_{APP_PORT}
      filter_chain_match: {{ destination_port: {APP_PORT} }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {_HCM}
          stat_prefix: inbound_0.0.0.0_{APP_PORT}
          route_config:
            name: "inbound|{APP_PORT}||"
            virtual_hosts:
            - name: inbound|http|{APP_PORT}
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: "inbound|{APP_PORT}||", timeout: 0s }}
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  ns[default]-policy[mesh-bench]-rule[0]:
                    permissions:
                    - and_rules:
                        rules:
                        - header: {{ name: ":method", string_match: {{ exact: "POST" }} }}
                        - url_path: {{ path: {{ exact: "/v1/request-landing" }} }}
                    - and_rules:
                        rules:
                        - header: {{ name: ":method", string_match: {{ exact: "GET" }} }}
                        - url_path: {{ path: {{ safe_regex: {{ regex: "/v1/.*" }} }} }}
                    principals: [{{ any: true }}]
          {_ROUTER}
    - name: InboundPassthroughFilterChain
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: InboundPassthroughCluster
          cluster: InboundPassthroughCluster
  clusters:
  - name: PassthroughCluster
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 10s
  - name: "outbound|{APP_PORT}||backend.default.svc.cluster.local"
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 10s
  - name: "inbound|{APP_PORT}||"
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 10s
    upstream_bind_config: {{ source_address: {{ address: 127.0.0.6, port_value: 0 }} }}
  - name: InboundPassthroughCluster
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 10s
    upstream_bind_config: {{ source_address: {{ address: 127.0.0.6, port_value: 0 }} }}
"""
