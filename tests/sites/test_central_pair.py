"""Issue 15 §4: at central, two netslate servers run over the one PostgreSQL primary (in the lab's
central namespace). Both register and are listed alive, a write through one is read through the
other at once, and when one is killed the other keeps serving boot scripts and writes."""

import signal
import time

import httpx

from netslate.context import Context
from netslate.sites.lab import CENTRAL_ADDR, NsWorker, SitesLab


PORTS = {"central1": 8080, "central2": 8081}
MAC = "52:54:00:15:01:01"


def _get(url: str, token: str | None = None, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(url, headers=headers, timeout=10, **kw)


def _post(url: str, token: str, body: dict) -> httpx.Response:
    return httpx.post(url, headers={"Authorization": f"Bearer {token}"}, json=body, timeout=10)


def _until(what: str, probe, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def _setup(ctx: Context) -> None:
    from netslate.discovery import store as sites

    ctx.init()  # migrations run here, on the primary
    sites.add_site(ctx, "central", actor="local:test")


def test_two_central_servers_over_one_primary(tmp_path):
    lab = SitesLab().start()
    central = NsWorker(lab.central)
    procs = {}
    try:
        central.call(_setup, Context(tmp_path / "setup", lab.primary_url_central))
        for name, port in PORTS.items():
            data = tmp_path / name
            procs[name] = lab.netslate(lab.central, "serve", "--listen", f"{CENTRAL_ADDR}:{port}", "--data-dir", str(data),
                                       "--database-url", lab.primary_url_central, "--site", "central",
                                       "--advertise", CENTRAL_ADDR, "--server-name", name, "--static", "off",
                                       log=tmp_path / f"{name}.log")
        urls = {name: f"http://{CENTRAL_ADDR}:{port}" for name, port in PORTS.items()}

        def healthy(url):
            try:
                return _get(f"{url}/healthz").status_code == 200
            except httpx.HTTPError:
                return False
        for name, url in urls.items():
            try:
                central.call(_until, f"{name} /healthz", lambda u=url: healthy(u) or procs[name].poll() is not None, 120, timeout=150)
                assert procs[name].poll() is None
            except AssertionError:
                raise AssertionError((tmp_path / f"{name}.log").read_text()[-3000:]) from None
        tokens = {name: (tmp_path / name / "admin.token").read_text().strip() for name in PORTS}
        assert len(set(tokens.values())) == 2  # each server its own admin token, neither revoked

        # both registered, alive, writable (no replica state: they sit on the primary)
        def both_listed():
            rows = central.call(lambda: _get(f"{urls['central2']}/api/v1/servers").json())
            alive = {r["name"]: r for r in rows if r["alive"]}
            return alive if set(PORTS) <= set(alive) else None
        alive = _until("both servers registered", both_listed, 60)
        assert all(alive[n]["read_only"] in (None, False) and alive[n]["site"] == "central" for n in PORTS), alive

        # a write through one is read through the other at once
        r = central.call(_post, f"{urls['central1']}/api/v1/machines", tokens["central1"], {"macs": [MAC], "name": "pair1"})
        assert r.status_code == 201, r.text
        seen = central.call(lambda: _get(f"{urls['central2']}/api/v1/machines", tokens["central2"]).json())
        assert [m["name"] for m in seen if MAC in m.get("macs", [])] == ["pair1"]

        # one dies: the other keeps serving boot scripts and writes
        procs["central1"].send_signal(signal.SIGKILL)
        procs["central1"].wait(30)
        assert not central.call(healthy, urls["central1"])
        script = central.call(lambda: _get(f"{urls['central2']}/boot/ipxe", params={"mac": MAC}))
        assert script.status_code == 200 and script.text.startswith("#!ipxe"), script.text[:300]
        r = central.call(_post, f"{urls['central2']}/api/v1/machines", tokens["central2"], {"macs": ["52:54:00:15:01:02"], "name": "pair2"})
        assert r.status_code == 201, r.text
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except Exception:
                    p.kill()
        central.close()
        lab.stop()
