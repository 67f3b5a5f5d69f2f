"""Step 3a: hardware facts (CPU, memory, disks, NICs + link state, DMI), read from /proc and /sys.
Each probe is separate and never raises: a missing file just leaves the fact out."""

from __future__ import annotations

import os
import socket
from pathlib import Path

DMI_FIELDS = ("sys_vendor", "product_name", "product_version", "product_serial", "product_uuid",
              "board_vendor", "board_name", "bios_vendor", "bios_version", "chassis_type")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def cpu(sysroot: Path) -> dict:
    text = _read(sysroot / "proc/cpuinfo") or ""
    model = None
    flags: list[str] = []
    count = 0
    for line in text.splitlines():
        k, _, v = line.partition(":")
        k = k.strip()
        if k == "processor":
            count += 1
        elif k == "model name" and model is None:
            model = v.strip()
        elif k == "flags" and not flags:
            flags = v.split()
    virt = "vmx" in flags or "svm" in flags
    return {"count": count or (os.cpu_count() or 0), "model": model, "virtualization": virt,
            "hypervisor": "hypervisor" in flags}


def memory(sysroot: Path) -> dict:
    out = {}
    for line in (_read(sysroot / "proc/meminfo") or "").splitlines():
        k, _, v = line.partition(":")
        if k in ("MemTotal", "SwapTotal"):
            try:
                out[{"MemTotal": "total_bytes", "SwapTotal": "swap_bytes"}[k]] = int(v.split()[0]) * 1024
            except (ValueError, IndexError):
                pass
    return out


def disks(sysroot: Path) -> list[dict]:
    out = []
    base = sysroot / "sys/block"
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return out
    for name in names:
        if name.startswith(("loop", "ram", "zram", "dm-", "sr", "nbd")):
            continue
        d = base / name
        sectors = _read(d / "size")
        out.append({
            "name": name,
            "size_bytes": int(sectors) * 512 if sectors and sectors.isdigit() else None,
            "rotational": _read(d / "queue/rotational") == "1",
            "model": _read(d / "device/model"),
            "removable": _read(d / "removable") == "1",
        })
    return out


def nics(sysroot: Path) -> list[dict]:
    out = []
    base = sysroot / "sys/class/net"
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return out
    for name in names:
        if name == "lo":
            continue
        d = base / name
        speed = _read(d / "speed")
        out.append({
            "name": name,
            "mac": _read(d / "address"),
            "operstate": _read(d / "operstate"),
            "carrier": _read(d / "carrier") == "1",
            "speed_mbps": int(speed) if speed and speed.lstrip("-").isdigit() and int(speed) > 0 else None,
            "physical": (d / "device").exists(),
            "mtu": int(_read(d / "mtu") or 0) or None,
        })
    return out


def dmi(sysroot: Path) -> dict:
    base = sysroot / "sys/class/dmi/id"
    out = {}
    for f in DMI_FIELDS:
        v = _read(base / f)
        if v:
            out[f] = v.lower() if f == "product_uuid" else v
    return out


def gather(sysroot: Path = Path("/")) -> dict:
    sysroot = Path(sysroot)
    return {
        "cpu": cpu(sysroot), "memory": memory(sysroot), "disks": disks(sysroot), "nics": nics(sysroot),
        "dmi": dmi(sysroot), "kernel": (_read(sysroot / "proc/sys/kernel/osrelease") or None),
        "boot_hostname": socket.gethostname(),
    }


def macs(facts: dict) -> list[str]:
    """MAC addresses of physical NICs first, then the rest (for identifying the machine)."""
    rows = sorted(facts.get("nics") or [], key=lambda n: not n.get("physical"))
    out = []
    for n in rows:
        m = (n.get("mac") or "").lower()
        if m and m != "00:00:00:00:00:00" and m not in out:
            out.append(m)
    return out
