"""dnsmasq for PXE: a pure renderer of its whole configuration, and a supervisor that runs it.

Three modes (`netslate serve --dhcp ...`):

- ``proxy`` (default): proxyDHCP next to the network's own DHCP server. dnsmasq answers only PXE
  clients, with `pxe-service` lines per client system architecture (CSA).
- ``full``: netslate is the DHCP server of a dedicated provisioning network (`--dhcp-range`),
  with reservations (`MAC,IP,hostname`) for machines that have a fixed address.
- ``off``: TFTP only; the site's DHCP server sends options 66/67 (see docs/boot-dhcp.md).

In every mode the client architecture (option 93) picks the iPXE binary fetched over TFTP
(BIOS: undionly.kpxe; x86-64 UEFI, arch 7 and 9: snponly.efi or ipxe.efi), and a client that
already runs iPXE (user-class "iPXE") is sent straight to http://SERVER/boot.ipxe.

Reservations live in a separate `dhcp-hostsfile`, which dnsmasq re-reads on SIGHUP, so a
reservation change never restarts DHCP; a change of the main file restarts dnsmasq.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from netslate.errors import UserError
from netslate.fsutil import atomic_write

log = logging.getLogger("netslate.dnsmasq")

MODES = ("proxy", "full", "off")
EFI_BINARIES = ("snponly.efi", "ipxe.efi")
BIOS_BINARY = "undionly.kpxe"
# RFC 4578 option 93 values netslate serves; anything else gets no boot file (dnsmasq ignores it).
ARCH_BIOS = (0,)
ARCH_EFI64 = (7, 9)

_IFACE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}\Z")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")
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
    if not _MAC_RE.match(v):
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
        lines += [
            f"dhcp-range={net},proxy",
            "# iPXE clients get the HTTP chain script; firmware PXE clients a pxe-service per CSA",
            f"dhcp-boot=tag:ipxe,{s.boot_url}",
            f'pxe-service=tag:!ipxe,x86PC,"netslate (BIOS)",{BIOS_BINARY},{s.server_ip}',
            f'pxe-service=tag:!ipxe,X86-64_EFI,"netslate (UEFI)",{s.efi_binary},{s.server_ip}',
            f'pxe-service=tag:!ipxe,BC_EFI,"netslate (UEFI)",{s.efi_binary},{s.server_ip}',
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


# ------------------------------------------------------------------------------ edges


def interface_ipv4(interface: str) -> tuple[str, int]:
    """The first IPv4 address and prefix length of an interface (`ip -j addr`)."""
    check_interface(interface)
    proc = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", interface], capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        raise UserError(f"--boot-interface {interface}: {proc.stderr.strip() or 'no such interface'}")
    for link in json.loads(proc.stdout or "[]"):
        for a in link.get("addr_info", []):
            if a.get("family") == "inet":
                return a["local"], int(a["prefixlen"])
    raise UserError(f"--boot-interface {interface} has no IPv4 address")


RESERVATION_LABEL = "dhcp-ip"


def reservations_from_db(ctx) -> list[Reservation]:
    """Machines with a fixed address, one reservation per MAC. The address is the machine's
    `dhcp-ip` label (`netslate machine add --mac M --hostname h --label dhcp-ip=10.0.0.9`):
    `machines.ip_address` is not used because discovery fills it with the address a machine
    last booted from, which is not a reservation."""
    from sqlalchemy import select

    from netslate.store.models import Machine

    out = []
    with ctx.db.session() as s:
        for m in s.scalars(select(Machine)):
            ip = (m.labels or {}).get(RESERVATION_LABEL)
            if not ip:
                continue
            host = m.hostname.split(".")[0] if m.hostname else None
            for mm in m.macs:
                try:
                    out.append(Reservation(mm.mac, ip, host, owner=f"machine:{m.id}").checked())
                except DhcpConfigError as exc:  # one bad row must not take DHCP down for everyone
                    log.error("skipping DHCP reservation of machine %s: %s", m.id, exc)
    # Pooled virtual desktops hold addresses from their pool's range (netslate.desktops.addresses).
    from netslate.desktops.addresses import desktop_reservations

    for mac, ip, host in desktop_reservations(ctx):
        try:
            out.append(Reservation(mac, ip, host, owner=f"desktop:{host}").checked())
        except DhcpConfigError as exc:
            log.error("skipping DHCP reservation of desktop %s: %s", host, exc)
    return out


class DnsmasqSupervisor:
    """Runs one dnsmasq in the foreground, restarts it when it dies (backoff), reloads on change."""

    def __init__(self, settings: DhcpSettings, state_dir: Path, prefixlen: int = 24,
                 reservations=None, binary: str = "dnsmasq", watch_interval: float = 2.0, on_tick=None,
                 command_prefix: list[str] | tuple[str, ...] = ()):
        self.settings = settings.checked()
        self.dir = Path(state_dir)
        self.prefixlen = prefixlen
        self.reservations_source = reservations or (lambda: [])  # callable → list[Reservation]
        self.binary = binary
        self.command_prefix = list(command_prefix)  # e.g. ["ip", "netns", "exec", NS] in tests (it execs)
        self.watch_interval = watch_interval
        self.on_tick = on_tick  # called from the watcher thread too (e.g. refresh pxelinux.cfg)
        self.paths = Paths(
            conf=str(self.dir / "dnsmasq.conf"), hosts=str(self.dir / "reservations"),
            leases=str(self.dir / "dnsmasq.leases"), pid=str(self.dir / "dnsmasq.pid"),
        )
        self.log_path = self.dir / "dnsmasq.log"
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.last_exit: int | None = None
        self.last_error: str | None = None
        self.started_at: float | None = None
        self._conf_hash = ""
        self._hosts_hash = ""
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._watcher: threading.Thread | None = None

    # -- files ------------------------------------------------------------------------------
    def _needs_root(self) -> bool:
        """dnsmasq drops to `nobody` and then reads the reservations file and the TFTP root: if a parent
        directory is not world-traversable (a 0700 data directory), keep it as root instead, loudly."""
        for d in (self.dir, Path(self.settings.tftp_root)):
            for p in [d, *d.parents]:
                try:
                    if not p.stat().st_mode & 0o001:
                        return True
                except FileNotFoundError:
                    continue
        return False

    def write_files(self) -> tuple[bool, bool]:
        """Render and atomically write config + reservations. Returns (config changed, hosts changed)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._needs_root() != self.settings.run_as_root:
            self.settings = replace(self.settings, run_as_root=not self.settings.run_as_root)
            if self.settings.run_as_root:
                log.warning("dnsmasq keeps root privileges: %s or %s is not world-traversable", self.dir, self.settings.tftp_root)
        conf = render_config(self.settings, self.paths, self.prefixlen)
        try:
            hosts = render_hosts(list(self.reservations_source()))
            self.last_error = None
        except DhcpConfigError as exc:  # keep the last good reservations file
            log.error("DHCP reservations not updated: %s", exc)
            self.last_error = str(exc)
            hosts = None
        self.dir.mkdir(parents=True, exist_ok=True)
        ch = hashlib.sha256(conf.encode()).hexdigest()
        conf_changed = ch != self._conf_hash
        if conf_changed:
            atomic_write(Path(self.paths.conf), conf.encode())
            self._conf_hash = ch
        hosts_changed = False
        if hosts is not None:
            hh = hashlib.sha256(hosts.encode()).hexdigest()
            if hh != self._hosts_hash:
                atomic_write(Path(self.paths.hosts), hosts.encode())
                self._hosts_hash = hh
                hosts_changed = True
        elif not Path(self.paths.hosts).exists():
            atomic_write(Path(self.paths.hosts), b"")
        return conf_changed, hosts_changed

    def command(self) -> list[str]:
        return [*self.command_prefix, self.binary, "--keep-in-foreground", f"--conf-file={self.paths.conf}"]

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "DnsmasqSupervisor":
        self.write_files()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dnsmasq-supervisor", daemon=True)
        self._thread.start()
        if self.watch_interval:
            self._watcher = threading.Thread(target=self._watch, name="dnsmasq-watch", daemon=True)
            self._watcher.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._wake.set()
        self._terminate(timeout)
        for t in (self._thread, self._watcher):
            if t is not None:
                t.join(timeout=timeout)

    def _terminate(self, timeout: float = 10) -> None:
        with self._lock:
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def _spawn(self) -> subprocess.Popen:
        logf = open(self.log_path, "ab")
        try:
            proc = subprocess.Popen(self.command(), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            logf.close()
        return proc

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                with self._lock:
                    self.proc = self._spawn()
                    self.started_at = time.monotonic()
                proc = self.proc
                log.info("dnsmasq started (pid %s, mode %s, interface %s)", proc.pid, self.settings.mode, self.settings.interface)
                code = proc.wait()
            except OSError as exc:
                code = -1
                self.last_error = f"cannot start dnsmasq: {exc}"
            ran = time.monotonic() - (self.started_at or time.monotonic())
            with self._lock:
                self.last_exit = code
            if self._stop.is_set():
                break
            if self._wake.is_set():  # a deliberate restart (config changed): at once, no backoff
                self._wake.clear()
                continue
            self.restarts += 1
            tail = self.log_tail(3)
            self.last_error = f"dnsmasq exited with {code}: {tail[-1] if tail else ''}"
            log.error("%s; restarting in %.0f s", self.last_error, backoff)
            if ran > 30:
                backoff = 1.0
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, 30.0)

    def _watch(self) -> None:
        while not self._stop.wait(self.watch_interval):
            try:
                self.reload()
                if self.on_tick is not None:
                    self.on_tick()
            except Exception as exc:  # keep watching; health shows the error
                self.last_error = f"reload failed: {exc}"
                log.error("dnsmasq reload failed: %s", exc)

    def reload(self, settings: DhcpSettings | None = None) -> str:
        """Re-render; restart on a main-config change, SIGHUP on a reservations change.
        Returns "restarted", "reloaded" or "unchanged". Call it after anything DHCP-relevant changes."""
        with self._lock:
            if settings is not None:
                self.settings = settings.checked()
            conf_changed, hosts_changed = self.write_files()
            proc = self.proc
            if proc is None or proc.poll() is not None:
                return "unchanged"
            if conf_changed:
                self._wake.set()
                proc.terminate()
                return "restarted"
            if hosts_changed:
                proc.send_signal(signal.SIGHUP)  # dnsmasq re-reads dhcp-hostsfile
                return "reloaded"
        return "unchanged"

    def with_settings(self, **changes) -> DhcpSettings:
        return replace(self.settings, **changes)

    # -- reporting --------------------------------------------------------------------------
    def log_tail(self, n: int = 20) -> list[str]:
        try:
            data = self.log_path.read_bytes()[-8192:].decode("utf-8", "replace")
        except FileNotFoundError:
            return []
        return [line for line in data.splitlines() if line.strip()][-n:]

    def health(self) -> dict:
        with self._lock:
            proc = self.proc
            running = proc is not None and proc.poll() is None
        out = {
            "ok": running,
            "mode": self.settings.mode,
            "interface": self.settings.interface,
            "server": self.settings.server_ip,
            "pid": proc.pid if running else None,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "config": self.paths.conf,
        }
        if self.last_error:
            out["error"] = self.last_error
        return out


