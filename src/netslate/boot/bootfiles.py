"""What the TFTP root serves and what each file is for, pure: the one table `tftp.py` copies from,
`netslate boot files` lists and docs/boot-dhcp.md explains. Add a row to `ROWS` for a new boot file
(GRUB, shim, ...) and it is copied, listed and checked like the others.

Also the loop-free iPXE loader for BIOS (`ipxe-bios/`), rendered here:

    ipxe-bios/lpxelinux.0            Debian pxelinux, given as option 67 by a DHCP server that names one file
    ipxe-bios/ldlinux.c32            its core module (pxelinux loads it from the directory it was loaded from)
    ipxe-bios/pxelinux.cfg/default   `loader_pxelinux_cfg()`: boot ipxe.lkrn with netslate.ipxe as its initrd
    ipxe-bios/ipxe.lkrn              Debian iPXE as a Linux-kernel image; it runs its initrd as its script
    ipxe-bios/netslate.ipxe          `loader_script(base)`: DHCP, find the server, chain /boot.ipxe over HTTP

pxelinux never does DHCP again and the script never loads an iPXE binary again, so a DHCP server that
gives every client the same option 67 cannot start the chain-loading loop that Debian's
`undionly.kpxe` (no embedded script) starts there. pxelinux looks for its configuration in the
directory its own file came from, so `ipxe-bios/pxelinux.cfg/default` does not touch the per-machine
files in the top-level `pxelinux.cfg/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from netslate.boot import ipxe

LOADER_DIR = "ipxe-bios"
IPXE_DIR = Path("/usr/lib/ipxe")
PXELINUX_DIR = Path("/usr/lib/PXELINUX")
SYSLINUX_BIOS_DIR = Path("/usr/lib/syslinux/modules/bios")


@dataclass(frozen=True)
class BootFile:
    path: str  # relative to the TFTP root
    source: Path | None  # copied from here (a Debian package file); None: written by netslate
    package: str  # Debian package, or "netslate"
    firmware: str  # bios | uefi | uefi-secureboot | any
    purpose: str
    option67: bool = False  # a file name to give as DHCP option 67 (boot file name)
    loops_with_plain_dhcp: bool = False  # chain-loads itself again behind a DHCP server that names one file


ROWS: list[BootFile] = [
    BootFile(f"{LOADER_DIR}/lpxelinux.0", PXELINUX_DIR / "lpxelinux.0", "pxelinux", "bios",
             "loop-free iPXE for BIOS: option 67 for any DHCP server, with next-server (loads ipxe.lkrn + netslate.ipxe)",
             option67=True),
    BootFile(f"{LOADER_DIR}/ldlinux.c32", SYSLINUX_BIOS_DIR / "ldlinux.c32", "syslinux-common", "bios",
             "pxelinux core module for the loader"),
    BootFile(f"{LOADER_DIR}/ipxe.lkrn", IPXE_DIR / "ipxe.lkrn", "ipxe", "bios",
             "iPXE as a Linux-kernel image: runs netslate.ipxe (its initrd) as its script"),
    BootFile(f"{LOADER_DIR}/pxelinux.cfg/default", None, "netslate", "bios",
             "the loader's pxelinux config: boot ipxe.lkrn with netslate.ipxe, no menu, no wait"),
    BootFile(f"{LOADER_DIR}/netslate.ipxe", None, "netslate", "bios",
             "the loader's iPXE script: DHCP, server from next-server / option 66 / built-in, chain /boot.ipxe"),
    BootFile("undionly.kpxe", IPXE_DIR / "undionly.kpxe", "ipxe", "bios",
             "iPXE for BIOS; only with netslate's proxy/full DHCP or a DHCP server that sends iPXE (user-class) "
             "to http://SERVER/boot.ipxe", option67=True, loops_with_plain_dhcp=True),
    BootFile("snponly.efi", IPXE_DIR / "snponly.efi", "ipxe", "uefi",
             "iPXE for UEFI (the firmware's network driver); same condition as undionly.kpxe",
             option67=True, loops_with_plain_dhcp=True),
    BootFile("ipxe.efi", IPXE_DIR / "ipxe.efi", "ipxe", "uefi",
             "iPXE for UEFI with its own NIC drivers (serve --efi-binary ipxe.efi); same condition",
             option67=True, loops_with_plain_dhcp=True),
    BootFile("lpxelinux.0", PXELINUX_DIR / "lpxelinux.0", "pxelinux", "bios",
             "pxelinux with HTTP: reads pxelinux.cfg/01-<mac>, <uuid>, then default (the menu)", option67=True),
    BootFile("pxelinux.0", PXELINUX_DIR / "pxelinux.0", "pxelinux", "bios",
             "pxelinux without HTTP: cannot fetch netslate's HTTP kernels; use lpxelinux.0"),
    BootFile("ldlinux.c32", SYSLINUX_BIOS_DIR / "ldlinux.c32", "syslinux-common", "bios", "pxelinux core module"),
    BootFile("menu.c32", SYSLINUX_BIOS_DIR / "menu.c32", "syslinux-common", "bios", "pxelinux menu (pxelinux.cfg/default)"),
    BootFile("libutil.c32", SYSLINUX_BIOS_DIR / "libutil.c32", "syslinux-common", "bios", "library for menu.c32"),
    BootFile("libcom32.c32", SYSLINUX_BIOS_DIR / "libcom32.c32", "syslinux-common", "bios", "library for menu.c32"),
    BootFile("pxelinux.cfg/default", None, "netslate", "bios",
             "pxelinux menu: every image profile + the local disk (the default)"),
    # The Secure Boot chain: copied and written by secureboot.stage (not by tftp.install_binaries).
    BootFile("shimx64.efi", None, "shim-signed", "uefi-secureboot",
             "UEFI, Secure Boot on or off: Debian's signed shim, loads grubx64.efi; option 67 for any DHCP server, "
             "with next-server (shim reads no option 66)",
             option67=True),
    BootFile("grubx64.efi", None, "grub-efi-amd64-signed", "uefi-secureboot",
             "Debian's signed netboot GRUB: reads grub/grub.cfg over TFTP"),
    BootFile("grub/grub.cfg", None, "netslate", "uefi-secureboot",
             "GRUB loader: the machine's grub/grub.cfg-01-<mac>, then -<uuid>, else netslate-unknown.cfg"),
]
# Per-machine files, listed by pattern (written by the boot engine; see tftp.write_pxelinux).
PATTERNS: list[BootFile] = [
    BootFile("pxelinux.cfg/01-<mac>", None, "netslate", "bios",
             "pxelinux, one per MAC the rules send to an image or the local disk"),
    BootFile("pxelinux.cfg/<uuid>", None, "netslate", "bios", "the same, by SMBIOS UUID"),
    BootFile("grub/grub.cfg-01-<mac>", None, "netslate", "uefi-secureboot", "GRUB, one per known machine (and -<uuid>)"),
    BootFile("images/<name>/<version>/kernel, initrd", None, "netslate", "uefi-secureboot",
             "kernel and initrd the GRUB files name (GRUB fetches them over TFTP)"),
]


def sources() -> dict[str, Path]:
    """{path under the TFTP root: Debian file} for every copied row."""
    return {r.path: r.source for r in ROWS if r.source is not None}


def loader_pxelinux_cfg() -> str:
    return "\n".join([
        "# netslate: generated, do not edit",
        "# the loop-free BIOS loader: iPXE (ipxe.lkrn) running netslate.ipxe; pxelinux does no DHCP of its own",
        "DEFAULT netslate",
        "PROMPT 0",
        "TIMEOUT 0",
        "LABEL netslate",
        "  KERNEL ipxe.lkrn",
        "  INITRD netslate.ipxe",
        "",
    ])


def loader_script(base: str | None, attempts: int = 6, servers: list[str] | tuple[str, ...] = ()) -> str:
    """The loader's iPXE script. The server is `next-server` (siaddr) if the DHCP answer has one, else
    option 66 (TFTP server name), else the host of `base` (the server's own boot URL, written when the
    TFTP root is populated). Scheme and port always come from `base` (http and 80 without it).
    It chains `/boot.ipxe` only (a script, never an iPXE binary), with bounded retries.

    `servers` (base URLs, in order): a site's own first stage instead (docs/sites.md, failover): each
    round tries every server in turn, e.g. the branch's, then central's, so a dead branch server does
    not stop a machine from booting; DHCP options do not change the list."""
    if not 1 <= attempts <= 50:
        raise ipxe.UnsafeValue(f"bad attempts {attempts}")
    if servers:
        return _failover_script([ipxe.base_url(u) for u in servers], attempts)
    if base:
        b = ipxe.base_url(base)
        scheme, _, netloc = b.partition("://")
        if netloc.startswith("["):
            host, _, port = netloc[1:].partition("]")
            port = port.lstrip(":")
            host = f"[{host}]"
        else:
            host, _, port = netloc.partition(":")
    else:
        scheme, host, port = "http", "", ""
    port = port or ("443" if scheme == "https" else "80")
    lines = [
        "#!ipxe",
        "# netslate: generated, do not edit",
        "# netslate loader: fetch the boot script over HTTP; never loads an iPXE binary again (no loop)",
        "set netslate-loader 1",
        "set ns_try:int32 0",
        ":ns_dhcp",
        "dhcp && goto ns_server ||",
        "inc ns_try",
        f"iseq ${{ns_try}} {attempts} && goto ns_giveup ||",
        "echo netslate: no DHCP answer, retrying in 3 s",
        "sleep 3",
        "goto ns_dhcp",
        ":ns_server",
        f"set ns_host {ipxe.arg(host, 'server host')}" if host else "clear ns_host",
        # later lines win: option 66 over the built-in address, next-server over both
        "isset ${66:string} && set ns_host ${66:uristring} ||",
        "isset ${next-server} && set ns_host ${next-server} ||",
        "isset ${ns_host} || goto ns_noserver",
        "echo netslate: boot server ${ns_host}",
        "set ns_try:int32 0",
        ":ns_chain",
        f"chain --autofree --replace {scheme}://${{ns_host}}:{int(port)}/boot.ipxe ||",
        "inc ns_try",
        f"iseq ${{ns_try}} {attempts} && goto ns_giveup ||",
        "echo netslate: cannot fetch the boot script, retrying in 5 s",
        "sleep 5",
        "goto ns_chain",
        ":ns_noserver",
        "echo netslate: no next-server, no option 66 and no built-in server address",
        ":ns_giveup",
        "echo netslate: giving up, rebooting in 10 s",
        "sleep 10",
        "reboot",
        "",
    ]
    return "\n".join(lines)


def _failover_script(urls: list[str], attempts: int) -> str:
    tries = []
    for u in urls:
        tries += [f"echo netslate: trying boot server {u}",
                  f"chain --autofree --replace {u}/boot.ipxe || echo netslate: boot server {u} did not answer"]
    return "\n".join([
        "#!ipxe",
        "# netslate: generated, do not edit",
        "# netslate site loader: the boot servers in order (this site's first); never loads an iPXE binary (no loop)",
        "set netslate-loader 1",
        "set ns_try:int32 0",
        ":ns_dhcp",
        "isset ${ip} && goto ns_chain ||",
        "dhcp && goto ns_chain ||",
        "inc ns_try",
        f"iseq ${{ns_try}} {attempts} && goto ns_giveup ||",
        "echo netslate: no DHCP answer, retrying in 3 s",
        "sleep 3",
        "goto ns_dhcp",
        ":ns_chain",
        "set ns_try:int32 0",
        ":ns_round",
        *tries,
        "inc ns_try",
        f"iseq ${{ns_try}} {attempts} && goto ns_giveup ||",
        "echo netslate: no boot server answered, retrying in 5 s",
        "sleep 5",
        "goto ns_round",
        ":ns_giveup",
        "echo netslate: giving up, rebooting in 10 s",
        "sleep 10",
        "reboot",
        "",
    ])


def generated(base: str | None) -> dict[str, str]:
    """{path: text} of the rows netslate writes itself (the per-machine pxelinux files come from the engine)."""
    return {
        f"{LOADER_DIR}/pxelinux.cfg/default": loader_pxelinux_cfg(),
        f"{LOADER_DIR}/netslate.ipxe": loader_script(base),
    }


# ------------------------------------------------------------------ which boot path a machine used

PATHS = {
    "ipxe-bios": "iPXE BIOS",
    "ipxe-uefi": "iPXE UEFI",
    "ipxe-rom": "iPXE from the NIC or firmware (no TFTP stage)",
    "pxelinux": "pxelinux",
    "grub": "GRUB / Secure Boot",
}
# first-stage files (the name a DHCP server gives as option 67) → path; GRUB rows go here as well
FIRST_STAGE = {
    f"{LOADER_DIR}/lpxelinux.0": "ipxe-bios",
    "undionly.kpxe": "ipxe-bios",
    "undionly.kkpxe": "ipxe-bios",
    "snponly.efi": "ipxe-uefi",
    "ipxe.efi": "ipxe-uefi",
    "lpxelinux.0": "pxelinux",
    "pxelinux.0": "pxelinux",
    "shimx64.efi": "grub",
    "grubx64.efi": "grub",
}


# loaded by a first stage of the same path in the same boot (shim loads grubx64.efi), though a DHCP
# server may also name it itself
LATER_STAGE = {"grubx64.efi"}


def _macfile(mac: str) -> str:
    return "01-" + mac.lower().replace(":", "-")


def machine_files(fetches: list[tuple[str, str]], macs: list[str], uuid: str | None, ips: set[str]) -> list[tuple[str, str]]:
    """The TFTP sends (file, to-address), in log order, that belong to a machine: files named after one
    of its MACs or its UUID (pxelinux.cfg/01-<mac>, grub/grub.cfg-01-<mac>, ...) and, once such a file
    or a boot script request tied an address to it, everything else sent to that address."""
    names = {_macfile(m) for m in macs} | ({uuid.lower()} if uuid else set())
    ips = set(ips)
    for f, ip in fetches:
        base = f.rsplit("/", 1)[-1]
        if base in names or any(base.endswith("-" + n) for n in names):
            ips.add(ip)
    return [(f, ip) for f, ip in fetches if ip in ips]


def boot_path(files: list[tuple[str, str]], last_event: dict | None) -> dict:
    """The path a machine used last: the last first-stage file it fetched over TFTP; with none, an
    iPXE boot script request alone means the NIC's (or firmware's) own iPXE. The TFTP log has no
    times, so a NIC-ROM boot after a TFTP boot of the same machine still reads as the TFTP path."""
    path, via = None, None
    for f, _ip in files:
        if f in FIRST_STAGE:
            if not (f in LATER_STAGE and path == FIRST_STAGE[f] and via is not None):  # shim → grubx64.efi: one chain
                via = f
            path = FIRST_STAGE[f]
    if path is None and last_event is not None:
        path = "ipxe-rom"
    return {"path": path, "label": PATHS.get(path, "none seen"), "first_file": via,
            "tftp_files": [f for f, _ in files][-12:]}
