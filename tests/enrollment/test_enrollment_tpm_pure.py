"""enrollment/tpm.py as pure functions: the TPM side of ActivateCredential done in software with
the EK's private key (the same checks a TPM makes), structure parsing and refusals. The same code
against a real TPM: test_enrollment_swtpm.py."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from netslate.enrollment import tpm

EK_ATTRS = tpm.FIXED_TPM | tpm.FIXED_PARENT | tpm.SENSITIVE_DATA_ORIGIN | tpm.ADMIN_WITH_POLICY | tpm.RESTRICTED | tpm.DECRYPT
AK_ATTRS = tpm.FIXED_TPM | tpm.FIXED_PARENT | tpm.SENSITIVE_DATA_ORIGIN | tpm.USER_WITH_AUTH | tpm.RESTRICTED | tpm.SIGN


def tpmt_rsa(key, attrs: int, sym: bool, scheme: int = tpm.ALG_NULL) -> bytes:
    n = key.public_key().public_numbers().n.to_bytes(256, "big")
    symdef = struct.pack(">HHH", tpm.ALG_AES, 128, tpm.ALG_CFB) if sym else struct.pack(">H", tpm.ALG_NULL)
    sch = struct.pack(">H", tpm.ALG_NULL) if scheme == tpm.ALG_NULL else struct.pack(">HH", scheme, tpm.ALG_SHA256)
    return struct.pack(">HHI", tpm.ALG_RSA, tpm.ALG_SHA256, attrs) + tpm.tpm2b(b"") + symdef + sch + struct.pack(">HI", 2048, 0) + tpm.tpm2b(n)


def tpmt_ecc(key, attrs: int, sym: bool, scheme: int = tpm.ALG_NULL) -> bytes:
    nums = key.public_key().public_numbers()
    symdef = struct.pack(">HHH", tpm.ALG_AES, 128, tpm.ALG_CFB) if sym else struct.pack(">H", tpm.ALG_NULL)
    sch = struct.pack(">H", tpm.ALG_NULL) if scheme == tpm.ALG_NULL else struct.pack(">HH", scheme, tpm.ALG_SHA256)
    return (struct.pack(">HHI", tpm.ALG_ECC, tpm.ALG_SHA256, attrs) + tpm.tpm2b(b"") + symdef + sch + struct.pack(">H", 0x0003)
            + struct.pack(">H", tpm.ALG_NULL) + tpm.tpm2b(nums.x.to_bytes(32, "big")) + tpm.tpm2b(nums.y.to_bytes(32, "big")))


def soft_activate(ek_key, ek: tpm.TpmPublic, id_object: bytes, encrypted_secret: bytes, ak_name: bytes) -> bytes:
    """TPM2_ActivateCredential as a TPM does it (Part 1 §24), with the EK's private key in software."""
    r = tpm._Reader(encrypted_secret)
    secret_blob = r.tpm2b()
    if ek.type == tpm.ALG_RSA:
        seed = ek_key.decrypt(secret_blob, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"IDENTITY\0"))
    else:
        p = tpm._Reader(secret_blob)
        x, y = p.tpm2b(), p.tpm2b()
        ephemeral = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()).public_key()
        z = ek_key.exchange(ec.ECDH(), ephemeral)
        seed = tpm.kdfe(tpm.ALG_SHA256, z, "IDENTITY", x, ek.ecc_x, 256)
    r = tpm._Reader(id_object)
    body = tpm._Reader(r.tpm2b())
    outer = body.tpm2b()
    enc_identity = body.take(len(body.data) - body.pos)
    hmac_key = tpm.kdfa(tpm.ALG_SHA256, seed, "INTEGRITY", b"", b"", 256)
    if not hmac.compare_digest(outer, hmac.new(hmac_key, enc_identity + ak_name, "sha256").digest()):
        raise ValueError("integrity check failed")
    sym = tpm.kdfa(tpm.ALG_SHA256, seed, "STORAGE", ak_name, b"", 128)
    d = Cipher(algorithms.AES(sym), CFB(b"\0" * 16)).decryptor()
    plain = d.update(enc_identity) + d.finalize()
    return tpm._Reader(plain).tpm2b()


@pytest.fixture(scope="module")
def keys():
    return {"rsa": rsa.generate_private_key(65537, 2048), "ecc": ec.generate_private_key(ec.SECP256R1()),
            "ak": ec.generate_private_key(ec.SECP256R1())}


@pytest.mark.parametrize("kind", ["rsa", "ecc"])
def test_make_credential_round_trip_and_binding(keys, kind):
    blob = (tpmt_rsa if kind == "rsa" else tpmt_ecc)(keys[kind], EK_ATTRS, sym=True)
    ek = tpm.parse_public(tpm.tpm2b(blob))  # the TPM2B form and the bare form parse alike
    assert ek == tpm.parse_public(blob)
    ak = tpm.parse_public(tpmt_ecc(keys["ak"], AK_ATTRS, sym=False, scheme=tpm.ALG_ECDSA))
    assert ak.name == b"\x00\x0b" + hashlib.sha256(ak.tpmt).digest()
    secret = bytes(range(32))
    id_object, enc = tpm.make_credential(ek, secret, ak.name)
    assert soft_activate(keys[kind], ek, id_object, enc, ak.name) == secret
    with pytest.raises(ValueError, match="integrity"):
        soft_activate(keys[kind], ek, id_object, enc, b"\x00\x0b" + bytes(32))  # another AK name: refused
    again = tpm.make_credential(ek, secret, ak.name)
    assert again[0] != id_object  # a fresh seed every time
    assert tpm.credential_file(id_object, enc)[:8] == bytes.fromhex("badcc0de00000001")


