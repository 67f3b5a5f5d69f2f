"""ChaCha20-Poly1305 (RFC 8439), pure Python, standard library only: the machine side opens the
secrets section of its bundle with it (the server seals it with `cryptography`).

Bundle secrets are small (a few KiB), so speed does not matter here; correctness does: the module
is checked against the RFC 8439 test vectors and against `cryptography` (tests/onmachine/test_aead.py).
The tag is compared in constant time (hmac.compare_digest) before anything is decrypted.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
_MASK = 0xFFFFFFFF


class InvalidTag(Exception):
    """The ciphertext, nonce, associated data or key is not the one it was sealed with."""


def _rotl(v: int, c: int) -> int:
    return ((v << c) & _MASK) | (v >> (32 - c))


def _quarter(x: list[int], a: int, b: int, c: int, d: int) -> None:
    x[a] = (x[a] + x[b]) & _MASK
    x[d] = _rotl(x[d] ^ x[a], 16)
    x[c] = (x[c] + x[d]) & _MASK
    x[b] = _rotl(x[b] ^ x[c], 12)
    x[a] = (x[a] + x[b]) & _MASK
    x[d] = _rotl(x[d] ^ x[a], 8)
    x[c] = (x[c] + x[d]) & _MASK
    x[b] = _rotl(x[b] ^ x[c], 7)


def chacha20_block(key: bytes, counter: int, nonce: bytes) -> bytes:
    """One 64-byte ChaCha20 block (RFC 8439 §2.3)."""
    state = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574, *struct.unpack("<8L", key), counter & _MASK,
             *struct.unpack("<3L", nonce)]
    x = list(state)
    for _ in range(10):
        _quarter(x, 0, 4, 8, 12)
        _quarter(x, 1, 5, 9, 13)
        _quarter(x, 2, 6, 10, 14)
        _quarter(x, 3, 7, 11, 15)
        _quarter(x, 0, 5, 10, 15)
        _quarter(x, 1, 6, 11, 12)
        _quarter(x, 2, 7, 8, 13)
        _quarter(x, 3, 4, 9, 14)
    return struct.pack("<16L", *((a + b) & _MASK for a, b in zip(x, state)))


def chacha20(key: bytes, counter: int, nonce: bytes, data: bytes) -> bytes:
    """ChaCha20 encryption (= decryption) of `data` starting at block `counter` (RFC 8439 §2.4)."""
    _check(key, nonce)
    out = bytearray()
    for i in range(0, len(data), 64):
        block = chacha20_block(key, counter + i // 64, nonce)
        chunk = data[i:i + 64]
        out += (int.from_bytes(chunk, "little") ^ int.from_bytes(block[:len(chunk)], "little")).to_bytes(len(chunk), "little")
    return bytes(out)


def poly1305(key: bytes, msg: bytes) -> bytes:
    """The Poly1305 one-time authenticator (RFC 8439 §2.5)."""
    r = int.from_bytes(key[:16], "little") & 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
    s = int.from_bytes(key[16:32], "little")
    p = (1 << 130) - 5
    acc = 0
    for i in range(0, len(msg), 16):
        n = int.from_bytes(msg[i:i + 16] + b"\x01", "little")
        acc = ((acc + n) * r) % p
    return ((acc + s) & ((1 << 128) - 1)).to_bytes(16, "little")


def _pad16(n: int) -> bytes:
    return b"\x00" * (-n % 16)


def _tag(key: bytes, nonce: bytes, aad: bytes, ciphertext: bytes) -> bytes:
    otk = chacha20_block(key, 0, nonce)[:32]
    mac_data = (aad + _pad16(len(aad)) + ciphertext + _pad16(len(ciphertext))
                + struct.pack("<QQ", len(aad), len(ciphertext)))
    return poly1305(otk, mac_data)


def _check(key: bytes, nonce: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError("ChaCha20-Poly1305 key must be 32 bytes")
    if len(nonce) != NONCE_SIZE:
        raise ValueError("ChaCha20-Poly1305 nonce must be 12 bytes")


def encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """ciphertext ‖ 16-byte tag (RFC 8439 §2.8), as `cryptography`'s ChaCha20Poly1305.encrypt."""
    _check(key, nonce)
    ct = chacha20(key, 1, nonce, plaintext)
    return ct + _tag(key, nonce, aad, ct)


def decrypt(key: bytes, nonce: bytes, data: bytes, aad: bytes = b"") -> bytes:
    """The plaintext of ciphertext ‖ tag, or InvalidTag."""
    _check(key, nonce)
    if len(data) < TAG_SIZE:
        raise InvalidTag("sealed data is shorter than its tag")
    ct, tag = data[:-TAG_SIZE], data[-TAG_SIZE:]
    if not hmac.compare_digest(_tag(key, nonce, aad, ct), tag):
        raise InvalidTag("the sealed data does not open with this key")
    return chacha20(key, 1, nonce, ct)


def hkdf_sha256(ikm: bytes, info: bytes, length: int = 32, salt: bytes = b"") -> bytes:
    """HKDF-SHA256 (RFC 5869), for the machine to derive its bundle key from its credential."""
    prk = hmac.new(salt or b"\x00" * 32, ikm, hashlib.sha256).digest()
    out, block = b"", b""
    i = 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]
