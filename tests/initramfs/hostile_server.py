"""A hostile image server for the initramfs tests: proxies a real netslate server, but breaks chunks.

    python hostile_server.py HOST PORT UPSTREAM MODE      MODE: tamper | hang | garbage | pass

tamper: every image-data answer (a chunk, or a Range of an artifact) has one byte flipped (same
        length, so only the hash can tell).
hang:   every image-data answer sends its headers and half its body, then stalls for 10 minutes.
garbage: every answer's body is replaced by random bytes of the same length (status kept).
pass:   nothing is changed; the log (one line per request) lets a test count chunk requests.
Everything else (manifests, keys) is passed through unchanged.
"""

import os
import re
import sys
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST, PORT, UPSTREAM, MODE = sys.argv[1], int(sys.argv[2]), sys.argv[3].rstrip("/"), sys.argv[4]
# Image bytes travel as /chunks/ID or as Range requests on /images/NAME/VER/ARTIFACT.
DATA_PATH = re.compile(r"^/chunks/|^/images/[^/]+/[^/]+/(rootfs|kernel|initrd)$")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("hostile: " + (fmt % args) + "\n")
        sys.stderr.flush()

    def do_GET(self):
        req = urllib.request.Request(UPSTREAM + self.path)
        if self.headers.get("Range"):
            req.add_header("Range", self.headers["Range"])
        extra = {}
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, body, ctype = r.status, r.read(), r.headers.get("Content-Type", "application/octet-stream")
                if r.headers.get("Content-Range"):
                    extra["Content-Range"] = r.headers["Content-Range"]
        except urllib.error.HTTPError as e:
            status, body, ctype = e.code, e.read(), "application/json"
        data = DATA_PATH.match(self.path) is not None and status in (200, 206) and len(body) > 0
        if MODE == "garbage":
            body = os.urandom(len(body))
        if data and MODE == "tamper":
            body = body[:-1] + bytes([body[-1] ^ 0x01])
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        if data and MODE == "hang":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            time.sleep(600)
            return
        self.wfile.write(body)


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer((HOST, PORT), Handler).serve_forever()
