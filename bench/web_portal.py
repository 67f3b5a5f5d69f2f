"""Portal home benchmark: GET /portal for a logged-in end user, on a real server on loopback.

The user (a local account, no role) is entitled to 10 pools of 20 desktops each (200 desktop rows,
written straight into the database: no VM is started; the portal reads rows, not hypervisors)
and holds a desktop in 3 of them. The loop is bounded (--requests, default 300, after 20 warm-up
requests); each request is timed from the client on loopback (an upper bound of the server time),
then the same page in-process through the ASGI app (no socket: the server's own time).
Goal: < 100 ms.

uv run python bench/web_portal.py [--requests 300]
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "desktops"))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
from _common import RESULTS, machine  # noqa: E402
from desktops_fixtures import URI, ensure_libvirtd, traversable  # noqa: E402

from netslate.context import Context  # noqa: E402
from netslate.desktops import golden, hosts, pools, tinyguest  # noqa: E402
from netslate.desktops.models import Desktop, DesktopPool  # noqa: E402
from netslate.identity import entitlements, users  # noqa: E402
from nstest import start_server  # noqa: E402

POOLS, PER_POOL, HELD = 10, 20, 3


def world(work: Path) -> Context:
    traversable(work)
    ctx = Context(work / "data").init()
    hosts.add_host(ctx, "local", URI, "bench", accel="tcg")
    disk = tinyguest.build_golden(work / "golden.qcow2", "v1")
    golden.import_disk(ctx, "tiny", disk, "bench")
    users.add_user(ctx, "pia", "portal-bench-pass", None, "bench")
    states = ["ready", "assigned", "in_use", "logged_off", "resetting"]
    for i in range(POOLS):
        name = f"lab-{i:02d}"
        pools.create_pool(ctx, name, "tiny", PER_POOL, 0, PER_POOL, 1, 128, "spice", 0, False, "none", "floating",
                          f"10.90.{i}.1-10.90.{i}.250", "*", "bench", allow_reset=True)
        entitlements.add_entitlement(ctx, "user", "pia", "pool", name, actor="bench")
        with ctx.db.session() as s:
            p = s.query(DesktopPool).filter_by(name=name).one()
            for n in range(1, PER_POOL + 1):
                st = states[n % len(states)]
                user = "pia" if (i < HELD and n == 1) else (f"u{i}-{n}" if st in ("assigned", "in_use", "logged_off") else None)
                st = "in_use" if user == "pia" else st
                s.add(Desktop(name=f"ns-bench-{name}-{n}", pool_id=p.id, pool_name=name, number=n, host="local",
                              uuid=str(uuid.uuid4()), mac=f"52:54:00:{i:02x}:{n // 256:02x}:{n % 256:02x}", state=st,
                              user=user, golden_version=1, disk=f"/nonexistent/{name}-{n}.qcow2"))
    return ctx


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    ensure_libvirtd()
    with tempfile.TemporaryDirectory(prefix="netslate-bench-portal-") as tmp:
        ctx = world(Path(tmp))
        srv = start_server(ctx, {"desktops_console_port": 1, "desktops_spice_proxy_port": 0,
                                 "desktops_spice_proxy_listen": "127.0.0.1"})
        server_times: list[float] = []

        try:
            with httpx.Client(base_url=srv.url, timeout=30, follow_redirects=False) as web:
                r = web.post("/login", data={"username": "pia", "password": "portal-bench-pass", "next": "/portal"})
                assert r.status_code == 303, r.text
                page = web.get("/portal")
                assert page.status_code == 200 and page.text.count('class="card pool-card"') == POOLS, page.text[:500]
                for _ in range(20):
                    web.get("/portal")
                server_times.clear()
                client = []
                for _ in range(args.requests):
                    t = time.perf_counter()
                    r = web.get("/portal")
                    client.append(time.perf_counter() - t)
                    assert r.status_code == 200
                # the same page in-process (ASGI, no socket): the server's own time
                from fastapi.testclient import TestClient

                inproc = TestClient(srv.app, base_url=srv.url)
                inproc.cookies.set("netslate_session", web.cookies["netslate_session"])
                for _ in range(args.requests):
                    t = time.perf_counter()
                    r = inproc.get("/portal")
                    server_times.append(time.perf_counter() - t)
                    assert r.status_code == 200
        finally:
            srv.stop()

    def summary(xs):
        xs = sorted(xs)
        return {"median_ms": round(statistics.median(xs) * 1000, 2), "p95_ms": round(xs[int(len(xs) * 0.95) - 1] * 1000, 2),
                "max_ms": round(xs[-1] * 1000, 2), "n": len(xs)}

    out = {"benchmark": "web_portal", "pools": POOLS, "desktops": POOLS * PER_POOL, "held": HELD,
           "client_on_loopback": summary(client), "server_in_process": summary(server_times),
           "goal_ms": 100, "machine": machine()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "web_portal.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
