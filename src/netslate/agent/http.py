"""A bounded HTTP client (stdlib http.client): every request has a total deadline and a size limit,
so a server that answers garbage, trickles bytes or hangs mid-transfer costs at most `timeout`."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.parse
from dataclasses import dataclass

from netslate.onmachine import pinning

MAX_BODY = 16 * 1024 * 1024
CONNECT_TIMEOUT = 3.0


class HttpError(Exception):
    """The server could not be reached, timed out, or answered something unusable."""


# The server certificate's pin (`sha256:HEX`, from netslate.pin= or the locate cache): https URLs
# are then checked against it instead of CAs. One agent process talks to one fleet's servers.
PIN: str | None = None
FLEET = "fleet"  # request(pin=FLEET): use PIN; a health check of some other service passes pin=None


def set_pin(pin: str | None) -> None:
    global PIN
    PIN = pin


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(f"answer is not JSON: {exc}") from None


def request(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = 10.0, max_body: int = MAX_BODY, pin: str | None = FLEET) -> Response:
    """`pin` (default: the fleet's PIN) is checked for https URLs; a mismatch is an HttpError."""
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise HttpError(f"not an http(s) URL: {url!r}")
    deadline = time.monotonic() + timeout
    conn = pinning.connection(u.scheme, u.hostname, u.port, min(timeout, CONNECT_TIMEOUT), PIN if pin == FLEET else pin)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    hdrs = {"User-Agent": "netslate-agent", "Connection": "close"}
    hdrs.update(headers or {})
    if body is not None:
        hdrs.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=body, headers=hdrs)
        _left(deadline, conn)
        resp = conn.getresponse()
        chunks, size = [], 0
        while True:
            _left(deadline, conn)
            piece = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
            if not piece:
                break
            size += len(piece)
            if size > max_body:
                raise HttpError(f"answer larger than {max_body} bytes")
            chunks.append(piece)
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, b"".join(chunks))
    except HttpError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if time.monotonic() >= deadline or isinstance(exc, socket.timeout):
            raise HttpError(f"{method} {url}: timed out") from None
        raise HttpError(f"{method} {url}: {type(exc).__name__}: {exc}") from None
    finally:
        conn.close()


def _left(deadline: float, conn) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise HttpError("timed out")
    if conn.sock is not None:
        conn.sock.settimeout(max(0.05, left))


def get_json(url: str, timeout: float = 10.0, headers: dict | None = None):
    r = request("GET", url, headers=headers, timeout=timeout)
    if r.status != 200:
        raise HttpError(f"GET {url}: HTTP {r.status}")
    return r.json()


def post_json(url: str, obj, timeout: float = 10.0, headers: dict | None = None) -> Response:
    return request("POST", url, json.dumps(obj).encode(), headers=headers, timeout=timeout)
