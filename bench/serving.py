"""Serving throughput: N concurrent clients fetching a whole rootfs, netslate vs plain nginx, one run.

Side by side on the same machine, the same file, interleaved rounds:
- `nginx`: plain nginx, 2 workers, sendfile, serving a copy of the rootfs file (the peer);
- `netslate`: `netslate serve` as a user runs it (the default `--static auto`: the nginx front,
  2 workers), `GET /images/NAME/VERSION/rootfs`;
- `netslate-static-off`: `netslate serve --static off --workers 2` (the Python route alone), for reference;
- `netslate-pull` (N=8 only): `netslate.images.pull` clients (chunk packs, zstd, every chunk verified,
  the output written to /dev/shm), clients' own work included.

Clients are curl processes writing to /dev/null (N at once, each fetching the file `--fetches`
times). Reported: delivered MB/s (bytes / wall), ratio to nginx, server CPU seconds per GB (from
/proc/PID/stat of the server's process tree). N = 8 and 64 by default.

    uv run python bench/serving.py                    # 256 MB rootfs, records bench/results/serving.json
    uv run python bench/serving.py --size-mb 677      # the issue's size
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from boot_storm import cpu_seconds, free_port, start_server, stop, tree_pids, wait_http  # noqa: E402


def make_image(work: Path, size_mb: int) -> tuple[Path, dict]:
    from netslate.context import Context

    tree = work / "tree"
    rnd = random.Random(7)
    for i in range(size_mb):
        d = tree / "usr" / f"d{i % 13}"
        d.mkdir(parents=True, exist_ok=True)
        half = 512 * 1024  # half random, half text: a real rootfs compresses about 2:1
        (d / f"f{i}").write_bytes(rnd.randbytes(half) + (b"serving bench line %d\n" % i) * (half // 22))
    data = work / "data"
    ctx = Context(data).init()
    v = ctx.library.import_files("bench", rootfs=tree, warn=lambda _m: None)
    shutil.rmtree(tree)
    return data, v


def start_plain_nginx(work: Path, port: int, file: Path) -> subprocess.Popen:
    from netslate.images.frontend import nginx_binary

    d = work / "plain-nginx"
    for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (d / "tmp" / t).mkdir(parents=True, exist_ok=True)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    (d / "nginx.conf").write_text(f"""{user}worker_processes 2;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    types {{ }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    access_log off;
""" + "".join(f"    {t}_temp_path {d}/tmp/{t};\n" for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")) + f"""
    server {{
        listen 127.0.0.1:{port};
        location = /rootfs {{ alias {file}; }}
    }}
}}
""")
    proc = subprocess.Popen([nginx_binary(), "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
                            stdin=subprocess.DEVNULL, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/rootfs", proc)
    return proc


def curl_round(url: str, n: int, fetches: int, size: int) -> tuple[float, int]:
    """N curl processes at once, each fetching URL `fetches` times; (seconds, bytes)."""
    t0 = time.perf_counter()
    argv = ["curl", "-sS", "--fail", "-w", "%{size_download}\\n"]
    for _ in range(fetches):
        argv += ["-o", "/dev/null", url]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(n)]
    total = 0
    for p in procs:
        out, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"curl failed: {err.decode()[-300:]}")
        total += sum(int(x) for x in out.split())
    secs = time.perf_counter() - t0
    if total != n * fetches * size:
        raise RuntimeError(f"{url}: {total} bytes, expected {n * fetches * size}")
    return secs, total


PULL_SNIPPET = """
import sys, shutil
from netslate.images import pull
out = sys.argv[2]
for k in range(int(sys.argv[3])):
    s = pull.pull(sys.argv[1], "bench", "1", out + "/cache", out + "/rootfs.img")
    shutil.rmtree(out)
