"""The server's TLS certificate: the one given (`--tls-cert/--tls-key`), else a self-signed one
made at first start in DATA/keys (tls.crt + tls.key, mode 0600), kept across restarts.

Machines do not check it against a CA: they pin its SHA-256 (`netslate.pin=sha256:HEX` in the
boot arguments, then the agent's locate cache). So the fingerprint must stay stable: the
self-signed certificate is long-lived and made once (under a lock, so two servers starting
together on one data directory agree on it).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from netslate.errors import UserError
from netslate.fsutil import atomic_write
from netslate.onmachine.pinning import fingerprint

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
VALID_DAYS = 3650


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    pin: str  # sha256:HEX of the certificate's DER bytes
    self_signed: bool


def pin_of_pem(pem: bytes) -> str:
    """The pin of the first certificate in a PEM file."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise UserError(f"not a PEM certificate: {exc}") from None
    return fingerprint(cert.public_bytes(serialization.Encoding.DER))


def make_self_signed(names: list[str] | None = None) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM): ECDSA P-256, CN netslate, SANs for the names/addresses."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = names or []
    host = socket.gethostname() or "netslate"
    sans: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName(host)]
    for n in ["127.0.0.1", "::1", *names]:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"netslate {host}"[:64])])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(sans))), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_self_signed(keys_dir: Path, names: list[str] | None = None) -> tuple[TlsFiles, bool]:
    """DATA/keys/tls.crt + tls.key, made now if missing. (files, created)."""
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    cert_path, key_path = keys_dir / CERT_FILE, keys_dir / KEY_FILE
    created = False
    with open(keys_dir / "tls.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (cert_path.exists() and key_path.exists()):
            cert_pem, key_pem = make_self_signed(names)
            atomic_write(key_path, key_pem, mode=0o600)
            atomic_write(cert_path, cert_pem, mode=0o600)
            created = True
    return TlsFiles(cert_path, key_path, pin_of_pem(cert_path.read_bytes()), True), created


def server_files(keys_dir: Path, cert: str | None, key: str | None) -> tuple[TlsFiles, bool]:
    """The given certificate and key, else the self-signed pair. (files, created)."""
    if bool(cert) != bool(key):
        raise UserError("--tls-cert and --tls-key go together")
    if cert and key:
        cp, kp = Path(cert), Path(key)
        for p in (cp, kp):
            if not p.is_file():
                raise UserError(f"no such file: {p}")
        try:
            serialization.load_pem_private_key(kp.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise UserError(f"{kp} is not an unencrypted PEM private key: {exc}") from None
        return TlsFiles(cp, kp, pin_of_pem(cp.read_bytes()), False), False
    return ensure_self_signed(keys_dir)


def run_both(app, plain: tuple[str, int], secure: tuple[str, int], tls: TlsFiles, log_level: str) -> None:
    """One app on two listeners in one process: plain HTTP (iPXE, boot files) and HTTPS.
    The app's lifespan (background tasks) runs once, with the plain listener; when either
    listener stops (a signal, a failure) the other is told to stop too."""
    import asyncio

    import uvicorn

    servers = [
        uvicorn.Server(uvicorn.Config(app, host=plain[0], port=plain[1], log_level=log_level, access_log=False)),
        uvicorn.Server(uvicorn.Config(app, host=secure[0], port=secure[1], log_level=log_level, access_log=False,
                                      lifespan="off", ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key))),
    ]

    async def main() -> None:
        tasks = [asyncio.create_task(s.serve()) for s in servers]
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for s in servers:
            s.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            if t.exception() is not None:
                raise t.exception()

    asyncio.run(main())
