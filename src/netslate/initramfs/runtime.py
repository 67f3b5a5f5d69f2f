"""I/O helpers shared by the boot modes inside the initramfs (standard library only).

Every failure is printed on the console as a `netslate: ...` line before anything retries or
falls back.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from netslate.images import pull as pullmod
from netslate.initramfs.bootargs import BootArgs, backoff, parse_env_file
from netslate.onmachine.formats import MOUNTABLE
from netslate.onmachine.fsutil import atomic_write

RUN = Path(os.environ.get("NETSLATE_RUN", "/run/netslate"))
NEWROOT = Path(os.environ.get("NETSLATE_NEWROOT", "/newroot"))
MOUNT_TYPES = {fmt: fmt for fmt in MOUNTABLE}  # image format → mount -t


def log(msg: str) -> None:
    print(f"netslate: {msg}", flush=True)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode())


def read_net() -> dict:
    try:
        return parse_env_file((RUN / "net.env").read_text())
    except OSError:
        return {}


@dataclass
class Env:
    args: BootArgs
    net: dict = field(default_factory=dict)
    cmdline: str = ""  # /proc/cmdline as booted (the local boot entries reuse it)

    @property
    def key_bytes(self) -> bytes | None:
        return base64.b64decode(self.args.key) if self.args.key else None


def run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def run_input(argv: list[str], data: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=data, capture_output=True, text=True, timeout=timeout)


def mount(source: str, target: Path, fstype: str | None = None, options: str | None = None) -> None:
    target.mkdir(parents=True, exist_ok=True)
    argv = ["mount"]
    if fstype:
        argv += ["-t", fstype]
    if options:
        argv += ["-o", options]
    proc = run(argv + [source, str(target)])
    if proc.returncode != 0:
        raise OSError(f"mount {source} on {target} failed: {(proc.stderr or proc.stdout).strip()}")


def umount(target: Path) -> None:
    run(["umount", "-l", str(target)])


def umount_now(target: Path) -> None:
    """A real (not lazy) unmount, so everything is written before the caller goes on."""
    if run(["umount", str(target)]).returncode != 0:
        umount(target)


class FetchFailed(Exception):
    def __init__(self, msg: str, unreachable: bool):
        super().__init__(msg)
        self.unreachable = unreachable


def fetch_rootfs(env: Env, cache_dir: Path, output: Path) -> tuple[pullmod.PullStats, str]:
    """Pull the rootfs of the pinned manifest, trying each server per round, with backoff between rounds.

    Every chunk is verified (by netslate.images.pull, the CLI's own code); chunks already fetched
    stay in `cache_dir`, so a server that fails half-way costs only what is left. Returns
    (stats, server). Raises FetchFailed; `unreachable` is True when no server answered at all."""
    a = env.args
    answered = False
    last = ""
    for rnd in range(a.retries):
        for server in a.servers:
            try:
                stats = pullmod.pull(server, a.image, a.ref, cache_dir, output, artifact="rootfs",
                                     trust=a.key, pinned_digest=a.manifest, workers=4,
                                     timeout=a.timeout, retries=1, pin=a.pin)
                return stats, server
            except pullmod.PullError as exc:
                last = str(exc)
                if "cannot fetch" not in last:
                    answered = True
                log(f"pull from {server} failed: {last}")
            # OSError (disk trouble, e.g. ENOSPC) is not a server problem: it goes to the caller.
        if rnd + 1 < a.retries:
            wait = backoff(rnd)
            log(f"no server delivered {a.image}@{a.ref} (round {rnd + 1} of {a.retries}); retrying in {wait:.0f} s")
            time.sleep(wait)
    raise FetchFailed(last or "no server", unreachable=not answered)


def check_manifest(env: Env, cache_dir: Path) -> tuple[dict, str, str]:
    """Fetch and verify only the manifest (cheap: tells whether a server is there and what it says).
    Returns (payload, digest, server). Raises FetchFailed."""
    a = env.args
    answered = False
    last = ""
    for rnd in range(a.retries):
        for server in a.servers:
            try:
                http = pullmod._Http(server, a.timeout, a.pin)
                key = env.key_bytes
                payload, digest = pullmod.fetch_manifest(http, cache_dir, key, a.image, a.ref, a.manifest)
                return payload, digest, server
            except pullmod.PullError as exc:
                last = str(exc)
                if "cannot fetch" not in last:
                    answered = True
                log(f"manifest from {server} refused or unavailable: {last}")
        if rnd + 1 < a.retries:
            wait = backoff(rnd)
            log(f"no server answered for {a.image}@{a.ref} (round {rnd + 1} of {a.retries}); retrying in {wait:.0f} s")
            time.sleep(wait)
    raise FetchFailed(last or "no server", unreachable=not answered)


def mount_root(image_file: Path, fmt: str, init: str) -> None:
    """Image read-only (loop) + tmpfs upper → overlayfs on NEWROOT. Everything lives under RUN,
    which /init moves into the new root, so the mounts stay reachable there."""
    fstype = MOUNT_TYPES.get(fmt)
    if fstype is None:
        raise OSError(f"rootfs format {fmt!r} cannot be mounted (squashfs, erofs or ext4)")
    lower, rw = RUN / "lower", RUN / "rw"
    mount(str(image_file), lower, fstype, "loop,ro")
    mount("tmpfs", rw, "tmpfs", "mode=0755")
    (rw / "upper").mkdir(exist_ok=True)
    (rw / "work").mkdir(exist_ok=True)
    mount("overlay", NEWROOT, "overlay", f"lowerdir={lower},upperdir={rw}/upper,workdir={rw}/work")
    if not os.path.lexists(str(NEWROOT) + init):
        umount(NEWROOT)
        umount(rw)
        umount(lower)
        raise OSError(f"the image has no {init}")


def bytes_line(stats: pullmod.PullStats, server: str) -> str:
    return (f"rootfs {stats.name}@{stats.version}: downloaded {stats.bytes_downloaded} of {stats.bytes_total} bytes "
            f"({stats.chunks_downloaded} of {stats.chunks_total} chunks, {stats.chunks_reused} reused) from {server} "
            f"in {stats.seconds:.1f} s")


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
