"""Agent test helpers: a small fleet world, a hostile HTTP server, a server on a fixed port."""

import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from netslate.agent.runner import Agent, Options
from netslate.boot import store as bstore
from netslate.config import generations, workingcopy
from nstest import LiveServer

MAC = "52:54:00:aa:bb:01"
DOC = {
    "hostname": "{{ machine.name }}-host",
    "users": [{"name": "alice", "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests alice@lab"]}],
    "files": [{"path": "/etc/motd", "content": "welcome\n", "mode": "0644"},
              {"path": "/etc/netslate-test/facts.txt", "template": "cpus={{ facts.cpu.count | default('?') }}\n"}],
    "sysctl": {"vm.swappiness": 10},
    "health_checks": [],
}


def publish(ctx, doc: dict, message: str = "test") -> int:
    workingcopy.put_node(ctx, "/", doc, "test")
    return generations.publish(ctx, message, "test")["generation"]


def make_root(tmp_path: Path, name: str = "root") -> Path:
    root = tmp_path / name
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nusers:x:100:\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "usr/lib/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd/system/ssh.service").write_text("[Unit]\nDescription=ssh\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n")
    return root


def agent_for(root: Path, url: str | list[str] | None, key: str | None, machine: str = "m1", timeout: float = 3.0, **kw) -> Agent:
    urls = [url] if isinstance(url, str) else list(url or [])
    return Agent(Options(root=root, servers=urls, key=key, machine=machine, timeout=timeout,
                         lkg_dir="/netslate/lkg", live=False, **kw))


def serve_on(ctx, port: int) -> LiveServer:
    """A real server on a given loopback port (to bring 'the same' server back after an outage)."""
    from netslate.server.app import create_app
    from netslate.server.auth import ensure_admin_token

    token_path, _ = ensure_admin_token(ctx)
    app = create_app(ctx, {})
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 15
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    return LiveServer(f"http://127.0.0.1:{port}", ctx, Path(token_path).read_text().strip(), app, server, thread)


class Hostile:
    """A tiny raw-socket HTTP server that misbehaves on purpose.

    mode: garbage (200 + random bytes), hang (headers, half a body, then silence), trickle (one byte
    per 0.5 s forever), replay (serves `self.body` verbatim as JSON — e.g. an old signed bundle).
    /api/v1/locate answers with `locate` (a signed answer recorded from the real server, as a man
    in the middle would replay it) so that an agent pinning the key picks this server.
    """

    def __init__(self, mode: str, body: bytes = b"", locate: bytes = b'{"servers": [], "ttl": 60}'):
        self.mode = mode
        self.body = body
        self.locate = locate
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop_event = threading.Event()
        self.requests: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stop_event.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        try:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                piece = conn.recv(4096)
                if not piece:
                    return
                data += piece
            line = data.split(b"\r\n", 1)[0].decode(errors="replace")
            self.requests.append(line)
            path = line.split(" ")[1] if " " in line else "/"
            if path.startswith("/api/v1/locate") or path.startswith("/api/v1/fleet/identify"):
                body = self.locate if "locate" in path else b'{"id": 1, "name": "m1"}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                return
            if "/report" in path:
                conn.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}")
                return
            if self.mode == "garbage":
                import os
                junk = os.urandom(3000)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(junk) + junk)
            elif self.mode == "hang":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"payload\": {")
                self.stop_event.wait(30)
            elif self.mode == "trickle":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                for _ in range(60):
                    if self.stop_event.wait(0.5):
                        break
                    conn.sendall(b" ")
            elif self.mode == "replay":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: \"old\"\r\nContent-Length: %d\r\n\r\n" % len(self.body) + self.body)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.stop_event.set()
        self.sock.close()
        self.thread.join(timeout=5)
