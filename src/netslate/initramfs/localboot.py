"""Local boot from the NETSLATE disk (cache mode, BIOS): the path the firmware takes when network
boot fails (server down, no PXE answer).

After a verified boot from a server, the cache-mode stage keeps each kept version's kernel and
initrd on the NETSLATE disk (fetched and verified against the signed manifest, like the rootfs)
and installs extlinux into the filesystem's boot sector. The NETSLATE filesystem covers the whole
disk, so that boot sector is the disk's first sector: when PXE fails, the BIOS moves on to the
disk, extlinux loads the cached kernel + netslate initramfs, and the stage then boots what the
cache allows (`netslate.boot=local` on the command line marks such a boot).

    boot/extlinux/ldlinux.sys, ldlinux.c32   extlinux itself (installed once, reinstalled on a version change)
    boot/extlinux/extlinux.conf              one label per kept version, newest verified first
    boot/images/NAME/V/vmlinuz, initrd       the version's kernel and initrd, verified when written
    boot/state.json                          what was verified: {"NAME/V": {"kernel": sha256, "initrd": sha256}}

The files are verified when written, not when the firmware loads them (no Secure Boot chain);
the rootfs they boot is verified again by the initramfs, as on every boot.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
from pathlib import Path

from netslate.images import pull as pullmod
from netslate.initramfs import runtime as rt

EXTLINUX = "/usr/bin/extlinux"
FIFREEZE, FITHAW = 0xC0045877, 0xC0045878  # _IOWR('X', 119/120, int)
ARTIFACTS = (("kernel", "vmlinuz"), ("initrd", "initrd"))
# Arguments that describe one particular boot, never copied into the local boot entries.
_DROP = ("initrd=", "BOOT_IMAGE=", "BOOTIF=", "netslate.image=", "netslate.manifest=", "netslate.boot=")
_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9_.,:/@=+%\[\]-]+$")


# ---------------------------------------------------------------- pure helpers
def entry_args(cmdline: str, image: str, version: int, digest: str) -> str:
    """The kernel command line of a local boot entry: the running boot's arguments, minus what
    named this boot's image and files, plus the cached version's image, digest and boot=local."""
    from netslate.initramfs.stage import split_cmdline

    keep = []
    for tok in split_cmdline(cmdline):
        if not tok or tok.startswith(_DROP):
            continue
        if "\n" in tok or "\r" in tok:
            continue
        if not _SAFE_TOKEN.match(tok):
            k, sep, v = tok.partition("=")
            tok = f'{k}="{v}"' if sep and '"' not in v else shlex.quote(tok)
        keep.append(tok)
    return " ".join(keep + [f"netslate.image={image}@{version}", f"netslate.manifest={digest}", "netslate.boot=local"])


def serial_line(cmdline: str) -> str | None:
    """`SERIAL n baud` for extlinux when the boot uses a serial console (console=ttySn[,baud])."""
    from netslate.initramfs.stage import split_cmdline

    for tok in split_cmdline(cmdline):
        m = re.match(r"^console=ttyS([0-9])(?:,([0-9]{4,6}))?", tok)
        if m:
            return f"SERIAL {m.group(1)} {m.group(2) or '115200'}"
    return None


def render_config(image: str, entries: list[dict], serial: str | None) -> str:
    """extlinux.conf: the first entry is the default. entries: [{"version", "args"}], newest first."""
    if not entries:
        raise ValueError("no local boot entries")
    lines = ["# Written by the netslate initramfs (cache mode): the firmware boots this disk when",
             "# network boot fails. Rewritten after every verified boot from a server; do not edit."]
    if serial:
        lines.append(serial)
    first = entries[0]
    lines += [f"DEFAULT {image}-{first['version']}", "PROMPT 1", "TIMEOUT 20",
              f"SAY netslate: local boot from the NETSLATE disk: {image}@{first['version']}"
              + (f" (type {image}-{entries[1]['version']} for the previous version)" if len(entries) > 1 else "")]
    for e in entries:
        v = e["version"]
        lines += ["", f"LABEL {image}-{v}", f"  LINUX /boot/images/{image}/{v}/vmlinuz",
                  f"  INITRD /boot/images/{image}/{v}/initrd", f"  APPEND {e['args']}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- on the disk
def _boot_dir(root: Path, image: str, v: int) -> Path:
    return root / "boot" / "images" / image / str(v)


def _verified(path: Path, art: dict, known: dict | None, name: str) -> bool:
    """True if `path` holds the artifact: by the recorded hash (size checked), else by hashing it."""
    from netslate.initramfs.mode_cache import verify_file

    try:
        if path.stat().st_size != art.get("size"):
            return False
    except OSError:
        return False
    if known and known.get(name) == art.get("sha256"):
        return True
    return verify_file(path, art.get("size", -1), art.get("sha256", ""))


def fetch_boot_files(env: rt.Env, root: Path, image: str, meta: dict, server: str, state: dict) -> bool:
    """Make version's kernel + initrd present and verified under boot/NAME/V. False if the
    version has no initrd or kernel, or a file cannot be had (the local entry is then left out)."""
    payload, digest = meta["payload"], meta["digest"]
    v = int(payload["version"])
    arts = payload.get("artifacts") or {}
    if "kernel" not in arts or "initrd" not in arts:
        rt.log(f"{image}@{v} has no kernel or no initrd in its manifest; no local boot entry for it")
        return False
    d = _boot_dir(root, image, v)
    key = f"{image}/{v}"
    known = state.get(key)
    for art_name, file_name in ARTIFACTS:
        path = d / file_name
        if _verified(path, arts[art_name], known, art_name):
            continue
        stats = pullmod.pull(server, image, str(v), root / "pull", path, artifact=art_name, trust=env.args.key,
                             pinned_digest=digest, workers=2, timeout=env.args.timeout, retries=2)
        rt.log(f"local boot: {art_name} of {image}@{v}: downloaded {stats.bytes_downloaded} of {stats.bytes_total} bytes")
    state[key] = {n: arts[n]["sha256"] for n, _f in ARTIFACTS}
    return True


def boot_sector_ok(head: bytes) -> bool:
    """extlinux's boot sector: "SYSLINUX" as the OEM name, and the 0x55AA signature."""
    return len(head) >= 512 and head[3:11] == b"SYSLINUX" and head[510:512] == b"\x55\xaa"


