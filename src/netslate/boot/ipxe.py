"""iPXE scripts, pure. Every value placed in a script passes a whitelist check here, right before use.

iPXE splits lines on whitespace, expands ${...}, and treats ||, && and # specially, so the safe
alphabets below have no whitespace (except in echo text), no '$', '|', '&', '#', quotes, ';' or
control characters. Nothing outside them can reach a script: the renderer raises `UnsafeValue`.

Every script that downloads something has a bounded retry path with exponential backoff (the delay
doubles through iPXE's `inc`, starting from a per-machine jittered base so a mass boot spreads out),
then falls back to `reboot` instead of leaving the machine at a dead prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

ARG_RE = re.compile(r"^[A-Za-z0-9._:/=,@+%-]{1,512}\Z")
TEXT_RE = re.compile(r"^[A-Za-z0-9 ._,:()/@=+\[\]<>*'-]{0,200}\Z")
LABEL_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}\Z")
HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,253})(:[0-9]{1,5})?\Z")
RAW_URL_RE = re.compile(r"^[A-Za-z0-9:/.\[\]_@-]{1,1024}\Z")  # urlsplit silently drops tabs/newlines: check first
PATH_RE = re.compile(r"^(/[A-Za-z0-9._@-]+)+\Z")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # second line of defence: no CR, LF, NUL or other control character

CHAIN_QUERY = (
    "mac=${net0/mac}&uuid=${uuid}&serial=${serial:uristring}&manufacturer=${manufacturer:uristring}"
    "&product=${product:uristring}&arch=${buildarch}&platform=${platform}&asset=${asset:uristring}"
)


class UnsafeValue(ValueError):
    """A value would change the meaning of a script; never rendered."""


def arg(value: str, what: str = "value") -> str:
    if not isinstance(value, str) or CONTROL_RE.search(value) or not ARG_RE.match(value):
        raise UnsafeValue(f"unsafe {what} for an iPXE script: {value!r:.80}")
    return value


def text(value: str) -> str:
    if not isinstance(value, str) or CONTROL_RE.search(value) or not TEXT_RE.match(value) or "${" in value:
        raise UnsafeValue(f"unsafe text for an iPXE script: {value!r:.80}")
    return value


def label(value: str) -> str:
    if not isinstance(value, str) or CONTROL_RE.search(value) or not LABEL_RE.match(value):
        raise UnsafeValue(f"unsafe iPXE label: {value!r:.80}")
    return value


def base_url(value: str) -> str:
    """http(s)://HOST[:PORT] with nothing else; what netslate.server= and the download URLs are built from."""
    parts = _split(value) if isinstance(value, str) and not CONTROL_RE.search(value) and RAW_URL_RE.match(value) else None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not HOST_RE.match(parts.netloc or "")
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise UnsafeValue(f"unsafe server URL for an iPXE script: {value!r:.80}")
    return f"{parts.scheme}://{parts.netloc}"


def url(base: str, path: str) -> str:
    if not isinstance(path, str) or CONTROL_RE.search(path) or not PATH_RE.match(path) or ".." in path:
        raise UnsafeValue(f"unsafe URL path: {path!r:.80}")
    return base_url(base) + path


