"""Browser consoles: noVNC (Debian `novnc`) served by websockify, whose WebSocket→VNC relay only
accepts single-use, short-lived relay tokens that netslate issues together with a VNC ticket.

The relay token is the websocket's authentication: it is handed out only through the
authenticated API (the desktop's user or an admin), maps to exactly one desktop's VNC port,
expires with the ticket and is consumed by the first connection. The VNC password itself goes
in the URL fragment, so it never reaches a server log.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

from netslate.fsutil import atomic_write

NOVNC_DIR = Path("/usr/share/novnc")


def tokens_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "desktops" / "relay-tokens"


def _file(directory: Path, token: str) -> Path:
    return Path(directory) / (hashlib.sha256(token.encode()).hexdigest() + ".json")


def issue_relay_token(data_dir: Path, host: str, port: int, ttl: int) -> str:
    token = secrets.token_urlsafe(24)
    d = tokens_dir(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    # only the hash is on disk: a leaked directory listing gives no usable token
    atomic_write(_file(d, token), json.dumps({"host": host, "port": port, "expires": time.time() + ttl}).encode(), mode=0o600)
    now = time.time()
    for old in d.glob("*.json"):  # sweep expired ones
        try:
            if json.loads(old.read_text())["expires"] < now - 60:
                old.unlink()
        except (OSError, ValueError, KeyError):
            pass
    return token


def take_relay_token(directory: Path, token: str) -> tuple[str, int] | None:
    """Consume a token: (host, port) once, if unexpired; None otherwise."""
    if not token or len(token) > 200:
        return None
    f = _file(directory, token)
    claimed = f.with_suffix(".taken")
    try:
        os.rename(f, claimed)  # atomic: of two racing connections only one gets it
    except OSError:
        return None
    try:
        data = json.loads(claimed.read_text())
    finally:
        claimed.unlink(missing_ok=True)
    if data["expires"] < time.time():
        return None
    return data["host"], int(data["port"])


class RelayTokens:
    """websockify token plugin (`--token-plugin netslate.desktops.relay.RelayTokens --token-source DIR`)."""

    def __init__(self, src):
        self.source = Path(src)

    def lookup(self, token):
        found = take_relay_token(self.source, token)
        return list(found) if found else None


def browser_url(console_host: str, relay_port: int, token: str, password: str, title: str) -> str:
    path = quote(f"websockify?token={token}", safe="")
    # '#&password=' is read by vnc_lite.html's query parser but never sent to the server
    return (f"http://{console_host}:{relay_port}/vnc_lite.html?host={console_host}&port={relay_port}"
            f"&path={path}&autoconnect=1&title={quote(title)}#&password={quote(password)}")


def start_relay(data_dir: Path, listen_host: str, port: int) -> subprocess.Popen:
    """websockify serving noVNC's files and relaying to VNC ports named by relay tokens."""
    d = tokens_dir(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    cmd = [sys.executable, "-m", "websockify", "--token-plugin", "netslate.desktops.relay.RelayTokens",
           "--token-source", str(d)]
    if NOVNC_DIR.is_dir():
        cmd += ["--web", str(NOVNC_DIR)]
    cmd.append(f"{listen_host}:{port}")
    log = open(Path(data_dir) / "desktops" / "relay.log", "ab")
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()
