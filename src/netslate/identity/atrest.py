"""Secrets at rest (directory bind passwords): AES-256-GCM under a key file outside the database.

The key is DATA/keys/secrets.key (32 random bytes, 0600), made on first use. A copy of the
database alone (a backup, a replica) does not reveal the secrets; the key file must be backed up
with it. Each value is `v1:` + base64(nonce ‖ ciphertext ‖ tag), with a purpose string as the
associated data so a value cannot be moved to another field.
"""

from __future__ import annotations

import base64
import os
import secrets as _random
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from netslate.errors import IntegrityError

KEY_FILE = "secrets.key"


def key_path(data_dir: Path) -> Path:
    return Path(data_dir) / "keys" / KEY_FILE


def load_key(data_dir: Path) -> bytes:
    """The installation's secrets key, created once (concurrent first uses agree on one file)."""
    path = key_path(data_dir)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{_random.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, os.urandom(32))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails when another process won the race: use its key
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    key = path.read_bytes()
    if len(key) != 32:
        raise IntegrityError(f"{path} is not a 32-byte key")
    return key


def seal(data_dir: Path, plaintext: str, purpose: str) -> str:
    nonce = os.urandom(12)
    sealed = AESGCM(load_key(data_dir)).encrypt(nonce, plaintext.encode(), purpose.encode())
    return "v1:" + base64.b64encode(nonce + sealed).decode("ascii")


def unseal(data_dir: Path, value: str, purpose: str) -> str:
    if not value.startswith("v1:"):
        raise IntegrityError("unknown secret format")
    raw = base64.b64decode(value[3:])
    try:
        return AESGCM(load_key(data_dir)).decrypt(raw[:12], raw[12:], purpose.encode()).decode()
    except InvalidTag:
        raise IntegrityError(f"a stored secret ({purpose}) does not open with {key_path(data_dir)}: was the key file replaced?") from None