def _split(value: str):
    """urlsplit, or None where it raises (an unclosed '[' in a Host header: ValueError)."""
    try:
        return urlsplit(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class Retry:
    attempts: int = 6  # downloads tried this many times, then the fallback
    delay: int = 2  # seconds before the second try; doubles each time
    fallback: str = "reboot"  # reboot | exit (back to the firmware's next boot device)

    def check(self) -> "Retry":
        if not (1 <= self.attempts <= 50 and 1 <= self.delay <= 300 and self.fallback in ("reboot", "exit")):
            raise UnsafeValue(f"bad retry settings {self!r}")
        return self


def jitter(key: str, spread: int = 3) -> int:
    """A stable 0..spread-1 extra seconds per machine, so machines that failed together retry apart."""
    import zlib

    return zlib.crc32(key.encode()) % max(1, spread)


def _comment(lines: list[str]) -> list[str]:
    return [f"# {text(line)}" for line in lines]


def chain_script(base: str, retry: Retry = Retry()) -> str:
    """GET /boot.ipxe: send iPXE to /boot/ipxe with everything it knows about the machine."""
    retry.check()
    target = url(base, "/boot/ipxe") + "?" + CHAIN_QUERY
    return "\n".join(
        [
            "#!ipxe",
            "# netslate: identify this machine and fetch its boot script",
            "set ns_try:int32 0",
            f"set ns_delay:int32 {retry.delay}",
            ":ns_chain",
            f"chain --autofree --replace {target} ||",
            "inc ns_try",
            f"iseq ${{ns_try}} {retry.attempts} && goto ns_giveup ||",
            f"echo netslate: cannot fetch the boot script (try ${{ns_try}} of {retry.attempts}), retrying in ${{ns_delay}} s",
            "sleep ${ns_delay}",
            "inc ns_delay ${ns_delay}",
            "goto ns_chain",
            ":ns_giveup",
            _fallback_line(retry),
            "",
        ]
    )


def _fallback_line(retry: Retry) -> str:
    if retry.fallback == "exit":
        return "echo netslate: giving up, returning to the firmware\nsleep 5\nexit 1"
    return "echo netslate: giving up, rebooting in 10 s\nsleep 10\nreboot"


@dataclass(frozen=True)
class ImageBoot:
    """One image version to boot: what `kernel`/`initrd` fetch and the kernel command line."""

    kernel_url: str
    initrd_url: str | None
    args: tuple[str, ...]
    title: str = ""  # shown on the console, e.g. "desktop@3"


def _boot_block(prefix: str, boot: ImageBoot, retry: Retry, jitter_s: int, after_fail: str) -> list[str]:
    """Lines that download kernel+initrd and boot, retrying with backoff. `prefix` makes labels unique."""
    p = label(prefix)
    args = "".join(" " + arg(a, "kernel argument") for a in boot.args)
    return [
        f":{p}",
        f"echo netslate: booting {text(boot.title)}" if boot.title else "echo netslate: booting",
        "set ns_try:int32 0",
        f"set ns_delay:int32 {retry.delay + jitter_s}",
        f":{p}_try",
        f"kernel {url_checked(boot.kernel_url)}{' initrd=initrd' if boot.initrd_url else ''}{args} || goto {p}_fail",
        *([f"initrd --name initrd {url_checked(boot.initrd_url)} || goto {p}_fail"] if boot.initrd_url else []),
        f"boot || goto {p}_fail",
        f":{p}_fail",
        "imgfree",
        "inc ns_try",
        f"iseq ${{ns_try}} {retry.attempts} && goto {label(after_fail)} ||",
        f"echo netslate: download or boot failed (try ${{ns_try}} of {retry.attempts}), retrying in ${{ns_delay}} s",
        "sleep ${ns_delay}",
        "inc ns_delay ${ns_delay}",
        f"goto {p}_try",
    ]


def url_checked(value: str) -> str:
    if not isinstance(value, str) or CONTROL_RE.search(value) or not RAW_URL_RE.match(value):
        raise UnsafeValue(f"unsafe URL: {value!r:.80}")
    parts = _split(value)
    if parts is None or parts.query or parts.fragment:
        raise UnsafeValue(f"unsafe URL: {value!r:.80}")
    return url(f"{parts.scheme}://{parts.netloc}", parts.path)


def boot_script(boot: ImageBoot, comments: list[str], retry: Retry = Retry(), jitter_s: int = 0,
                local_fallback: bool = False, platform: str | None = None) -> str:
    """`local_fallback` (cache-mode profiles): when the downloads keep failing, boot the local disk
    (the NETSLATE disk's extlinux) before the usual fallback."""
    retry.check()
    lines = ["#!ipxe", *_comment(comments)]
    lines += _boot_block("ns_boot", boot, retry, jitter_s, "ns_giveup")
    lines += [":ns_giveup"]
    if local_fallback:
        # BIOS: the first BIOS disk (the NETSLATE disk must come first in the BIOS order), then the
        # usual fallback. UEFI: back to the firmware's next boot option (the disk's ESP).
        lines.append("echo netslate: the server is unreachable, booting the local NETSLATE disk")
        lines.append("sanboot --no-describe --drive 0x80 ||" if platform != "efi" else "exit 1 ||")
    lines += [_fallback_line(retry), ""]
    return "\n".join(lines)


def local_script(comments: list[str], platform: str | None) -> str:
    """Boot the local disk: `exit` hands back to the firmware (UEFI boot order); BIOS tries sanboot first."""
    lines = ["#!ipxe", *_comment(comments), "echo netslate: booting from the local disk"]
    if platform != "efi":
        lines.append("sanboot --no-describe --drive 0x80 ||")
    lines += ["exit 0 ||", "echo netslate: no local boot possible, rebooting in 30 s", "sleep 30", "reboot", ""]
    return "\n".join(lines)


def wait_script(base: str, message: list[str], retry_seconds: int, comments: list[str]) -> str:
    """Hold screen: show why, wait N seconds, ask again (same chain as /boot.ipxe). Loops until served."""
    if not 1 <= retry_seconds <= 3600:
        raise UnsafeValue(f"bad retry interval {retry_seconds}")
    target = url(base, "/boot/ipxe") + "?" + CHAIN_QUERY
    lines = ["#!ipxe", *_comment(comments), ":ns_wait"]
    lines += [f"echo netslate: {text(m)}" for m in message]
    lines += [
        f"echo netslate: asking again in {retry_seconds} s",
        f"sleep {retry_seconds}",
        f"chain --autofree --replace {target} ||",
        "goto ns_wait",
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class MenuEntry:
    version: int
    tags: tuple[str, ...]
    created: str  # YYYY-MM-DD
    boot: ImageBoot


@dataclass(frozen=True)
class Menu:
    image: str
    entries: tuple[MenuEntry, ...]  # newest first
    default_version: int | None
    marked_tag: str | None
    timeout_s: int = 30
    comments: tuple[str, ...] = field(default_factory=tuple)


def menu_script(menu: Menu, retry: Retry = Retry(), jitter_s: int = 0) -> str:
    """An iPXE menu of an image's versions, newest first; the tagged version is marked and the default."""
    retry.check()
    image = text(menu.image)
    lines = ["#!ipxe", *_comment(list(menu.comments)), f"menu netslate: {image} - choose a version"]
    if menu.marked_tag:
        lines.append(f"item --gap current {text(menu.marked_tag)}: version {menu.default_version}")
    for e in menu.entries:
        mark = f" [{', '.join(text(t) for t in e.tags)}]" if e.tags else ""
        star = " *" if e.version == menu.default_version else ""
        lines.append(f"item ns_v{int(e.version)} {image} version {int(e.version)}{mark} {text(e.created)}{star}")
    lines += ["item --gap", "item ns_local boot from the local disk", "item ns_shell iPXE shell"]
    default = f"ns_v{int(menu.default_version)}" if menu.default_version is not None else "ns_local"
    timeout_ms = max(0, min(int(menu.timeout_s), 3600)) * 1000
    lines += [
        f"choose --default {default} --timeout {timeout_ms} ns_target && goto ${{ns_target}} || goto {default}",
        ":ns_shell",
        "shell",
        f"goto {default}",
        ":ns_local",
        "exit 0 ||",
        "reboot",
    ]
    for e in menu.entries:
        lines += _boot_block(f"ns_v{int(e.version)}", e.boot, retry, jitter_s, "ns_giveup")
    lines += [":ns_giveup", _fallback_line(retry), ""]
    return "\n".join(lines)
