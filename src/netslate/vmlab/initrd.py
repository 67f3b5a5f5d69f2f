"""A tiny busybox-static initrd for boot tests: /init prints a marker and /proc/cmdline, then powers off.

The real netslate initramfs is built elsewhere; this one only proves which kernel command line and
which initrd a VM actually booted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")

INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "NSLAB-INITRD id={marker}"
echo "NSLAB-CMDLINE: $(/bin/busybox cat /proc/cmdline)"
{extra}
echo "NSLAB-POWEROFF"
/bin/busybox sync
/bin/busybox poweroff -f
"""


def build_busybox_initrd(out: Path, marker: str, extra_shell: str = "") -> Path:
    """Write a newc cpio (uncompressed) to `out`. `marker` shows up as `NSLAB-INITRD id=<marker>`."""
    if not all(c.isalnum() or c in "._-" for c in marker):
        raise ValueError(f"marker must be [A-Za-z0-9._-]: {marker!r}")
    if not BUSYBOX.exists():
        raise RuntimeError("busybox-static is not installed (/bin/busybox)")
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="nslab-initrd-") as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        shutil.copy2(BUSYBOX, root / "bin" / "busybox")
        os.symlink("busybox", root / "bin" / "sh")
        (root / "init").write_text(INIT.format(marker=marker, extra=extra_shell))
        (root / "init").chmod(0o755)
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        proc = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "--owner=0:0"], cwd=root,
                              input=("\n".join(files) + "\n").encode(), capture_output=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"cpio failed: {proc.stderr.decode(errors='replace')[-300:]}")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(proc.stdout)
    return out