# ------------------------------------------------------------------------------ server wiring


def settings_from_options(ctx, options: dict) -> tuple[DhcpSettings, int]:
    """Build checked settings from `netslate serve` options (UserError on bad input)."""
    iface = check_interface(options["boot_interface"])
    server_ip, prefixlen = interface_ipv4(iface)
    port = (options.get("listen") or ("", 8080))[1]
    base = options.get("boot_url")
    if not base:
        advertise = [a for a in (options.get("advertise") or []) if str(a).startswith("http")]
        base = advertise[0].rstrip("/") if advertise else f"http://{server_ip}:{port}"
    tftp_root = options.get("tftp_root") or str(ctx.data_dir / "tftp")
    s = DhcpSettings(
        mode=options.get("dhcp") or "proxy", interface=iface, server_ip=server_ip,
        boot_url=f"{base}/boot.ipxe", tftp_root=str(Path(tftp_root).resolve()),
        dhcp_range=options.get("dhcp_range"), efi_binary=options.get("efi_binary") or "snponly.efi",
    )
    return s.checked(), prefixlen


CONFIG_KEYS = ("boot_interface", "dhcp", "dhcp_range", "tftp_root", "efi_binary", "boot_url")


def load_config_file(path: str | os.PathLike) -> dict:
    """The server config file (YAML): the same keys as the `netslate serve` boot options
    (`boot_interface`, `dhcp`, `dhcp_range`, `tftp_root`, `efi_binary`, `boot_url`; '-' or '_')."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"--config {p}: no such file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"--config {p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {p}: expected a mapping of settings")
    out = {}
    for k, v in data.items():
        key = str(k).replace("-", "_")
        if key not in CONFIG_KEYS:
            raise UserError(f"--config {p}: unknown setting {k!r} (known: {', '.join(CONFIG_KEYS)})")
        if key == "dhcp" and v is False:
            v = "off"  # YAML 1.1 reads a bare `off` as false
        if v is not None and (isinstance(v, bool) or not isinstance(v, (str, int))):
            raise UserError(f"--config {p}: {k} must be a string")
        out[key] = None if v is None else str(v)
    return out


def serve_options(config: str | None, boot_interface: str | None, dhcp: str | None, dhcp_range: str | None,
                  tftp_root: str | None) -> dict:
    """`netslate serve` boot options: command-line flags win over the config file. Validated here so a
    mistake is one clear line before anything starts."""
    opts = load_config_file(config) if config else {}
    for key, val in (("boot_interface", boot_interface), ("dhcp", dhcp), ("dhcp_range", dhcp_range), ("tftp_root", tftp_root)):
        if val is not None:
            opts[key] = val
    opts.setdefault("dhcp", "proxy")
    if opts["dhcp"] not in MODES:
        raise UserError(f"--dhcp must be one of {', '.join(MODES)}, got {opts['dhcp']!r:.20}")
    if opts.get("boot_interface"):
        check_interface(opts["boot_interface"])
        if opts["dhcp"] == "full":
            if not opts.get("dhcp_range"):
                raise UserError("--dhcp full needs --dhcp-range FIRST,LAST[,NETMASK]")
            parse_range(opts["dhcp_range"])
        if opts.get("tftp_root"):
            check_path(str(Path(opts["tftp_root"]).resolve()), "--tftp-root")
    elif opts.get("dhcp_range") or opts.get("tftp_root") or (dhcp is not None):
        raise UserError("--dhcp, --dhcp-range and --tftp-root need --boot-interface IFACE")
    return opts
