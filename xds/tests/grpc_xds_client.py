"""A Python gRPC xDS peer for membrane-xds (driven by tests/grpc_python.rs).

Usage: grpc_xds_client.py XDS_HOST:PORT SOURCE_DIR

1. Starts a gRPC server (the "echo" workload) on 127.0.0.1, and writes its
   Pod and Service into SOURCE_DIR, the control plane's watched directory.
2. As a raw ADS client (xds-protos stubs), fetches and ACKs the Listener named
   after the xds:/// target, the Cluster it routes to, and its endpoints.
3. As a real proxyless gRPC client (grpcio's xds resolver), calls the echo
   service through `xds:///echo.default.svc.cluster.local:80`.
Prints one `ok ...` line per check; exits non-zero on the first failure.
"""

import json
import os
import queue
import sys
import tempfile
import time
from concurrent import futures

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

TARGET = "echo.default.svc.cluster.local:80"
CLUSTER = "outbound|80||echo.default.svc.cluster.local"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
NODE = "membrane-test-grpc-client"
DEADLINE = time.monotonic() + 40


def fail(msg):
    print("FAIL", msg, flush=True)
    sys.exit(1)


class Echo(grpc.GenericRpcHandler):
    def service(self, details):
        if details.method != "/membrane.test.Echo/Ping":
            return None
        return grpc.unary_unary_rpc_method_handler(
            lambda req, ctx: b"pong:" + req,
            request_deserializer=None,
            response_serializer=None,
        )


def start_backend(src_dir):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((Echo(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    manifest = f"""apiVersion: v1
kind: Pod
metadata: {{name: echo-1, namespace: default, labels: {{app: echo}}}}
spec: {{containers: [{{name: echo, ports: [{{containerPort: {port}, name: grpc}}]}}]}}
status: {{podIP: 127.0.0.1}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: default}}
spec: {{selector: {{app: echo}}, ports: [{{name: grpc, port: 80, targetPort: grpc}}]}}
"""
    tmp = os.path.join(src_dir, ".echo.yaml.tmp")
    with open(tmp, "w") as f:
        f.write(manifest)
    os.rename(tmp, os.path.join(src_dir, "echo.yaml"))
    return server, port


class Ads:
    """One ADS stream; requests go through a queue, responses are read in order."""

    def __init__(self, addr):
        self.channel = grpc.insecure_channel(addr)
        self.requests = queue.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.responses = stub.StreamAggregatedResources(iter(self.requests.get, None))
        self.first = True

    def send(self, type_url, names, version="", nonce=""):
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=names, version_info=version, response_nonce=nonce
        )
        if self.first:
            req.node.CopyFrom(base_pb2.Node(id=NODE))
            self.first = False
        self.requests.put(req)

    def fetch(self, type_url, names, msg_type):
        """Subscribe to names; ACK responses until all names arrived; return them."""
        self.send(type_url, names)
        while time.monotonic() < DEADLINE:
            resp = next(self.responses)
            if resp.type_url != type_url:
                fail(f"unexpected type {resp.type_url}")
            got = {}
            for any_ in resp.resources:
                m = msg_type()
                any_.Unpack(m)
                got[getattr(m, "name", "") or getattr(m, "cluster_name", "")] = m
            self.send(type_url, names, resp.version_info, resp.nonce)  # ACK
            if all(n in got for n in names):
                return got, resp.version_info
        fail(f"timed out fetching {names}")

    def close(self):
        """Half-close, then wait for the server to end the stream: it has then
        processed every request we sent (the last ACK included)."""
        self.requests.put(None)
        for _ in self.responses:
            pass
        self.channel.close()


def main():
    xds_addr, src_dir = sys.argv[1], sys.argv[2]
    server, port = start_backend(src_dir)

    ads = Ads(xds_addr)
    listeners, _ = ads.fetch(LDS, [TARGET], listener_pb2.Listener)
    hcm = hcm_pb2.HttpConnectionManager()
    listeners[TARGET].api_listener.api_listener.Unpack(hcm)
    route = hcm.route_config.virtual_hosts[0].routes[0].route.cluster
    if route != CLUSTER:
        fail(f"listener routes to {route!r}")
    print("ok listener", TARGET, "->", route, flush=True)

    clusters, _ = ads.fetch(CDS, [CLUSTER], cluster_pb2.Cluster)
    c = clusters[CLUSTER]
    if c.type != cluster_pb2.Cluster.EDS or not c.eds_cluster_config.eds_config.HasField("ads"):
        fail(f"cluster is not EDS over ADS: {c}")
    print("ok cluster", CLUSTER, "type EDS", flush=True)

    clas, _ = ads.fetch(EDS, [CLUSTER], endpoint_pb2.ClusterLoadAssignment)
    loc = clas[CLUSTER].endpoints[0]
    addr = loc.lb_endpoints[0].endpoint.address.socket_address
    if loc.load_balancing_weight.value < 1 or (addr.address, addr.port_value) != ("127.0.0.1", port):
        fail(f"bad endpoints: {clas[CLUSTER]}")
    print("ok endpoints", f"{addr.address}:{addr.port_value}", "weight", loc.load_balancing_weight.value, flush=True)
    ads.close()

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(
            {
                "xds_servers": [
                    {
                        "server_uri": xds_addr,
                        "channel_creds": [{"type": "insecure"}],
                        "server_features": ["xds_v3"],
                    }
                ],
                "node": {"id": NODE + "-channel"},
            },
            f,
        )
    os.environ["GRPC_XDS_BOOTSTRAP"] = f.name
    with grpc.insecure_channel(f"xds:///{TARGET}") as ch:
        ping = ch.unary_unary("/membrane.test.Echo/Ping")
        reply = ping(b"hi", timeout=max(1.0, DEADLINE - time.monotonic()), wait_for_ready=True)
    if reply != b"pong:hi":
        fail(f"reply {reply!r}")
    print("ok xds:/// call answered", reply.decode(), flush=True)
    server.stop(0)


if __name__ == "__main__":
    main()
