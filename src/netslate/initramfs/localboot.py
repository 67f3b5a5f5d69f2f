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
import shutil
import subprocess
import time
from pathlib import Path

from netslate.images import pull as pullmod
from netslate.initramfs import runtime as rt
from netslate.onmachine.cmdline import split_cmdline
from netslate.onmachine.fsutil import file_matches, read_json

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
_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9_.,:/@=+%\[\]-]+\Z")


# ---------------------------------------------------------------- pure helpers
def entry_args(cmdline: str, image: str, version: int, digest: str) -> str:
    """The kernel command line of a local boot entry: the running boot's arguments, minus what
    named this boot's image and files, plus the cached version's image, digest and boot=local."""
    keep = []
    for tok in split_cmdline(cmdline):
        if not tok or tok.startswith(_DROP):
            continue
        if "\n" in tok or "\r" in tok or '"' in tok:
            continue  # the kernel knows only double quotes, and cannot nest them: such a token is dropped
        if not _SAFE_TOKEN.match(tok):
            k, sep, v = tok.partition("=")
            tok = f'{k}="{v}"' if sep else f'"{tok}"'
        keep.append(tok)
    return " ".join(keep + [f"netslate.image={image}@{version}", f"netslate.manifest={digest}", "netslate.boot=local"])


def serial_line(cmdline: str) -> str | None:
    """`SERIAL n baud` for extlinux when the boot uses a serial console (console=ttySn[,baud])."""
    for tok in split_cmdline(cmdline):
        m = re.match(r"^console=ttyS([0-9]+)(?:,([0-9]{4,6}))?", tok)
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
    # ALLOWOPTIONS 0: a label can be picked at the prompt, but no kernel argument added (init=/bin/sh)
    lines += [f"DEFAULT {image}-{first['version']}", "PROMPT 1", "TIMEOUT 20", "ALLOWOPTIONS 0",
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
    files = {}
    for e in entries:
        v = e["version"]
        files[f"loader/entries/netslate-{image}-{v}.conf"] = (
            f"title netslate {image}@{v} (local boot from the NETSLATE disk)\n"
            f"linux /netslate/{image}/{v}/vmlinuz\ninitrd /netslate/{image}/{v}/initrd\noptions {e['args']}\n")
    # loader.conf last (dicts keep order): its default entry exists before it names it
    files["loader/loader.conf"] = f"default netslate-{image}-{entries[0]['version']}.conf\ntimeout 2\neditor no\n"
    return files


def fat_label(boot_sector: bytes) -> str | None:
    """The volume label of a FAT32 boot sector (BS_VolLab at offset 71), else None."""
    if len(boot_sector) < 90 or boot_sector[510:512] != b"\x55\xaa" or boot_sector[82:87] != b"FAT32":
        return None
    return boot_sector[71:82].decode("ascii", "replace").rstrip()


# ---------------------------------------------------------------- on the disk
def _boot_dir(root: Path, image: str, v: int) -> Path:
    return root / "boot" / "images" / image / str(v)


def _verified(path: Path, art: dict, known: dict | None, name: str) -> bool:
    """True if `path` holds the artifact: by the recorded hash (size checked), else by hashing it."""
    try:
        if path.stat().st_size != art.get("size"):
            return False
    except OSError:
        return False
    if known and known.get(name) == art.get("sha256"):
        return True
    return file_matches(path, art.get("size", -1), art.get("sha256", ""))


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
                             pinned_digest=digest, workers=2, timeout=env.args.timeout, retries=2, pin=env.args.pin)
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
    """Boot files of versions not kept go, and those of other images (the profile moved on)."""
    images = root / "boot" / "images"
    for d in sorted(images.glob("*/*")) if images.is_dir() else []:
        if d.is_dir() and not (d.parent.name == image and d.name.isdigit() and int(d.name) in keep):
            shutil.rmtree(d, ignore_errors=True)
            state.pop(f"{d.parent.name}/{d.name}", None)
    for d in images.iterdir() if images.is_dir() else []:
        if d.is_dir() and d.name != image and not any(d.iterdir()):
            d.rmdir()


def is_uefi() -> bool:
    return Path("/sys/firmware/efi").is_dir()


