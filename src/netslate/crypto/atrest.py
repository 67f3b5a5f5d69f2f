"""Secrets at rest: AES-256-GCM envelopes under a key-encryption key (KEK) kept outside the database.

Used for every secret a part stores: config secrets (the `secrets` map of node documents), the
sealed bundle keys of machine credentials, directory bind passwords.

Keys live in DATA/keys/ (directory 0700, files 0600), never in the database:
- `secrets.key`: the first key (key id `s0`), made on first use. Installations before key ids
  have only this one.
- `secrets-<KID>.key`: keys made by a rotation (`netslate key rewrap`), KID like `k20260101t120000a1b2`.
  A later per-site key is just another key id (`site-<NAME>-...`); `seal(..., key_id=...)` picks it.
- `secrets.current`: the key id new values are sealed with (missing: `s0`).

A copy of the database alone (a backup, a replica, a `pg_dump`) does not reveal the secrets; the
key files must be backed up with it, and kept apart from it.

Envelope forms (the purpose string is the associated data, so a value cannot be moved to another
field or row):
- `v1:` + base64(nonce ‖ ciphertext ‖ tag) — sealed with `s0` before key ids existed;
- `v2:<KID>:` + base64(nonce ‖ ciphertext ‖ tag).

Rotation (`rotate`): make a new key, make it current (new values use it at once), re-wrap every
stored value through the callback the caller gives (each part re-wraps its own rows, in its own
transaction), check nothing still names an old key, then delete the old key files. A crash at any
point leaves every stored value readable: old keys stay until nothing uses them.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
import secrets as _random
import threading
from pathlib import Path
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from netslate.errors import IntegrityError, UserError

KEY_FILE = "secrets.key"  # key id s0
CURRENT_FILE = "secrets.current"
LEGACY_KID = "s0"
KID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")

_cache: dict[tuple[str, str], bytes] = {}  # (keys dir, kid) → key; a key id's bytes never change
_lock = threading.Lock()


def keys_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "keys"


def key_path(data_dir: Path, kid: str = LEGACY_KID) -> Path:
    if kid == LEGACY_KID:
        return keys_dir(data_dir) / KEY_FILE
    if not KID_RE.fullmatch(kid):
        raise IntegrityError(f"invalid key id {kid[:40]!r} in a sealed value")
    return keys_dir(data_dir) / f"secrets-{kid}.key"


def _write_new(path: Path, data: bytes, mode: int = 0o600) -> bool:
    """Create `path` with `data` durably, once: False when it already exists (another process won)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{_random.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
        _fsync_dir(path.parent)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_key(data_dir: Path, kid: str = LEGACY_KID, create: bool = True) -> bytes:
    """The 32-byte key `kid`. `s0` is created on first use (`create`: sealing; never when opening a
    value: a new key cannot open it, and would stand in the lost one's place); other ids only by `new_key`."""
    path = key_path(data_dir, kid)
    cached = _cache.get((str(path.parent), kid))
    if cached is not None and path.exists():
        return cached
    if not path.exists():
        if kid != LEGACY_KID or not create:
            raise IntegrityError(f"a stored secret needs key {kid}, but {path} is missing: restore it from the backup of {keys_dir(data_dir)}")
        _write_new(path, os.urandom(32))
    key = path.read_bytes()
    if len(key) != 32:
        raise IntegrityError(f"{path} is not a 32-byte key")
    with _lock:
        _cache[(str(path.parent), kid)] = key
    return key


def current_kid(data_dir: Path) -> str:
    try:
        kid = (keys_dir(data_dir) / CURRENT_FILE).read_text().strip()
    except FileNotFoundError:
        return LEGACY_KID
    if kid != LEGACY_KID and not KID_RE.fullmatch(kid):
        raise IntegrityError(f"{keys_dir(data_dir) / CURRENT_FILE} names no valid key id")
    return kid


def key_ids(data_dir: Path) -> list[str]:
    """Every key id that has a key file, current first."""
    d = keys_dir(data_dir)
    found = []
    if (d / KEY_FILE).exists():
        found.append(LEGACY_KID)
    if d.is_dir():
        for p in sorted(d.glob("secrets-*.key")):
            kid = p.name[len("secrets-"):-len(".key")]
            if KID_RE.fullmatch(kid):
                found.append(kid)
    cur = current_kid(data_dir)
    return sorted(found, key=lambda k: k != cur)


def kid_of(value: str) -> str:
    """The key id a sealed value names."""
    if value.startswith("v1:"):
        return LEGACY_KID
    if value.startswith("v2:"):
        kid, sep, _ = value[3:].partition(":")
        if sep:
            return kid
    raise IntegrityError("unknown secret format")


def seal(data_dir: Path, plaintext: str, purpose: str, key_id: str | None = None) -> str:
    """`plaintext` sealed under key `key_id` (default: the current key)."""
    kid = key_id or current_kid(data_dir)
    nonce = os.urandom(12)
    sealed = AESGCM(load_key(data_dir, kid)).encrypt(nonce, plaintext.encode(), purpose.encode())
    body = base64.b64encode(nonce + sealed).decode("ascii")
    return f"v2:{kid}:{body}"


def unseal(data_dir: Path, value: str, purpose: str) -> str:
    kid = kid_of(value)
    body = value[3:] if value.startswith("v1:") else value[3 + len(kid) + 1:]
    try:
        raw = base64.b64decode(body, validate=True)
    except ValueError:
        raise IntegrityError(f"a stored secret ({purpose}) is damaged") from None
    try:
        return AESGCM(load_key(data_dir, kid, create=False)).decrypt(raw[:12], raw[12:], purpose.encode()).decode()
    except InvalidTag:
        raise IntegrityError(f"a stored secret ({purpose}) does not open with {key_path(data_dir, kid)}: was the key file replaced?") from None


def rewrap(data_dir: Path, value: str, purpose: str, key_id: str | None = None) -> str:
    """`value` sealed again under `key_id` (default: the current key); unchanged if it already is."""
    kid = key_id or current_kid(data_dir)
    if kid_of(value) == kid:
        return value
    return seal(data_dir, unseal(data_dir, value, purpose), purpose, kid)


def new_key(data_dir: Path, prefix: str = "k") -> str:
    """Make a new key file (not yet current); returns its id."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dt%H%M%S")
    kid = f"{prefix}{stamp}{_random.token_hex(2)}"
    if not _write_new(key_path(data_dir, kid), os.urandom(32)):
        raise IntegrityError(f"key {kid} exists already")
    return kid


def set_current(data_dir: Path, kid: str) -> None:
    """Make `kid` the key new values are sealed with (atomic replace of secrets.current)."""
    load_key(data_dir, kid)  # it must exist
    d = keys_dir(data_dir)
    tmp = d / f".{CURRENT_FILE}.{os.getpid()}.{_random.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (kid + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, d / CURRENT_FILE)
    _fsync_dir(d)


# A re-wrap pass over one part's rows: given `rewrap_one(value, purpose) -> value`, re-wrap every
# stored value (in one transaction) and return {"rewrapped": N, "in_use": {kid, ...}}: the key ids
# its values name after the pass (normally only the new one).
RewrapPass = Callable[[Callable[[str, str], str]], dict]

MAX_PASSES = 3


def rotate(data_dir: Path, passes: list[RewrapPass]) -> dict:
    """Rotate the KEK: new key → current → every part re-wraps → old keys deleted when unused."""
    before = [k for k in key_ids(data_dir)]
    kid = new_key(data_dir)
    set_current(data_dir, kid)

    def one(value: str, purpose: str) -> str:
        return rewrap(data_dir, value, purpose, kid)

    total = 0
    still: set[str] = set()
    for _ in range(MAX_PASSES):  # a write sealed with the old key just before the switch is caught by the next pass
        still = set()
        for p in passes:
            out = p(one)
            total += out["rewrapped"]
            still |= set(out["in_use"]) - {kid}
        if not still:
            break
    retired = []
    if not still:
        for old in before:
            if old != kid:
                try:
                    key_path(data_dir, old).unlink()
                    retired.append(old)
                except FileNotFoundError:
                    pass
        with _lock:
            for k in list(_cache):
                if k[1] in retired:
                    del _cache[k]
    else:
        raise UserError(f"values under keys {sorted(still)} were still being written; the new key {kid} is current, "
                        "the old keys are kept: run the re-wrap again")
    return {"key_id": kid, "rewrapped": total, "retired": retired}
