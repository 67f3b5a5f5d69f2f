"""netslate.onmachine.aead (pure-Python ChaCha20-Poly1305) against RFC 8439's test vectors and
against `cryptography` (the server side)."""

import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from netslate.onmachine import aead


def _hex(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


def test_chacha20_block_rfc8439_2_3_2():
    key = bytes(range(32))
    nonce = _hex("000000090000004a00000000")
    assert aead.chacha20_block(key, 1, nonce) == _hex("""
        10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e
        d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e""")


def test_chacha20_encryption_rfc8439_2_4_2():
    key = bytes(range(32))
    nonce = _hex("000000000000004a00000000")
    text = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
            b"sunscreen would be it.")
    assert aead.chacha20(key, 1, nonce, text) == _hex("""
        6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b
        f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8
        07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736
        5af90bbf74a35be6b40b8eedf2785e42874d""")


def test_poly1305_rfc8439_2_5_2():
    key = _hex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b")
    assert aead.poly1305(key, b"Cryptographic Forum Research Group") == _hex("a8061dc1305136c6c22b8baf0c0127a9")


RFC_KEY = _hex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
RFC_NONCE = _hex("070000004041424344454647")
RFC_AAD = _hex("50515253c0c1c2c3c4c5c6c7")
RFC_TEXT = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
            b"sunscreen would be it.")
RFC_SEALED = _hex("""
    d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
    3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
    92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
    3ff4def08e4b7a9de576d26586cec64b6116
    1ae10b594f09e26a7e902ecbd0600691""")


def test_aead_rfc8439_2_8_2():
    assert aead.encrypt(RFC_KEY, RFC_NONCE, RFC_TEXT, RFC_AAD) == RFC_SEALED
    assert aead.decrypt(RFC_KEY, RFC_NONCE, RFC_SEALED, RFC_AAD) == RFC_TEXT


def test_aead_decryption_rfc8439_a5():
    key = _hex("1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0")
    nonce = _hex("000000000102030405060708")
    aad = _hex("f33388860000000000004e91")
    sealed = _hex("""
        64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb2
        4c6cfc18755d43eea09ee94e382d26b0bdb7b73c321b0100d4f03b7f355894cf
        332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c855
        9797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4
        b9166c767b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523e
        af4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a
        0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a10
        49e617d91d361094fa68f0ff77987130305beaba2eda04df997b714d6c6f2c29
        a6ad5cb4022b02709b""")
    tag = _hex("eead9d67890cbb22392336fea1851f38")
    text = aead.decrypt(key, nonce, sealed + tag, aad)
    assert text.startswith(b"Internet-Drafts are draft documents valid for a maximum of six months")
    assert text.endswith(b"/\xe2\x80\x9cwork in progress./\xe2\x80\x9d")


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 63, 64, 65, 1000, 4099])
def test_matches_cryptography_both_ways(size):
    key, nonce, aad = os.urandom(32), os.urandom(12), os.urandom(size % 37)
    text = os.urandom(size)
    theirs = ChaCha20Poly1305(key).encrypt(nonce, text, aad)
    assert aead.encrypt(key, nonce, text, aad) == theirs
    assert aead.decrypt(key, nonce, theirs, aad) == text
    assert ChaCha20Poly1305(key).decrypt(nonce, aead.encrypt(key, nonce, text, aad), aad) == text


def test_tampering_is_refused():
    key, nonce = os.urandom(32), os.urandom(12)
    sealed = aead.encrypt(key, nonce, b"db-password", b"ad")
    for bad in (bytes([sealed[0] ^ 1]) + sealed[1:], sealed[:-1] + bytes([sealed[-1] ^ 1]), sealed[:10]):
        with pytest.raises(aead.InvalidTag):
            aead.decrypt(key, nonce, bad, b"ad")
    with pytest.raises(aead.InvalidTag):
        aead.decrypt(key, nonce, sealed, b"other ad")
    with pytest.raises(aead.InvalidTag):
        aead.decrypt(os.urandom(32), nonce, sealed, b"ad")
    with pytest.raises(ValueError):
        aead.encrypt(key[:31], nonce, b"x")


def test_hkdf_matches_cryptography():
    ikm = b"nsm_" + os.urandom(20).hex().encode()
    want = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"netslate bundle secrets v1").derive(ikm)
    assert aead.hkdf_sha256(ikm, b"netslate bundle secrets v1") == want