def wipe_layout(disk: str) -> None:
    """Zero the first and last MiB (MBR, both GPT copies, the ESP's boot sector): a layout that was
    left half-made is an empty disk again, which the next boot may take afresh."""
    try:
        with open(disk, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            for off in (0, max(0, size - (1 << 20))):
                f.seek(off)
                f.write(bytes(min(1 << 20, size)))
            f.flush()
            os.fsync(f.fileno())
        rt.log(f"wiped the half-made layout of {disk}")
    except OSError as exc:
        rt.log(f"could not wipe {disk}: {exc}")


def make_uefi_layout(disk: str) -> str | None:
    """Partition an empty disk for a UEFI machine (GPT: ESP + NETSLATE) and format the ESP.
    Returns the NETSLATE partition (to be formatted by the caller), or None with the reason
    logged; a layout that fails half-way is wiped again."""
    try:
        proc = rt.run_input(["sfdisk", "--quiet", "--wipe", "always", disk], gpt_script(), timeout=60)
        if proc.returncode != 0:
            rt.log(f"sfdisk {disk} failed: {(proc.stderr or proc.stdout).strip()[-200:]}")
            wipe_layout(disk)
            return None
        esp, data = partition_path(disk, 1), partition_path(disk, 2)
        deadline = time.monotonic() + 10
        while not (os.path.exists(esp) and os.path.exists(data)) and time.monotonic() < deadline:
            time.sleep(0.2)
        proc = rt.run(["mkfs.vfat", "-F", "32", "-n", ESP_LABEL, esp], timeout=120)
        if proc.returncode != 0:
            rt.log(f"mkfs.vfat {esp} failed: {(proc.stderr or proc.stdout).strip()[-200:]}")
            wipe_layout(disk)
            return None
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        rt.log(f"partitioning {disk} for UEFI failed: {exc}")
        wipe_layout(disk)
        return None
    rt.log(f"partitioned {disk} for UEFI: {esp} EFI system partition ({ESP_MIB} MiB, {ESP_LABEL}), {data} NETSLATE")
    return data


def parent_disk(part: str) -> str | None:
    """/dev/vda2 → /dev/vda (from sysfs); None if `part` is not a partition."""
    name = Path(part).name
    sys_dir = Path("/sys/class/block") / name
    if not (sys_dir / "partition").exists():
        return None
    return "/dev/" + sys_dir.resolve().parent.name


def esp_of(dev: str | None) -> str | None:
    """The ESP next to the NETSLATE partition: partition 1 of the same disk, if labelled NSBOOT."""
    disk = parent_disk(dev) if dev else None
    if disk is None:
        return None
    esp = partition_path(disk, 1)
    try:
        with open(esp, "rb") as f:
            return esp if fat_label(f.read(512)) == ESP_LABEL else None
    except OSError:
        return None


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
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def update_esp(root: Path, image: str, entries: list[dict], dev: str | None) -> None:
    """systemd-boot, the kept versions' kernel + initrd and the loader entries onto the ESP of the
    NETSLATE disk. Whatever else netslate put there (other versions, other images) goes first, so
    a small ESP holds the new set."""
    esp_dev = esp_of(dev)
    if esp_dev is None:
        raise OSError("UEFI local boot needs the EFI system partition (NSBOOT) of a GPT NETSLATE disk; this "
                      "NETSLATE disk has none (a whole-disk layout: wipe it to get the UEFI layout)")
    mnt = rt.RUN / "esp"
    rt.mount(esp_dev, mnt, "vfat", "rw,noatime")
    try:
        files = render_loader(image, entries)
        keep_dirs = {f"{image}/{e['version']}" for e in entries}
        for d in sorted((mnt / "netslate").glob("*/*")) if (mnt / "netslate").is_dir() else []:
            if f"{d.parent.name}/{d.name}" not in keep_dirs:
                shutil.rmtree(d, ignore_errors=True)
        for f in (mnt / "loader" / "entries").glob("netslate-*.conf"):
            if f"loader/entries/{f.name}" not in files:
                f.unlink(missing_ok=True)
        for f in mnt.rglob("*.tmp"):
            f.unlink(missing_ok=True)
        _copy(Path(SYSTEMD_BOOT), mnt / "EFI" / "BOOT" / "BOOTX64.EFI")
        for e in entries:
            src = _boot_dir(root, image, e["version"])
            for _art, name in ARTIFACTS:
                _copy(src / name, mnt / "netslate" / image / str(e["version"]) / name)
        for rel, text in files.items():  # the entries, then loader.conf
            rt.write_text(mnt / rel, text)
        os.sync()
    finally:
        rt.umount_now(mnt)


def update(env: rt.Env, root: Path, image: str, metas: dict[int, dict], server: str, cmdline: str,
           dev: str | None = None) -> dict:
    """After a verified boot from `server`: boot files for every kept version (metas: {v: meta},
    the current one first), then the firmware's way to them: extlinux (BIOS) or systemd-boot on
    the ESP (UEFI). Returns what was done; never raises: the boot goes on without a local entry,
    and says why."""
    uefi = is_uefi()
    firmware = "uefi" if uefi else "bios"
    try:
        return _update(env, root, image, metas, server, cmdline, dev, uefi) | {"firmware": firmware}
    except Exception as exc:  # noqa: BLE001 - a verified root is mounted; nothing here may stop the boot
        rt.log(f"local boot not installed: {exc!r}" if not isinstance(exc, OSError) else f"local boot not installed: {exc}")
        return {"installed": False, "reason": str(exc) or repr(exc), "firmware": firmware}


def _update(env: rt.Env, root: Path, image: str, metas: dict[int, dict], server: str, cmdline: str,
            dev: str | None, uefi: bool) -> dict:
    if not uefi and not Path(EXTLINUX).exists():
        return {"installed": False, "reason": "extlinux is not in this initramfs"}
    if uefi and not Path(SYSTEMD_BOOT).exists():
        return {"installed": False, "reason": "systemd-boot is not in this initramfs"}
    if not uefi and dev and parent_disk(dev) is not None:
        # extlinux would go into the partition's boot sector, which a BIOS never runs by itself
        return {"installed": False, "reason": f"BIOS local boot needs the whole-disk NETSLATE layout; {dev} is a partition"}
    state_path = root / "boot" / "state.json"
    state = read_json(state_path, {})
    state = state if isinstance(state, dict) else {}
    entries = []
    for v, meta in metas.items():
        try:
            if fetch_boot_files(env, root, image, meta, server, state):
                entries.append({"version": v, "args": entry_args(cmdline, image, v, meta["digest"])})
        except (pullmod.PullError, KeyError, TypeError, ValueError) as exc:
            rt.log(f"local boot: cannot fetch the boot files of {image}@{v}: {exc}")
    prune_boot_files(root, image, {e["version"] for e in entries}, state)
    rt.write_text(state_path, json.dumps(state, sort_keys=True))
    if not entries:
        return {"installed": False, "reason": "no version with a verified kernel and initrd"}
    if uefi:
        update_esp(root, image, entries, dev)
    else:
        install_extlinux(root, dev)
        rt.write_text(root / "boot" / "extlinux" / "extlinux.conf", render_config(image, entries, serial_line(cmdline)))
        checkpoint(root)
    return {"installed": True, "versions": [e["version"] for e in entries]}
