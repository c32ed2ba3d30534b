"""A tiny container for node agent tests: an HTTP server on $POD_IP that shows what the
process sees (env, files at their mountPaths, hostname) and lets a test break its liveness.

Usage: python echo_pod.py PORT
"""

from __future__ import annotations

import json
import os
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

ALIVE = {"ok": True}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query)
        code, body = 200, b"ok"
        if url.path == "/healthz":
            code = 200 if ALIVE["ok"] else 500
        elif url.path == "/env":
            body = json.dumps(dict(os.environ)).encode()
        elif url.path == "/hostname":
            body = socket.gethostname().encode()
        elif url.path == "/file":
            try:
                with open(query["path"][0], "rb") as handle:
                    body = handle.read()
            except OSError as exc:
                code, body = 404, str(exc).encode()
        elif url.path == "/break":
            ALIVE["ok"] = False
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"echo-pod {format % args}\n")


def main() -> None:
    server = ThreadingHTTPServer((os.environ["POD_IP"], int(sys.argv[1])), Handler)
    print(f"echo-pod listening on {os.environ['POD_IP']}:{sys.argv[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
