"""Password hashing for local users: argon2id (argon2-cffi), never stored or logged in clear."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from netslate.errors import UserError

# argon2-cffi's RFC 9106 "low memory" profile: argon2id, t=3, m=64 MiB, p=4 (~50 ms here).
_hasher = PasswordHasher()
MIN_LENGTH = 8
MAX_LENGTH = 1024
# Verified against when the user does not exist, so that an unknown name costs the same time.
_DUMMY = _hasher.hash("netslate-no-such-user")


def check_password_quality(password: str) -> None:
    if not isinstance(password, str) or len(password) < MIN_LENGTH:
        raise UserError(f"the password must have at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise UserError(f"the password must have at most {MAX_LENGTH} characters")
    if any(ord(c) < 32 for c in password):
        raise UserError("the password must not contain control characters")


def hash_password(password: str) -> str:
    check_password_quality(password)
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """True when `password` matches `stored`; with `stored` None the same work is done and False returned."""
    if not password or len(password) > MAX_LENGTH:
        return False
    try:
        return _hasher.verify(stored or _DUMMY, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    return _hasher.check_needs_rehash(stored)
