"""`netslate serve`'s boot options: the server config file (YAML) and the command-line flags, checked
before anything starts, and the dnsmasq settings they make once the interface's address is known."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from netslate.boot.dnsmasq_config import MODES, DhcpSettings, check_interface, check_path, parse_range
from netslate.errors import UserError


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
