"""A real gRPC peer (grpcio) on both sides of the proxy, for proxy/tests/grpc.rs.

`grpc_peer.py server` serves raw-bytes methods on an ephemeral loopback port, prints
`READY <port>` and serves until its standard input closes. `grpc_peer.py client ADDR`
makes its calls through the proxy at ADDR (h2c, prior knowledge) and prints one JSON
object with what each call got.
"""
import json
import sys
from concurrent import futures

import grpc

# No proxy from the environment: the calls must reach the address given.
OPTIONS = [("grpc.enable_http_proxy", 0)]


def serve():
    def echo(request, context):
        context.set_trailing_metadata((("x-trailer", "seen"),))
        return request

    def stream(request, context):
        for i in range(3):
            yield request + str(i).encode()

    svc = grpc.method_handlers_generic_handler(
        "grpc.test.Svc",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )
    other = grpc.method_handlers_generic_handler(
        "grpc.test.Other", {"Call": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=OPTIONS)
    server.add_generic_rpc_handlers((svc, other))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"READY {port}", flush=True)
    sys.stdin.read()
    server.stop(0)


def error(e):
    return {"code": e.code().name, "details": e.details()}


def client(addr):
    out = {}
    with grpc.insecure_channel(addr, options=OPTIONS) as ch:
        try:
            body, call = ch.unary_unary("/grpc.test.Svc/Echo").with_call(b"hello", timeout=10)
            out["echo"] = {
                "code": call.code().name,
                "body": body.decode(),
                "trailers": dict(call.trailing_metadata() or ()),
            }
        except grpc.RpcError as e:
            out["echo"] = error(e)
        try:
            bodies = ch.unary_stream("/grpc.test.Svc/Stream")(b"s", timeout=10)
            out["stream"] = {"code": "OK", "bodies": [b.decode() for b in bodies]}
        except grpc.RpcError as e:
            out["stream"] = error(e)
        try:
            ch.unary_unary("/grpc.test.Other/Call")(b"x", timeout=10)
            out["denied"] = {"code": "OK"}
        except grpc.RpcError as e:
            out["denied"] = error(e)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["server"]:
        serve()
    elif sys.argv[1:2] == ["client"] and len(sys.argv) == 3:
        client(sys.argv[2])
    else:
        sys.exit("usage: grpc_peer.py server | client ADDR")
