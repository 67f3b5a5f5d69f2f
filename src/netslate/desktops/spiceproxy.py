"""The SPICE proxy: an HTTP CONNECT proxy so that no hypervisor address reaches a client.

A remote-viewer file (`.vv`) made by the server carries `proxy=http://SERVER:PORT` (a plain URL:
remote-viewer refuses a proxy URL with a query string, OpenNebula #5393) and, as `host=`, a
**ticket-scoped name** such as `spice-3f9c…e1.invalid`: 32 random hex digits under the reserved
`.invalid` domain, so it never resolves if a client tries to skip the proxy. remote-viewer sends
`CONNECT spice-3f9c…e1.invalid:PORT` for each SPICE channel; the proxy maps the name to the
desktop's hypervisor console address and SPICE port while the ticket lives, and answers 403 (then
closes) to everything else: an unknown or expired name, another port, any other method, a
malformed request.

The names live on disk like the browser relay's tokens (only their SHA-256; DATA/desktops/
spice-proxy/), so a ticket issued by any process over the data directory works. A name is not
single-use: remote-viewer opens several channels (main, display, inputs, cursor, USB...), each a
CONNECT. A new ticket for a desktop retires that desktop's earlier names, as QEMU retires the
earlier password.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from pathlib import Path

from netslate.fsutil import atomic_write

log = logging.getLogger("netslate.desktops.spiceproxy")

NAME_RE = re.compile(r"^spice-[0-9a-f]{32}\.invalid\Z")
HEAD_LIMIT = 8192
HEAD_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0


def names_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "desktops" / "spice-proxy"


def _file(directory: Path, name: str) -> Path:
    return Path(directory) / (hashlib.sha256(name.lower().encode()).hexdigest() + ".json")


def issue_name(data_dir: Path, desktop: str, host: str, port: int, ttl: int) -> str:
    """A fresh ticket-scoped host name for `desktop`'s SPICE port, valid `ttl` seconds."""
    name = f"spice-{secrets.token_hex(16)}.invalid"
    d = names_dir(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    now = time.time()
    for old in d.glob("*.json"):  # retire this desktop's earlier names, sweep expired ones
        try:
            data = json.loads(old.read_text())
            if data["desktop"] == desktop or data["expires"] < now:
                old.unlink()
        except (OSError, ValueError, KeyError):
            pass
    record = {"desktop": desktop, "host": host, "port": int(port), "expires": now + ttl}
    atomic_write(_file(d, name), json.dumps(record).encode(), mode=0o600)
    return name


def lookup(directory: Path, name: str, port: int) -> dict | None:
    """The live mapping for CONNECT name:port, or None (unknown, expired, or not the console port)."""
    if not NAME_RE.match(name.lower()):
        return None
    try:
        data = json.loads(_file(directory, name).read_text())
    except (OSError, ValueError):
        return None
    if data.get("expires", 0) < time.time() or int(data.get("port", -1)) != port:
        return None
    return data


def parse_connect(head: bytes) -> tuple[str, int] | None:
    """(host, port) of a well-formed `CONNECT host:port HTTP/1.x` request head, else None."""
    try:
        line = head.split(b"\r\n", 1)[0].decode("ascii")
    except UnicodeDecodeError:
        return None
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != "CONNECT" or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        return None
    host, sep, port = parts[1].rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


FORBIDDEN = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


class SpiceProxy:
    """The proxy as a background service: an asyncio server in a thread of its own."""

    def __init__(self, data_dir: Path, listen: str, port: int):
        self.directory = names_dir(data_dir)
        self.listen = listen
        self.requested_port = port
        self.port: int | None = None  # the bound port (the requested one, or the kernel's choice for 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.stats = {"allowed": 0, "refused": 0, "open": 0}
        self.last_error = ""

    # ---------- service ----------

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main():
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            try:
                server = await asyncio.start_server(self._handle, self.listen, self.requested_port, limit=HEAD_LIMIT)
            except BaseException as exc:  # bind failure: reported to start()
                failure.append(exc)
                ready.set()
                return
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            await self._stopping.wait()
            server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:  # open relays end with the service
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        self._thread = threading.Thread(target=lambda: asyncio.run(main()), name="spice-proxy", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            self.last_error = f"cannot listen on {self.listen}:{self.requested_port}: {failure[0]}"
            log.error("SPICE proxy: %s", self.last_error)
            raise RuntimeError(self.last_error)
        log.info("SPICE proxy listening on %s:%s", self.listen, self.port)

    def stop(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._stopping.set)
        except RuntimeError:  # the loop has just finished
            return
        if self._thread:
            self._thread.join(timeout=10)

    def health(self) -> dict:
        return {"ok": self.port is not None and not self.last_error, "port": self.port, **self.stats,
                "last_error": self.last_error}

    # ---------- one client connection ----------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
                return await self._refuse(writer, peer, "no complete request head")
            target = parse_connect(head)
            mapping = lookup(self.directory, *target) if target else None
            if mapping is None:
                return await self._refuse(writer, peer, f"not a live console ticket: {head[:80]!r}")
            try:
                up_r, up_w = await asyncio.wait_for(
                    asyncio.open_connection(mapping["host"], mapping["port"]), CONNECT_TIMEOUT)
            except (OSError, asyncio.TimeoutError) as exc:
                log.warning("SPICE proxy: desktop %s unreachable: %s", mapping["desktop"], exc)
                writer.write(BAD_GATEWAY)
                await writer.drain()
                return
            self.stats["allowed"] += 1
            log.info("SPICE proxy: %s → desktop %s", peer, mapping["desktop"])
            writer.write(ESTABLISHED)
            await writer.drain()
            self.stats["open"] += 1
            try:
                await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))
            finally:
                self.stats["open"] -= 1
                up_w.close()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _refuse(self, writer: asyncio.StreamWriter, peer, why: str) -> None:
        self.stats["refused"] += 1
        log.info("SPICE proxy: refused %s: %s", peer, why)
        try:
            writer.write(FORBIDDEN)
            await writer.drain()
        except ConnectionError:
            pass

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                if dst.can_write_eof():
                    dst.write_eof()
            except (OSError, RuntimeError):
                pass
