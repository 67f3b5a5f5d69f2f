"""A tiny desktop guest for tests, benchmarks and demos: the host's Debian kernel + a busybox initramfs.

The initramfs loads the virtio and ext4 modules, mounts the desktop disk (/dev/vda, ext4 without journal),
reports on the serial console whether a scratch file from an earlier boot is there and which
golden marker it sees, then writes the scratch file. The golden image is a small qcow2 holding
that ext2 filesystem.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

MODULES = ["virtio_blk", "virtio_pci", "ext4", "erofs", "squashfs"]

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /mods/$m 2>/dev/null; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mkdir -p /mnt
if mount -t ext4 /dev/vda /mnt; then
  echo "NETSLATE-GOLDEN=$(cat /mnt/golden.txt 2>/dev/null)"
  if [ -f /mnt/scratch.txt ]; then echo "NETSLATE-SCRATCH-PRESENT=$(cat /mnt/scratch.txt)"; else echo NETSLATE-SCRATCH-ABSENT; fi
  cat /proc/sys/kernel/random/uuid > /mnt/scratch.txt
  sync
  echo "NETSLATE-SCRATCH-WRITTEN=$(cat /mnt/scratch.txt)"
elif mount -t squashfs -o ro /dev/vda /mnt 2>/dev/null || mount -t erofs -o ro /dev/vda /mnt 2>/dev/null; then
  # a golden made from a netslate image version: its read-only root filesystem image
  echo "NETSLATE-IMAGE-ROOT-HOSTNAME=$(cat /mnt/etc/hostname 2>/dev/null)"
else
  echo NETSLATE-NO-DISK
fi
echo NETSLATE-GUEST-UP
while true; do sleep 3600; done
"""


def kernel_path() -> Path:
    found = sorted(glob.glob("/boot/vmlinuz-*"))
    if not found:
        raise RuntimeError("no /boot/vmlinuz-*: install linux-image-amd64")
    return Path(found[-1])


def _kernel_release(kernel: Path) -> str:
    return kernel.name.removeprefix("vmlinuz-")


def build_initramfs(out: Path, kernel: Path | None = None) -> Path:
    """Write a gzip'd newc cpio with busybox-static, the needed modules (in load order) and /init."""
    kernel = kernel or kernel_path()
    release = _kernel_release(kernel)
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox not found: install busybox-static")
    # one module per call: extra words would be taken as module parameters
    dep = "".join(
        subprocess.run(["modprobe", "--show-depends", "-S", release, m], capture_output=True, text=True, check=True).stdout
        for m in MODULES
    )
    paths: list[str] = []
    for line in dep.splitlines():
        parts = line.split()
        if parts and parts[0] == "insmod" and parts[1] not in paths:
            paths.append(parts[1])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("bin", "proc", "sys", "dev", "mods", "mnt"):
            (root / d).mkdir()
        shutil.copy2(busybox, root / "bin" / "busybox")
        order = []
        for p in paths:
            name = os.path.basename(p)
            if name.endswith(".xz"):
                subprocess.run(["xz", "-dc", p], stdout=open(root / "mods" / name[:-3], "wb"), check=True)
                name = name[:-3]
            elif name.endswith(".zst"):
                subprocess.run(["zstd", "-qdc", p], stdout=open(root / "mods" / name[:-4], "wb"), check=True)
                name = name[:-4]
            else:
                shutil.copy2(p, root / "mods" / name)
            order.append(name)
        (root / "modules.order").write_text("\n".join(order) + "\n")
        (root / "init").write_text(INIT)
        (root / "init").chmod(0o755)
        files = subprocess.run(["find", "."], cwd=root, capture_output=True, text=True, check=True).stdout
        cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files.encode(), capture_output=True, check=True).stdout
    import gzip

    out.write_bytes(gzip.compress(cpio, compresslevel=1))
    return out


def build_golden(out: Path, marker: str, size_mib: int = 16, fmt: str = "qcow2") -> Path:
    """A small disk with an ext2 filesystem holding golden.txt = marker (qcow2 or raw)."""
    with tempfile.TemporaryDirectory() as tmp:
        content = Path(tmp) / "content"
        content.mkdir()
        (content / "golden.txt").write_text(marker + "\n")
        raw = Path(tmp) / "disk.img"
        subprocess.run(["mke2fs", "-q", "-t", "ext4", "-O", "^has_journal", "-F", "-d", str(content), str(raw), f"{size_mib}M"], check=True, capture_output=True)
        if fmt == "raw":
            shutil.copy(raw, out)
        else:
            subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(out)], check=True)
    return out


CMDLINE = "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init"