"""


def pull_round(base: str, n: int, fetches: int, size: int) -> tuple[float, int]:
    shm = Path(tempfile.mkdtemp(prefix="serving-pull-", dir="/dev/shm"))
    try:
        t0 = time.perf_counter()
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        procs = [subprocess.Popen([sys.executable, "-c", PULL_SNIPPET, base, str(shm / f"c{i}"), str(fetches)], env=env,
                                  stderr=subprocess.PIPE) for i in range(n)]
        for p in procs:
            _o, err = p.communicate(timeout=1800)
            if p.returncode != 0:
                raise RuntimeError(f"pull failed: {err.decode()[-300:]}")
        return time.perf_counter() - t0, n * fetches * size
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--clients", default="8,64")
    ap.add_argument("--target-gb", type=float, default=4.0, help="bytes per measurement (sets fetches per client)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds per variant (median reported)")
    ap.add_argument("--no-pull", action="store_true", help="skip the pull-client row")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="serving-bench-", dir=os.environ.get("NETSLATE_BENCH_DIR", "/var/tmp")))
    servers: list[subprocess.Popen] = []
    try:
        data, v = make_image(work, args.size_mb)
        size = v["artifacts"]["rootfs"]["size"]
        ports = {"netslate": free_port(), "netslate-static-off": free_port(), "nginx": free_port()}
        servers.append(start_server(data, ports["netslate"], "auto", work / "netslate.log"))
        servers.append(start_server(data, ports["netslate-static-off"], "off", work / "netslate-off.log", ["--workers", "2"]))
        urls = {"netslate": f"http://127.0.0.1:{ports['netslate']}/images/bench/1/rootfs",
                "netslate-static-off": f"http://127.0.0.1:{ports['netslate-static-off']}/images/bench/1/rootfs"}
        copy = work / "rootfs.copy"
        t0 = time.perf_counter()
        subprocess.run(["curl", "-sS", "--fail", "-o", str(copy), urls["netslate"]], check=True, timeout=600)
        first_fetch_s = time.perf_counter() - t0  # includes writing the artifact file once (the front's first request)
        servers.append(start_plain_nginx(work, ports["nginx"], copy))
        urls["nginx"] = f"http://127.0.0.1:{ports['nginx']}/rootfs"
        pids = {"netslate": servers[0].pid, "netslate-static-off": servers[1].pid, "nginx": servers[2].pid}
        rows: dict[str, dict] = {}
        for n in [int(x) for x in args.clients.split(",")]:
            fetches = max(1, round(args.target_gb * 1e9 / (n * size)))
            variants = ["nginx", "netslate", "netslate-static-off"]
            if n == 8 and not args.no_pull:
                variants.append("netslate-pull")
            got: dict[str, list] = {k: [] for k in variants}
            for _r in range(args.repeats):
                for name in variants:
                    server = "netslate" if name == "netslate-pull" else name
                    cpu0 = cpu_seconds(tree_pids(pids[server]))
                    if name == "netslate-pull":
                        secs, total = pull_round(f"http://127.0.0.1:{ports['netslate']}", n, max(1, fetches // 4), size)
                    else:
                        secs, total = curl_round(urls[name], n, fetches, size)
                    cpu = cpu_seconds(tree_pids(pids[server])) - cpu0
                    got[name].append((total / secs / 1e6, cpu / (total / 1e9)))
            base = statistics.median(x[0] for x in got["nginx"])
            for name, runs in got.items():
                mbs = statistics.median(x[0] for x in runs)
                rows[f"{name} N={n}"] = {"clients": n, "variant": name, "mb_per_s": round(mbs), "vs_nginx": round(mbs / base, 2),
                                         "server_cpu_s_per_gb": round(statistics.median(x[1] for x in runs), 3),
                                         "runs_mb_per_s": [round(x[0]) for x in runs]}
                print(f"{name:22s} N={n:<3d} {mbs:8.0f} MB/s  {mbs / base:5.2f}x nginx", file=sys.stderr, flush=True)
        out = {"rootfs_bytes": size, "first_fetch_s": round(first_fetch_s, 2), "results": rows}
    finally:
        for p in reversed(servers):
            stop(p)
        shutil.rmtree(work, ignore_errors=True)
    if args.no_record:
        import json

        print(json.dumps(out, indent=2))
    else:
        from _common import record

        record("serving", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
