"""The SPICE CONNECT proxy: only live console tickets get through, and `.vv` files name no hypervisor.

Two tests: the proxy alone against a real local TCP server standing in for a hypervisor's SPICE
port (pure proxy rules: methods, ports, names, expiry, retirement), and the whole path on a real
TCG desktop: the server's `.vv` → CONNECT through the proxy → QEMU's SPICE server accepts the
ticket's password (SPICE link + RSA ticket), refused without or with an expired ticket.
"""

import configparser
import socket
import struct
import threading
import time

import httpx
from sqlalchemy import update

from netslate.desktops import allocation, pools, spiceproxy
from netslate.desktops.actuator import Actuator
from netslate.desktops.models import DesktopHost
from netslate.server.auth import create_token
from nstest import start_server


def _connect(proxy_port: int, request: bytes, timeout: float = 10.0) -> tuple[bytes, socket.socket]:
    """Send a request head to the proxy; (status line + headers, the open socket)."""
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
    s.sendall(request)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            break
        head += chunk
    return head, s


def _status(proxy_port: int, request: bytes) -> int:
    head, s = _connect(proxy_port, request)
    try:
        code = int(head.split(b" ")[1]) if head else 0
        if code != 200:  # refused: the proxy closes the connection
            s.settimeout(5)
            assert s.recv(1) == b""
        return code
    finally:
        s.close()


def test_proxy_rules_against_a_local_port(tmp_path):
    # a real TCP server standing in for a hypervisor's SPICE port: echoes what it gets
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(8)
    up_port = upstream.getsockname()[1]

    def serve():
        while True:
            try:
                c, _ = upstream.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=c: [c.sendall(d) for d in iter(lambda: c.recv(4096), b"")], daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    proxy = spiceproxy.SpiceProxy(tmp_path, "127.0.0.1", 0)
    proxy.start()
    try:
        name = spiceproxy.issue_name(tmp_path, "ns-x-lab-1", "127.0.0.1", up_port, ttl=60)
        assert spiceproxy.NAME_RE.match(name) and "127.0.0.1" not in name

        head, s = _connect(proxy.port, f"CONNECT {name}:{up_port} HTTP/1.0\r\nHost: {name}\r\n\r\n".encode())
        assert head.startswith(b"HTTP/1.1 200"), head
        s.sendall(b"REDQ hello through the proxy")
        got = b""
        while len(got) < 28:
            got += s.recv(100)
        assert got == b"REDQ hello through the proxy"
        s.close()

        # a second channel of the same session (remote-viewer opens several): allowed while the ticket lives
        assert _status(proxy.port, f"CONNECT {name.upper()}:{up_port} HTTP/1.1\r\n\r\n".encode()) == 200

        refused = [
            f"CONNECT {name}:{up_port + 1} HTTP/1.1\r\n\r\n",                 # not the console port
            f"CONNECT 127.0.0.1:{up_port} HTTP/1.1\r\n\r\n",                  # the real address: no ticket
            f"CONNECT ns-x-lab-1:{up_port} HTTP/1.1\r\n\r\n",                 # a desktop's name: no ticket
            f"CONNECT spice-{'0' * 32}.invalid:{up_port} HTTP/1.1\r\n\r\n",   # a forged name
            f"GET http://{name}:{up_port}/ HTTP/1.1\r\n\r\n",                 # not CONNECT
            f"CONNECT {name}:{up_port}\r\n\r\n",                              # malformed
            "\x16\x03\x01 not http at all\r\n\r\n",
        ]
        for req in refused:
            assert _status(proxy.port, req.encode()) == 403, req

        # a new ticket for the same desktop retires the earlier name (as QEMU retires the password)
        newer = spiceproxy.issue_name(tmp_path, "ns-x-lab-1", "127.0.0.1", up_port, ttl=60)
        assert _status(proxy.port, f"CONNECT {name}:{up_port} HTTP/1.1\r\n\r\n".encode()) == 403
        assert _status(proxy.port, f"CONNECT {newer}:{up_port} HTTP/1.1\r\n\r\n".encode()) == 200

        # expiry
        short = spiceproxy.issue_name(tmp_path, "ns-x-lab-2", "127.0.0.1", up_port, ttl=1)
        assert _status(proxy.port, f"CONNECT {short}:{up_port} HTTP/1.1\r\n\r\n".encode()) == 200
        time.sleep(1.5)
        assert _status(proxy.port, f"CONNECT {short}:{up_port} HTTP/1.1\r\n\r\n".encode()) == 403

        h = proxy.health()
        assert h["ok"] and h["refused"] >= len(refused) + 2 and h["allowed"] >= 4
    finally:
        proxy.stop()
        upstream.close()


