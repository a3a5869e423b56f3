#!/usr/bin/env python3
"""The mesh benchmark's gRPC app (bench/mesh.py), on gRPC's own implementation (grpcio,
the C core with Python handlers; PyPI `grpcio`):

  serve PORT COUNT_FILE   the server app: every unary method answers OK with a 1 KiB
                          message (protobuf field 1, bytes); how many calls it answered
                          goes to COUNT_FILE every 50 ms, so the driver can tell that the
                          answers oha counted came from the app and not from a sidecar's
                          denial (which is HTTP 200 with grpc-status 7)
  call TARGET METHOD      one unary call as a gRPC client: prints the status code name
                          (OK, PERMISSION_DENIED, ...) and exits 0 when the call was made
  request FILE            writes the framed request body oha sends (5-byte gRPC prefix,
                          then the 1 KiB message)

Methods are paths as gRPC names them, `/bench.Echo/Unary`. No protobuf stubs: the message
is built by hand (one length-delimited field), which is what protoc would emit for
`message Payload { bytes body = 1; }`."""

import asyncio
import os
import struct
import sys

PAYLOAD = b"0123456789abcdef" * 64  # 1 KiB, as the HTTP rows' bodies
# message Payload { bytes body = 1; }: tag 0x0a, varint length 1024 (0x80 0x08), bytes.
MESSAGE = b"\x0a\x80\x08" + PAYLOAD


def request_frame():
    """A gRPC length-prefixed message: not compressed, big-endian length, the message."""
    return struct.pack(">BI", 0, len(MESSAGE)) + MESSAGE


async def serve(port, count_file):
    import grpc

    answered = 0

    async def unary(request, _context):
        nonlocal answered
        answered += 1
        return MESSAGE

    class AnyMethod(grpc.GenericRpcHandler):
        # Every method name is served: the rule, not the app, decides which calls get through.
        def service(self, _details):
            return grpc.unary_unary_rpc_method_handler(unary)

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((AnyMethod(),))
    if server.add_insecure_port(f"0.0.0.0:{port}") != port:
        sys.exit(f"mesh_grpc_app: cannot listen on port {port}")
    await server.start()
    tmp = count_file + ".tmp"
    while True:
        with open(tmp, "w") as f:
            f.write(str(answered))
        os.replace(tmp, count_file)
        await asyncio.sleep(0.05)


def call(target, method):
    import grpc

    with grpc.insecure_channel(target) as ch:
        stub = ch.unary_unary(method)
        try:
            reply = stub(MESSAGE, timeout=5)
        except grpc.RpcError as e:
            print(e.code().name)
            return
        if reply != MESSAGE:
            sys.exit(f"mesh_grpc_app: {method} answered {len(reply)} bytes, not the 1 KiB message")
        print("OK")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        asyncio.run(serve(int(sys.argv[2]), sys.argv[3]))
    elif len(sys.argv) == 4 and sys.argv[1] == "call":
        call(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "request":
        with open(sys.argv[2], "wb") as f:
            f.write(request_frame())
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
