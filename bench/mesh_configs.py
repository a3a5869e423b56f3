"""The mesh benchmark's configurations (bench/mesh.py): the server app (nginx), the L7 rule
as a CiliumNetworkPolicy for membrane and as an Envoy RBAC filter, the Envoy sidecar as
Istio configures one, the capture rules istio-iptables writes, and the do-nothing TCP relay
(nginx's stream module). The rule: POST /v1/request-landing and GET /v1/.* to the server's
ports 18080 (HTTP/1.1) and 18082 (h2c) are allowed, and the gRPC method /bench.Echo/Unary
(POST) to 18084; everything else is denied (403; gRPC: status 7, PERMISSION_DENIED)."""

import os

APP_PORT = 18080
# The app's h2c port (prior knowledge), and the relay's pair of ports in front of it.
H2C_PORT = 18082
RELAY_H2C_OUT, RELAY_H2C_IN = 15011, 15016
# The gRPC app's port (bench/mesh_grpc_app.py, h2c), and the relay's pair in front of it.
GRPC_PORT = 18084
RELAY_GRPC_OUT, RELAY_GRPC_IN = 15012, 15017
GRPC_METHOD = "/bench.Echo/Unary"
GRPC_DENIED = "/bench.Echo/Forbidden"
# Per protocol: the port its requests dial (before capture), oha's flags, the request
# (method, path, body: "1k" a 1 KiB body, "grpc" the framed 1 KiB gRPC message, None
# none). h2c asks GET without a body: with a request body on h2c, nginx's `return`
# answered and then reset the stream (curl: error 92), which would count as failures that
# are nginx's, not the mesh's.
PROTOS = {"h1": (APP_PORT, [], "POST", "/v1/request-landing", "1k"),
          "h2c": (H2C_PORT, ["--http2"], "GET", "/v1/x", None),
          "grpc": (GRPC_PORT, ["--http2"], "POST", GRPC_METHOD, "grpc")}
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
    - ports: [{{port: "{GRPC_PORT}", protocol: TCP}}]
      rules:
        http:
        - {{method: POST, path: '{GRPC_METHOD.replace(".", chr(92) + ".")}'}}
