"""TPM 2.0 structures and the server's side of the credential protocol, without a TPM (pure).

- `parse_public(blob)`: a TPM2B_PUBLIC (or bare TPMT_PUBLIC) → `TpmPublic` (type, nameAlg,
  attributes, parameters, the public key) and its `name` (nameAlg ‖ H(TPMT_PUBLIC)).
- `check_ak(pub)`: an attestation key must be fixedTPM, fixedParent, sensitiveDataOrigin,
  restricted and sign (and not decrypt): a key that never leaves its TPM and signs only what the
  TPM itself produced (quotes), never outside data made to look like a quote.
- `check_ek(pub)`: an endorsement key is a restricted decryption key with a symmetric scheme.
- `make_credential(ek, secret, ak_name)`: TPM2_MakeCredential as the TPM 2.0 Part 1 "Credential
  Protection" (§24) and Part 3 describe it: a random seed encrypted to the EK (RSA: OAEP-SHA256
  with the label "IDENTITY\\0"; ECC: ephemeral ECDH + KDFe), symKey = KDFa(seed, "STORAGE",
  AK name), AES-CFB (IV 0) over the TPM2B_DIGEST of the secret, HMAC key = KDFa(seed,
  "INTEGRITY"), outer HMAC over encIdentity ‖ AK name. Only the TPM that holds the EK *and* has
  the object named `ak_name` loaded can run ActivateCredential on it.
- `credential_file(blob, secret)`: the tpm2-tools file form (magic 0xBADCC0DE, version 1).
- `parse_attest(blob)` + `verify_quote(ak, attest, signature, nonce)`: a TPMS_ATTEST quote signed
  by the AK (RSASSA / RSAPSS / ECDSA), its extraData equal to the server's nonce.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.decrepit.ciphers.modes import CFB  # TPM credential protection is AES-CFB by definition
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms


class TpmError(ValueError):
    """A TPM structure that does not parse, or a key/quote that does not pass the checks."""


# TPM_ALG_ID
ALG_RSA = 0x0001
ALG_SHA1 = 0x0004
ALG_HMAC = 0x0005
ALG_AES = 0x0006
ALG_KEYEDHASH = 0x0008
ALG_SHA256 = 0x000B
ALG_SHA384 = 0x000C
ALG_SHA512 = 0x000D
ALG_NULL = 0x0010
ALG_RSASSA = 0x0014
ALG_RSAES = 0x0015
ALG_RSAPSS = 0x0016
ALG_OAEP = 0x0017
ALG_ECDSA = 0x0018
ALG_ECDH = 0x0019
ALG_ECDAA = 0x001A
ALG_ECC = 0x0023
ALG_SYMCIPHER = 0x0025
ALG_CFB = 0x0043

HASHES = {ALG_SHA1: "sha1", ALG_SHA256: "sha256", ALG_SHA384: "sha384", ALG_SHA512: "sha512"}
_CRYPTO_HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
CURVES = {0x0003: ec.SECP256R1, 0x0004: ec.SECP384R1, 0x0005: ec.SECP521R1}
CURVE_BYTES = {0x0003: 32, 0x0004: 48, 0x0005: 66}

# TPMA_OBJECT
FIXED_TPM = 0x00000002
ST_CLEAR = 0x00000004
FIXED_PARENT = 0x00000010
SENSITIVE_DATA_ORIGIN = 0x00000020
USER_WITH_AUTH = 0x00000040
ADMIN_WITH_POLICY = 0x00000080
NO_DA = 0x00000400
RESTRICTED = 0x00010000
DECRYPT = 0x00020000
SIGN = 0x00040000
ATTRIBUTE_NAMES = {
    FIXED_TPM: "fixedTPM", ST_CLEAR: "stClear", FIXED_PARENT: "fixedParent",
    SENSITIVE_DATA_ORIGIN: "sensitiveDataOrigin", USER_WITH_AUTH: "userWithAuth",
    ADMIN_WITH_POLICY: "adminWithPolicy", NO_DA: "noDA", RESTRICTED: "restricted", DECRYPT: "decrypt", SIGN: "sign",
}

TPM_GENERATED = 0xFF544347
ST_ATTEST_QUOTE = 0x8018
CREDENTIAL_MAGIC = 0xBADCC0DE
MAX_BLOB = 4096  # every structure here is far smaller; anything bigger is refused before parsing


class _Reader:
    def __init__(self, data: bytes):
        if not isinstance(data, (bytes, bytearray)):
            raise TpmError("expected bytes")
        if len(data) > MAX_BLOB:
            raise TpmError(f"structure too large ({len(data)} bytes)")
        self.data = bytes(data)
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise TpmError("structure ends early")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack(">Q", self.take(8))[0]

    def tpm2b(self) -> bytes:
        return self.take(self.u16())

    def done(self) -> None:
        if self.pos != len(self.data):
            raise TpmError(f"{len(self.data) - self.pos} trailing bytes")


def tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def digest(alg: int, data: bytes) -> bytes:
    if alg not in HASHES:
        raise TpmError(f"unsupported hash algorithm 0x{alg:04x}")
    return hashlib.new(HASHES[alg], data).digest()


def digest_size(alg: int) -> int:
    return len(digest(alg, b""))


# ---------------------------------------------------------------- TPMT_PUBLIC


@dataclass(frozen=True)
class TpmPublic:
    type: int  # ALG_RSA | ALG_ECC
    name_alg: int
    attributes: int
    auth_policy: bytes
    sym_alg: int  # ALG_AES or ALG_NULL
    sym_bits: int
    sym_mode: int
    scheme: int
    scheme_hash: int
    rsa_bits: int = 0
    rsa_exponent: int = 0
    rsa_modulus: bytes = b""
    curve: int = 0
    ecc_x: bytes = b""
    ecc_y: bytes = b""
    tpmt: bytes = field(default=b"", repr=False)  # the marshalled TPMT_PUBLIC (what the name hashes)

    @property
    def name(self) -> bytes:
        """The TPM name: nameAlg (2 bytes) ‖ H_nameAlg(TPMT_PUBLIC)."""
        return struct.pack(">H", self.name_alg) + digest(self.name_alg, self.tpmt)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the marshalled TPMT_PUBLIC, hex: how the server names an EK."""
        return hashlib.sha256(self.tpmt).hexdigest()

    def attribute_names(self) -> list[str]:
        return [n for bit, n in ATTRIBUTE_NAMES.items() if self.attributes & bit]

    def public_key(self):
        if self.type == ALG_RSA:
            return rsa.RSAPublicNumbers(self.rsa_exponent or 65537, int.from_bytes(self.rsa_modulus, "big")).public_key()
        if self.curve not in CURVES:
            raise TpmError(f"unsupported ECC curve 0x{self.curve:04x}")
        try:
            return ec.EllipticCurvePublicNumbers(int.from_bytes(self.ecc_x, "big"), int.from_bytes(self.ecc_y, "big"),
                                                 CURVES[self.curve]()).public_key()
        except ValueError as exc:
            raise TpmError(f"ECC point not on the curve: {exc}") from None


