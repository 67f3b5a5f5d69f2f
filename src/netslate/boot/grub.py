"""GRUB configuration for the UEFI Secure Boot path, pure: Debian's signed shim → Debian's signed
netboot GRUB (grubnetx64) → Debian's signed kernel + the netslate initramfs.

What Debian's netboot GRUB does (read from the binary, grub-efi-amd64-signed 2.06-13+deb12u2):
its prefix is `/grub` on the DHCP ACK's next-server (see below), its embedded config sources
`$prefix/x86_64-efi/grub.cfg` if it exists, else `$prefix/grub.cfg`. It carries the `tftp`, `efinet`,
`smbios`, `regexp`, `linux`, `configfile` modules but **no `http` module**, and under Secure Boot it
cannot load modules from the network. So everything after shim comes over TFTP: the per-machine
configuration files and the kernel + initrd (staged by secureboot.py under `images/NAME/VERSION/`,
the same paths as the HTTP artifact URLs). Its TFTP server is the DHCP ACK's next-server (siaddr):
this GRUB has no proxyDHCP support, so in proxy mode the site's DHCP server must name the netslate
server as next-server (shim and the firmware do follow the proxy offer; seen in the VM test).

Files (paths relative to the TFTP root):

    grub/grub.cfg                       LOADER: static; picks the machine's file by MAC, then SMBIOS UUID
    grub/grub.cfg-01-aa-bb-cc-dd-ee-ff  per MAC (the name upstream GRUB >= 2.12 also searches itself)
    grub/grub.cfg-<uuid>                per SMBIOS UUID (lower case, as `smbios --get-uuid` prints it)
    grub/netslate-unknown.cfg           a machine with no file: says so, waits, reads grub.cfg again

Every value placed in a file passes a whitelist here (`UnsafeValue` otherwise): kernel arguments
use iPXE's argument alphabet (no whitespace, '$', quotes, ';', '{', '}', '#', '|', '&'), titles and
messages a smaller one and always inside single quotes (GRUB expands nothing there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from netslate.boot import ipxe
from netslate.boot.rules import MAC_RE, UUID_RE

GENERATED_MARK = "# netslate: generated"
LOADER = "grub/grub.cfg"
UNKNOWN = "grub/netslate-unknown.cfg"
_TEXT_RE = re.compile(r"^[A-Za-z0-9 ._,:()/@=+*\[\]-]{0,200}\Z")
_TFTP_PATH_RE = re.compile(r"^(/[A-Za-z0-9._@-]+){1,8}\Z")
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}\Z")


def text(value: str) -> str:
    """Text shown by GRUB (inside single quotes)."""
    if not isinstance(value, str) or not _TEXT_RE.match(value):
        raise ipxe.UnsafeValue(f"unsafe text for a GRUB file: {value!r:.80}")
    return value


def safe_text(value: str) -> str:
    """Any string made showable (free-text reasons, error messages)."""
    return "".join(c if _TEXT_RE.match(c) else "_" for c in str(value))[:150]


def tftp_path(value: str) -> str:
    if not isinstance(value, str) or not _TFTP_PATH_RE.match(value) or ".." in value.split("/"):
        raise ipxe.UnsafeValue(f"unsafe TFTP path for a GRUB file: {value!r:.80}")
    return value


def path_of_url(url: str) -> str:
    """An artifact URL (http://SERVER/images/N/V/kernel) → the TFTP path GRUB loads (/images/N/V/kernel)."""
    checked = ipxe.url_checked(url)
    return tftp_path("/" + checked.split("://", 1)[1].split("/", 1)[1])


def mac_filename(mac: str) -> str:
    m = str(mac).lower()
    if not MAC_RE.match(m):
        raise ipxe.UnsafeValue(f"not a MAC: {mac!r:.40}")
    return "grub/grub.cfg-01-" + m.replace(":", "-")


def uuid_filename(uuid: str) -> str:
    u = str(uuid).lower()
    if not UUID_RE.match(u):
        raise ipxe.UnsafeValue(f"not a UUID: {uuid!r:.40}")
    return "grub/grub.cfg-" + u


def machine_of_filename(rel: str) -> tuple[str | None, str | None]:
    """The inverse, for log readers (dnsmasq's "sent .../grub/grub.cfg-01-..." lines): (mac, uuid)."""
    name = rel.rsplit("/", 1)[-1]
    if not name.startswith("grub.cfg-"):
        return None, None
    rest = name[len("grub.cfg-"):]
    if rest.startswith("01-") and MAC_RE.match(rest[3:].replace("-", ":")):
        return rest[3:].replace("-", ":"), None
    if UUID_RE.match(rest):
        return None, rest
    return None, None


@dataclass(frozen=True)
class GrubEntry:
    """One boot choice: kernel/initrd are TFTP paths (/images/N/V/kernel); kernel None = local disk."""

    id: str
    title: str
    kernel: str | None
    initrd: str | None = None
    args: tuple[str, ...] = ()


LOCAL = GrubEntry("local", "boot from the local disk (back to the firmware)", None)


def _comments(lines: list[str]) -> list[str]:
    return [f"# {safe_text(line)}" for line in lines]


def render_loader(unknown_retry_s: int = 30) -> str:
    """grub/grub.cfg: the machine's own file by MAC (net_default_mac), then by SMBIOS UUID, else the
    'unknown' file. `configfile` of a missing file fails and the script goes on to the next one."""
    if not 1 <= int(unknown_retry_s) <= 3600:
        raise ipxe.UnsafeValue(f"bad retry interval {unknown_retry_s}")
    return "\n".join([
        f"{GENERATED_MARK}, do not edit (netslate's Secure Boot path: shim -> GRUB -> kernel)",
        "set timeout=0",
        "echo 'netslate: GRUB over TFTP, looking for this machine'",
        # 52:54:00:12:34:56 -> 01-52-54-00-12-34-56, the pxelinux/GRUB per-MAC file name
        "regexp --set=1:m1 --set=2:m2 --set=3:m3 --set=4:m4 --set=5:m5 --set=6:m6 "
        "'^([0-9a-f][0-9a-f]):([0-9a-f][0-9a-f]):([0-9a-f][0-9a-f]):([0-9a-f][0-9a-f]):([0-9a-f][0-9a-f]):([0-9a-f][0-9a-f])$' "
        '"${net_default_mac}"',
        "set ns_mac=01-${m1}-${m2}-${m3}-${m4}-${m5}-${m6}",
        "smbios --type 1 --get-uuid 8 --set ns_uuid",
        "echo \"netslate: mac ${net_default_mac}, uuid ${ns_uuid}\"",
        # `test -e` is always false on a TFTP device (GRUB cannot list it): try the files in order, a
        # missing one only prints "file not found"
        "configfile $prefix/grub.cfg-${ns_mac}",
        "if [ -n \"${ns_uuid}\" -a \"${ns_uuid}\" != 00000000-0000-0000-0000-000000000000 ]; then configfile $prefix/grub.cfg-${ns_uuid}; fi",
        "configfile $prefix/netslate-unknown.cfg",
        "",
    ])


def render_unknown(retry_s: int = 30) -> str:
    """A machine without a file: netslate cannot see it from here (GRUB has no HTTP), so it says how
    to add it, waits, and reads the loader again (files are regenerated when machines or rules change)."""
    return render_wait(["this machine has no netslate GRUB file (unknown, held or no rule matches)",
                        "add it by MAC: netslate machine add --mac MAC, or boot it once with Secure Boot off"],
                       retry_s, ["unknown machine"])


def render_wait(message: list[str], retry_s: int, comments: list[str]) -> str:
    if not 1 <= int(retry_s) <= 3600:
        raise ipxe.UnsafeValue(f"bad retry interval {retry_s}")
    lines = [f"{GENERATED_MARK}, do not edit", *_comments(comments)]
    lines += [f"echo 'netslate: {text(m)}'" for m in message]
    lines += [f"echo 'netslate: asking again in {int(retry_s)} s'", f"sleep {int(retry_s)}", f"configfile $prefix/grub.cfg", ""]
    return "\n".join(lines)


def _entry(e: GrubEntry, first_echo: str = "") -> list[str]:
    lines = [f"menuentry '{text(e.title)}' --id {_id(e.id)} {{"]
    if e.kernel is None:
        lines += ["  echo 'netslate: booting from the local disk'", "  exit", "}"]
        return lines
    args = "".join(" " + ipxe.arg(a, "kernel argument") for a in e.args)
    lines += [
        f"  echo 'netslate: loading {text(e.title)}: kernel (checked by shim against its keys)'",
        f"  linux {tftp_path(e.kernel)}{args}",
    ]
    if e.initrd:
        lines += ["  echo 'netslate: loading the netslate initramfs'", f"  initrd {tftp_path(e.initrd)}"]
    lines += ["}"]
    return lines


def _id(value: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ipxe.UnsafeValue(f"unsafe GRUB menu id: {value!r:.80}")
    return value


def render_boot(entry: GrubEntry, comments: list[str], local_fallback: bool = False, retry_s: int = 10) -> str:
    """Boot one entry at once. If loading fails (TFTP, or a signature shim refuses), the fallback
    entry runs: the local disk for cache-mode profiles (back to the firmware's next boot option),
    then a reboot after `retry_s` seconds, as the iPXE script does after its retries."""
    if entry.kernel is None:
        return render_local(comments)
    lines = [f"{GENERATED_MARK}, do not edit", *_comments(comments),
             # entries by number (GRUB 2.06 takes only numbers in `fallback`): 0 the image, then the
             # local disk (cache mode), then the reboot
             "set timeout=0", "set default=0", "set fallback=" + ('"1 2"' if local_fallback else "1")]
    lines += _entry(entry)
    if local_fallback:
        lines += _entry(GrubEntry("ns_local", LOCAL.title, None))
    lines += _reboot_entry(retry_s) + [""]
    return "\n".join(lines)


def _reboot_entry(retry_s: int) -> list[str]:
    s = max(1, min(int(retry_s), 3600))
    return ["menuentry 'reboot' --id ns_reboot {", f"  echo 'netslate: boot failed, rebooting in {s} s'",
            f"  sleep {s}", "  reboot", "}"]


def render_local(comments: list[str]) -> str:
    return "\n".join([f"{GENERATED_MARK}, do not edit", *_comments(comments),
                      "echo 'netslate: booting from the local disk'", "exit", ""])


def render_menu(title: str, entries: list[GrubEntry], default: str | None, timeout_s: int = 30,
                comments: list[str] = ()) -> str:
    """A menu of an image's versions (newest first) + the local disk; `default` an entry id."""
    all_entries = list(entries) + [LOCAL]
    ids = [_id(e.id) for e in all_entries]
    if len(set(ids)) != len(ids):
        raise ipxe.UnsafeValue("duplicate GRUB menu ids")
    chosen = ids.index(default) if default in ids else 0
    lines = [f"{GENERATED_MARK}, do not edit", *_comments(list(comments)),
             f"set timeout={max(0, min(int(timeout_s), 3600))}", f"set default={chosen}", f"set fallback={len(all_entries)}",
             f"echo 'netslate: {text(title)}'"]
    for e in all_entries:
        lines += _entry(e)
    lines += _reboot_entry(10) + [""]
    return "\n".join(lines)
