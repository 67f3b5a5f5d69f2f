"""Parse and validate what iPXE sends to /boot/ipxe, pure. Anything odd is refused (→ 4xx, logged).

The query is taken as raw bytes: it must be ASCII (iPXE percent-encodes), its percent-decoded values
must be UTF-8 without control characters, and each field has its own whitelist. Values that reach
a script are re-checked by ipxe.py anyway; SMBIOS strings never reach a script at all.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from netslate.boot.rules import MAC_RE, UUID_RE, WORD_RE
from netslate.errors import UserError

MAX_QUERY = 2048
FIELDS = ("mac", "uuid", "serial", "manufacturer", "product", "arch", "platform", "asset")
# SMBIOS strings are free text in the firmware; refuse only what could be an injection attempt.
_BAD_TEXT = re.compile(r"[\x00-\x1f\x7f$|;`<>\\\"]|\.\./|\.\.\\")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # refused before strip(): a trailing newline is not whitespace to forgive
_ZERO_UUIDS = {"00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"}


class BadBootRequest(UserError):
    """Refused boot request; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _shown(v: str) -> str:
    return repr(v[:60] + ("..." if len(v) > 60 else ""))


def parse_boot_query(raw: bytes) -> dict[str, str | None]:
    """Raw query bytes → {field: value or None}. Raises BadBootRequest."""
    if len(raw) > MAX_QUERY:
        raise BadBootRequest(f"query string too long ({len(raw)} bytes, limit {MAX_QUERY})", 414)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise BadBootRequest("query string is not percent-encoded ASCII") from None
    pairs = []
    for part in text.split("&"):  # parse_qsl, minus its generality (this is the hot path)
        if not part:
            continue
        if len(pairs) >= 16:
            raise BadBootRequest("too many query fields")
        key, _, value = part.partition("=")
        try:
            key = unquote(key.replace("+", " "), errors="strict") if ("%" in key or "+" in key) else key
            value = unquote(value.replace("+", " "), errors="strict") if ("%" in value or "+" in value) else value
        except UnicodeDecodeError:
            raise BadBootRequest("a query value is not valid UTF-8") from None
        pairs.append((key, value))
    out: dict[str, str | None] = {f: None for f in FIELDS}
    seen: set[str] = set()
    for key, value in pairs:
        if key not in out:
            raise BadBootRequest(f"unknown query field {_shown(key)}")
        if key in seen:
            raise BadBootRequest(f"query field {key!r} given twice")
        seen.add(key)
        if _CONTROL.search(value):
            raise BadBootRequest(f"refused {key} {_shown(value)}: control characters")
        value = value.strip()
        if not value:
            continue
        if len(value) > 128:
            raise BadBootRequest(f"query field {key!r} is too long")
        out[key] = check_field(key, value)
    if out["mac"] is None:
        raise BadBootRequest("the mac field is required")
    return out


def check_field(key: str, value: str) -> str | None:
    """One query field, validated and normalised (BadBootRequest otherwise)."""
    if key == "mac":
        v = value.lower().replace("-", ":")
        if not MAC_RE.match(v):
            raise BadBootRequest(f"invalid mac {_shown(value)}")
        return v
    if key == "uuid":
        v = value.lower()
        if not UUID_RE.match(v):
            raise BadBootRequest(f"invalid uuid {_shown(value)}")
        return None if v in _ZERO_UUIDS else v  # firmware placeholders identify nobody
    if key == "arch":
        if not WORD_RE.match(value):
            raise BadBootRequest(f"invalid arch {_shown(value)}")
        return value.lower()
    if key == "platform":
        v = value.lower()
        if v not in ("pcbios", "efi"):
            raise BadBootRequest(f"invalid platform {_shown(value)}")
        return v
    # serial, manufacturer, product, asset: free text, minus anything that smells of injection
    if _BAD_TEXT.search(value) or not value.isprintable():
        raise BadBootRequest(f"refused {key} {_shown(value)}: control or script characters")
    return value


def parse_ident(ident: str) -> tuple[str | None, str | None]:
    """A machine named by MAC or SMBIOS UUID (explain): (mac, None) or (None, uuid)."""
    ident = ident.strip()
    try:
        return check_field("mac", ident), None
    except BadBootRequest:
        pass
    try:
        uuid = check_field("uuid", ident)
    except BadBootRequest:
        uuid = None
    if uuid is None:  # not a UUID, or a firmware placeholder that names nobody
        raise BadBootRequest(f"{ident[:80]!r} is neither a MAC nor a UUID")
    return None, uuid
