"""Files of the desktops part: the installation id, disk and log directories, qemu-img overlays."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import subprocess
from pathlib import Path

from netslate.fsutil import atomic_write


def installation_id(ctx) -> str:
    """A short id that keeps this installation's domains apart from anyone else's on a shared host."""
    path = ctx.data_dir / "desktops" / "installation-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / ".id.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():
                atomic_write(path, (secrets.token_hex(3) + "\n").encode())
        return path.read_text().strip()


def disks_root(ctx) -> Path:
    return ctx.data_dir / "desktops" / "disks"


def logs_root(ctx) -> Path:
    return ctx.data_dir / "desktops" / "logs"


def make_traversable(path: Path) -> None:
    """QEMU runs as libvirt-qemu: every directory above a disk must be searchable (o+x), not readable."""
    for p in [path, *path.parents]:
        try:
            st = p.stat()
            if not st.st_mode & 0o001:
                os.chmod(p, st.st_mode | 0o001)
        except (PermissionError, FileNotFoundError):
            break


def qemu_img(*args: str) -> None:
    proc = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"qemu-img {args[0]} failed: {proc.stderr.strip()}")


def linked_clone(golden: str, out: Path) -> None:
    """A qcow2 overlay whose backing file is the golden image: the whole cost of a new desktop's disk."""
    tmp = out.with_name("." + out.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    qemu_img("create", "-q", "-f", "qcow2", "-b", golden, "-F", "qcow2", str(tmp))
    os.replace(tmp, out)
