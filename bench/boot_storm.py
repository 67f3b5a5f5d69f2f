"""Boot storm: N simulated ram-mode boots at once on loopback, against real `netslate serve` processes.

Each simulated boot is a small client (a thread; the threads spread over a few processes), doing on
the wire what a ram-mode machine does: GET /boot/ipxe?mac=… (the iPXE script), GET the kernel and
initrd it names, then the initramfs's own pull (`netslate.images.pull`, stdlib only: no zstandard,
so byte ranges of the rootfs artifact) with the script's pinned manifest digest and key, and a
SHA-256 of the whole rootfs against the signed manifest. A failed round is retried with the
initramfs's backoff (bounded): a saturated server makes boots slow; a boot that still fails counts.

Scenarios (one run, same image): `one` (one server), `srv2` (two servers on one data directory,
found through netslate's discovery DNS on loopback: SRV lookup + RFC 2782 choice per boot), `cache`
(one nginx site cache from `netslate serve --print-site-cache-config` in front of one server),
`blip` (one server, stopped 1 s into the storm and back 3 s later: every boot must still succeed).

Reported per scenario: boots ok / failed, rounds retried, p50/p99/max seconds to the last chunk,
GB delivered, server CPU seconds (netslate + its nginx, from /proc/PID/stat of the process tree)
per GB delivered (and the site cache's own).

The image is synthetic and small (default 8 MB, half random, half compressible) so that 500 boots,
each holding its range body and its RAM image (in /dev/shm, removed at once) fit this machine.

    uv run python bench/boot_storm.py                       # N=500, all scenarios (records bench/results/boot_storm.json)
    uv run python bench/boot_storm.py --n 20 --scenarios one --no-record --json   # what the test runs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

CLK = os.sysconf("SC_CLK_TCK")
DOMAIN = "storm.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def netslate_cmd() -> list[str]:
    return [sys.executable, "-m", "netslate"]


def make_world(work: Path, image_mb: int) -> Path:
    """A data directory with image `storm` (tag stable, rootfs + kernel + initrd) and a ram-mode rule for every machine."""
    data = work / "data"
    tree = work / "tree"
    rnd = random.Random(14)
    files = max(1, image_mb)
    for i in range(files):
        d = tree / "usr" / f"d{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        half = 512 * 1024
        (d / f"f{i}").write_bytes(rnd.randbytes(half) + (b"netslate storm %d\n" % i) * (half // 17))
    (work / "vmlinuz").write_bytes(rnd.randbytes(400_000))
    (work / "initrd").write_bytes(rnd.randbytes(300_000))
    from netslate.boot import store as boot_store
    from netslate.context import Context
    from netslate.discovery import store as discovery_store

    ctx = Context(data).init()
    ctx.library.import_files("storm", rootfs=tree, kernel=work / "vmlinuz", initrd=work / "initrd", tag="stable",
                             warn=lambda _m: None)
    boot_store.add_profile(ctx, "storm", image="storm", ref="stable", mode="ram")
    boot_store.add_rule(ctx, "all", {}, "storm")
    boot_store.activate_rules(ctx)
    discovery_store.add_site(ctx, "storm")
    return data


def wait_http(url: str, proc: subprocess.Popen | None = None, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer: {last}")


def start_server(data: Path, port: int, static: str, log: Path, extra: list[str] = ()) -> subprocess.Popen:
    env = dict(os.environ, NETSLATE_DATA_DIR=str(data), NETSLATE_DESKTOPS_RECONCILE="0")
    env.pop("NETSLATE_SERVER", None)
    with open(log, "ab") as f:
        proc = subprocess.Popen([*netslate_cmd(), "serve", "--listen", f"127.0.0.1:{port}", "--static", static,
                                 "--log-level", "warning", *extra], env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)


def tree_pids(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return sorted(set(out))


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return total / CLK


# ---------- the simulated machines (in client processes) ----------


def _one_boot(i: int, how: dict, shm: Path) -> dict:
    from netslate.images import pull as pullmod
    from netslate.initramfs.bootargs import backoff

    t0 = time.monotonic()
    mac = "52:54:%02x:%02x:%02x:%02x" % ((i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255, i & 255)
    rounds, last = 0, ""
    work = shm / f"m{i}"
    bytes_wire = 0
    for rnd in range(how["rounds"]):
        rounds = rnd + 1
        try:
            base = how["base"]
            if how.get("dns_port"):
                base = _srv_pick(how["dns_port"])
            with urllib.request.urlopen(f"{base}/boot/ipxe?mac={mac}&arch=x86_64&platform=pcbios", timeout=60) as r:
                script = r.read().decode()
            kernel_line = next(line for line in script.splitlines() if line.startswith("kernel "))
            words = kernel_line.split()
            args = dict(w.split("=", 1) for w in words[2:] if "=" in w)
            initrd_url = next(w for line in script.splitlines() if line.startswith("initrd ") for w in line.split() if w.startswith("http"))
            for url in (words[1], initrd_url):
                with urllib.request.urlopen(url, timeout=60) as r:
                    bytes_wire += len(r.read())
            image, ref = args["netslate.image"].split("@")
            server = args["netslate.server"]
            stats = pullmod.pull(server, image, ref, work / "pull", work / "rootfs.img", trust=args["netslate.key"],
                                 pinned_digest=args["netslate.manifest"], workers=4, timeout=60, retries=1)
            t_last = time.monotonic()
            bytes_wire += stats.bytes_on_wire
            h = hashlib.sha256()
            with open(work / "rootfs.img", "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            want = how["rootfs_sha256"]
            if h.hexdigest() != want:
                raise pullmod.PullError("assembled rootfs does not match the manifest's SHA-256")
            shutil.rmtree(work, ignore_errors=True)
            return {"ok": True, "seconds": t_last - t0, "rounds": rounds, "bytes": bytes_wire + len(script), "server": server}
        except Exception as exc:  # noqa: BLE001 - any failure of a round is what we count
            last = f"{type(exc).__name__}: {exc}"
            if rnd + 1 < how["rounds"]:
                time.sleep(min(backoff(rnd, base=1.0), 8.0))
    shutil.rmtree(work, ignore_errors=True)
    return {"ok": False, "seconds": time.monotonic() - t0, "rounds": rounds, "error": last[:300], "bytes": bytes_wire}


def _srv_pick(dns_port: int) -> str:
    """What a discovering machine does: SRV _netslate._tcp.DOMAIN, then the RFC 2782 order."""
    import dns.message
    import dns.query
    import dns.rdatatype

    from netslate.onmachine.srv import rfc2782_order

    q = dns.message.make_query(f"_netslate._tcp.{DOMAIN}", dns.rdatatype.SRV)
    ans = dns.query.udp(q, "127.0.0.1", port=dns_port, timeout=5)
    recs = [rr for rrset in ans.answer for rr in rrset if rr.rdtype == dns.rdatatype.SRV]
    if not recs:
        raise RuntimeError("no SRV records")
    first = rfc2782_order(recs)[0]
    target = str(first.target).rstrip(".")
    addrs = {str(rr.address) for rrset in ans.additional for rr in rrset if rrset.name.to_text().rstrip(".") == target
             and rr.rdtype == dns.rdatatype.A}
    host = sorted(addrs)[0] if addrs else "127.0.0.1"
    return f"http://{host}:{first.port}"


def _client_process(ids: list[int], how: dict, shm: str, start_at: float) -> list[dict]:
    from netslate.images import pull as pullmod

    pullmod._zstd = None  # the initramfs is stdlib only: it pulls byte ranges of the artifact
    out: list[dict] = [{}] * len(ids)

    def run(k: int, i: int) -> None:
        time.sleep(max(0.0, start_at - time.time()))
        out[k] = _one_boot(i, how, Path(shm))

    threads = [threading.Thread(target=run, args=(k, i), daemon=True) for k, i in enumerate(ids)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + how["timeout"]
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return [o if o else {"ok": False, "seconds": how["timeout"], "rounds": 0, "error": "timed out", "bytes": 0} for o in out]


def storm(n: int, how: dict, procs: int) -> dict:
    shm = Path(tempfile.mkdtemp(prefix="storm-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        start_at = time.time() + 1.0 + 0.05 * procs
        ids = list(range(1, n + 1))
        with ProcessPoolExecutor(max_workers=procs) as pool:
            futs = [pool.submit(_client_process, ids[k::procs], how, str(shm), start_at) for k in range(procs)]
            results = [r for f in futs for r in f.result(timeout=how["timeout"] + 120)]
        wall = time.time() - start_at
    finally:
        shutil.rmtree(shm, ignore_errors=True)
    ok = [r for r in results if r["ok"]]
    secs = sorted(r["seconds"] for r in ok)

    def pct(p: float) -> float:
        return round(secs[min(len(secs) - 1, int(p * len(secs)))], 3) if secs else 0.0

    errors: dict[str, int] = {}
    for r in results:
        if not r["ok"]:
            errors[r["error"][:120]] = errors.get(r["error"][:120], 0) + 1
    delivered = sum(r["bytes"] for r in results)
    per_server: dict[str, int] = {}
    for r in ok:
        per_server[r["server"]] = per_server.get(r["server"], 0) + 1
    return {"boots": n, "ok": len(ok), "failed": n - len(ok), "retried_boots": sum(1 for r in results if r["rounds"] > 1),
            "p50_s": pct(0.50), "p99_s": pct(0.99), "max_s": round(secs[-1], 3) if secs else 0.0,
            "mean_s": round(statistics.mean(secs), 3) if secs else 0.0, "wall_s": round(wall, 2),
            "delivered_gb": round(delivered / 1e9, 3), "boots_per_server": per_server, "errors": errors}


def rootfs_sha(data: Path) -> str:
    from netslate.context import Context

    ctx = Context(data)
    _resolved, record = ctx.library.artifact_record("storm", "stable", "rootfs")
    return record["sha256"], record["size"]


def scenario_one(data: Path, work: Path, args, how: dict) -> dict:
    port = free_port()
    srv = start_server(data, port, args.static, work / "server-one.log")
    try:
        pids = tree_pids(srv.pid)
        cpu0 = cpu_seconds(pids)
        res = storm(args.n, {**how, "base": f"http://127.0.0.1:{port}"}, args.procs)
        cpu = cpu_seconds(tree_pids(srv.pid)) - cpu0
    finally:
        stop(srv)
    return {**res, "server_cpu_s": round(cpu, 2), "server_cpu_s_per_gb": round(cpu / max(res["delivered_gb"], 1e-9), 2)}


def scenario_srv2(data: Path, work: Path, args, how: dict) -> dict:
    dns_port = free_port()
    ports = [free_port(), free_port()]
    common = ["--site", "storm", "--advertise", "127.0.0.1", "--dns-domain", DOMAIN]
    s1 = start_server(data, ports[0], args.static, work / "server-a.log",
                      [*common, "--server-name", "a", "--dns-listen", f"127.0.0.1:{dns_port}"])
    s2 = start_server(data, ports[1], args.static, work / "server-b.log", [*common, "--server-name", "b"])
    try:
        time.sleep(3)  # both registered (first heartbeat) and in the DNS view
        pids = tree_pids(s1.pid) + tree_pids(s2.pid)
        cpu0 = cpu_seconds(pids)
        res = storm(args.n, {**how, "base": "", "dns_port": dns_port}, args.procs)
        cpu = cpu_seconds(tree_pids(s1.pid) + tree_pids(s2.pid)) - cpu0
    finally:
        stop(s2)
        stop(s1)
    return {**res, "servers": 2, "server_cpu_s": round(cpu, 2), "server_cpu_s_per_gb": round(cpu / max(res["delivered_gb"], 1e-9), 2)}


def scenario_cache(data: Path, work: Path, args, how: dict) -> dict:
    port, cport = free_port(), free_port()
    srv = start_server(data, port, args.static, work / "server-c.log")
    cdir = work / "site-cache"
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (cdir / "tmp" / d).mkdir(parents=True, exist_ok=True)
    conf = subprocess.run([*netslate_cmd(), "serve", "--print-site-cache-config", "--origin", f"http://127.0.0.1:{port}",
                           "--cache-dir", str(cdir), "--cache-listen", f"127.0.0.1:{cport}"],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    if os.geteuid() == 0:
        conf = "user root root;\n" + conf  # the bench's temp directory is root's
    (cdir / "nginx.conf").write_text(conf)
    from netslate.images.frontend import nginx_binary

    cache = subprocess.Popen([nginx_binary(), "-p", str(cdir), "-c", str(cdir / "nginx.conf"), "-e", str(cdir / "error.log")],
                             stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{cport}/healthz", cache)
        cpu0 = cpu_seconds(tree_pids(srv.pid))
        ccpu0 = cpu_seconds(tree_pids(cache.pid))
        res = storm(args.n, {**how, "base": f"http://127.0.0.1:{cport}"}, args.procs)
        cpu = cpu_seconds(tree_pids(srv.pid)) - cpu0
        ccpu = cpu_seconds(tree_pids(cache.pid)) - ccpu0
    finally:
        stop(cache)
        stop(srv)
    gb = max(res["delivered_gb"], 1e-9)
    return {**res, "server_cpu_s": round(cpu, 2), "server_cpu_s_per_gb": round(cpu / gb, 2),
            "cache_cpu_s": round(ccpu, 2), "cache_cpu_s_per_gb": round(ccpu / gb, 2)}


def scenario_blip(data: Path, work: Path, args, how: dict) -> dict:
    """Saturation and an outage: the server is stopped 1 s into the storm and started again on the
    same port 3 s later. Boots caught by it retry (the initramfs's rounds with backoff): slower,
    not failed."""
    port = free_port()
    srv = start_server(data, port, args.static, work / "server-blip.log")
    box: dict = {}

    def outage():
        time.sleep(how.get("start_delay", 1.0) + 1.0)
        stop(srv)
        box["stopped_at"] = time.time()
        time.sleep(3.0)
        box["srv"] = start_server(data, port, args.static, work / "server-blip.log")
        box["back_after_s"] = round(time.time() - box["stopped_at"], 2)

    t = threading.Thread(target=outage, daemon=True)
    t.start()
    try:
        res = storm(args.n, {**how, "base": f"http://127.0.0.1:{port}"}, args.procs)
    finally:
        t.join(180)
        if "srv" in box:
            stop(box["srv"])
        stop(srv)
    return {**res, "outage_s": box.get("back_after_s")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500, help="simulated boots at once (default 500)")
    ap.add_argument("--image-mb", type=int, default=8, help="synthetic rootfs size in MB (default 8)")
    ap.add_argument("--scenarios", default="one,srv2,cache,blip")
    ap.add_argument("--static", default="auto", help="netslate serve --static (auto, nginx, off)")
    ap.add_argument("--procs", type=int, default=4, help="client processes the boots are spread over")
    ap.add_argument("--rounds", type=int, default=6, help="pull rounds per boot before it counts as failed (backoff between)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds for one scenario's boots")
    ap.add_argument("--work", default=None, help="work directory (default: a temp dir, removed)")
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/results/boot_storm.json")
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    args = ap.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="boot-storm-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        data = make_world(work, args.image_mb)
        sha, size = rootfs_sha(data)
        how = {"rounds": args.rounds, "timeout": args.timeout, "rootfs_sha256": sha}
        out = {"n": args.n, "image_bytes": size, "static": args.static, "client_procs": args.procs, "scenarios": {}}
        runners = {"one": scenario_one, "srv2": scenario_srv2, "cache": scenario_cache, "blip": scenario_blip}
        for name in args.scenarios.split(","):
            out["scenarios"][name] = runners[name](data, work, args, how)
            if not args.json:
                print(name, json.dumps(out["scenarios"][name]), file=sys.stderr, flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    if args.no_record:
        print(json.dumps(out, indent=2))
    else:
        from _common import record

        record("boot_storm", out)
    failed = sum(s["failed"] for s in out["scenarios"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
