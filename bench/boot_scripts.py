"""Benchmark: the /boot/ipxe endpoint with 10,000 machines and 200 rules, vs nginx serving a static file.

    uv run python bench/boot_scripts.py [--machines 10000] [--rules 200] [--workers 1] [--connections 32] [--seconds 10]

The netslate server runs in its own process(es) (uvicorn, --workers N, like `netslate serve`); nginx
serves a static file of the same size as a real boot script on another loopback port with a temp
config. Both are driven by `wrk` (Debian `wrk`) with a Lua script that picks one of the 10,000 MACs
at random for every request. Prints one JSON object.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def mac_of(i: int) -> str:
    return "52:54:%02x:%02x:%02x:%02x" % (0, (i >> 16) & 255, (i >> 8) & 255, i & 255)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(data_dir: Path, n_machines: int, n_rules: int) -> dict:
    from sqlalchemy import insert

    from netslate.boot import store
    from netslate.context import Context
    from netslate.store.models import Machine, MachineMac

    ctx = Context(data_dir).init()
    files = data_dir.parent / "files"
    files.mkdir()
    for name in ("desk", "lab"):
        (files / f"{name}.k").write_bytes(os.urandom(64 * 1024))
        (files / f"{name}.i").write_bytes(os.urandom(64 * 1024))
        ctx.library.import_files(name, kernel=files / f"{name}.k", initrd=files / f"{name}.i", tag="stable", warn=lambda m: None)
    store.add_profile(ctx, "desktop", image="desk", ref="stable", args=["quiet"])
    store.add_profile(ctx, "lab", image="lab", ref="stable", console="ttyS0,115200n8")
    store.add_profile(ctx, "disk", kind="local")
    t0 = time.perf_counter()
    with ctx.db.session() as s:  # bulk: one transaction for the whole inventory
        s.execute(insert(Machine.__table__), [
            {"id": i + 1, "name": f"m{i}", "labels": {"room": f"r{i % 50}"}, "state": "approved", "approved": True,
             "tree_path": f"/lab/g{i % 9}", "status": {}} for i in range(n_machines)])
        s.execute(insert(MachineMac.__table__), [{"machine_id": i + 1, "mac": mac_of(i)} for i in range(n_machines)])
        store.bump(s)
    # 200 rules: per-machine MAC rules, per-room label rules, per-group rules, one catch-all.
    n_room = min(50, int(n_rules * 0.2))
    n_group = min(9, n_rules // 10)
    n_mac = n_rules - n_room - n_group - 1
    for i in range(n_mac):
        store.add_rule(ctx, f"mac{i}", {"mac": mac_of(i * 7)}, "lab" if i % 2 else "desktop", priority=10)
    for i in range(n_room):
        store.add_rule(ctx, f"room{i}", {"label": {"room": f"r{i}"}}, "desktop" if i % 3 else "lab", priority=5)
    for i in range(n_group):
        store.add_rule(ctx, f"group{i}", {"group": f"/lab/g{i}", "arch": "x86_64"}, "disk" if i == 0 else "desktop", priority=3)
    store.add_rule(ctx, "default", {}, "desktop", priority=0)
    act = store.activate_rules(ctx)
    return {"machines": n_machines, "rules": act["rules"], "setup_s": round(time.perf_counter() - t0, 2)}


WRK_LUA = """
local n = {n}
math.randomseed({seed})
request = function()
  local i = math.random(0, n - 1)
  local mac = string.format("52:54:%02x:%02x:%02x:%02x", 0, math.floor(i / 65536) % 256, math.floor(i / 256) % 256, i % 256)
  return wrk.format("GET", "{path}?mac=" .. mac .. "&uuid=&serial=&manufacturer=QEMU&product=Standard%20PC%20(i440FX%20%2B%20PIIX%2C%201996)&arch=x86_64&platform=pcbios&asset=")
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT {{\\"requests\\":%d,\\"duration_us\\":%d,\\"socket_errors\\":%d,\\"non2xx\\":%d,\\"p50_us\\":%d,\\"p90_us\\":%d,\\"p99_us\\":%d,\\"max_us\\":%d}}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def run_wrk(url_base: str, path: str, n: int, tmp: Path, connections: int, seconds: int, threads: int) -> dict:
    lua = tmp / f"wrk-{abs(hash(url_base))}.lua"
    lua.write_text(WRK_LUA.format(n=n, seed=42, path=path))
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(lua), url_base + path],
        capture_output=True, text=True, timeout=seconds + 60,
    )
    m = re.search(r"^RESULT (\{.*\})$", out.stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    r = json.loads(m.group(1))
    return {
        "requests": r["requests"],
        "req_per_s": round(r["requests"] / (r["duration_us"] / 1e6), 1),
        "p50_ms": round(r["p50_us"] / 1000, 2),
        "p90_ms": round(r["p90_us"] / 1000, 2),
        "p99_ms": round(r["p99_us"] / 1000, 2),
        "max_ms": round(r["max_us"] / 1000, 2),
        "errors": r["socket_errors"],
        "non_2xx": r["non2xx"],
    }


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user+system) used so far by every live process in a process group (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after "comm)": state ppid pgrp ... utime(11) stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / tick


def measured(url_base: str, pgid: int, *a) -> dict:
    c0 = group_cpu_s(pgid)
    r = run_wrk(url_base, *a)
    cpu = group_cpu_s(pgid) - c0
    r["server_cpu_s"] = round(cpu, 2)
    r["server_cpu_us_per_request"] = round(cpu / max(1, r["requests"]) * 1e6, 1)
    return r


def wait_http(url: str, deadline_s: float = 60) -> None:
    end = time.time() + deadline_s
    while time.time() < end:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def start_netslate(data_dir: Path, tmp: Path, port: int, workers: int) -> subprocess.Popen:
    (tmp / "bench_app.py").write_text(textwrap.dedent(f"""
        import asyncio.base_events
        import socket

        from netslate.context import Context
        from netslate.server.app import create_app

        # uvicorn --workers binds with socket.socket(family) (proto 0), so asyncio's _set_nodelay skips
        # the accepted sockets: Nagle + delayed ACK then add ~40 ms to every response (headers and body
        # are two writes). Set TCP_NODELAY whatever the proto field says.
        def _set_nodelay(sock):
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        asyncio.base_events._set_nodelay = _set_nodelay

        def create():
            return create_app(Context({str(data_dir)!r}), {{"listen": ("127.0.0.1", {port})}})
    """))
    env = dict(os.environ, PYTHONPATH=f"{tmp}:{ROOT / 'src'}")
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "bench_app:create", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers), "--log-level", "warning", "--no-access-log"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "w"), start_new_session=True,
    )


