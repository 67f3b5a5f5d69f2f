"""dnsmasq's configuration for PXE, rendered and validated (pure; the process: dnsmasq_supervisor.py).

Three modes (`netslate serve --dhcp ...`):

- ``proxy`` (default): proxyDHCP next to the network's own DHCP server. dnsmasq answers only PXE
  clients, with `pxe-service` lines per client system architecture (CSA).
- ``full``: netslate is the DHCP server of a dedicated provisioning network (`--dhcp-range`),
  with reservations (`MAC,IP,hostname`) for machines that have a fixed address.
- ``off``: TFTP only; the site's DHCP server sends options 66/67 (see docs/boot-dhcp.md).

In every mode the client architecture (option 93) picks the boot file fetched over TFTP
(BIOS: undionly.kpxe; x86-64 UEFI, arch 7 and 9: snponly.efi or ipxe.efi, or shimx64.efi for the
UEFI Secure Boot path: Debian's signed shim → signed netboot GRUB → signed kernel, see
secureboot.py), and a client that already runs iPXE (user-class "iPXE") is sent straight to
http://SERVER/boot.ipxe.

Reservations live in a separate `dhcp-hostsfile`, which dnsmasq re-reads on SIGHUP, so a
reservation change never restarts DHCP; a change of the main file restarts dnsmasq.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

from netslate.boot.rules import MAC_RE
from netslate.errors import UserError

MODES = ("proxy", "full", "off")
# x86-64 UEFI boot files: iPXE (snponly.efi: the firmware's network driver; ipxe.efi: its own), or
# shimx64.efi, the Secure Boot chain (works with Secure Boot on and off; GRUB then loads over TFTP).
EFI_BINARIES = ("snponly.efi", "ipxe.efi", "shimx64.efi")
SECURE_BOOT_BINARY = "shimx64.efi"
BIOS_BINARY = "undionly.kpxe"
# RFC 4578 option 93 values netslate serves; anything else gets no boot file (dnsmasq ignores it).
ARCH_BIOS = (0,)
ARCH_EFI64 = (7, 9)

_IFACE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}\Z")
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_URL_RE = re.compile(r"^https?://[A-Za-z0-9.\[\]:-]{1,260}(/[A-Za-z0-9._/-]{0,200})?\Z")
_LEASE_RE = re.compile(r"^([0-9]{1,7}[smhd]?|infinite)\Z")


class DhcpConfigError(UserError):
    """A value that would make (or inject into) an invalid dnsmasq configuration."""


# ------------------------------------------------------------------------------ validation


def check_interface(value: str) -> str:
    if not isinstance(value, str) or not _IFACE_RE.match(value) or value in (".", ".."):
        raise DhcpConfigError(f"invalid interface name {value!r:.40}")
    return value


def check_ipv4(value: str, what: str = "address") -> str:
    try:
        return str(ipaddress.IPv4Address(str(value).strip()))
    except (ipaddress.AddressValueError, ValueError):
        raise DhcpConfigError(f"invalid IPv4 {what} {value!r:.40}") from None


def check_mac(value: str) -> str:
    v = str(value).strip().lower().replace("-", ":")
    if not MAC_RE.match(v):
        raise DhcpConfigError(f"invalid MAC address {value!r:.40}")
    return v


def check_hostname(value: str) -> str:
    # dnsmasq hands this out as option 12: a single DNS label, no dots, no commas.
    if not isinstance(value, str) or not _HOST_RE.match(value):
        raise DhcpConfigError(f"invalid DHCP hostname {value!r:.70} (one DNS label: letters, digits, '-')")
    return value


def check_url(value: str) -> str:
    if not isinstance(value, str) or not _URL_RE.match(value):
        raise DhcpConfigError(f"invalid boot URL {value!r:.80}")
    return value


def check_path(value: str | os.PathLike, what: str = "path") -> str:
    s = str(value)
    if not s.startswith("/") or any(c in s for c in "\n\r\0,#\"'") or any(ord(c) < 32 or ord(c) == 127 for c in s) or len(s) > 1024:
        raise DhcpConfigError(f"invalid {what} {s!r:.80} (absolute, no commas, quotes or control characters)")
    return s


def parse_range(value: str) -> tuple[str, str, str | None]:
    """`FIRST,LAST[,NETMASK]` → validated parts; FIRST <= LAST."""
    parts = [p.strip() for p in str(value).split(",")]
    if len(parts) not in (2, 3):
        raise DhcpConfigError(f"--dhcp-range wants FIRST,LAST[,NETMASK], got {value!r:.80}")
    first, last = check_ipv4(parts[0], "range start"), check_ipv4(parts[1], "range end")
    if ipaddress.IPv4Address(first) > ipaddress.IPv4Address(last):
        raise DhcpConfigError(f"--dhcp-range start {first} is after its end {last}")
    mask = None
    if len(parts) == 3:
        mask = check_ipv4(parts[2], "netmask")
        try:
            ipaddress.IPv4Network(f"0.0.0.0/{mask}")
        except ValueError:
            raise DhcpConfigError(f"invalid netmask {mask}") from None
    return first, last, mask


# ------------------------------------------------------------------------------ pure core


@dataclass(frozen=True)
class Reservation:
    mac: str
    ip: str
    hostname: str | None = None
    owner: str | None = None  # the machine; its NICs may share one address

    def checked(self) -> "Reservation":
        return Reservation(check_mac(self.mac), check_ipv4(self.ip, "reserved address"),
                           check_hostname(self.hostname) if self.hostname else None, self.owner)


@dataclass(frozen=True)
class DhcpSettings:
    """Everything that shapes dnsmasq's main configuration file."""

    mode: str = "proxy"
    interface: str = ""
    server_ip: str = ""  # this server's IPv4 address on `interface` (TFTP next-server)
    boot_url: str = ""  # http://SERVER[:PORT]/boot.ipxe for clients already running iPXE
    tftp_root: str = ""
    dhcp_range: str | None = None  # full: FIRST,LAST[,NETMASK]; proxy: optional network address
    efi_binary: str = "snponly.efi"
    lease_time: str = "1h"
    run_as_root: bool = False  # only when dnsmasq's unprivileged user could not read its files

    def checked(self) -> "DhcpSettings":
        if self.mode not in MODES:
            raise DhcpConfigError(f"--dhcp must be one of {', '.join(MODES)}, got {self.mode!r:.20}")
        check_interface(self.interface)
        check_ipv4(self.server_ip, "server address")
        check_url(self.boot_url)
        check_path(self.tftp_root, "TFTP root")
        if self.efi_binary not in EFI_BINARIES:
            raise DhcpConfigError(f"EFI binary must be one of {EFI_BINARIES}")
        if not _LEASE_RE.match(self.lease_time):
            raise DhcpConfigError(f"invalid lease time {self.lease_time!r:.20}")
        if self.mode == "full":
            if not self.dhcp_range:
                raise DhcpConfigError("--dhcp full needs --dhcp-range FIRST,LAST[,NETMASK]")
            parse_range(self.dhcp_range)
        elif self.mode == "proxy" and self.dhcp_range:
            check_ipv4(self.dhcp_range.split(",")[0], "proxy network")
        return self


