"""Step 6: health checks — the "minimum required services". A check is a TCP connect to host:port
or an HTTP(S) GET that must answer 2xx/3xx, each with its own bounded time-out."""

from __future__ import annotations

import socket
import time

from netslate.agent import http

DEFAULT_TIMEOUT = 5.0


def split_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"{text!r} is not host:port")
    return host.strip("[]"), int(port)


def check(spec: dict) -> dict:
    name = str(spec.get("name") or spec.get("tcp") or spec.get("url"))
    timeout = float(spec.get("timeout_seconds") or DEFAULT_TIMEOUT)
    t0 = time.monotonic()
    try:
        if spec.get("tcp"):
            host, port = split_hostport(spec["tcp"])
            with socket.create_connection((host, port), timeout=timeout):
                pass
        elif spec.get("url"):
            r = http.request("GET", spec["url"], timeout=timeout, max_body=1024 * 1024, pin=None)
            if not 200 <= r.status < 400:
                raise http.HttpError(f"HTTP {r.status}")
        else:
            raise ValueError("neither tcp nor url")
        ok, err = True, None
    except (OSError, ValueError, http.HttpError) as exc:
        ok, err = False, (str(exc) or type(exc).__name__)[:200]
    return {"name": name, "ok": ok, "error": err, "ms": round((time.monotonic() - t0) * 1000, 1)}


def run_all(specs: list[dict]) -> dict:
    results = [check(s) for s in specs if isinstance(s, dict)]
    return {"ok": all(r["ok"] for r in results), "checks": results}