def start_nginx(tmp: Path, port: int, body: bytes) -> subprocess.Popen:
    www = tmp / "www" / "boot"
    www.mkdir(parents=True)
    (www / "ipxe").write_bytes(body)
    conf = tmp / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""
        user root;
        worker_processes 2;
        daemon off;
        pid {tmp}/nginx.pid;
        error_log {tmp}/nginx-error.log warn;
        events {{ worker_connections 1024; }}
        http {{
            access_log off;
            default_type text/plain;
            client_body_temp_path {tmp}/nginx-body;
            proxy_temp_path {tmp}/nginx-proxy;
            fastcgi_temp_path {tmp}/nginx-fastcgi;
            uwsgi_temp_path {tmp}/nginx-uwsgi;
            scgi_temp_path {tmp}/nginx-scgi;
            server {{
                listen 127.0.0.1:{port};
                root {tmp}/www;
                location / {{ }}
            }}
        }}
    """))
    return subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp)], stdout=subprocess.DEVNULL,
                            stderr=open(tmp / "nginx.log", "w"), start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--machines", type=int, default=10000)
    ap.add_argument("--rules", type=int, default=200)
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (netslate serve runs one).")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--nice", type=int, default=0,
                    help="Run server, nginx and wrk at this nice level (e.g. -10 on a machine shared with other work).")
    args = ap.parse_args()
    if args.nice:
        os.nice(args.nice)  # inherited by every process started below: both servers and wrk alike
    if not shutil.which("wrk") or not shutil.which("nginx"):
        sys.exit("needs wrk and nginx (scripts/install-deps.sh installs both)")
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench-boot-"))
    procs = []
    try:
        data_dir = tmp / "data"
        data_dir.mkdir()
        info = setup(data_dir, args.machines, args.rules)
        port, nport = free_port(), free_port()
        procs.append(start_netslate(data_dir, tmp, port, args.workers))
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/healthz")
        sample = httpx.get(base + "/boot/ipxe", params={"mac": mac_of(7), "arch": "x86_64", "platform": "pcbios"}, timeout=10)
        assert sample.status_code == 200 and "netslate.image=" in sample.text, sample.text
        procs.append(start_nginx(tmp, nport, sample.content))
        nbase = f"http://127.0.0.1:{nport}"
        wait_http(nbase + "/boot/ipxe")
        run_wrk(base, "/boot/ipxe", args.machines, tmp, args.connections, 2, args.wrk_threads)  # warm-up
        ours = measured(base, procs[0].pid, "/boot/ipxe", args.machines, tmp, args.connections, args.seconds, args.wrk_threads)
        theirs = measured(nbase, procs[1].pid, "/boot/ipxe", args.machines, tmp, args.connections, args.seconds, args.wrk_threads)
        result = {
            "benchmark": "boot_scripts",
            "machine": f"{os.cpu_count()} cores, " + (Path('/etc/debian_version').read_text().strip() if Path('/etc/debian_version').exists() else '?'),
            "load_average_before": [round(x, 2) for x in load_before],
            "setup": info,
            "workers": args.workers,
            "nice": args.nice,
            "connections": args.connections,
            "seconds": args.seconds,
            "script_bytes": len(sample.content),
            "netslate": ours,
            "nginx_static": theirs,
            "ratio_to_nginx": round(ours["req_per_s"] / theirs["req_per_s"], 3) if theirs["req_per_s"] else None,
            "cpu_ratio_to_nginx": round(theirs["server_cpu_us_per_request"] / ours["server_cpu_us_per_request"], 3)
            if ours["server_cpu_us_per_request"] else None,
            # what the server's own CPU cost per request allows on all cores, if nothing else ran
            "netslate_capacity_per_s_on_all_cores": round(os.cpu_count() / (ours["server_cpu_us_per_request"] / 1e6))
            if ours["server_cpu_us_per_request"] else None,
            "goals": {"req_per_s>=1500": ours["req_per_s"] >= 1500, "p99<50ms": ours["p99_ms"] < 50},
        }
        print(json.dumps(result, indent=2))
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
