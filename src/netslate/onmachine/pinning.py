"""HTTPS with a pinned server certificate (standard library only: the initramfs and the agent).

The server's certificate is usually self-signed, so no CA can vouch for it. Instead the boot
arguments (`netslate.pin=sha256:HEX`) or the agent's locate cache carry the SHA-256 of the
certificate's DER bytes. The TLS handshake runs without CA verification (`CERT_NONE`), then the
certificate the server presented is hashed and compared with the pin; on a mismatch the connection
is closed before one byte of the request is sent.

Without a pin an https URL is verified the ordinary way (system CAs, host name).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import re
import ssl

PIN_RE = re.compile(r"^sha256:([0-9a-f]{64})\Z")


class PinMismatch(OSError):
    """The server's certificate is not the pinned one: the connection was closed, nothing was sent."""


def parse_pin(text: str | None) -> str | None:
    """`sha256:HEX` (64 hex digits, any case; colons between bytes allowed) → `sha256:hex`, or
    None for empty input. Raises ValueError for anything else."""
    if text is None or not str(text).strip():
        return None
    t = str(text).strip()
    algo, sep, digest = t.partition(":")
    if not sep or algo.lower() != "sha256":
        raise ValueError(f"certificate pin {t[:80]!r} is not sha256:<64 hex>")
    norm = "sha256:" + digest.replace(":", "").lower()
    if not PIN_RE.match(norm):
        raise ValueError(f"certificate pin {t[:80]!r} is not sha256:<64 hex>")
    return norm


def fingerprint(der: bytes) -> str:
    """The pin of a DER certificate: `sha256:` + hex."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


class PinnedContext(ssl.SSLContext):
    """An SSLContext that skips CA verification and instead compares the server's certificate
    with the pin as soon as the handshake is done (in `wrap_socket`, which http.client and httpx
    both call), before the caller sends anything."""

    pin: str = ""

    def wrap_socket(self, *args, **kwargs):
        sock = super().wrap_socket(*args, **kwargs)
        if not kwargs.get("do_handshake_on_connect", True):
            sock.do_handshake()
        check_socket(sock, self.pin)
        return sock


def client_context(pin: str | None) -> ssl.SSLContext:
    """A pinning context for `pin`, else the default verified one (system CAs, host name)."""
    if pin is None:
        return ssl.create_default_context()
    ctx = PinnedContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.pin = pin
    return ctx


def check_socket(sock, pin: str) -> None:
    """Compare the peer certificate of a connected TLS socket with `pin`; PinMismatch if it differs."""
    der = sock.getpeercert(binary_form=True)
    got = fingerprint(der) if der else "no certificate"
    if not hmac.compare_digest(got, pin):
        try:
            sock.close()
        finally:
            raise PinMismatch(f"the server's certificate {got} is not the pinned {pin}: refusing the connection")


def connection(scheme: str, host: str, port: int | None, timeout: float, pin: str | None = None):
    """An http.client connection for `scheme`: plain HTTP, pinned HTTPS (with `pin`) or verified HTTPS."""
    if scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=client_context(pin))
    return http.client.HTTPConnection(host, port, timeout=timeout)
