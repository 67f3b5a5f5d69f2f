"""What the boot told us: `netslate.*=` kernel arguments, the initramfs' /run/netslate/boot.json,
and the optional /etc/netslate/agent.json. Pure parsing plus one loader at the edge.

Precedence: command-line flags > kernel command line > boot.json > agent.json.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

from netslate.agent.util import read_json, under
from netslate.onmachine import pinning
from netslate.onmachine.cmdline import netslate_args

BOOT_JSON = "/run/netslate/boot.json"
AGENT_JSON = "/etc/netslate/agent.json"
RAM_LKG_DIR = "/run/netslate/lkg"
STATE_DIR = "/var/lib/netslate-agent"


@dataclass
class BootInfo:
    servers: list[str] = field(default_factory=list)  # base URLs, in the order the boot gave them
    key: bytes | None = None  # the pinned Ed25519 public key
    pin: str | None = None  # sha256:HEX of the server's TLS certificate (netslate.pin=), for https URLs
    machine: str | None = None  # id, name or UUID the server knows this machine by
    domain: str | None = None  # for DNS SRV
    image: str | None = None
    version: int | None = None
    mode: str | None = None  # ram | cache
    image_source: str | None = None  # server | cache (from the initramfs)
    image_reason: str | None = None
    booted_via: str | None = None  # network | local disk (cache mode: the NETSLATE disk's own boot path)
    manifest_digest: str | None = None
    lkg_dir: str | None = None  # persistent (NETSLATE disk) in cache mode
    kernel_args: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def parse_cmdline(text: str) -> dict[str, str]:
    """`netslate.X=V` arguments of a kernel command line → {X: V}; everything else ignored."""
    return netslate_args(text)


def normalize_server(text: str) -> str | None:
    """`host`, `host:port` or `http(s)://host[:port]` → base URL without a trailing slash."""
    t = text.strip().rstrip("/")
    if not t:
        return None
    if "://" not in t:
        t = "http://" + t
    scheme = t.split("://", 1)[0]
    if scheme not in ("http", "https"):
        return None
    return t


def _key(text: str | None, problems: list[str], where: str) -> bytes | None:
    if not text:
        return None
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        problems.append(f"{where}: the pinned key is not base64")
        return None
    if len(raw) != 32:
        problems.append(f"{where}: the pinned key is not a 32-byte Ed25519 key")
        return None
    return raw


def combine(cmdline: dict[str, str], boot: dict | None, agent: dict | None) -> BootInfo:
    """Merge the three sources (pure)."""
    boot = boot if isinstance(boot, dict) else {}
    agent = agent if isinstance(agent, dict) else {}
    info = BootInfo()

    def servers_of(value) -> list[str]:
        items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else []
        return [u for u in (normalize_server(str(x)) for x in items) if u]

    seen = []
    for src in (cmdline.get("server"), boot.get("servers"), agent.get("servers") or agent.get("server")):
        for u in servers_of(src):
            if u not in seen:
                seen.append(u)
    info.servers = seen
    for where, text in (("netslate.key", cmdline.get("key")), ("boot.json", boot.get("key")), ("agent.json", agent.get("key"))):
        k = _key(text, info.problems, where)
        if k is not None:
            info.key = k
            break
    for where, text in (("netslate.pin", cmdline.get("pin")), ("boot.json", boot.get("pin")), ("agent.json", agent.get("pin"))):
        if not text:
            continue
        try:
            info.pin = pinning.parse_pin(str(text))
            break
        except ValueError as exc:
            info.problems.append(f"{where}: {exc}")
    info.machine = cmdline.get("machine") or _s(boot.get("machine")) or _s(agent.get("machine"))
    info.domain = cmdline.get("domain") or _s(boot.get("domain")) or _s(agent.get("domain"))
    image_at = cmdline.get("image")
    if boot.get("image"):
        info.image = str(boot["image"])
        info.version = _int(boot.get("version"))
    elif image_at and "@" in image_at:
        name, _, ver = image_at.rpartition("@")
        info.image, info.version = name, _int(ver)
    info.mode = _s(boot.get("mode")) or cmdline.get("mode")
    info.image_source = _s(boot.get("source")) or ("server" if info.image else None)
    info.image_reason = _s(boot.get("reason"))
    info.booted_via = _s(boot.get("booted_via"))
    info.manifest_digest = _s(boot.get("manifest_digest")) or cmdline.get("manifest")
    info.lkg_dir = _s(boot.get("lkg_dir")) or _s(agent.get("lkg_dir"))
    return info


def _s(v) -> str | None:
    return str(v) if v not in (None, "") else None


def _int(v) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def load(root: Path, cmdline_path: str = "/proc/cmdline") -> BootInfo:
    """Read the three sources under `root` (a missing or damaged file is not fatal)."""
    try:
        text = under(root, cmdline_path).read_text(errors="replace")
    except OSError:
        text = ""
    info = combine(parse_cmdline(text), read_json(under(root, BOOT_JSON)), read_json(under(root, AGENT_JSON)))
    info.kernel_args = text.split()
    return info
