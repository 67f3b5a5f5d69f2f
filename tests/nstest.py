"""Test helpers shared by every part: a real server on loopback, the real CLI, free ports.

Import with `from nstest import start_server, run_cli, free_port` (tests/ is on sys.path).
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from netslate.context import Context


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    ctx: Context
    admin_token: str
    app: object
    _server: uvicorn.Server
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def start_server(ctx: Context, options: dict | None = None, host: str = "127.0.0.1") -> LiveServer:
    """A real uvicorn server on loopback, in a thread of the test process."""
    from netslate.server.app import create_app
    from netslate.server.auth import ensure_admin_token

    token_path, _ = ensure_admin_token(ctx)
    port = free_port()
    app = create_app(ctx, options or {})
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 15
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    return LiveServer(f"http://{host}:{port}", ctx, Path(token_path).read_text().strip(), app, server, thread)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


def run_cli(*args: str, data_dir: Path | None = None, env: dict | None = None, input: str | None = None, timeout: float = 600) -> CliResult:
    """Run the real `netslate` command in a subprocess."""
    full_env = dict(os.environ)
    full_env.pop("NETSLATE_SERVER", None)
    full_env.pop("NETSLATE_TOKEN", None)
    if data_dir is not None:
        full_env["NETSLATE_DATA_DIR"] = str(data_dir)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "netslate", *args],
        capture_output=True, text=True, env=full_env, input=input, timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


