"""Benchmark: the agent's boot pass and the server side of fleet status.

    uv run python bench/agent_fleet.py [--machines 2000] [--reports 2000] [--passes 20]

Prints one JSON object:
- boot_pass_ms: one agent boot pass (locate, identify, booting report, fetch + verify, apply into a
  temp root, save last-known-good, final report) against a real server on loopback — first pass
  (everything written) and the median of later passes (nothing changes);
- reports_per_s: heartbeat reports ingested over HTTP by one server process (8 client threads);
  a fleet of N machines heartbeating every 60 s needs N/60 per second;
- fleet_status_ms / metrics_ms: `GET /api/v1/fleet` and a `/metrics` scrape with all machines.
"""

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import record  # noqa: E402
from nstest import start_server  # noqa: E402

from netslate.agent.runner import Agent, Options  # noqa: E402
from netslate import inventory  # noqa: E402
from netslate.config import generations, workingcopy  # noqa: E402
from netslate.context import Context  # noqa: E402
from netslate.store.models import Machine  # noqa: E402

DOC = {
    "hostname": "{{ machine.name }}",
    "users": [{"name": "alice", "ssh_keys": ["ssh-ed25519 AAAA alice"]}],
    "files": [{"path": f"/etc/netslate-bench/f{i}", "content": f"file {i}\n"} for i in range(20)],
    "sysctl": {"vm.swappiness": 10}, "units": {"mask": ["bluetooth.service"]},
    "network": {"mode": "dhcp"}, "dns": {"servers": ["10.0.0.53"]},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--machines", type=int, default=2000)
    ap.add_argument("--reports", type=int, default=2000)
    ap.add_argument("--passes", type=int, default=20)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="netslate-bench-agent-"))
    ctx = Context(tmp / "data").init()
    inventory.add_machine(ctx, ["52:54:00:00:00:01"], name="m1")
    with ctx.db.session() as s:
        s.execute(insert(Machine), [{"name": f"b{i}", "labels": {}, "status": {}, "tree_path": "/", "state": "approved",
                                     "approved": True} for i in range(a.machines - 1)])
    workingcopy.put_node(ctx, "/", DOC, "bench")
    generations.publish(ctx, "bench", "bench")
    srv = start_server(ctx)
    try:
        root = tmp / "root"
        (root / "etc").mkdir(parents=True)
        for f, text in (("passwd", "root:x:0:0::/root:/bin/sh\n"), ("group", "root:x:0:\n"), ("shadow", "root:*::::::::\n")):
            (root / "etc" / f).write_text(text)
        times = []
        for _ in range(a.passes):
            ag = Agent(Options(root=root, servers=[srv.url], key=ctx.signing_key.public_b64, machine="m1",
                               lkg_dir="/netslate/lkg", live=False))
            t0 = time.perf_counter()
            out = ag.run_once().report
            times.append((time.perf_counter() - t0) * 1000)
            assert out["config_source"] == "server", out["problems"]
        body = {"phase": "heartbeat", "generation": 1, "config_source": "server", "image": "desk", "version": 1,
                "image_source": "server", "modules": {"files": "ok"}, "health": {"ok": True, "checks": []}}
        ids = list(range(1, a.machines + 1))
        client = httpx.Client(timeout=30)

        def post(i: int) -> int:
            return client.post(f"{srv.url}/api/v1/machines/{ids[i % len(ids)]}/report", json=dict(body, sent_at=time.time())).status_code

        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(post, range(a.reports)))
        rep_s = a.reports / (time.perf_counter() - t0)
        assert all(c == 202 for c in codes), set(codes)
        t0 = time.perf_counter()
        fleet = client.get(f"{srv.url}/api/v1/fleet").json()
        fleet_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        metrics = client.get(f"{srv.url}/metrics").text
        metrics_ms = (time.perf_counter() - t0) * 1000
        assert fleet["summary"]["machines"] == a.machines and "netslate_machines" in metrics
    finally:
        srv.stop()
    result = {
        "machines": a.machines,
        "boot_pass_ms": {"first": round(times[0], 1), "median_unchanged": round(statistics.median(times[1:]), 1),
                         "passes": a.passes},
        "reports_per_s": round(rep_s, 1),
        "heartbeat_fleet_supported_at_60s": int(rep_s * 60),
        "fleet_status_ms": round(fleet_ms, 1),
        "metrics_ms": round(metrics_ms, 1),
    }
    record("agent_fleet", result)


if __name__ == "__main__":
    main()
