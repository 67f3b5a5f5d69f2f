"""Benchmark: resolve + sign config bundles for 10,000 machines in a 5-level tree of 1,000 nodes.

    uv run python bench/config_bundles.py [--machines 10000] [--http 1000]

Prints one JSON object. Measures, on one core (this process):
- publish: the publish transaction (snapshot of all 1,000 node documents);
- bundles_per_s (warm): build the resolved, templated, signed bundle for every machine;
- publish_to_all_ready_s: publish + every machine's bundle built from the new generation (cold cache);
- per_request_per_s: the full per-request path (DB lookup of the machine + state, resolve, sign);
- http_per_s: real GET /api/v1/machines/{id}/bundle over loopback from one client (sample);
- credentialed: the per-request path with each machine's own credential (a sample of machines, each
  fetching several times, as long-polling agents do; its bundle holds a sealed secret), with the
  per-credential cache off (`credentials.CACHE_TTL = 0`, every request reads the credential row and
  derives the bundle key) and on, alternated in the same run.
"""

import argparse
import json
import os
import sys
import tempfile
import time

from sqlalchemy import insert, select

from netslate.config import bundles, generation_cache, generations, state, workingcopy
from netslate.context import Context
from netslate.store.models import Machine


def build_tree() -> dict[str, dict]:
    """1,000 nodes: root, 4 sites, 16 clusters, 64 pools, 256 folders, 659 sub-folders."""
    docs: dict[str, dict] = {"/": {
        "timezone": "UTC", "locale": "C.UTF-8",
        "hostname": "{{ machine.name }}",
        "users": [{"name": "root", "password_hash": "$6$rounds=5000$abc$def"}],
        "ntp": {"servers": ["ntp1.example", "ntp2.example"]},
        "agent": {"wait_seconds": 60},
        "files": [{"path": "/etc/motd", "content": "managed by netslate\n"}],
        "health_checks": [{"name": "dns", "tcp": "dns.example:53"}],
    }}
    folders = []
    for s in range(4):
        site = f"/site-{s}"
        docs[site] = {"timezone": "Europe/Paris", "dns": {"servers": [f"10.{s}.0.53"]}, "secrets": {"wifi_psk": f"psk-{s}"}}
        for c in range(4):
            cl = f"{site}/cluster-{c}"
            docs[cl] = {"sysctl": {"vm.swappiness": 10 + c}, "kernel_args+": [f"console=ttyS{c}"]}
            for p in range(4):
                pool = f"{cl}/pool-{p}"
                docs[pool] = {"users+": [{"name": f"user{p}", "uid": 1000 + p, "groups": ["wheel"]}],
                              "mounts": [{"what": f"nfs{p}:/home", "where": "/home", "type": "nfs", "options": "vers=4.2"}]}
                for f in range(4):
                    folder = f"{pool}/folder-{f}"
                    docs[folder] = {"network": {"mode": "dhcp", "interfaces": {"eth0": {"mtu": 1500 + f}}}}
                    folders.append(folder)
    subs = []
    for i in range(659):
        sub = f"{folders[i % len(folders)]}/sub-{i // len(folders)}"
        docs[sub] = {"units": {"enable": [f"svc-{i}.service"]}, "files+": [{"path": f"/etc/sub-{i}", "mode": "0644", "template": "{{ machine.name }} in {{ machine.tree_path }}\n"}]}
        subs.append(sub)
    assert len(docs) == 1000, len(docs)
    return docs, subs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--machines", type=int, default=10_000)
    ap.add_argument("--http", type=int, default=1000, help="bundles fetched over real HTTP (0 to skip)")
    ap.add_argument("--credentials", type=int, default=500, help="machines given a credential for the credentialed path (0 to skip)")
    ap.add_argument("--rounds", type=int, default=4, help="fetches per credentialed machine in each measurement")
    args = ap.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core

    tmp = tempfile.mkdtemp(prefix="netslate-bench-")
    ctx = Context(tmp).init()
    docs, leaves = build_tree()
    with ctx.db.session() as s:
        s.execute(insert(Machine), [
            {"name": f"m{i:05d}", "tree_path": leaves[i % len(leaves)], "labels": {"room": f"r{i % 40}"}, "status": {"facts": {"cpus": 4}},
             "state": "approved", "approved": True}
            for i in range(args.machines)
        ])
    t0 = time.perf_counter()
    for path, doc in docs.items():
        workingcopy.put_node(ctx, path, doc, "bench")
    t_edit = time.perf_counter() - t0

    def all_bundles(gen: int) -> float:
        t = time.perf_counter()
        with ctx.db.session() as s:
            st = state.read(s)
            machines = list(s.scalars(select(Machine)))
            tree_cache = generation_cache.cache_for(ctx).get(ctx, gen)
            for m in machines:
                payload, _etag = bundles.build_payload(m, st, tree_cache, gen, authenticated=False)
                ctx.signing_key.sign(payload)
        return time.perf_counter() - t

    # publish, then build every bundle from the new generation with a cold cache
    t = time.perf_counter()
    pub = generations.publish(ctx, "bench", "bench")
    t_publish = time.perf_counter() - t
    t_cold = all_bundles(pub["generation"])
    publish_to_ready = t_publish + t_cold
    t_warm = all_bundles(pub["generation"])

    # second publish: one site changes; measure again (cold cache for generation 2)
    workingcopy.set_value(ctx, "/site-1", "locale", "fr_FR.UTF-8", "bench")
    t = time.perf_counter()
    pub2 = generations.publish(ctx, "bench 2", "bench")
    t_publish2 = time.perf_counter() - t
    t_cold2 = all_bundles(pub2["generation"])

    # the per-request path (one DB session per bundle, as the endpoint does), sample of 2000
    sample = min(2000, args.machines)
    t = time.perf_counter()
    for i in range(1, sample + 1):
        bundles.bundle(ctx, i)
    t_req = time.perf_counter() - t

    credentialed = None
    if args.credentials:
        from netslate.config import credentials

        n = min(args.credentials, args.machines)
        creds = [(i, credentials.issue(ctx, i, "token", "bench")) for i in range(1, n + 1)]
        default_ttl = credentials.CACHE_TTL

        def credentialed_per_s(ttl: float) -> float:
            credentials.CACHE_TTL = ttl
            credentials.cache_for(ctx)._entries.clear()
            t = time.perf_counter()
            for _ in range(args.rounds):
                for mid, cred in creds:
                    env, _etag, _info = bundles.bundle(ctx, mid, cred)
                    assert env["payload"]["authenticated"] and env["payload"]["sealed_secrets"]
            return len(creds) * args.rounds / (time.perf_counter() - t)

        runs = {"off": [], "on": []}
        for _ in range(3):  # alternated, so a neighbour's load hits both alike
            runs["off"].append(credentialed_per_s(0.0))
            runs["on"].append(credentialed_per_s(default_ttl))
        credentials.CACHE_TTL = default_ttl
        off, on = sorted(runs["off"])[1], sorted(runs["on"])[1]  # medians
        credentialed = {"machines": n, "fetches_per_machine": args.rounds, "cache_ttl_s": default_ttl,
                        "per_s_cache_off": round(off, 1), "per_s_cache_on": round(on, 1), "ratio_on_off": round(on / off, 2),
                        "runs_off": [round(x, 1) for x in runs["off"]], "runs_on": [round(x, 1) for x in runs["on"]]}

    http = None
    if args.http:
        import httpx
        import threading
        import uvicorn

        from netslate.server.app import create_app

        import socket
        with socket.socket() as so:
            so.bind(("127.0.0.1", 0))
            port = so.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(ctx), host="127.0.0.1", port=port, log_level="warning", access_log=False))
        th = threading.Thread(target=server.run, daemon=True)
        th.start()
        while not server.started:
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            c.get("/api/v1/machines/1/bundle").raise_for_status()
            t = time.perf_counter()
            for i in range(args.http):
                c.get(f"/api/v1/machines/{1 + i % args.machines}/bundle").raise_for_status()
            t_http = time.perf_counter() - t
        server.should_exit = True
        th.join(10)
        http = round(args.http / t_http, 1)

    result = {
        "benchmark": "config_bundles",
        "machines": args.machines,
        "tree_nodes": len(docs),
        "tree_levels_below_root": 5,
        "cores_used": 1,
        "working_copy_edits_s": round(t_edit, 2),
        "publish_s": round(t_publish, 3),
        "publish_to_all_bundles_ready_s": round(publish_to_ready, 2),
        "bundles_per_s_cold": round(args.machines / t_cold, 1),
        "bundles_per_s_warm": round(args.machines / t_warm, 1),
        "second_publish_s": round(t_publish2, 3),
        "second_publish_to_all_ready_s": round(t_publish2 + t_cold2, 2),
        "per_request_path_per_s": round(sample / t_req, 1),
        "http_bundles_per_s_one_client": http,
        "credentialed_per_request_path": credentialed,
        "goal": {"bundles_per_s": 5000, "publish_to_all_ready_s": 5},
        "python": sys.version.split()[0],
    }
    print(json.dumps(result, indent=2))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
