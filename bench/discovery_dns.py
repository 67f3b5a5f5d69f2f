"""DNS responder throughput, measured with dnsperf (Debian `dnsperf`) on loopback.

Starts a real `netslate serve --dns-listen` on a temporary data directory with 3 sites and 6
servers, then runs dnsperf from two source addresses (127.0.0.2 = site north, 127.0.0.3 = site
south) with a mix of SRV (site-aware, the expensive answer) and A/AAAA queries. Bounded: each run
lasts at most DURATION seconds. Prints one JSON object.

    uv run python bench/discovery_dns.py [--duration 10]
"""

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record  # noqa: E402  (bench/ helpers: machine facts, bench/results/)

DOMAIN = "bench.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dnsperf(port: int, datafile: Path, source: str, duration: int, mode: str = "udp") -> dict:
    out = subprocess.run(
        ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-a", source, "-d", str(datafile), "-l", str(duration),
         "-c", "4", "-q", "64", "-t", "2", "-m", mode],
        capture_output=True, text=True, timeout=duration + 30,
    ).stdout

    def grab(pattern, cast=float):
        m = re.search(pattern, out)
        return cast(m.group(1)) if m else None

    return {
        "mode": mode,
        "source": source,
        "queries_sent": grab(r"Queries sent:\s+(\d+)", int),
        "queries_completed": grab(r"Queries completed:\s+(\d+)", int),
        "queries_lost": grab(r"Queries lost:\s+(\d+)", int),
        "qps": grab(r"Queries per second:\s+([\d.]+)"),
        "avg_latency_ms": (grab(r"Average Latency \(s\):\s+([\d.]+)") or 0) * 1000,
        "noerror": grab(r"NOERROR (\d+)", int),
    }


def in_process(ctx, cache: bool, n: int = 20000, limit_s: float = 20.0) -> dict:
    """SRV queries straight into Responder.handle, one core, each spelled in a random letter case
    as 0x20-randomising resolvers send them. cache=False: every answer is parsed, ordered and
    packed by dnslib (the floor); cache=True: what the server really does."""
    import random

    from dnslib import DNSRecord

    from netslate.discovery import store
    from netslate.discovery.dns import Responder

    view = store.load_view(ctx)
    responder = Responder(lambda: view, DOMAIN, cache=cache)
    rng = random.Random(7)
    name = f"_netslate._tcp.{DOMAIN}"
    queries = [DNSRecord.question("".join(c.upper() if rng.random() < 0.5 else c for c in name), "SRV").pack() for _ in range(n)]
    start = time.perf_counter()
    done = 0
    for q in queries:
        responder.handle(q, "127.0.0.2")
        done += 1
        if done % 1000 == 0 and time.perf_counter() - start > limit_s:
            break
    elapsed = time.perf_counter() - start
    return {"queries": done, "seconds": round(elapsed, 3), "qps": round(done / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10, help="seconds per dnsperf run (bounded)")
    args = parser.parse_args()
    duration = max(1, min(args.duration, 60))

    from netslate.context import Context
    from netslate.discovery import store

    tmp = Path(tempfile.mkdtemp(prefix="netslate-bench-dns-"))
    ctx = Context(tmp / "data").init()
    for site, cidr in (("north", "127.0.0.2/32"), ("south", "127.0.0.3/32"), ("east", "10.0.0.0/8")):
        store.add_site(ctx, site)
        store.add_subnet(ctx, site, cidr)
    http_port, dns_port = free_port(), free_port()
    env = dict(os.environ, NETSLATE_DATA_DIR=str(tmp / "data"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "netslate", "serve", "--listen", f"127.0.0.1:{http_port}", "--log-level", "warning",
         "--site", "north", "--server-name", "main", "--advertise", "127.0.0.1",
         "--dns-listen", f"127.0.0.1:{dns_port}", "--dns-domain", DOMAIN],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for i, site in enumerate(["north", "south", "south", "east", "east"]):
            store.register_server(ctx, f"srv{i}", site, [f"127.0.1.{i + 1}", f"2001:db8::{i + 1}"], 8080, weight=100 + 50 * i)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        time.sleep(2.5)  # the responder's view refreshes every 2 s: let it see every server
        srv_file = tmp / "srv.txt"
        srv_file.write_text(f"_netslate._tcp.{DOMAIN} SRV\n")
        mix_file = tmp / "mix.txt"
        mix_file.write_text(
            f"_netslate._tcp.{DOMAIN} SRV\n_netslate._tcp.{DOMAIN} SRV\nsrv1.{DOMAIN} A\nsrv2.{DOMAIN} AAAA\n"
            f"nope.{DOMAIN} A\nexample.com A\n"
        )
        runs = {
            "srv_from_north_udp": dnsperf(dns_port, srv_file, "127.0.0.2", duration),
            "srv_from_south_udp": dnsperf(dns_port, srv_file, "127.0.0.3", duration),
            "mixed_from_south_udp": dnsperf(dns_port, mix_file, "127.0.0.3", duration),
            "srv_from_north_tcp": dnsperf(dns_port, srv_file, "127.0.0.2", duration, mode="tcp"),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    result_cold = in_process(ctx, cache=False)
    result_warm = in_process(ctx, cache=True)
    result = {
        "tool": "dnsperf " + (re.findall(r"Version (\S+)", subprocess.run(["dnsperf", "-h"], capture_output=True, text=True).stderr + subprocess.run(["dnsperf", "-h"], capture_output=True, text=True).stdout) or ["?"])[0],
        "servers": 6,
        "duration_s_per_run": duration,
        "goal_qps": 5000,
        "runs": runs,
        "in_process_uncached": result_cold,
        "in_process_cached_0x20": result_warm,
        "min_udp_qps": min(r["qps"] or 0 for k, r in runs.items() if k.endswith("udp")),
    }
    record("discovery_dns", result)


if __name__ == "__main__":
    main()
