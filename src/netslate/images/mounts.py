"""Mounts for working on image trees: loop + overlayfs working copies and chroot API filesystems.

Every helper that mounts something unmounts it again on the way out, even on failure, and
`mounts_under` lets callers refuse to delete a directory that still has something mounted in it
(an `rm -rf` through a bind-mounted /dev would be a disaster).
"""

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator

from netslate.errors import UserError

FS_TYPES = {"erofs": "erofs", "squashfs": "squashfs", "ext4": "ext4"}


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first (the order to unmount them)."""
    base = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = _unescape(line.split()[4])
            if mp == base or mp.startswith(base.rstrip("/") + "/"):
                found.append(mp)
    return sorted(set(found), key=lambda p: (-p.count("/"), p))


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"{' '.join(cmd)} failed: {(proc.stderr or proc.stdout).strip()[:300]}")


def mount(*args: str) -> None:
    _run(["mount", *args])


def umount(target: Path | str) -> None:
    """Unmount; fall back to a lazy unmount when something still holds it busy."""
    proc = subprocess.run(["umount", str(target)], capture_output=True, text=True)
    if proc.returncode != 0:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, text=True)


def umount_all(path: Path) -> list[str]:
    """Unmount everything at or below `path`. Returns what is still mounted (should be nothing)."""
    for mp in mounts_under(path):
        umount(mp)
    return mounts_under(path)


def safe_rmtree(path: Path) -> None:
    """Remove a work directory, refusing if anything is still mounted inside it."""
    import shutil

    left = umount_all(path) if Path(path).exists() else []
    if left:
        raise UserError(f"refusing to delete {path}: still mounted: {', '.join(left)}")
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def api_filesystems(root: Path) -> Iterator[None]:
    """/proc, /sys, /dev and /dev/pts inside `root` for a chroot; always unmounted afterwards."""
    root = Path(root)
    done: list[Path] = []
    try:
        for rel, args in (
            ("proc", ["-t", "proc", "proc"]),
            ("sys", ["-t", "sysfs", "-o", "ro", "sysfs"]),
            ("dev", ["--bind", "/dev"]),
            ("dev/pts", ["--bind", "/dev/pts"]),
        ):
            target = root / rel
            if target.is_symlink() or not target.is_dir():
                raise UserError(f"/{rel} in the image is not a directory; cannot chroot into it")
            mount(*args, str(target))
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            umount(target)


def chroot_command(root: Path, argv: list[str]) -> list[str]:
    return ["chroot", str(root), *argv]


@contextlib.contextmanager
def working_copy(image_file: Path, fmt: str, lower: Path, upper: Path, work: Path, merged: Path) -> Iterator[Path]:
    """Loop-mount `image_file` read-only on `lower` and an overlayfs on `merged`; yields `merged`."""
    fstype = FS_TYPES.get(fmt)
    if fstype is None:
        raise UserError(f"cannot mount a rootfs of format {fmt!r} (need erofs, squashfs or ext4)")
    for d in (lower, upper, work, merged):
        d.mkdir(parents=True, exist_ok=True)
    mounted: list[Path] = []
    try:
        opts = "loop,ro" + (",noload" if fstype == "ext4" else "")
        mount("-t", fstype, "-o", opts, str(image_file), str(lower))
        mounted.append(lower)
        mount("-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged))
        mounted.append(merged)
        yield merged
    finally:
        for target in reversed(mounted):
            for mp in mounts_under(target):
                umount(mp)
