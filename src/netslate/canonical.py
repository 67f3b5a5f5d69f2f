"""Canonical JSON: the exact bytes that are hashed and signed (sorted keys, no spaces, UTF-8)."""

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_of(obj: Any) -> str:
    """The `sha256:HEX` digest of an object's canonical JSON (as put on a kernel command line)."""
    return "sha256:" + sha256_hex(canonical_json(obj))
