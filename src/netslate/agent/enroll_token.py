"""One-time enrollment tokens on the machine (issue 13 §3, §4), standard library only.

Where a machine without a TPM finds its token, first hit wins:
1. SMBIOS type 11 OEM strings `netslate-enroll:nse_...`: put there by netslate when it defined the
   VM (libvirt `<sysinfo type='smbios'><oemStrings>`, QEMU `-smbios type=11,value=...`). Read from
   `/sys/firmware/dmi/entries/11-*/raw` (root only: only the guest's own root can read it) and
   parsed here, without dmidecode.
2. A file `netslate-enroll.token` an admin put on the machine: on the NETSLATE disk (cache mode:
   `/netslate/`, beside `lkg/`), on the ESP (mounted at `/boot/efi` or `/efi`), in `/boot` or
   `/etc/netslate/` (typed at the console: `echo nse_... > /etc/netslate/netslate-enroll.token`).

`enroll_with_token` trades the token once (`POST /api/v1/enroll/token`, no API token) for a
long-lived credential, and removes the token files it read (the server has spent the token
anyway). Storing the credential is the caller's (`agent/enroll.py:save`, into the lkg directory,
which in cache mode is on the NETSLATE disk and so survives reboots).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from netslate.agent import facts as facts_mod
from netslate.agent import http
from netslate.agent.util import under

OEM_PREFIX = "netslate-enroll:"
TOKEN_FILE = "netslate-enroll.token"
TOKEN_RE = re.compile(r"^nse_[A-Za-z0-9_-]{43}\Z")
DMI_ENTRIES = "/sys/firmware/dmi/entries"
FILE_DIRS = ("/netslate", "/boot/efi", "/efi", "/boot", "/etc/netslate")
MAX_RAW = 65536


class EnrollTokenRefused(Exception):
    """The server refused the token (used already: 409; unknown, expired, bound elsewhere: 403;
    sent over plain HTTP to a server with a TLS listener, which spends it: 426)."""


def parse_smbios_strings(raw: bytes) -> tuple[int, list[str]]:
    """One SMBIOS structure (header: type, length, handle; the formatted area; then the string set,
    each string NUL-terminated, the set ending in an extra NUL) → (type, strings)."""
    if len(raw) < 4:
        raise ValueError("SMBIOS structure shorter than its header")
    stype, length = raw[0], raw[1]
    if length < 4 or length > len(raw):
        raise ValueError(f"SMBIOS structure length {length} does not fit {len(raw)} bytes")
    tail = raw[length:]
    end = tail.find(b"\0\0")
    if end < 0:
        raise ValueError("SMBIOS string set is not terminated")
    strings = [s.decode("latin-1") for s in tail[:end].split(b"\0")] if end > 0 else []
    return stype, strings


def oem_strings_of(raw: bytes) -> list[str]:
    """The strings of one type 11 (OEM strings) structure, in order (its count byte is checked)."""
    stype, strings = parse_smbios_strings(raw)
    if stype != 11:
        raise ValueError(f"SMBIOS structure type {stype}, not 11 (OEM strings)")
    if raw[1] < 5:
        raise ValueError("type 11 structure without its count")
    (count,) = struct.unpack_from("B", raw, 4)
    return strings[:count]


def smbios_oem_strings(root: Path = Path("/")) -> list[str]:
    """Every type 11 string of this machine (empty where the firmware gives none or we are not root)."""
    out: list[str] = []
    base = under(root, DMI_ENTRIES)
    try:
        entries = sorted(base.glob("11-*"), key=lambda p: int(p.name.split("-", 1)[1]) if p.name.split("-", 1)[1].isdigit() else 0)
    except OSError:
        return out
    for entry in entries[:64]:
        try:
            with open(entry / "raw", "rb") as f:
                raw = f.read(MAX_RAW)
            out += oem_strings_of(raw)
        except (OSError, ValueError):
            continue
    return out


def token_in(strings: list[str]) -> str | None:
    for s in strings:
        if s.startswith(OEM_PREFIX):
            t = s[len(OEM_PREFIX):].strip()
            if TOKEN_RE.match(t):
                return t
    return None


def token_files(root: Path, lkg_dir: Path | None = None) -> list[Path]:
    """Where an admin may have put `netslate-enroll.token` (existing files only)."""
    dirs = [Path(lkg_dir).parent] if lkg_dir is not None else []
    dirs += [under(root, d) for d in FILE_DIRS]
    out = []
    for d in dirs:
        p = d / TOKEN_FILE
        if p not in out and p.is_file():
            out.append(p)
    return out


def find_tokens(root: Path = Path("/"), lkg_dir: Path | None = None) -> list[tuple[str, str, list[Path]]]:
    """Every token found, in trial order: [(token, where it came from, the files holding it)],
    SMBIOS first, then the token files."""
    out: list[tuple[str, str, list[Path]]] = []
    t = token_in(smbios_oem_strings(root))
    if t:
        out.append((t, "smbios", []))
    for p in token_files(root, lkg_dir):
        try:
            text = p.read_text(errors="replace").strip()
        except OSError:
            continue
        text = text[len(OEM_PREFIX):] if text.startswith(OEM_PREFIX) else text
        if TOKEN_RE.match(text):
            out.append((text, str(p), [p]))
    return out


def find_token(root: Path = Path("/"), lkg_dir: Path | None = None) -> tuple[str | None, str | None, list[Path]]:
    """The first token of `find_tokens`, or (None, None, [])."""
    found = find_tokens(root, lkg_dir)
    return found[0] if found else (None, None, [])


def exchange(url: str, token: str, facts: dict, timeout: float = 10.0) -> dict:
    """POST /api/v1/enroll/token → {"machine_id", "credential", "trust", "expires_at"}.
    Raises EnrollTokenRefused (403/409/426) or http.HttpError."""
    dmi = facts.get("dmi") or {}
    body = {"token": token, "uuid": dmi.get("product_uuid"), "macs": facts_mod.macs(facts)[:32]}
    r = http.post_json(f"{url}/api/v1/enroll/token", body, timeout=timeout)
    if r.status in (403, 409, 426):
        try:
            detail = str(r.json().get("detail"))[:300]
        except (http.HttpError, AttributeError):
            detail = f"HTTP {r.status}"
        raise EnrollTokenRefused(detail)
    if r.status != 200:
        raise http.HttpError(f"/api/v1/enroll/token: HTTP {r.status}")
    answer = r.json()
    if not isinstance(answer, dict) or not str(answer.get("credential", "")).startswith("nsm_"):
        raise http.HttpError("/api/v1/enroll/token: the answer holds no credential")
    return answer


def enroll_with_token(url: str, facts: dict, root: Path = Path("/"), lkg_dir: Path | None = None,
                      timeout: float = 10.0) -> dict | None:
    """Trade the first token the server accepts (each once): the answer with the credential (and
    `source`), or None when there is no token. A refused token file is discarded (a spent or
    foreign token never gets better); the SMBIOS one stays (a VM that rebooted keeps its spent
    token until netslate defines it again) and the next source is tried. Raises EnrollTokenRefused when
    every token was refused, http.HttpError when the server could not be asked (try again later).
    A machine that pins the server's TLS certificate never sends a token over plain HTTP (a server
    with a TLS listener spends a token it receives in clear): HttpError, the token kept for later."""
    refused: list[str] = []
    for token, source, files in find_tokens(root, lkg_dir):
        if http.PIN and not url.startswith("https://"):
            raise http.HttpError(f"{url} is plain HTTP and this machine pins the server's TLS certificate: "
                                 "the token is kept for an https server")
        try:
            answer = exchange(url, token, facts, timeout)
        except EnrollTokenRefused as exc:
            _discard(files)
            refused.append(f"enrollment token from {source} refused: {exc}")
            continue
        _discard(files)
        answer["source"] = source
        return answer
    if refused:
        raise EnrollTokenRefused("; ".join(refused))
    return None


def _discard(files: list[Path]) -> None:
    for p in files:
        try:
            p.unlink()
        except OSError:
            pass
