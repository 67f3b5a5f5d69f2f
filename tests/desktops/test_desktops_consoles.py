"""Console tickets through libvirt on a real QEMU: a .vv file, permissions, and expiry enforced by QEMU."""

import configparser
import time

import httpx

from desktops_fixtures import vnc_auth
from netslate.desktops import allocation, pools
from netslate.desktops.actuator import Actuator
from netslate.server.auth import create_token


def test_vv_file_permissions_and_ticket_expiry(dctx):
    from nstest import start_server

    live_server = start_server(dctx, {"desktops_spice_proxy_port": 0, "desktops_spice_proxy_listen": "127.0.0.1"})
    try:
        _vv_file_permissions_and_ticket_expiry(dctx, live_server)
    finally:
        live_server.stop()


def _vv_file_permissions_and_ticket_expiry(dctx, live_server):
    pools.create_pool(dctx, "p", "tiny", 1, 0, 2, 1, 128, "spice", 3, True, "none", "floating", "10.77.2.1-10.77.2.9",
                      "*", "test")
    Actuator(dctx).reconcile("p", wait=True)
    d = allocation.request_desktop(dctx, "p", "carol")
    carol = create_token(dctx, "carol", "viewer")
    mallory = create_token(dctx, "mallory", "operator")
    url = f"{live_server.url}/api/v1/desktops/{d['id']}/console.vv"

    r = httpx.get(url, headers={"Authorization": f"Bearer {carol}"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-virt-viewer")
    cp = configparser.ConfigParser(interpolation=None)
    cp.read_string(r.text)
    vv = cp["virt-viewer"]
    # through netslate's SPICE proxy: a ticket-scoped name, never the hypervisor's address (test_spice_proxy.py)
    proxy_port = live_server.app.state.parts.spice_proxy.port
    assert vv["type"] == "spice" and vv["host"].endswith(".invalid") and int(vv["port"]) > 0
    assert vv["proxy"] == f"http://127.0.0.1:{proxy_port}"
    assert vv["delete-this-file"] == "1" and vv["enable-usbredir"] == "1" and vv["enable-smartcard"] == "1"
    assert d["name"] in vv["title"] and len(vv["password"]) >= 16

    # someone else's token, no token, and a non-admin asking for the out-of-band VNC: refused
    assert httpx.get(url, headers={"Authorization": f"Bearer {mallory}"}).status_code == 403
    assert httpx.get(url).status_code == 401
    r = httpx.get(url + "?type=vnc", headers={"Authorization": f"Bearer {carol}"})
    assert r.status_code == 400 and "admin" in r.json()["detail"]

    # admin out-of-band VNC ticket: works now, refused by QEMU once it has expired
    admin = {"Authorization": f"Bearer {live_server.admin_token}"}
    t = httpx.post(f"{live_server.url}/api/v1/desktops/{d['id']}/ticket", json={"type": "vnc", "ttl": 4}, headers=admin).json()
    assert t["type"] == "vnc" and t["ttl"] == 4
    assert vnc_auth(t["host"], t["port"], t["password"]) is True
    assert vnc_auth(t["host"], t["port"], "wrong!!!") is False
    time.sleep(6)
    assert vnc_auth(t["host"], t["port"], t["password"]) is False  # expired ticket refused

    # a fresh ticket replaces the old password; the old (stolen) one stays refused
    t2 = httpx.post(f"{live_server.url}/api/v1/desktops/{d['id']}/ticket", json={"type": "vnc", "ttl": 60}, headers=admin).json()
    assert vnc_auth(t2["host"], t2["port"], t2["password"]) is True
    assert vnc_auth(t2["host"], t2["port"], t["password"]) is False


def _ws_rfb_auth(url_ws: str, password: str) -> bool:
    """RFB VNC authentication through the websocket relay (websockify's own client)."""
    from websockify.websocket import WebSocket

    from desktops_fixtures import _des_key
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    try:
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    except ImportError:
        from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES

    class QueryWebSocket(WebSocket):
        # websockify's client drops the query string (?token=...); a browser sends it
        def send_request(self, method, path):
            super().send_request(method, path + "?" + url_ws.split("?", 1)[1])

    ws = QueryWebSocket()
    ws.connect(url_ws, protocols=["binary"])
    ws.socket.settimeout(30)
    buf = b""

    def need(n):
        nonlocal buf
        while len(buf) < n:
            chunk = ws.recv()
            if chunk is None:
                raise ConnectionError("relay closed")
            buf += chunk
        out, buf = buf[:n], buf[n:]
        return out

    try:
        assert need(12).startswith(b"RFB ")
        ws.send(b"RFB 003.008\n")
        n = need(1)[0]
        assert 2 in need(n)
        ws.send(b"\x02")
        enc = Cipher(TripleDES(_des_key(password) * 3), modes.ECB()).encryptor()
        ws.send(enc.update(need(16)) + enc.finalize())
        return need(4) == b"\0\0\0\0"
    finally:
        try:
            ws.socket.close()
        except Exception:
            pass


def test_browser_console_relay_single_use_token(dctx):
    import socket

    from nstest import free_port, start_server

    port = free_port()
    srv = start_server(dctx, {"desktops_console_port": port, "desktops_console_listen": "127.0.0.1"})
    try:
        pools.create_pool(dctx, "vp", "tiny", 1, 0, 1, 1, 128, "vnc", 0, False, "none", "floating",
                          "10.77.7.1-10.77.7.9", "*", "test")
        Actuator(dctx).reconcile("vp", wait=True)
        d = allocation.request_desktop(dctx, "vp", "hana")
        hana = create_token(dctx, "hana", "viewer")
        other = create_token(dctx, "ivan", "viewer")
        api = f"{srv.url}/api/v1/desktops/{d['id']}/browser-console"
        assert httpx.post(api, json={}, headers={"Authorization": f"Bearer {other}"}).status_code == 403
        r = httpx.post(api, json={"ttl": 60}, headers={"Authorization": f"Bearer {hana}"})
        assert r.status_code == 200, r.text
        c = r.json()
        assert "vnc_lite.html" in c["url"] and "#&password=" in c["url"] and c["token"] in c["url"]
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "relay did not start"
                time.sleep(0.2)
        page = httpx.get(f"http://127.0.0.1:{port}/vnc_lite.html")
        assert page.status_code == 200 and "noVNC" in page.text
        ws_url = f"ws://127.0.0.1:{port}/websockify?token={c['token']}"
        assert _ws_rfb_auth(ws_url, c["password"]) is True  # relayed to the desktop's VNC and authenticated
        try:  # the token is single-use
            ok = _ws_rfb_auth(ws_url, c["password"])
        except Exception:
            ok = False
        assert ok is False
        try:
            bad = _ws_rfb_auth(f"ws://127.0.0.1:{port}/websockify?token=forged", c["password"])
        except Exception:
            bad = False
        assert bad is False
    finally:
        srv.stop()
