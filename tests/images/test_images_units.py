"""Pure units: chunker, manifests, canonical JSON, signatures (stdlib verifier vs cryptography)."""

import base64
import hashlib
import os
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization

from netslate.crypto import ed25519
from netslate.crypto.envelope import SignatureError, open_envelope
from netslate.crypto.keys import SigningKey
from netslate.images import chunker, manifest as mf
from netslate.names import check_name
from netslate.errors import UserError


def _data(n: int, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    return bytes(rnd.getrandbits(8) for _ in range(n))


def test_chunks_tile_the_input_and_hash_correctly():
    data = _data(1_500_000)
    pieces = list(chunker.cut(data))
    assert pieces[0].offset == 0
    assert sum(p.size for p in pieces) == len(data)
    for a, b in zip(pieces, pieces[1:]):
        assert a.offset + a.size == b.offset
    for p in pieces:
        assert p.chunk_id == hashlib.sha256(data[p.offset:p.offset + p.size]).hexdigest()
        assert p.size <= chunker.MAX_SIZE


def test_mean_chunk_size_is_about_64_kib():
    data = _data(8 * 1024 * 1024, seed=7)
    pieces = list(chunker.cut(data))
    mean = len(data) / len(pieces)
    assert 48 * 1024 <= mean <= 96 * 1024, mean


def test_insertion_only_changes_nearby_chunks():
    base = _data(4 * 1024 * 1024, seed=3)
    changed = base[:2_000_000] + b"inserted bytes" * 10 + base[2_000_000:]
    a = {p.chunk_id for p in chunker.cut(base)}
    b = [p for p in chunker.cut(changed)]
    new = [p for p in b if p.chunk_id not in a]
    assert len(new) <= 3, "content-defined chunking must resynchronise after an insertion"


def test_manifest_chunk_list_must_tile():
    mf.check_chunk_list([[0, 10, "a" * 64], [10, 5, "b" * 64]], 15)
    with pytest.raises(ValueError):
        mf.check_chunk_list([[0, 10, "a" * 64], [11, 4, "b" * 64]], 15)
    with pytest.raises(ValueError):
        mf.check_chunk_list([[0, 10, "a" * 64]], 15)


def test_diff_counts_shared_and_new_bytes():
    a = {"version": 1, "artifacts": {"rootfs": {"chunks": [[0, 10, "a" * 64], [10, 20, "b" * 64]]}}}
    b = {"version": 2, "artifacts": {"rootfs": {"chunks": [[0, 10, "a" * 64], [10, 30, "c" * 64]]}}}
    d = mf.diff(a, b)
    assert (d["chunks_shared"], d["bytes_shared"], d["chunks_new"], d["bytes_new"]) == (1, 10, 1, 30)
    assert d["bytes_removed"] == 20


def test_pure_python_ed25519_agrees_with_cryptography():
    for i in range(5):
        key = Ed25519PrivateKey.generate()
        pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        msg = os.urandom(i * 37)
        sig = key.sign(msg)
        assert ed25519.verify(pub, msg, sig)
        assert not ed25519.verify(pub, msg + b"x", sig)
        bad = bytearray(sig)
        bad[5] ^= 1
        assert not ed25519.verify(pub, msg, bytes(bad))
    assert not ed25519.verify(b"\x00" * 31, b"", b"\x00" * 64)


def test_rfc8032_test_vector_1():
    pub = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    sig = bytes.fromhex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    assert ed25519.verify(pub, b"", sig)


def test_envelope_refuses_wrong_key_and_tampering():
    k1 = SigningKey(Ed25519PrivateKey.generate())
    k2 = SigningKey(Ed25519PrivateKey.generate())
    env = k1.sign({"name": "desktop", "version": 3})
    assert open_envelope(env, k1.public_bytes) == {"name": "desktop", "version": 3}
    with pytest.raises(SignatureError):
        open_envelope(env, k2.public_bytes)
    tampered = {**env, "payload": {"name": "desktop", "version": 4}}
    with pytest.raises(SignatureError):
        open_envelope(tampered, k1.public_bytes)
    forged = {**env, "key": None, "signature": base64.b64encode(b"\x01" * 64).decode()}
    with pytest.raises(SignatureError):
        open_envelope(forged, k1.public_bytes)


@pytest.mark.parametrize("bad", ["a/b", "..", "a..b", "x\x07y", "", "-lead", "a" * 64, "new\nline", "sp ace"])
def test_bad_names_are_refused(bad):
    with pytest.raises(UserError):
        check_name(bad)


def test_good_names_pass():
    for good in ["desktop", "lab-pc.v2", "A_1"]:
        assert check_name(good) == good
