"""The boot stage's inputs, parsed (pure, standard library only): the netslate.* kernel arguments
(`parse_cmdline` → `BootArgs`), the registry of boot modes, the retry backoff, the udhcpc env file.

`stage.py` (the entry point) and `runtime.py` (the modes' I/O helpers) both build on this module,
so neither imports the other's internals.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field

from netslate.onmachine.cmdline import split_cmdline
from netslate.onmachine.pinning import parse_pin
from netslate.onmachine.manifest import DIGEST, valid_image_name, valid_ref

MODES = {
    "ram": "netslate.initramfs.mode_ram",
    "cache": "netslate.initramfs.mode_cache",
}

_SERVER = re.compile(r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253})(:[0-9]{1,5})?/?\Z")
_PERSIST = re.compile(r"^(/[A-Za-z0-9._@+-]+)+\Z")
_ONFAIL = ("shell", "reboot", "poweroff")


class BootArgsError(ValueError):
    """The kernel command line cannot be used as given; the message names the argument."""


class NoVerifiedImage(Exception):
    """Nothing verified to boot: the only dead end."""


@dataclass
class BootArgs:
    servers: list[str]
    image: str
    ref: str
    manifest: str | None = None
    mode: str = "ram"
    key: str | None = None  # base64 Ed25519 server key pinned at boot
    pin: str | None = None  # sha256:HEX of the server's TLS certificate, for https servers
    disk_allow: bool = False
    persist: list[str] = field(default_factory=list)
    timeout: float = 10.0  # per HTTP operation
    retries: int = 3  # rounds over the server list
    onfail: str = "shell"
    init: str = "/sbin/init"
    boot: str = "network"  # network | local (extlinux on the NETSLATE disk loaded this kernel)


def parse_cmdline(text: str) -> BootArgs:
    """Pure: the netslate.* arguments of a kernel command line. Raises BootArgsError."""
    raw: dict[str, str] = {}
    init = "/sbin/init"
    for tok in split_cmdline(text):
        k, sep, v = tok.partition("=")
        if k == "init" and sep:
            init = v
        if k.startswith("netslate."):
            raw[k[len("netslate."):]] = v
    if "image" not in raw:
        raise BootArgsError("netslate.image= is missing (expected NAME@VERSION)")
    name, at, ref = raw["image"].partition("@")
    if not at or not valid_image_name(name) or not valid_ref(ref):
        raise BootArgsError(f"netslate.image={raw['image']!r} is not NAME@VERSION")
    servers = [s for s in raw.get("server", "").split(",") if s]
    if not servers:
        raise BootArgsError("netslate.server= is missing (comma-separated http(s)://HOST[:PORT])")
    for s in servers:
        if not _SERVER.match(s):
            raise BootArgsError(f"netslate.server: {s!r} is not http(s)://HOST[:PORT]")
    manifest = raw.get("manifest") or None
    if manifest is not None and not DIGEST.match(manifest):
        raise BootArgsError(f"netslate.manifest={manifest!r} is not sha256:<64 hex>")
    key = raw.get("key") or None
    if key is not None:
        try:
            if len(base64.b64decode(key, validate=True)) != 32:
                raise ValueError
        except ValueError:
            raise BootArgsError("netslate.key= is not a base64 Ed25519 public key") from None
    try:
        pin = parse_pin(raw.get("pin"))
    except ValueError:
        raise BootArgsError("netslate.pin= is not sha256:<64 hex> (the server certificate's SHA-256)") from None
    if manifest is None and key is None:
        # No trust-on-first-use at boot: something on the command line must vouch for the image.
        raise BootArgsError("neither netslate.manifest= nor netslate.key= is given; nothing to verify the image with")
    mode = raw.get("mode") or "ram"
    if mode not in MODES:
        raise BootArgsError(f"netslate.mode={mode!r} is not one of {', '.join(sorted(MODES))}")
    persist = [p for p in raw.get("persist", "").split(",") if p]
    for p in persist:
        if not _PERSIST.match(p) or ".." in p.split("/") or p in ("/proc", "/sys", "/dev", "/run"):
            raise BootArgsError(f"netslate.persist: {p!r} is not an absolute path that can be kept")
    try:
        timeout = float(raw.get("timeout", "10"))
        retries = int(raw.get("retries", "3"))
    except ValueError:
        raise BootArgsError("netslate.timeout= and netslate.retries= are numbers") from None
    if not (1 <= timeout <= 300 and 1 <= retries <= 20):
        raise BootArgsError("netslate.timeout= is 1..300 s and netslate.retries= 1..20")
    onfail = raw.get("onfail", "shell")
    if onfail not in _ONFAIL:
        raise BootArgsError(f"netslate.onfail={onfail!r} is not one of {', '.join(_ONFAIL)}")
    return BootArgs(
        servers=[s.rstrip("/") for s in servers], image=name, ref=ref, manifest=manifest, mode=mode, key=key, pin=pin,
        disk_allow=raw.get("disk") == "allow", persist=persist, timeout=timeout, retries=retries,
        onfail=onfail, init=init, boot="local" if raw.get("boot") == "local" else "network",
    )


def backoff(round_no: int, base: float = 2.0, cap: float = 30.0) -> float:
    """Seconds to wait after failed round `round_no` (0-based): 2, 4, 8, ... capped."""
    return min(base * (2 ** round_no), cap)


def parse_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines (what the udhcpc script writes)."""
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep and k.strip():
            out[k.strip()] = v.strip()
    return out
