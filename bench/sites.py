"""Branch sites (issue 15): a central PostgreSQL primary, a branch hot standby over a veth "WAN" in
network namespaces (netslate.sites.lab), real `netslate serve` processes. Three figures:

1. replication lag at the branch during a publish storm: N config publishes back to back at
   central; for each, the time from its commit until the standby has replayed it (goal < 1 s);
   also the WAL written per publish (for docs/sites.md's scale on paper);
2. time from link restore to the outbox drained, with 10,000 queued telemetry events (goal < 10 s);
   also the outbox's bytes per event;
3. branch boot-script throughput (`netslate serve` at the branch, reading from the standby) against
   the single-server set-up (`netslate serve` at central on the primary), same machines, same
   rules, `wrk` inside each namespace (goal: within 10 %).

    uv run python bench/sites.py [--publishes 100] [--events 10000] [--machines 2000] [--seconds 10]
                                 [--only storm,outbox,boot]

Records bench/results/sites.json (with the machine) and prints it. Needs root (namespaces), the
PostgreSQL server binaries and wrk (scripts/install-deps.sh).
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from _common import record  # noqa: E402
from boot_scripts import WRK_LUA, mac_of  # noqa: E402

from netslate.context import Context  # noqa: E402
from netslate.sites.lab import BRANCH_ADDR, CENTRAL_ADDR, NsWorker, SitesLab  # noqa: E402


def setup_central(ctx: Context, files: Path, n_machines: int) -> dict:
    from sqlalchemy import insert, select

    from netslate.boot import store
    from netslate.discovery import store as sites
    from netslate.store.models import Machine, MachineMac

    ctx.init()
    sites.add_site(ctx, "branch", actor="local:bench")
    files.mkdir(parents=True, exist_ok=True)
    (files / "k").write_bytes(os.urandom(64 * 1024))
    (files / "i").write_bytes(os.urandom(64 * 1024))
    ctx.library.import_files("desk", kernel=files / "k", initrd=files / "i", tag="stable", warn=lambda m: None)
    store.add_profile(ctx, "desktop", image="desk", ref="stable", args=["quiet"])
    store.add_profile(ctx, "disk", kind="local")
    with ctx.db.session() as s:
        s.execute(insert(Machine.__table__), [
            {"name": f"m{i}", "labels": {"room": f"r{i % 50}"}, "state": "approved", "approved": True,
             "tree_path": "/", "status": {}} for i in range(n_machines)])
        ids = {name: mid for mid, name in s.execute(select(Machine.id, Machine.name))}
        s.execute(insert(MachineMac.__table__), [{"machine_id": ids[f"m{i}"], "mac": mac_of(i)} for i in range(n_machines)])
        store.bump(s)
    for i in range(20):
        store.add_rule(ctx, f"room{i}", {"label": {"room": f"r{i}"}}, "desktop" if i % 3 else "disk", priority=5)
    store.add_rule(ctx, "default", {}, "desktop", priority=0)
    store.activate_rules(ctx)
    return {"machines": n_machines}


def publish_storm(lab: SitesLab, central: NsWorker, ctx: Context, n: int) -> dict:
    """n publishes back to back; per publish: commit → replayed at the standby (sampled every 5 ms)."""
    from netslate.config import generations, workingcopy

    def one(i: int) -> str:
        workingcopy.set_value(ctx, "/", "locale", f"C.UTF-{i}", actor="local:bench")
        generations.publish(ctx, f"storm {i}", actor="local:bench")
        with ctx.db.engine.connect() as conn:
            return conn.exec_driver_sql("SELECT pg_current_wal_lsn()::text").scalar()

    import psycopg

    def standby_conn():
        return psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", autocommit=True)

    branch = NsWorker(lab.branch)
    conn = branch.call(standby_conn)
    start_lsn = central.call(lambda: ctx.db.engine.connect().exec_driver_sql("SELECT pg_current_wal_lsn()::text").scalar())
    lags = []
    try:
        for i in range(n):
            lsn = central.call(one, i)
            t0 = time.monotonic()

            def replayed(lsn=lsn):
                while time.monotonic() - t0 < 30:
                    if conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]:
                        return time.monotonic() - t0
                    time.sleep(0.005)
                return float("inf")
            lags.append(branch.call(replayed))
        end_lsn = lsn
        wal = central.call(lambda: ctx.db.engine.connect().exec_driver_sql(
            f"SELECT pg_wal_lsn_diff('{end_lsn}', '{start_lsn}')").scalar())
    finally:
        branch.call(conn.close)
        branch.close()
    lags.sort()
    return {"publishes": n, "lag_p50_s": round(statistics.median(lags), 4),
            "lag_p99_s": round(lags[min(len(lags) - 1, int(len(lags) * 0.99))], 4), "lag_max_s": round(lags[-1], 4),
            "wal_bytes_per_publish": int(float(wal) / n)}


def outbox_drain(lab: SitesLab, data: Path, n_events: int, machine_ids: list[int]) -> dict:
    """Queue n events at a branch Context while the WAN is cut, restore it, time the drain."""
    import datetime as dt

    from netslate.store import outbox

    branch = NsWorker(lab.branch)

    def prepare():
        ctx = Context(data, lab.primary_url_branch, lab.standby_url_branch).init()
        outbox.load_handlers()
        return ctx

    ctx = branch.call(prepare)
    lab.cut()
    try:
        def queue():
            ctx.db.probe_primary()  # notices the cut (bounded by the connect time-out)
            assert ctx.db.down_since is not None
            now = dt.datetime.utcnow().isoformat()
            events = []
            for i in range(n_events):
                mid = machine_ids[i % len(machine_ids)]
                if i % 2:
                    events.append(("boot.events", {"events": [{"at": now, "machine_id": mid, "mac": mac_of(i % len(machine_ids)),
                                                               "kind": "image", "rule": "default", "profile": "desktop",
                                                               "image": "desk", "version": 1, "pinned": False,
                                                               "remote": BRANCH_ADDR, "detail": "bench"}]}))
                else:
                    events.append(("fleet.report", {"machine_id": mid, "body": {"phase": "heartbeat", "generation": 1},
                                                    "authenticated": False, "remote": BRANCH_ADDR, "at": now}))
            t0 = time.monotonic()
            for k in range(0, len(events), 100):  # 100 per fsync'd append (what a busy branch does in ~0.2 s)
                ctx.outbox.append_many(events[k:k + 100])
            return time.monotonic() - t0, ctx.outbox.status()["bytes"]
        queue_s, size = branch.call(queue)
    finally:
        lab.restore()
    t0 = time.monotonic()

    def drain_all():
        while not ctx.db.probe_primary():
            time.sleep(0.2)
        up = time.monotonic() - t0
        out = {"applied": 0, "duplicates": 0, "refused": 0}
        while ctx.outbox.pending():
            r = outbox.drain(ctx, budget=60)  # what the Replayer runs (its default batch)
            for k in out:
                out[k] += r[k]
        return up, time.monotonic() - t0, out
    up_s, drained_s, counts = branch.call(drain_all)
    branch.close()
    return {"events": n_events, "queue_s": round(queue_s, 2), "outbox_bytes": size,
            "outbox_bytes_per_event": round(size / n_events, 1), "primary_reachable_after_s": round(up_s, 2),
            "restore_to_drained_s": round(drained_s, 2), "events_per_s": round(n_events / max(drained_s - up_s, 1e-6)),
            "batch": inspect.signature(outbox.drain).parameters["batch"].default, **counts}


def wait_http(worker: NsWorker, url: str, timeout: float = 120) -> None:
    def probe():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        return False
    if not worker.call(probe, timeout=timeout + 10):
        raise RuntimeError(f"{url} did not come up")


def wrk(lab: SitesLab, ns: str, url: str, n: int, tmp: Path, seconds: int, connections: int) -> dict:
    import json
    import re
    import subprocess

    lua = tmp / f"wrk-{ns}.lua"
    lua.write_text(WRK_LUA.format(n=n, seed=42, path="/boot/ipxe"))
    out = subprocess.run(lab.ns_cmd(ns, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(lua),
                                         url + "/boot/ipxe"]), capture_output=True, text=True, timeout=seconds + 60)
    m = re.search(r"^RESULT (\{.*\})$", out.stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    r = json.loads(m.group(1))
    return {"requests": r["requests"], "req_per_s": round(r["requests"] / (r["duration_us"] / 1e6), 1),
            "p50_ms": round(r["p50_us"] / 1000, 2), "p99_ms": round(r["p99_us"] / 1000, 2),
            "errors": r["socket_errors"], "non_2xx": r["non2xx"]}


def boot_scripts(lab: SitesLab, central: NsWorker, tmp: Path, args) -> dict:
    """Boot-script throughput: the single server at central (primary on its loopback) against the
    branch server (standby), wrk inside each namespace."""
    env = {"NETSLATE_CENTRAL_CONNECT_TIMEOUT": "2"}
    lab.netslate(lab.central, "serve", "--listen", f"{CENTRAL_ADDR}:8080", "--data-dir", str(tmp / "central"),
                 "--database-url", lab.primary_url_central, "--log-level", "warning", log=tmp / "central.log", env=env)
    lab.netslate(lab.branch, "serve", "--listen", f"{BRANCH_ADDR}:8080", "--data-dir", str(tmp / "branch"),
                 "--db-read", lab.standby_url_branch, "--db-write", lab.primary_url_branch, "--site", "branch",
                 "--server-name", "branch1", "--log-level", "warning", log=tmp / "branch.log", env=env)
    bworker = NsWorker(lab.branch)
    wait_http(central, f"http://{CENTRAL_ADDR}:8080")
    wait_http(bworker, f"http://{BRANCH_ADDR}:8080")
    bworker.close()
    wrk(lab, lab.central, f"http://{CENTRAL_ADDR}:8080", args.machines, tmp, 2, args.connections)  # warm-up
    wrk(lab, lab.branch, f"http://{BRANCH_ADDR}:8080", args.machines, tmp, 2, args.connections)
    # alternate short rounds (single, branch, single, branch, ...): on a shared, loaded machine
    # the load drifts over a run; alternating spreads that drift over both sides alike
    rounds = max(1, args.seconds // 5)
    single_runs, branch_runs = [], []
    for _ in range(rounds):
        single_runs.append(wrk(lab, lab.central, f"http://{CENTRAL_ADDR}:8080", args.machines, tmp, 5, args.connections))
        branch_runs.append(wrk(lab, lab.branch, f"http://{BRANCH_ADDR}:8080", args.machines, tmp, 5, args.connections))

    def total(runs):
        out = {"rounds": len(runs), "requests": sum(r["requests"] for r in runs),
               "req_per_s": round(sum(r["req_per_s"] for r in runs) / len(runs), 1),
               "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 2),
               "p99_ms": max(r["p99_ms"] for r in runs), "errors": sum(r["errors"] for r in runs),
               "non_2xx": sum(r["non_2xx"] for r in runs)}
        return out
    single, branch = total(single_runs), total(branch_runs)
    return {"single_server": single, "branch_on_standby": branch,
            "branch_vs_single": round(branch["req_per_s"] / single["req_per_s"], 3),
            "per_round_ratio": [round(b["req_per_s"] / a["req_per_s"], 3) for a, b in zip(single_runs, branch_runs)]}


def _goals(result: dict) -> dict:
    goals = {}
    if "publish_storm" in result:
        goals["replication_lag_p99_below_1s"] = result["publish_storm"]["lag_p99_s"] < 1.0
    if "outbox" in result:
        goals["outbox_10k_drained_below_10s"] = result["outbox"]["restore_to_drained_s"] < 10.0
    if "boot_scripts" in result:
        goals["branch_boot_throughput_within_10pct"] = result["boot_scripts"]["branch_vs_single"] >= 0.9
    return goals


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--publishes", type=int, default=100)
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--machines", type=int, default=2000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--only", default="storm,outbox,boot", help="which figures, comma-separated: storm, outbox, boot")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    if os.geteuid() != 0 or not shutil.which("wrk"):
        sys.exit("needs root (network namespaces) and wrk (scripts/install-deps.sh)")
    tmp = Path(tempfile.mkdtemp(prefix="netslate-bench-sites-"))
    lab = SitesLab().start()
    central = NsWorker(lab.central)
    result: dict = {}
    try:
        cctx = Context(tmp / "central", lab.primary_url_central)
        result["setup"] = central.call(setup_central, cctx, tmp / "files", args.machines)
        lab.wait_replayed()
        if "storm" in parts:
            result["publish_storm"] = publish_storm(lab, central, cctx, args.publishes)

        from sqlalchemy import select

        from netslate.store.models import Machine

        def ids():
            with cctx.db.session() as s:
                return list(s.scalars(select(Machine.id).order_by(Machine.id)))
        machine_ids = central.call(ids)
        if "outbox" in parts:
            result["outbox"] = outbox_drain(lab, tmp / "branch-ctx", args.events, machine_ids)
        if "boot" in parts:
            result["boot_scripts"] = boot_scripts(lab, central, tmp, args)
        result["goals"] = _goals(result)
    finally:
        central.close()
        lab.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    result["only"] = sorted(parts)
    if args.no_record:
        import json

        print(json.dumps(result, indent=2))
    else:
        record("sites", result)


if __name__ == "__main__":
    main()
