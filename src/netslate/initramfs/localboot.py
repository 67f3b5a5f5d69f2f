"""Local boot from the NETSLATE disk (cache mode, BIOS and UEFI): the path the firmware takes when
network boot fails (server down, no PXE answer).

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

UEFI machines get a GPT disk instead (made on first boot, see `make_uefi_layout`): an EFI system
partition labelled NSBOOT (FAT32) and the NETSLATE ext4 partition. The ESP holds systemd-boot as
the fallback loader EFI/BOOT/BOOTX64.EFI, one loader entry per kept version and copies of the
verified kernel + initrd (netslate/NAME/V/); the firmware boots it when PXE fails.

The files are verified when written, not when the firmware loads them (no Secure Boot chain);
the rootfs they boot is verified again by the initramfs, as on every boot.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import time
from pathlib import Path

from netslate.images import pull as pullmod
from netslate.initramfs import runtime as rt

EXTLINUX = "/usr/bin/extlinux"
FIFREEZE, FITHAW = 0xC0045877, 0xC0045878  # _IOWR('X', 119/120, int)
SYSTEMD_BOOT = "/usr/lib/netslate/systemd-bootx64.efi"
ESP_LABEL = "NSBOOT"
ESP_MIB = 256  # two versions of kernel + netslate initramfs (~25 MB each) with room to grow
GPT_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
GPT_LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
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


def partition_path(disk: str, n: int) -> str:
    """/dev/vda + 2 → /dev/vda2; /dev/nvme0n1 + 2 → /dev/nvme0n1p2."""
    return f"{disk}p{n}" if disk[-1].isdigit() else f"{disk}{n}"


def gpt_script() -> str:
    """sfdisk input for a UEFI NETSLATE disk: the ESP first, NETSLATE on the rest."""
    return (f"label: gpt\nsize={ESP_MIB}MiB, type={GPT_ESP}, name=\"{ESP_LABEL}\"\n"
            f"type={GPT_LINUX}, name=\"NETSLATE\"\n")


def render_loader(image: str, entries: list[dict]) -> dict[str, str]:
    """systemd-boot's files on the ESP (path → text): loader.conf and one entry per version, the
    first entry the default."""
    if not entries:
        raise ValueError("no local boot entries")
    files = {"loader/loader.conf": f"default netslate-{image}-{entries[0]['version']}.conf\ntimeout 2\neditor no\n"}
    for e in entries:
        v = e["version"]
        files[f"loader/entries/netslate-{image}-{v}.conf"] = (
            f"title netslate {image}@{v} (local boot from the NETSLATE disk)\n"
            f"linux /netslate/{image}/{v}/vmlinuz\ninitrd /netslate/{image}/{v}/initrd\noptions {e['args']}\n")
    return files


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


def is_uefi() -> bool:
    return Path("/sys/firmware/efi").is_dir()


def make_uefi_layout(disk: str) -> str | None:
    """Partition an empty disk for a UEFI machine (GPT: ESP + NETSLATE) and format the ESP.
    Returns the NETSLATE partition (to be formatted by the caller), or None with the reason logged."""
    proc = rt.run_input(["sfdisk", "--quiet", "--wipe", "always", disk], gpt_script(), timeout=60)
    if proc.returncode != 0:
        rt.log(f"sfdisk {disk} failed: {(proc.stderr or proc.stdout).strip()[-200:]}")
        return None
    esp, data = partition_path(disk, 1), partition_path(disk, 2)
    deadline = time.monotonic() + 10
    while not (os.path.exists(esp) and os.path.exists(data)) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc = rt.run(["mkfs.vfat", "-F", "32", "-n", ESP_LABEL, esp], timeout=120)
    if proc.returncode != 0:
        rt.log(f"mkfs.vfat {esp} failed: {(proc.stderr or proc.stdout).strip()[-200:]}")
        return None
    rt.log(f"partitioned {disk} for UEFI: {esp} EFI system partition ({ESP_MIB} MiB, {ESP_LABEL}), {data} NETSLATE")
    return data


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.stat().st_size != b.stat().st_size:
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                x, y = fa.read(1 << 20), fb.read(1 << 20)
                if x != y:
                    return False
                if not x:
                    return True
    except OSError:
        return False


def _copy(src: Path, dst: Path) -> None:
    """Copy unless identical; a temporary name + rename, then fsync (FAT has no journal)."""
    if _same_file(src, dst):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)


def update_esp(root: Path, image: str, entries: list[dict]) -> None:
    """systemd-boot, the kept versions' kernel + initrd and the loader entries onto the ESP."""
    proc = rt.run(["findfs", f"LABEL={ESP_LABEL}"], timeout=30)
    esp_dev = proc.stdout.strip()
    if proc.returncode != 0 or not esp_dev.startswith("/dev/"):
        raise OSError("UEFI local boot needs the EFI system partition (NSBOOT) of a GPT NETSLATE disk; this "
                      "NETSLATE disk has none (a whole-disk layout: wipe it to get the UEFI layout)")
    mnt = rt.RUN / "esp"
    rt.mount(esp_dev, mnt, "vfat", "rw,noatime")
    try:
        _copy(Path(SYSTEMD_BOOT), mnt / "EFI" / "BOOT" / "BOOTX64.EFI")
        for e in entries:
            src = _boot_dir(root, image, e["version"])
            for _art, name in ARTIFACTS:
                _copy(src / name, mnt / "netslate" / image / str(e["version"]) / name)
        files = render_loader(image, entries)
        for rel, text in files.items():
            rt.write_text(mnt / rel, text)
        keep = {str(e["version"]) for e in entries}
        base = mnt / "netslate" / image
        for d in (base.iterdir() if base.is_dir() else []):
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)
        for f in (mnt / "loader" / "entries").glob(f"netslate-{image}-*.conf"):
            if f"loader/entries/{f.name}" not in files:
                f.unlink(missing_ok=True)
        os.sync()
    finally:
        rt.umount_now(mnt)


def update(env: rt.Env, root: Path, image: str, metas: dict[int, dict], server: str, cmdline: str,
           dev: str | None = None) -> dict:
    """After a verified boot from `server`: boot files for every kept version (metas: {v: meta},
    the current one first), then the firmware's way to them: extlinux (BIOS) or systemd-boot on
    the ESP (UEFI). Returns what was done; never raises (the boot goes on without a local entry,
    and says why)."""
    uefi = is_uefi()
    if not uefi and not Path(EXTLINUX).exists():
        return {"installed": False, "reason": "extlinux is not in this initramfs"}
    if uefi and not Path(SYSTEMD_BOOT).exists():
        return {"installed": False, "reason": "systemd-boot is not in this initramfs"}
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
        if uefi:
            update_esp(root, image, entries)
        else:
            install_extlinux(root, dev)
            rt.write_text(root / "boot" / "extlinux" / "extlinux.conf", render_config(image, entries, serial_line(cmdline)))
            checkpoint(root)
    except OSError as exc:
        rt.log(f"local boot not installed: {exc}")
        return {"installed": False, "reason": str(exc), "firmware": "uefi" if uefi else "bios"}
    return {"installed": True, "versions": [e["version"] for e in entries], "firmware": "uefi" if uefi else "bios"}