"""


TRUST_DOMAIN = "cluster.local"
SPIFFE = {"client": f"spiffe://{TRUST_DOMAIN}/ns/default/sa/client",
          "server": f"spiffe://{TRUST_DOMAIN}/ns/default/sa/backend"}


def make_certs(tmp):
    """Istio's file-mounted workload certificates for both pods (P-256, the SPIFFE id as URI
    SAN, chained to one mesh root), in TMP/certs-ROLE/{cert-chain,key,root-cert}.pem,
    readable by the sidecars' uid."""
    import subprocess

    def ossl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    root = os.path.join(tmp, "mesh-root")
    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", f"{root}.key", "-out", f"{root}.pem", "-days", "2", "-subj", "/O=cluster.local")
    for role, spiffe in SPIFFE.items():
        d = os.path.join(tmp, f"certs-{role}")
        os.makedirs(d)
        ext = os.path.join(d, "ext.cnf")
        with open(ext, "w") as f:
            f.write(f"subjectAltName=URI:{spiffe}\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                    "extendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=critical,CA:FALSE\n")
        ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{d}/key.pem", "-out", f"{d}/req.csr", "-subj", "/O=cluster.local")
        ossl("x509", "-req", "-in", f"{d}/req.csr", "-CA", f"{root}.pem", "-CAkey", f"{root}.key",
             "-CAcreateserial", "-out", f"{d}/cert-chain.pem", "-days", "2", "-extfile", ext)
        with open(f"{root}.pem") as src, open(f"{d}/root-cert.pem", "w") as dst:
            dst.write(src.read())
        os.chmod(d, 0o755)
        for f in ("cert-chain.pem", "key.pem", "root-cert.pem"):
            os.chmod(os.path.join(d, f), 0o644)


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

def _rbac(permissions):
    """Envoy's RBAC filter allowing `permissions` (an and_rules per allowed request), as
    istiod writes an AuthorizationPolicy's rule."""
    perms = "".join(f"""
                    - and_rules:
                        rules:
                        - header: {{ name: ":method", string_match: {{ exact: "{method}" }} }}
                        - url_path: {{ path: {{ {match} }} }}""" for method, match in permissions)
    return f"""- name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  ns[default]-policy[mesh-bench]-rule[0]:
                    permissions:{perms}
                    principals: [{{ any: true }}]"""


# The CNP's rule per port, for Envoy.
_RBAC_HTTP = _rbac([("POST", 'exact: "/v1/request-landing"'), ("GET", 'safe_regex: { regex: "/v1/.*" }')])
_RBAC = {APP_PORT: _RBAC_HTTP, H2C_PORT: _RBAC_HTTP, GRPC_PORT: _rbac([("POST", f'exact: "{GRPC_METHOD}"')])}
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


def _tls_context(certs, alpn, san, indent):
    """`common_tls_context` at `indent` spaces: the workload certificate, ALPN, and the
    mesh root with the peer's SPIFFE id to match."""
    text = f"""common_tls_context:
  alpn_protocols: [{", ".join(f'"{a}"' for a in alpn)}]
  tls_certificates:
  - certificate_chain: {{ filename: {certs}/cert-chain.pem }}
    private_key: {{ filename: {certs}/key.pem }}
  validation_context:
    trusted_ca: {{ filename: {certs}/root-cert.pem }}
    match_typed_subject_alt_names: [{{ san_type: URI, matcher: {san} }}]"""
    return text.replace("\n", "\n" + " " * indent)


def _cluster(name, h2, inbound, port=None, certs=None):
    """An original-dst cluster; with `certs`, Istio's mTLS to the server sidecar (its SNI,
    its ALPN override, the backend's SPIFFE id required)."""
    bind = "\n    upstream_bind_config: { source_address: { address: 127.0.0.6, port_value: 0 } }" if inbound else ""
    tls = ""
    if certs:
        alpn = ["istio-h2", "istio", "h2"] if h2 else ["istio-http/1.1", "istio", "http/1.1"]
        tls = f"""
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: outbound_.{port}_._.backend.default.svc.cluster.local
        {_tls_context(certs, alpn, '{ exact: "' + SPIFFE["server"] + '" }', 8)}"""
    return f"""  - name: "{name}"
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 10s{bind}{_H2_UPSTREAM if h2 else ""}{tls}
"""


def envoy_sidecar(admin_port=15000, certs=None):
    """An Envoy sidecar as istiod configures one for these two pods (static here): the
    virtualOutbound listener on 15001 handing connections by their original destination to
    the `0.0.0.0_PORT` HTTP listeners (not bound) whose routes go to original-dst clusters;
    virtualInbound on 15006 with the original_dst listener filter, a filter chain per port
    with the L7 rule as an RBAC filter, delivering to the pod's address from 127.0.0.6
    (Istio's inbound passthrough source); TCP passthrough for every other port. The h2c
    port's clusters speak HTTP/2 upstream, as Istio's do for an HTTP/2 port. With `certs`
    (a directory in Istio's layout) the sidecars speak Istio's mTLS, STRICT: the inbound
    port chains take only TLS with a client certificate from the mesh root. No access log
    and no telemetry filter (Istio's stats filter is not in upstream Envoy), so this Envoy
    does less than an Istio sidecar."""
    ports = [(APP_PORT, False), (H2C_PORT, True), (GRPC_PORT, True)]
    outbound = "".join(f"""  - name: 0.0.0.0_{port}
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: {port} }} }}
    bind_to_port: false
    filter_chains:
    - filters:
      {_hcm(f"outbound_0.0.0.0_{port}", f"outbound|{port}||backend.default.svc.cluster.local", _ROUTER)}
""" for port, _ in ports)
    match = ', transport_protocol: "tls"' if certs else ""
    downstream_tls = "" if not certs else f"""
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          {_tls_context(certs, ["h2", "http/1.1"], '{ prefix: "spiffe://' + TRUST_DOMAIN + '/" }', 10)}"""
    inbound = "".join(f"""    - name: 0.0.0.0_{port}
      filter_chain_match: {{ destination_port: {port}{match} }}{downstream_tls}
      filters:
      {_hcm(f"inbound_0.0.0.0_{port}", f"inbound|{port}||", _RBAC[port] + chr(10) + "          " + _ROUTER)}
""" for port, _ in ports)
    clusters = "".join(_cluster(f"outbound|{port}||backend.default.svc.cluster.local", h2, False, port, certs)
                       + _cluster(f"inbound|{port}||", h2, True) for port, h2 in ports)
    # STRICT: no plaintext way into the pod's ports (Istio's passthrough chain is for ports
    # without a sidecar listener, and under STRICT it takes TLS only too).
    passthrough = "" if certs else """    - name: InboundPassthroughFilterChain
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: InboundPassthroughCluster
          cluster: InboundPassthroughCluster
"""
    tls_inspector = "" if not certs else """
    - name: envoy.filters.listener.tls_inspector
      typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }"""
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
      typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst }}{tls_inspector}
    filter_chains:
{inbound}{passthrough}  clusters:
{_cluster("PassthroughCluster", False, False)}{_cluster("InboundPassthroughCluster", False, True)}{clusters}"""