def _sym_def(r: _Reader) -> tuple[int, int, int]:
    alg = r.u16()
    if alg == ALG_NULL:
        return alg, 0, 0
    if alg == ALG_XOR:
        return alg, r.u16(), 0  # hash alg in the bits slot; unused here
    return alg, r.u16(), r.u16()


ALG_XOR = 0x000A


def _scheme(r: _Reader) -> tuple[int, int]:
    scheme = r.u16()
    if scheme == ALG_NULL:
        return scheme, 0
    hash_alg = r.u16()
    if scheme == ALG_ECDAA:
        r.u16()  # count
    return scheme, hash_alg


def parse_public(blob: bytes) -> TpmPublic:
    """A TPM2B_PUBLIC (as tpm2-tools writes with `-f tss`) or a bare TPMT_PUBLIC."""
    data = bytes(blob)
    if len(data) >= 2 and struct.unpack(">H", data[:2])[0] == len(data) - 2:
        data = data[2:]
    r = _Reader(data)
    kind, name_alg, attrs = r.u16(), r.u16(), r.u32()
    if name_alg not in HASHES:
        raise TpmError(f"unsupported nameAlg 0x{name_alg:04x}")
    policy = r.tpm2b()
    sym = _sym_def(r)
    if kind == ALG_RSA:
        scheme, scheme_hash = _scheme(r)
        bits, exponent = r.u16(), r.u32()
        modulus = r.tpm2b()
        r.done()
        if bits not in (1024, 2048, 3072, 4096) or len(modulus) * 8 != bits:
            raise TpmError(f"RSA key size {bits} does not match its modulus ({len(modulus) * 8} bits)")
        return TpmPublic(kind, name_alg, attrs, policy, *sym, scheme, scheme_hash, rsa_bits=bits,
                         rsa_exponent=exponent, rsa_modulus=modulus, tpmt=data)
    if kind == ALG_ECC:
        scheme, scheme_hash = _scheme(r)
        curve = r.u16()
        _scheme(r)  # kdf
        x, y = r.tpm2b(), r.tpm2b()
        r.done()
        if curve not in CURVES:
            raise TpmError(f"unsupported ECC curve 0x{curve:04x}")
        return TpmPublic(kind, name_alg, attrs, policy, *sym, scheme, scheme_hash, curve=curve, ecc_x=x, ecc_y=y, tpmt=data)
    raise TpmError(f"unsupported key type 0x{kind:04x} (RSA or ECC only)")