# ---- just enough of the SPICE link protocol to present a ticket ----

def spice_ticket_accepted(sock: socket.socket, password: str) -> bool:
    """SPICE main-channel link with the legacy ticket auth: True when the server accepts `password`."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    def read(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    mess = struct.pack("<IBBIII", 0, 1, 0, 0, 0, 18)  # connection 0, main channel, no caps
    sock.sendall(b"REDQ" + struct.pack("<III", 2, 2, len(mess)) + mess)
    magic, major, _minor, size = struct.unpack("<4sIII", read(16))
    assert magic == b"REDQ" and major == 2, (magic, major)
    reply = read(size)
    error = struct.unpack("<I", reply[:4])[0]
    assert error == 0, error
    key = serialization.load_der_public_key(reply[4:4 + 162])
    sock.sendall(key.encrypt(password.encode() + b"\0", padding.OAEP(
        mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)))
    return struct.unpack("<I", read(4))[0] == 0


def test_vv_goes_through_the_proxy_to_a_real_desktop(dctx):
    # the hypervisor's console address differs from the server's, so the check below means something
    with dctx.db.session() as s:
        s.execute(update(DesktopHost).values(console_address="127.0.0.2"))
    pools.create_pool(dctx, "sp", "tiny", 1, 0, 1, 1, 128, "spice", 0, False, "none", "floating", "10.77.9.1-10.77.9.9",
                      "*", "test")
    Actuator(dctx).reconcile("sp", wait=True)
    d = allocation.request_desktop(dctx, "sp", "paula")
    paula = {"Authorization": f"Bearer {create_token(dctx, 'paula', 'viewer')}"}

    # without the proxy, the server will not hand out a SPICE file with the hypervisor in it
    srv = start_server(dctx)
    try:
        r = httpx.get(f"{srv.url}/api/v1/desktops/{d['id']}/console.vv", headers=paula)
        assert r.status_code == 409 and "NETSLATE_SPICE_PROXY_PORT" in r.json()["detail"]
    finally:
        srv.stop()

    srv = start_server(dctx, {"desktops_spice_proxy_port": 0, "desktops_spice_proxy_listen": "127.0.0.1"})
    try:
        port = srv.app.state.parts.spice_proxy.port
        r = httpx.get(f"{srv.url}/api/v1/desktops/{d['id']}/console.vv?ttl=30", headers=paula)
        assert r.status_code == 200, r.text
        assert "127.0.0.2" not in r.text  # the hypervisor's address is nowhere in the file
        cp = configparser.ConfigParser(interpolation=None)
        cp.read_string(r.text)
        vv = cp["virt-viewer"]
        assert vv["proxy"] == f"http://127.0.0.1:{port}" and "?" not in vv["proxy"]
        assert spiceproxy.NAME_RE.match(vv["host"]) and vv["type"] == "spice"

        # remote-viewer's path: CONNECT host:port through the proxy, then the SPICE link with the ticket
        head, s = _connect(port, f"CONNECT {vv['host']}:{vv['port']} HTTP/1.0\r\n\r\n".encode(), timeout=30)
        assert head.startswith(b"HTTP/1.1 200"), head
        try:
            assert spice_ticket_accepted(s, vv["password"]) is True
        finally:
            s.close()
        head, s = _connect(port, f"CONNECT {vv['host']}:{vv['port']} HTTP/1.0\r\n\r\n".encode(), timeout=30)
        try:
            assert spice_ticket_accepted(s, "not-the-password") is False
        finally:
            s.close()

        # no ticket: the desktop's real address, its name, or a forged name are refused
        for target in (f"127.0.0.2:{vv['port']}", f"{d['name']}:{vv['port']}", f"spice-{'a' * 32}.invalid:{vv['port']}"):
            assert _status(port, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode()) == 403, target

        # an expired ticket: refused by the proxy
        r = httpx.get(f"{srv.url}/api/v1/desktops/{d['id']}/console.vv?ttl=2", headers=paula)
        cp.read_string(r.text)
        short = cp["virt-viewer"]
        time.sleep(3)
        assert _status(port, f"CONNECT {short['host']}:{short['port']} HTTP/1.1\r\n\r\n".encode()) == 403
        assert srv.app.state.parts.spice_proxy.health()["allowed"] >= 2
    finally:
        srv.stop()
