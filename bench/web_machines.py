"""Benchmark: the dashboard's machines page with 10,000 machines (issue 12 goal: p95 < 300 ms server time).

Builds a data directory with 10,000 machines (MACs, labels, tree paths over 2 sites x 4 clusters x
8 pools, an agent report each: image, version, generation, sources) and 30,000 boot events, starts
`netslate` under uvicorn in its own process on loopback, and times GET requests made with an admin
bearer token in a bounded loop (warm-up first). On loopback the client-side time is the server
time plus a fraction of a millisecond, so the figures are an upper bound of the server time.

    uv run --frozen python bench/web_machines.py [--machines 10000] [--rounds 60]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _common import free_port, record  # noqa: E402

from netslate.boot.models import BootEvent  # noqa: E402
from netslate.context import Context  # noqa: E402
from netslate.identity.tokens import create_token  # noqa: E402
from netslate.store.models import Machine, MachineMac  # noqa: E402

PAGES = {
    "first page (50, by id)": "/machines",
    "filtered: site + label, sorted by name desc": "/machines?site=site-1&label=room%3Dr3&sort=-name",
    "filtered: state + image, sorted by last seen": "/machines?state=configured&image=desk&sort=-last_seen",
    "deep page (offset 9,950)": "/machines?offset=9950",
    "sorted by version, 200 per page": "/machines?sort=-version&limit=200",
    "MAC substring": "/machines?mac=00%3A1f",
    "dashboard home (health + fleet counts + rollouts)": "/",
    "API: machine-search, filtered": "/api/v1/machine-search?site=site-1&label=room%3Dr3&sort=-name",
}


def populate(ctx: Context, n: int) -> None:
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    with ctx.db.session() as s:
        for i in range(n):
            fleet = {"received_at": stamp, "phase": "configured", "image": "desk" if i % 5 else "lab", "version": 3 + i % 4,
                     "image_source": "cache" if i % 97 == 0 else "server", "config_source": "cache" if i % 89 == 0 else "server",
                     "generation": 7 - (i % 3 == 0), "modules": {"users": "ok"}, "health": {"ok": True, "checks": []}}
            m = Machine(name=f"pc{i:05d}", hostname=f"pc{i:05d}.lab", labels={"room": f"r{i % 8}", "row": str(i % 20)},
                        tree_path=f"/site-{i % 2}/cluster-{i % 4}/pool-{i % 8}/lab", state="configured", approved=True,
                        first_seen=now, last_seen=now - dt.timedelta(seconds=i), status={"fleet": fleet})
            m.macs = [MachineMac(mac="52:54:%02x:%02x:%02x:%02x" % (i >> 24 & 255, i >> 16 & 255, i >> 8 & 255, i & 255))]
            s.add(m)
        s.flush()
        ids = [r[0] for r in s.execute(Machine.__table__.select().with_only_columns(Machine.id))]
        s.execute(BootEvent.__table__.insert(), [{"at": now - dt.timedelta(minutes=k), "machine_id": mid, "kind": "image",
                                                   "image": "desk", "version": 3, "pinned": False, "detail": ""}
                                                  for mid in ids for k in range(3)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--machines", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=60)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="netslate-bench-web-"))
    ctx = Context(work / "data").init()
    t0 = time.perf_counter()
    populate(ctx, args.machines)
    setup_s = time.perf_counter() - t0
    token = create_token(ctx, "bench", "admin")
    port = free_port()
    env = {**os.environ, "NETSLATE_SERVE_SETTINGS": json.dumps({"data_dir": str(ctx.data_dir), "database_url": None,
                                                               "options": {"listen": ["127.0.0.1", port]}})}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "netslate.server.app:app_from_environment",
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"], env=env)
    base = f"http://127.0.0.1:{port}"
    results = {}
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            deadline = time.time() + 60
            while True:
                try:
                    if client.get("/healthz").status_code in (200, 503):
                        break
                except httpx.TransportError:
                    pass
                if time.time() > deadline:
                    raise SystemExit("server did not start")
                time.sleep(0.2)
            for label, path in PAGES.items():
                for _ in range(3):  # warm-up
                    client.get(path).raise_for_status()
                times = []
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    r = client.get(path)
                    times.append((time.perf_counter() - t) * 1000)
                    r.raise_for_status()
                times.sort()
                results[label] = {"path": path, "n": len(times), "p50_ms": round(statistics.median(times), 1),
                                  "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1), "max_ms": round(times[-1], 1),
                                  "bytes": len(r.content)}
                print(f"{label:55s} p50 {results[label]['p50_ms']:7.1f} ms  p95 {results[label]['p95_ms']:7.1f} ms", flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
    worst = max(v["p95_ms"] for k, v in results.items() if k.startswith(("first", "filtered", "deep", "sorted", "MAC")))
    record("web_machines", {"machines": args.machines, "boot_events": args.machines * 3, "rounds": args.rounds,
                            "setup_seconds": round(setup_s, 1), "pages": results, "machines_page_worst_p95_ms": worst,
                            "goal_p95_ms": 300, "met": worst < 300})


if __name__ == "__main__":
    main()