def check_ak(pub: TpmPublic) -> None:
    """Refuse an AK that could leave its TPM or sign outside data (TpmError names what is wrong)."""
    need = {FIXED_TPM: "fixedTPM", FIXED_PARENT: "fixedParent", SENSITIVE_DATA_ORIGIN: "sensitiveDataOrigin",
            RESTRICTED: "restricted", SIGN: "sign"}
    missing = [n for bit, n in need.items() if not pub.attributes & bit]
    if missing:
        raise TpmError(f"the AK lacks the attribute(s) {', '.join(missing)}")
    if pub.attributes & DECRYPT:
        raise TpmError("the AK is a decryption key too (decrypt set): an AK only signs")
    if pub.name_alg != ALG_SHA256:
        raise TpmError("the AK's nameAlg must be SHA-256")
    if pub.type == ALG_RSA and pub.rsa_bits < 2048:
        raise TpmError("an RSA AK needs at least 2048 bits")
    if pub.scheme not in (ALG_RSASSA, ALG_RSAPSS, ALG_ECDSA) or pub.scheme_hash not in HASHES:
        raise TpmError("the AK needs a signing scheme (RSASSA, RSAPSS or ECDSA) with a hash")


def check_ek(pub: TpmPublic) -> None:
    """An EK is a restricted decryption key with an AES-CFB symmetric definition (the TCG templates)."""
    if not (pub.attributes & RESTRICTED and pub.attributes & DECRYPT) or pub.attributes & SIGN:
        raise TpmError("the EK must be a restricted decryption key (restricted, decrypt, not sign)")
    if not (pub.attributes & FIXED_TPM and pub.attributes & FIXED_PARENT):
        raise TpmError("the EK must be fixedTPM and fixedParent")
    if pub.sym_alg != ALG_AES or pub.sym_mode != ALG_CFB or pub.sym_bits not in (128, 192, 256):
        raise TpmError("the EK needs an AES-CFB symmetric definition")
    if pub.type == ALG_RSA and pub.rsa_bits < 2048:
        raise TpmError("an RSA EK needs at least 2048 bits")


