"""Desktop pool benchmark on a real libvirtd with tiny TCG guests. Prints one JSON object.

- provision: per-desktop time to clone (qcow2 overlay), define and start (from the reconcile actions)
- fill: time to bring a 20-desktop pool on one host from empty to all running
- request: latency of `request` with a prestarted spare, in-process and over the HTTP API
- reset: release → fresh overlay → running again
- linked clone vs full copy of a 512 MiB golden image, side by side

uv run python bench/desktops_pool.py [--size 20]
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "desktops"))

from desktops_fixtures import build_guest, cleanup, ensure_libvirtd, traversable  # noqa: E402

from netslate.context import Context  # noqa: E402
from netslate.desktops import allocation, golden, hosts, pools, tinyguest  # noqa: E402
from netslate.desktops.actuator import Actuator  # noqa: E402


def clone_vs_copy(work: Path, n: int = 5) -> dict:
    big = work / "big-golden.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(big), "1G"], check=True)
    # 512 MiB of real data in the golden image (a small OS install's worth)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 512M", str(big)], check=True, capture_output=True)
    linked, full = [], []
    for i in range(n):
        t = time.perf_counter()
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(big), "-F", "qcow2", str(work / f"l{i}.qcow2")], check=True)
        linked.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "qcow2", str(big), str(work / f"f{i}.qcow2")], check=True)
        with open(work / f"f{i}.qcow2", "rb") as f:
            os.fsync(f.fileno())
        full.append(time.perf_counter() - t)
    size = lambda p: os.stat(p).st_blocks * 512  # noqa: E731
    return {
        "golden_data_mib": 512,
        "linked_clone_s_median": round(statistics.median(linked), 4),
        "full_copy_s_median": round(statistics.median(full), 3),
        "linked_clone_disk_bytes": size(work / "l0.qcow2"),
        "full_copy_disk_bytes": size(work / "f0.qcow2"),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=20)
    args = ap.parse_args()
    ensure_libvirtd()
    work = Path(tempfile.mkdtemp(prefix="ns-bench-desktops-", dir="/var/tmp"))
    traversable(work)
    result: dict = {"machine": {"cpus": os.cpu_count(), "os": platform.platform(), "accel": "tcg",
                                "load_avg_at_start": os.getloadavg()[0]}}
    ctx = None
    try:
        guest = build_guest(work / "guest")
        data = work / "data"
        data.mkdir()
        ctx = Context(data).init()
        hosts.add_host(ctx, "local", "qemu:///system", "bench", accel="tcg", max_starting=args.size * 2, reserve_mib=256)
        golden.import_disk(ctx, "tiny", guest["v1"], "bench", kernel=guest["kernel"], initrd=guest["initrd"],
                           cmdline=tinyguest.CMDLINE)
        pools.create_pool(ctx, "bench", "tiny", args.size, 0, args.size, 1, 128, "spice", 2, False, "none", "floating",
                          "10.99.0.1-10.99.0.250", "*", "bench", grace_seconds=0)
        stamps = []
        t0 = time.perf_counter()
        Actuator(ctx).reconcile("bench", wait=True, timeout=900, on_action=lambda a: stamps.append(time.perf_counter()))
        fill = time.perf_counter() - t0
        per = [b - a for a, b in zip([t0] + stamps, stamps)]
        ready = [d for d in allocation.list_desktops(ctx, "bench") if d["state"] == "ready"]
        result["fill"] = {"desktops": args.size, "ready": len(ready), "seconds": round(fill, 2)}
        result["provision_s"] = {"median": round(statistics.median(per), 3), "max": round(max(per), 3)}

        # request latency with prestarted spares: in-process and through the HTTP API
        n_req = max(1, min(5, args.size // 2))  # both series take prestarted desktops
        lat = []
        for i in range(n_req):
            t = time.perf_counter()
            allocation.request_desktop(ctx, "bench", f"user{i}")
            lat.append(time.perf_counter() - t)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from nstest import start_server

        srv = start_server(ctx)
        import httpx

        api = []
        with httpx.Client(headers={"Authorization": f"Bearer {srv.admin_token}"}) as c:
            for i in range(n_req):
                t = time.perf_counter()
                r = c.post(f"{srv.url}/api/v1/pools/bench/request", json={"user": f"api{i}"})
                api.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
        srv.stop()
        result["request_with_spare_s"] = {"in_process_median": round(statistics.median(lat), 4),
                                          "api_median": round(statistics.median(api), 4), "api_max": round(max(api), 4)}

        # reset: release one desktop, time the reset action
        d = allocation.list_desktops(ctx, "bench", "user0")[0]
        allocation.release_desktop(ctx, d["id"], "bench")
        t = time.perf_counter()
        Actuator(ctx).reconcile("bench")
        result["reset_s"] = round(time.perf_counter() - t, 3)
        after = allocation.show_desktop(ctx, d["id"])
        assert after["state"] == "ready" and after["user"] is None and after["started_at"] != d["started_at"], after

        # boot time of one tiny guest under this load (serial console marker after its reset)
        log = data / "desktops" / "logs" / f"{d['name']}.log"
        t = time.perf_counter()
        while time.perf_counter() - t < 600:
            if log.exists() and "NETSLATE-GUEST-UP" in log.read_text(errors="replace"):
                break
            time.sleep(0.5)
        result["guest_boot_after_reset_s_under_load"] = round(time.perf_counter() - t, 1)
        pools.remove_pool(ctx, "bench", "bench", force=True)
        Actuator(ctx).reconcile()
        result["clone_vs_copy"] = clone_vs_copy(work)
    finally:
        if ctx is not None:
            cleanup(ctx)
        shutil.rmtree(work, ignore_errors=True)
    out = json.dumps(result, indent=2)
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / "desktops_pool.json").write_text(out + "\n")
    print(out)


if __name__ == "__main__":
    main()