def read_boot_sector(dev: str | None) -> bytes:
    if not dev:
        return b""
    try:
        with open(dev, "rb") as f:
            return f.read(512)
    except OSError:
        return b""


def checkpoint(root: Path) -> None:
    """Write the journal back to the filesystem's home blocks (freeze + thaw). extlinux reads ext4
    without replaying the journal, so a machine switched off before ext4's own checkpoint would
    otherwise find the old extlinux.conf (or none), and a later journal replay could put back a
    copy of block 0 from before extlinux wrote its boot sector."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.ioctl(fd, FIFREEZE, 0)
        except OSError as exc:
            os.sync()
            rt.log(f"local boot: cannot checkpoint the NETSLATE journal ({exc}); synced only")
            return
        for _ in range(3):
            try:
                fcntl.ioctl(fd, FITHAW, 0)
                return
            except OSError as exc:
                rt.log(f"local boot: thaw of the NETSLATE disk failed ({exc}); retrying")
    finally:
        os.close(fd)


def install_extlinux(root: Path, dev: str | None = None) -> None:
    """extlinux into the NETSLATE filesystem's boot sector (= the disk's first sector): once per
    extlinux version, and again whenever that sector no longer holds it. Raises OSError with
    extlinux's own words."""
    xdir = root / "boot" / "extlinux"
    xdir.mkdir(parents=True, exist_ok=True)
    ver = rt.run([EXTLINUX, "--version"], timeout=30)
    version = (ver.stdout + ver.stderr).strip().splitlines()[0] if (ver.stdout + ver.stderr).strip() else "?"
    marker = xdir / "installed-by"
    try:
        if marker.read_text().strip() == version and (xdir / "ldlinux.sys").exists():
            if dev is None or boot_sector_ok(read_boot_sector(dev)):
                return
            rt.log(f"local boot: the boot sector of {dev} no longer holds extlinux; installing it again")
    except OSError:
        pass
    proc = rt.run([EXTLINUX, "--install", str(xdir)], timeout=120)
    if proc.returncode != 0:
        raise OSError(f"extlinux --install failed: {(proc.stderr or proc.stdout).strip()[-200:]}")
    rt.write_text(marker, version + "\n")
    rt.log(f"local boot: extlinux installed on the NETSLATE disk ({version})")


def prune_boot_files(root: Path, image: str, keep: set[int], state: dict) -> None:
    base = root / "boot" / "images" / image
    if not base.is_dir():
        return
    for d in base.iterdir():
        if d.is_dir() and (not d.name.isdigit() or int(d.name) not in keep):
            for f in d.iterdir():
                f.unlink(missing_ok=True)
            d.rmdir()
            state.pop(f"{image}/{d.name}", None)


def update(env: rt.Env, root: Path, image: str, metas: dict[int, dict], server: str, cmdline: str,
           dev: str | None = None) -> dict:
    """After a verified boot from `server`: boot files for every kept version (metas: {v: meta},
    the current one first), extlinux installed, extlinux.conf rewritten. Returns what was done;
    never raises (the boot goes on without a local entry, and says why)."""
    if not Path(EXTLINUX).exists():
        return {"installed": False, "reason": "extlinux is not in this initramfs"}
    state_path = root / "boot" / "state.json"
    state = rt.read_json(state_path, {}) or {}
    entries = []
    try:
        for v, meta in metas.items():
            try:
                if fetch_boot_files(env, root, image, meta, server, state):
                    entries.append({"version": v, "args": entry_args(cmdline, image, v, meta["digest"])})
            except pullmod.PullError as exc:
                rt.log(f"local boot: cannot fetch the boot files of {image}@{v}: {exc}")
        prune_boot_files(root, image, {e["version"] for e in entries}, state)
        rt.write_text(state_path, json.dumps(state, sort_keys=True))
        if not entries:
            return {"installed": False, "reason": "no version with a verified kernel and initrd"}
        install_extlinux(root, dev)
        rt.write_text(root / "boot" / "extlinux" / "extlinux.conf", render_config(image, entries, serial_line(cmdline)))
        checkpoint(root)
    except OSError as exc:
        rt.log(f"local boot not installed: {exc}")
        return {"installed": False, "reason": str(exc)}
    return {"installed": True, "versions": [e["version"] for e in entries]}
