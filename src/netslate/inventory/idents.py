"""Machine identifiers and identity fields, pure: normalizing and reading an identifier's forms.

One identifier string can mean several things: `12` is an id and maybe a serial number;
`525400aa0001` is a MAC and maybe a serial. `forms(text)` lists every reading; the resolver
(`netslate.inventory.store.resolve`) looks each one up and refuses an identifier that names more
than one machine. A prefix (`id:`, `name:`, `mac:`, `uuid:`, `serial:`) keeps only that reading.
"""

from __future__ import annotations

import re
from typing import Any

from netslate.errors import UserError
from netslate.names import check_name

FORMS = ("id", "name", "mac", "uuid", "serial")
MAX_ID_DIGITS = 18  # a 64-bit signed integer; longer digit strings are never an id

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
# SMBIOS strings: printable, no characters that mean something to iPXE, a shell or a URL parser.
TEXT_RE = re.compile(r"^[A-Za-z0-9 ._,()+/:@-]{1,128}\Z")
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}\Z")
LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9._:@/-]{0,63}\Z")
GROUP_RE = re.compile(r"^/([A-Za-z0-9][A-Za-z0-9._-]{0,62}(/[A-Za-z0-9][A-Za-z0-9._-]{0,62})*)?\Z")
HOSTNAME_RE = re.compile(r"^(?=.{1,253}\Z)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z")
# pxelinux.cfg style: ARP type 01 + the MAC with dashes (01-aa-bb-cc-dd-ee-ff)
PXELINUX_MAC_RE = re.compile(r"^01-[0-9a-f]{2}(-[0-9a-f]{2}){5}\Z")


def shown(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = text[:80] + ("..." if len(text) > 80 else "")
    return repr(text.encode("unicode_escape").decode("ascii"))


def normalize_mac(value: str) -> str:
    """aa:bb:.., AA-BB-.., aabb.ccdd.eeff, aabbccddeeff or 01-aa-bb-.. → aa:bb:cc:dd:ee:ff; anything else is refused."""
    text = str(value).strip().lower()
    if PXELINUX_MAC_RE.match(text):
        text = text[3:]
    raw = text.replace("-", "").replace(":", "").replace(".", "")
    if not re.fullmatch(r"[0-9a-f]{12}", raw) or not re.fullmatch(r"[0-9a-f:.-]{12,17}", text):
        raise UserError(f"invalid MAC address {shown(value)}")
    return ":".join(raw[i : i + 2] for i in range(0, 12, 2))


def normalize_uuid(value: str) -> str:
    """SMBIOS UUID, lower case with dashes; braces and a dash-less 32-digit form are accepted."""
    v = str(value).strip().lower()
    if v.startswith("{") and v.endswith("}"):
        v = v[1:-1]
    if re.fullmatch(r"[0-9a-f]{32}", v):
        v = f"{v[:8]}-{v[8:12]}-{v[12:16]}-{v[16:20]}-{v[20:]}"
    if not UUID_RE.match(v):
        raise UserError(f"invalid UUID {shown(value)}")
    return v


def normalize_text(value: str, what: str) -> str:
    v = str(value).strip(" ")  # spaces only: a trailing newline or CR is refused, not trimmed
    if not TEXT_RE.match(v):
        raise UserError(f"invalid {what} {shown(value)}: 1-128 of letters, digits, space and ._,()+/:@-")
    return v


def normalize_group(value: str) -> str:
    """A placement in the config tree: /site/cluster/pool."""
    v = str(value).strip(" ")  # spaces only: a trailing newline is refused, not trimmed
    if len(v) > 1 and v.endswith("/"):
        v = v[:-1]
    if not GROUP_RE.match(v) or ".." in v or len(v) > 512:
        raise UserError(f"invalid group {shown(value)}: a tree path like /site/cluster/pool")
    return v


def check_label(key: str, value: str) -> tuple[str, str]:
    if not LABEL_KEY_RE.match(str(key)) or ".." in str(key):
        raise UserError(f"invalid label key {shown(key)}")
    if not LABEL_VALUE_RE.match(str(value)) or ".." in str(value):
        raise UserError(f"invalid label value {shown(value)} for {key}")
    return str(key), str(value)


def check_hostname(value: str) -> str:
    if not HOSTNAME_RE.match(str(value)):
        raise UserError(f"invalid hostname {shown(value)}")
    return value


def _ok(fn, *args) -> Any:
    try:
        return fn(*args)
    except UserError:
        return None


def forms(ident: str | int) -> list[tuple[str, Any]]:
    """Every reading of an identifier as (form, normalized value), in FORMS order.

    `id:7`, `name:pc1`, `mac:…`, `uuid:…`, `serial:…` keep only that reading (and refuse a value
    that cannot be one). An identifier with no reading at all is refused here, in one line."""
    if isinstance(ident, int) and not isinstance(ident, bool):
        return [("id", ident)]  # programs pass ids as numbers: never read as a serial or a name
    text = str(ident).strip()
    if not text:
        raise UserError("empty machine identifier (give an id, name, MAC, SMBIOS UUID or serial)")
    prefix, sep, rest = text.partition(":")
    if sep and prefix.lower() in FORMS:
        form = prefix.lower()
        value = {"id": lambda v: int(v) if v.isdigit() and len(v) <= MAX_ID_DIGITS else None,
                 "name": lambda v: _ok(check_name, v),
                 "mac": lambda v: _ok(normalize_mac, v),
                 "uuid": lambda v: _ok(normalize_uuid, v),
                 "serial": lambda v: _ok(normalize_text, v, "serial")}[form](rest.strip())
        if value is None:
            raise UserError(f"invalid machine {form} {shown(rest)}")
        return [(form, value)]
    out: list[tuple[str, Any]] = []
    if text.isdigit() and len(text) <= MAX_ID_DIGITS:
        out.append(("id", int(text)))
    if _ok(check_name, text):
        out.append(("name", text))
    mac = _ok(normalize_mac, text)
    if mac:
        out.append(("mac", mac))
    uuid = _ok(normalize_uuid, text)
    if uuid:
        out.append(("uuid", uuid))
    if TEXT_RE.match(text):
        out.append(("serial", text))
    if not out:
        raise UserError(f"{shown(text)} is not a machine id, name, MAC, SMBIOS UUID or serial")
    return out
