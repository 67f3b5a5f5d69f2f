"""pxelinux.cfg files for legacy (non-iPXE) clients, pure. The TFTP side writes them; this only renders.

Signatures (all pure, all raise ipxe.UnsafeValue on any value that could alter the file):

    mac_filename(mac: str) -> str              "aa:bb:cc:dd:ee:ff" → "01-aa-bb-cc-dd-ee-ff"
    uuid_filename(uuid: str) -> str            SMBIOS UUID → lower-case "xxxxxxxx-xxxx-..."
    PxeEntry(label, title, kernel_url, initrd_url, args)
                                               one boot choice; kernel_url=None means "local disk"
    LOCAL: PxeEntry                            the ready-made "boot from the local disk" entry
    render_machine(entry: PxeEntry) -> str     contents of pxelinux.cfg/01-<mac> and pxelinux.cfg/<uuid>:
                                               boots `entry` at once, no prompt
    render_menu(entries: list[PxeEntry], default: str | None = "local", timeout_s: int = 30,
                title: str = "netslate") -> str
                                               contents of pxelinux.cfg/default: a menu.c32 menu

Files for a whole inventory come from `BootEngine.pxelinux_files(base_url)` (engine.py), which
returns {relative path under the TFTP root: text}, e.g. {"pxelinux.cfg/01-52-54-00-12-34-56": "..."}.

Kernel and initrd are HTTP URLs, so the TFTP root must use `lpxelinux.0` (Debian `pxelinux`, the
HTTP-capable build) with `ldlinux.c32`, `menu.c32` and `libutil.c32` from `syslinux-common`.
"""

from __future__ import annotations

from dataclasses import dataclass

from netslate.boot import ipxe
from netslate.boot.rules import MAC_RE, UUID_RE


def mac_filename(mac: str) -> str:
    m = str(mac).lower()
    if not MAC_RE.match(m):
        raise ipxe.UnsafeValue(f"not a MAC: {mac!r:.40}")
    return "01-" + m.replace(":", "-")


def uuid_filename(uuid: str) -> str:
    u = str(uuid).lower()
    if not UUID_RE.match(u):
        raise ipxe.UnsafeValue(f"not a UUID: {uuid!r:.40}")
    return u


@dataclass(frozen=True)
class PxeEntry:
    label: str
    title: str
    kernel_url: str | None  # None: boot the local disk
    initrd_url: str | None = None
    args: tuple[str, ...] = ()


LOCAL = PxeEntry("local", "boot from the local disk", None)


def _entry_lines(e: PxeEntry) -> list[str]:
    lines = [f"LABEL {ipxe.label(e.label)}", f"  MENU LABEL {ipxe.text(e.title)}"]
    if e.kernel_url is None:
        return lines + ["  LOCALBOOT 0"]
    lines.append(f"  KERNEL {ipxe.url_checked(e.kernel_url)}")
    if e.initrd_url:
        lines.append(f"  INITRD {ipxe.url_checked(e.initrd_url)}")
    args = " ".join(ipxe.arg(a, "kernel argument") for a in e.args)
    lines.append(f"  APPEND {args}".rstrip())
    lines.append("  IPAPPEND 2")  # BOOTIF=01-<mac>: tells the initramfs which NIC booted
    return lines


def render_machine(entry: PxeEntry) -> str:
    lines = ["# netslate: generated, do not edit", f"DEFAULT {ipxe.label(entry.label)}", "PROMPT 0", "TIMEOUT 0"]
    return "\n".join(lines + _entry_lines(entry)) + "\n"


def render_menu(entries: list[PxeEntry], default: str | None = "local", timeout_s: int = 30, title: str = "netslate") -> str:
    all_entries = list(entries) + ([LOCAL] if all(e.label != "local" for e in entries) else [])
    labels = [ipxe.label(e.label) for e in all_entries]
    if len(set(labels)) != len(labels):
        raise ipxe.UnsafeValue("duplicate pxelinux labels")
    chosen = default if default in labels else labels[0]
    lines = [
        "# netslate: generated, do not edit",
        "UI menu.c32",
        "PROMPT 0",
        f"TIMEOUT {max(1, min(int(timeout_s), 3600)) * 10}",
        f"MENU TITLE {ipxe.text(title)}",
        f"DEFAULT {chosen}",
    ]
    for e in all_entries:
        lines += _entry_lines(e)
    return "\n".join(lines) + "\n"
