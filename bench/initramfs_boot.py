"""Benchmark: netslate initramfs boots under QEMU TCG, power-on to the image's init, and bytes moved.

    uv run python bench/initramfs_boot.py        (as root; about 3 minutes on 2 cores)

Boots the tiny test image (tests/initramfs/initramfs_world.py: busybox + 3 MiB of data, a
5 MB uncompressed squashfs) with the host's Debian kernel: ram mode, cache mode first boot
(formats the disk), cache second boot (unchanged image), cache update (a new version with one
changed file) and cache with the server down. "init reached" is the moment the image's
/sbin/init prints its marker, i.e. just after switch_root. Prints one JSON document.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "initramfs"))
sys.path.insert(0, str(ROOT / "tests"))

from initramfs_world import MARKER, boot_json, chunk_requests, finish, make_tiny, make_vm, make_world, new_disk, ns_args  # noqa: E402


def timed_boot(w, name, args, disk=None) -> dict:
    vm = make_vm(w, name, args, disk)
    before = chunk_requests(w)
    start = time.monotonic()
    with vm:
        vm.wait_for(MARKER, 300)
        reached = time.monotonic() - start
        con = finish(vm)
    rec = boot_json(con)
    return {"seconds_to_init": round(reached, 1), "stage_seconds": rec.get("stage_seconds"), "mode": rec["mode"],
            "source": rec["source"], "version": rec["version"], "bytes_downloaded": rec.get("bytes_downloaded", 0),
            "bytes_total": rec.get("bytes_total"), "chunk_requests": chunk_requests(w) - before}


def main() -> None:
    os.environ.setdefault("NETSLATE_VMLAB_ACCEL", "tcg")
    with tempfile.TemporaryDirectory(prefix="bench-initramfs-") as tmp, make_world(Path(tmp)) as w:
        via = [w.hostile["pass"]]  # the counting pass-through proxy
        r1 = w.ctx.library.resolve("tiny", "1")
        out = {"machine": f"{os.cpu_count()} cores, {platform.platform()}, QEMU TCG, 768 MiB guest",
               "initramfs_bytes": w.initrd.stat().st_size, "image_bytes": r1.artifacts["rootfs"]["size"]}
        out["ram"] = timed_boot(w, "b-ram", ns_args(w, r1, "ram", servers=via))
        disk = new_disk(w, "bench")
        args = ("netslate.disk=allow",)
        out["cache_first"] = timed_boot(w, "b-c1", ns_args(w, r1, "cache", servers=via, extra=args), disk)
        out["cache_second"] = timed_boot(w, "b-c2", ns_args(w, r1, "cache", servers=via, extra=args), disk)
        v2 = w.ctx.library.import_files("tiny", rootfs=make_tiny(Path(tmp) / "tiny2", "2", 2), warn=lambda m: None)
        r2 = w.ctx.library.resolve("tiny", str(v2["version"]))
        out["cache_update"] = timed_boot(w, "b-c3", ns_args(w, r2, "cache", servers=via, extra=args), disk)
        down = [f"http://{w.lab.address}:8099"]
        out["cache_server_down"] = timed_boot(w, "b-c4", ns_args(w, r2, "cache", servers=down, extra=args + ("netslate.retries=1",)), disk)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