@dataclass(frozen=True)
class Paths:
    conf: str
    hosts: str
    leases: str
    pid: str


def proxy_network(server_ip: str, prefixlen: int) -> str:
    """The network address dnsmasq's `dhcp-range=NET,proxy` wants."""
    return str(ipaddress.IPv4Network(f"{server_ip}/{prefixlen}", strict=False).network_address)


def render_config(s: DhcpSettings, paths: Paths, prefixlen: int = 24) -> str:
    """The complete dnsmasq configuration for one mode. Raises DhcpConfigError on any bad value."""
    s = s.checked()
    for what, p in (("config path", paths.conf), ("hosts file", paths.hosts), ("lease file", paths.leases), ("pid file", paths.pid)):
        check_path(p, what)
    lines = [
        "# netslate: generated, do not edit (rewritten on every change)",
        f"# mode: {s.mode}",
        "port=0",  # no DNS: netslate's DNS responder or the site's DNS does that
        f"interface={s.interface}",
        "bind-interfaces",
        "except-interface=lo",
        f"pid-file={paths.pid}",
        "log-facility=-",
        "log-dhcp",
        *(["# the data directory is not readable by an unprivileged user", "user=root"] if s.run_as_root else []),
        "enable-tftp",
        f"tftp-root={s.tftp_root}",
        "tftp-no-fail",
    ]
    if s.mode == "off":
        lines.append("# DHCP is off: the site's DHCP server sends option 66 (next-server) and 67 (bootfile)")
        return "\n".join(lines) + "\n"

    lines += [
        f"dhcp-leasefile={paths.leases}",
        "# client architecture (option 93) and clients already running iPXE",
        *[f"dhcp-match=set:bios,option:client-arch,{a}" for a in ARCH_BIOS],
        *[f"dhcp-match=set:efi64,option:client-arch,{a}" for a in ARCH_EFI64],
        "dhcp-userclass=set:ipxe,iPXE",
        "dhcp-match=set:ipxe,175",  # iPXE's own option space: also set by iPXE builds without user-class
    ]
    if s.mode == "full":
        first, last, mask = parse_range(s.dhcp_range or "")
        lines += [
            f"dhcp-range={first},{last}{',' + mask if mask else ''},{s.lease_time}",
            "dhcp-authoritative",
            "dhcp-no-override",  # keep option 67 out of the BOOTP sname/file fields some ROMs misread
            f"dhcp-hostsfile={paths.hosts}",
            "# iPXE → the HTTP chain script; firmware PXE → the iPXE binary for its architecture",
            f"dhcp-boot=tag:ipxe,{s.boot_url}",
            f"dhcp-boot=tag:!ipxe,tag:efi64,{s.efi_binary},,{s.server_ip}",
            f"dhcp-boot=tag:!ipxe,tag:bios,{BIOS_BINARY},,{s.server_ip}",
        ]
    else:  # proxy
        net = check_ipv4(s.dhcp_range.split(",")[0], "proxy network") if s.dhcp_range else proxy_network(s.server_ip, prefixlen)
        efi_title = "netslate (UEFI Secure Boot)" if s.efi_binary == SECURE_BOOT_BINARY else "netslate (UEFI)"
        lines += [
            f"dhcp-range={net},proxy",
            "# iPXE clients get the HTTP chain script; firmware PXE clients a pxe-service per CSA",
            f"dhcp-boot=tag:ipxe,{s.boot_url}",
            f'pxe-service=tag:!ipxe,x86PC,"netslate (BIOS)",{BIOS_BINARY},{s.server_ip}',
            f'pxe-service=tag:!ipxe,X86-64_EFI,"{efi_title}",{s.efi_binary},{s.server_ip}',
            f'pxe-service=tag:!ipxe,BC_EFI,"{efi_title}",{s.efi_binary},{s.server_ip}',
            f'pxe-service=tag:ipxe,x86PC,"netslate",{s.boot_url}',
            f'pxe-service=tag:ipxe,X86-64_EFI,"netslate",{s.boot_url}',
            f'pxe-service=tag:ipxe,BC_EFI,"netslate",{s.boot_url}',
        ]
    return "\n".join(lines) + "\n"


