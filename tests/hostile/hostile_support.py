"""Shared helpers of the hostile tests (fixtures in conftest.py) (issue 11): hostile values, a real server on loopback (in a
thread, or `netslate serve` as a process when its memory is measured), raw HTTP, rendered scripts.

Every loop here is bounded in count and time; every address is loopback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from netslate.context import Context
from nstest import free_port

# The values every name and text field is tried with. NUL cannot travel in argv: CLI runs skip it.
HOSTILE: dict[str, str] = {
    "lf": "x\n",
    "cr": "x\r",
    "nul": "x\0",
    "crlf-inject": "quiet\r\nchain http://127.0.0.1:9/evil.ipxe",
    "lf-inject": "quiet\nchain http://127.0.0.1:9/evil.ipxe",
    "dollar": "${x}",
    "shebang": "#!ipxe",
    "long": "x" * 10_000,
}
KNOWN_MAC = "52:54:00:aa:00:01"


def api_client(srv, token: str | None = "admin") -> httpx.Client:
    headers = {}
    if token == "admin":
        headers["Authorization"] = f"Bearer {srv.admin_token}"
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(base_url=srv.url, headers=headers, timeout=30)


def rendered_scripts(srv) -> dict[str, str]:
    """Everything netslate renders for firmware, as text: the chain script, the known machine's
    iPXE script, an unknown machine's, and the pxelinux files (the unauthenticated JSON route)."""
    out: dict[str, str] = {}
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        for key, path in (("chain", "/boot.ipxe"), ("known", f"/boot/ipxe?mac={KNOWN_MAC}&platform=pcbios&arch=x86_64"),
                          ("pxelinux", "/api/v1/boot/pxelinux")):
            r = c.get(path)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
            out[key] = r.text
    return out


def raw_http(url: str, request: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send bytes as they are (no client-side checks) to the server of `url`; (status, whole answer)."""
    hostport = url.split("://", 1)[1].rstrip("/")
    host, port = hostport.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(data) < 1 << 20:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data and _complete(data):
                break
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            fields[k] = int(v.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


@contextlib.contextmanager
def serve_process(data_dir: Path, extra: tuple[str, ...] = ()):
    """`netslate serve` as its own process on loopback; yields (url, Popen, admin token)."""
    port = free_port()
    env = dict(os.environ, NETSLATE_DATA_DIR=str(data_dir), NETSLATE_DESKTOPS_RECONCILE="0")
    env.pop("NETSLATE_SERVER", None)
    env.pop("NETSLATE_TOKEN", None)
    log = open(Path(data_dir).parent / f"serve-{port}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "netslate", "serve", "--listen", f"127.0.0.1:{port}", "--log-level", "warning", *extra],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (Path(data_dir).parent / f"serve-{port}.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "netslate serve did not answer within 60 s"
            time.sleep(0.2)
        from netslate.server.auth import ensure_admin_token

        token = Path(ensure_admin_token(Context(data_dir))[0]).read_text().strip()  # serve made it
        yield url, proc, token
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()
