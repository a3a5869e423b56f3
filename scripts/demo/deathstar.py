"""The deathstar's API for the demo: answers as the Star Wars scenario's service does."""
import http.server
import sys


class Deathstar(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, code, body):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path == "/v1/request-landing":
            self._answer(200, "Ship landed\n")
        else:
            self._answer(404, "Not found\n")

    def do_PUT(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path == "/v1/exhaust-port":
            self._answer(503, "Panic: deathstar exploded\n")
        else:
            self._answer(404, "Not found\n")

    def do_GET(self):
        self._answer(200, "Deathstar: alive\n")

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Deathstar).serve_forever()