def render_hosts(reservations: list[Reservation]) -> str:
    """dhcp-hostsfile lines `MAC[,MAC...],IP[,hostname]`. The NICs of one machine (same owner) share
    one line (dnsmasq then gives the address to whichever NIC asks); two owners of one address, or
    one MAC with two addresses, are refused."""
    seen_mac: dict[str, str] = {}
    groups: dict[str, dict] = {}  # ip -> {"owner", "macs", "hostname"}
    for r in (r.checked() for r in reservations):
        if r.mac in seen_mac and seen_mac[r.mac] != r.ip:
            raise DhcpConfigError(f"MAC {r.mac} has two reservations ({seen_mac[r.mac]}, {r.ip})")
        seen_mac[r.mac] = r.ip
        g = groups.setdefault(r.ip, {"owner": r.owner or r.mac, "macs": set(), "hostname": r.hostname})
        if g["owner"] != (r.owner or r.mac):
            raise DhcpConfigError(f"address {r.ip} is reserved twice ({', '.join(sorted(g['macs']))}; {r.mac})")
        g["macs"].add(r.mac)
    out = ["# netslate: DHCP reservations, generated"]
    for ip in sorted(groups, key=ipaddress.IPv4Address):
        g = groups[ip]
        out.append(",".join(sorted(g["macs"]) + [ip] + ([g["hostname"]] if g["hostname"] else [])))
    return "\n".join(out) + "\n"