def test_kdfa_matches_sp800_108_by_hand():
    key, ctx_u = b"k" * 32, b"u" * 34
    one = hmac.new(key, b"\0\0\0\x01STORAGE\0" + ctx_u + b"\0\0\x01\x00", "sha256").digest()
    two = hmac.new(key, b"\0\0\0\x02STORAGE\0" + ctx_u + b"\0\0\x01\x00", "sha256").digest()
    assert tpm.kdfa(tpm.ALG_SHA256, key, "STORAGE", ctx_u, b"", 256) == one
    assert tpm.kdfa(tpm.ALG_SHA256, key, "STORAGE", ctx_u, b"", 128) == hmac.new(key, b"\0\0\0\x01STORAGE\0" + ctx_u + b"\0\0\0\x80", "sha256").digest()[:16]
    assert len(tpm.kdfa(tpm.ALG_SHA256, key, "STORAGE", ctx_u, b"", 512)) == 64 and one != two


def test_ak_attribute_checks(keys):
    for missing, word in ((tpm.FIXED_TPM, "fixedTPM"), (tpm.FIXED_PARENT, "fixedParent"), (tpm.RESTRICTED, "restricted"),
                          (tpm.SIGN, "sign"), (tpm.SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin")):
        ak = tpm.parse_public(tpmt_ecc(keys["ak"], AK_ATTRS & ~missing, sym=False, scheme=tpm.ALG_ECDSA))
        with pytest.raises(tpm.TpmError, match=word):
            tpm.check_ak(ak)
    with pytest.raises(tpm.TpmError, match="decrypt"):
        tpm.check_ak(tpm.parse_public(tpmt_ecc(keys["ak"], AK_ATTRS | tpm.DECRYPT, sym=False, scheme=tpm.ALG_ECDSA)))
    with pytest.raises(tpm.TpmError, match="signing scheme"):
        tpm.check_ak(tpm.parse_public(tpmt_ecc(keys["ak"], AK_ATTRS, sym=False)))
    with pytest.raises(tpm.TpmError, match="AES-CFB"):
        tpm.make_credential(tpm.parse_public(tpmt_rsa(keys["rsa"], EK_ATTRS, sym=False)), b"x", b"\x00\x0b" + bytes(32))


def test_parse_refuses_broken_structures(keys):
    good = tpmt_ecc(keys["ak"], AK_ATTRS, sym=False, scheme=tpm.ALG_ECDSA)
    for bad in (good[:-1], good + b"\0", b"", b"\xff" * 5000, struct.pack(">HH", 0x0008, tpm.ALG_SHA256) + good[4:]):
        with pytest.raises(tpm.TpmError):
            tpm.parse_public(bad)
    off_curve = bytearray(good)
    off_curve[-1] ^= 1
    with pytest.raises(tpm.TpmError, match="curve"):
        tpm.parse_public(bytes(off_curve)).public_key()


def quote_blob(nonce: bytes, magic: int = tpm.TPM_GENERATED, kind: int = tpm.ST_ATTEST_QUOTE) -> bytes:
    return (struct.pack(">IH", magic, kind) + tpm.tpm2b(b"\x00\x0b" + bytes(32)) + tpm.tpm2b(nonce)
            + struct.pack(">QIIB", 1, 2, 3, 1) + struct.pack(">Q", 7)
            + struct.pack(">IHB", 1, tpm.ALG_SHA256, 3) + bytes([0xff, 0, 0]) + tpm.tpm2b(bytes(32)))


def ecdsa_signature(key, msg: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(msg, ec.ECDSA(hashes.SHA256())))
    return struct.pack(">HH", tpm.ALG_ECDSA, tpm.ALG_SHA256) + tpm.tpm2b(r.to_bytes(32, "big")) + tpm.tpm2b(s.to_bytes(32, "big"))


def test_quote_checks(keys):
    ak = tpm.parse_public(tpmt_ecc(keys["ak"], AK_ATTRS, sym=False, scheme=tpm.ALG_ECDSA))
    nonce = b"n" * 32
    msg = quote_blob(nonce)
    q = tpm.verify_quote(ak, msg, ecdsa_signature(keys["ak"], msg), nonce)
    assert q.pcr_select == [(tpm.ALG_SHA256, list(range(8)))] and q.clock == 1 and q.safe
    with pytest.raises(tpm.TpmError, match="nonce"):
        tpm.verify_quote(ak, msg, ecdsa_signature(keys["ak"], msg), b"m" * 32)
    with pytest.raises(tpm.TpmError, match="signature"):
        tpm.verify_quote(ak, msg, ecdsa_signature(keys["ecc"], msg), nonce)
    for bad, word in ((quote_blob(nonce, magic=0), "TPM-generated"), (quote_blob(nonce, kind=0x8017), "not a quote")):
        with pytest.raises(tpm.TpmError, match=word):
            tpm.verify_quote(ak, bad, ecdsa_signature(keys["ak"], bad), nonce)
    rsa_sig = struct.pack(">HH", tpm.ALG_RSASSA, tpm.ALG_SHA256) + tpm.tpm2b(bytes(256))
    with pytest.raises(tpm.TpmError, match="does not fit"):
        tpm.verify_quote(ak, msg, rsa_sig, nonce)
