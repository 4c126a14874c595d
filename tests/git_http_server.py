"""A tiny git smart-HTTPS server for tests: `git http-backend` (CGI) behind http.server over TLS,
with Basic auth. Usage: GIT_TEST_USER=… GIT_TEST_TOKEN=… git_http_server.py ROOT PORT CERT KEY
(listens on 127.0.0.1 only).

The test starts it inside a box's network namespace (nsenter), so the box's git reaches it on
its own 127.0.0.1 and nothing else can; the token arrives in its environment, not its argv.
"""
from __future__ import annotations

import base64
import http.server
import os
import ssl
import subprocess
import sys

ROOT, PORT = sys.argv[1], int(sys.argv[2])
EXPECTED = "Basic " + base64.b64encode(f"{os.environ['GIT_TEST_USER']}:{os.environ['GIT_TEST_TOKEN']}".encode()).decode()
BACKEND = os.path.join(subprocess.run(["git", "--exec-path"], capture_output=True, text=True).stdout.strip(), "git-http-backend")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.cgi()

    def do_POST(self):
        self.cgi()

    def cgi(self):
        if self.headers.get("Authorization") != EXPECTED:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": ROOT, "GIT_HTTP_EXPORT_ALL": "1", "REMOTE_USER": "tester",
               "REQUEST_METHOD": self.command, "PATH_INFO": path, "QUERY_STRING": query,
               "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
               "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""), "GIT_PROTOCOL": self.headers.get("Git-Protocol", "")}
        out = subprocess.run([BACKEND], input=body, capture_output=True, env=env).stdout
        head, _, rest = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            key, _, value = line.partition(": ")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers.append((key, value))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        self.wfile.write(rest)

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", PORT), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[3], sys.argv[4])
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