def ek_cert_matches(pub: TpmPublic, cert_der: bytes) -> bool:
    """Does the X.509 EK certificate carry this EK's public key?"""
    from cryptography import x509  # only when a certificate came (it is optional)

    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError:
        raise TpmError("the EK certificate is not DER X.509") from None
    key = cert.public_key()
    want = pub.public_key()
    if pub.type == ALG_RSA:
        return isinstance(key, rsa.RSAPublicKey) and key.public_numbers() == want.public_numbers()
    return isinstance(key, ec.EllipticCurvePublicKey) and key.public_numbers() == want.public_numbers()


# ---------------------------------------------------------------- KDFs and MakeCredential


def kdfa(hash_alg: int, key: bytes, label: str, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    """SP 800-108 counter-mode KDF with HMAC (TPM 2.0 Part 1 §11.4.10.2); the label gets its NUL."""
    name = HASHES[hash_alg]
    out, counter = b"", 1
    label_b = label.encode() + b"\0"
    while len(out) * 8 < bits:
        out += hmac.new(key, struct.pack(">I", counter) + label_b + context_u + context_v + struct.pack(">I", bits), name).digest()
        counter += 1
    return out[: (bits + 7) // 8]


def kdfe(hash_alg: int, z: bytes, label: str, party_u: bytes, party_v: bytes, bits: int) -> bytes:
    """SP 800-56A concatenation KDF (TPM 2.0 Part 1 §11.4.10.3); the label gets its NUL."""
    name = HASHES[hash_alg]
    out, counter = b"", 1
    while len(out) * 8 < bits:
        out += hashlib.new(name, struct.pack(">I", counter) + z + label.encode() + b"\0" + party_u + party_v).digest()
        counter += 1
    return out[: (bits + 7) // 8]


def _seed_to(ek: TpmPublic, label: str, rng=os.urandom) -> tuple[bytes, bytes]:
    """(seed, TPM2B_ENCRYPTED_SECRET contents): a fresh seed only the EK's TPM can recover."""
    size = digest_size(ek.name_alg)
    if ek.type == ALG_RSA:
        seed = rng(size)
        algo = _CRYPTO_HASHES[HASHES[ek.name_alg]]()
        encrypted = ek.public_key().encrypt(seed, padding.OAEP(mgf=padding.MGF1(algorithm=algo), algorithm=algo, label=label.encode() + b"\0"))
        return seed, encrypted
    curve = CURVES[ek.curve]()
    n = CURVE_BYTES[ek.curve]
    ephemeral = ec.generate_private_key(curve)
    z = ephemeral.exchange(ec.ECDH(), ek.public_key())  # the x coordinate of the shared point
    nums = ephemeral.public_key().public_numbers()
    ex, ey = nums.x.to_bytes(n, "big"), nums.y.to_bytes(n, "big")
    seed = kdfe(ek.name_alg, z, label, ex, ek.ecc_x, size * 8)
    return seed, tpm2b(ex) + tpm2b(ey)


def make_credential(ek: TpmPublic, secret: bytes, ak_name: bytes, rng=os.urandom) -> tuple[bytes, bytes]:
    """TPM2_MakeCredential(ek, secret, ak_name) → (TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET), both marshalled."""
    check_ek(ek)
    if not 1 <= len(secret) <= digest_size(ek.name_alg):
        raise TpmError("the credential must be 1 to digest-size bytes")
    seed, encrypted_seed = _seed_to(ek, "IDENTITY", rng)
    sym_key = kdfa(ek.name_alg, seed, "STORAGE", ak_name, b"", ek.sym_bits)
    encryptor = Cipher(algorithms.AES(sym_key), CFB(b"\0" * 16)).encryptor()
    enc_identity = encryptor.update(tpm2b(secret)) + encryptor.finalize()
    hmac_key = kdfa(ek.name_alg, seed, "INTEGRITY", b"", b"", digest_size(ek.name_alg) * 8)
    outer = hmac.new(hmac_key, enc_identity + ak_name, HASHES[ek.name_alg]).digest()
    return tpm2b(tpm2b(outer) + enc_identity), tpm2b(encrypted_seed)


def credential_file(id_object: bytes, encrypted_secret: bytes) -> bytes:
    """The file `tpm2_makecredential -o` writes and `tpm2_activatecredential -i` reads."""
    return struct.pack(">II", CREDENTIAL_MAGIC, 1) + id_object + encrypted_secret


# ---------------------------------------------------------------- quotes


@dataclass(frozen=True)
class Attest:
    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    pcr_select: list[tuple[int, list[int]]]  # (hash alg, PCR indexes)
    pcr_digest: bytes


def parse_attest(blob: bytes) -> Attest:
    """A TPMS_ATTEST of type quote (what `tpm2_quote -m` writes)."""
    r = _Reader(blob)
    magic, kind = r.u32(), r.u16()
    if magic != TPM_GENERATED:
        raise TpmError("not TPM-generated (magic is not TPM_GENERATED_VALUE)")
    if kind != ST_ATTEST_QUOTE:
        raise TpmError(f"not a quote (attestation type 0x{kind:04x})")
    signer, extra = r.tpm2b(), r.tpm2b()
    clock, resets, restarts, safe = r.u64(), r.u32(), r.u32(), r.u8()
    firmware = r.u64()
    selections = []
    count = r.u32()
    if count > 16:
        raise TpmError("too many PCR banks in the quote")
    for _ in range(count):
        alg, size = r.u16(), r.u8()
        bitmap = r.take(size)
        selections.append((alg, [i * 8 + b for i, byte in enumerate(bitmap) for b in range(8) if byte >> b & 1]))
    pcr_digest = r.tpm2b()
    r.done()
    return Attest(magic, kind, signer, extra, clock, resets, restarts, bool(safe), firmware, selections, pcr_digest)


def verify_signature(ak: TpmPublic, message: bytes, signature: bytes) -> None:
    """Check a TPMT_SIGNATURE by the AK over `message` (TpmError if it does not verify)."""
    r = _Reader(signature)
    sig_alg, hash_alg = r.u16(), r.u16()
    if hash_alg not in HASHES:
        raise TpmError(f"unsupported signature hash 0x{hash_alg:04x}")
    algo = _CRYPTO_HASHES[HASHES[hash_alg]]()
    key = ak.public_key()
    try:
        if sig_alg in (ALG_RSASSA, ALG_RSAPSS) and ak.type == ALG_RSA:
            sig = r.tpm2b()
            r.done()
            pad = padding.PKCS1v15() if sig_alg == ALG_RSASSA else padding.PSS(mgf=padding.MGF1(algo), salt_length=padding.PSS.AUTO)
            key.verify(sig, message, pad, algo)
        elif sig_alg == ALG_ECDSA and ak.type == ALG_ECC:
            rr, ss = r.tpm2b(), r.tpm2b()
            r.done()
            key.verify(encode_dss_signature(int.from_bytes(rr, "big"), int.from_bytes(ss, "big")), message, ec.ECDSA(algo))
        else:
            raise TpmError(f"signature algorithm 0x{sig_alg:04x} does not fit the AK")
    except InvalidSignature:
        raise TpmError("the quote's signature does not verify with the AK") from None


def verify_quote(ak: TpmPublic, attest_blob: bytes, signature: bytes, nonce: bytes) -> Attest:
    """A quote signed by this AK over this nonce (TpmError otherwise). Returns the parsed quote."""
    check_ak(ak)
    verify_signature(ak, attest_blob, signature)
    quote = parse_attest(attest_blob)
    if not hmac.compare_digest(quote.extra_data, nonce):
        raise TpmError("the quote is not over this challenge's nonce")
    return quote
