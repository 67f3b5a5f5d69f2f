"""A malformed Host header (issue 11 #8) on the boot path: raw HTTP on loopback, never 500. The
answer is 400 (no usable Host and no advertised address) or the script built from the server's
own advertised address."""

from __future__ import annotations

import pytest

from hostile_support import KNOWN_MAC, raw_http

HOSTS = [b"[::1", b"[::1]]", b"[", b"]", b"[zz::1]", b"a:b:c", b"host:99999999", b"h" * 300, b"[::1]:", b"%", b"..", b"-"]
PATHS = [f"/boot/ipxe?mac={KNOWN_MAC}", "/boot/ipxe?mac=52:54:00:aa:0f:01", "/boot.ipxe", "/api/v1/boot/explain/known1",
         "/api/v1/boot/pxelinux", "/api/v1/machines/known1/explain", "/healthz"]


@pytest.mark.parametrize("path", PATHS)
def test_malformed_host_is_never_500(server, path):
    for host in HOSTS:
        request = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
        status, answer = raw_http(server.url, request)
        assert status and status != 500 and status < 500, (path, host, status, answer[:400])
        if status == 200 and path.startswith("/boot") and host.count(b"[") != host.count(b"]"):
            assert b"//" + host + b"/" not in answer, (path, host, answer[:400])  # never a URL from a broken Host


def test_missing_host_is_never_500(server):
    for path in PATHS:
        status, answer = raw_http(server.url, b"GET " + path.encode() + b" HTTP/1.0\r\n\r\n")
        assert status and status < 500, (path, status, answer[:400])
