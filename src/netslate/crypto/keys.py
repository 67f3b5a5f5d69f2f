"""The server's Ed25519 signing key, created on first start with the private half at mode 0600."""

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netslate.crypto.envelope import canonical, fingerprint
from netslate.fsutil import atomic_write


@dataclass
class SigningKey:
    private: Ed25519PrivateKey

    @property
    def public_bytes(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public_bytes).decode("ascii")

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_bytes)

    def sign(self, payload: dict) -> dict:
        signature = self.private.sign(canonical(payload))
        return {
            "payload": payload,
            "signature": base64.b64encode(signature).decode("ascii"),
            "key": self.fingerprint,
        }


def load_or_create(keys_dir: Path) -> SigningKey:
    keys_dir = Path(keys_dir)
    private_path = keys_dir / "signing.key"
    if private_path.exists():
        raw = private_path.read_bytes()
        key = serialization.load_pem_private_key(raw, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{private_path} is not an Ed25519 key")
        return SigningKey(key)
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    atomic_write(private_path, pem, mode=0o600)
    signing = SigningKey(key)
    atomic_write(keys_dir / "signing.pub", (signing.public_b64 + "\n").encode(), mode=0o644)
    return signing
