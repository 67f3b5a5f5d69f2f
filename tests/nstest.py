"""Test helpers shared by every part: a real server on loopback, the real CLI, free ports.

Import with `from nstest import start_server, run_cli, free_port` (tests/ is on sys.path).
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from netslate.context import Context


def _ephemeral_low() -> int:
    try:
        return int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port free for TCP and UDP now, below the kernel's ephemeral range: a port the
    kernel hands out (bind to 0) is also what outgoing connections and other workers' port-0 binds
    get next, so it could be taken again before the caller's server binds it."""
    low = _ephemeral_low()
    rnd = random.SystemRandom()
    for _ in range(200):
        port = rnd.randrange(max(1024, low - 12000), low)
        try:
            with socket.socket() as t, socket.socket(type=socket.SOCK_DGRAM) as u:
                t.bind(("127.0.0.1", port))
                u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free loopback port below the ephemeral range")


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
class ServeProcess:
    """A real `netslate serve` process on loopback (see serve_process)."""

    proc: subprocess.Popen
    url: str  # the plain HTTP listener (--listen)
    port: int
    tls_url: str | None = None  # the TLS listener (--tls-listen), when asked for

    def stop(self) -> str:
        """SIGTERM (kill after 20 s); returns everything the process printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stdout.read()


def serve_process(data_dir: Path, *args: str, tls: bool = False, env: dict | None = None, timeout: float = 40) -> ServeProcess:
    """Start `netslate serve --listen 127.0.0.1:PORT [--tls-listen 127.0.0.1:PORT2] ARGS` over
    `data_dir` on free ports and wait until /healthz answers 200 on every listener."""
    import httpx  # only the tests that start a process need it

    port = free_port()
    listen = ["--listen", f"127.0.0.1:{port}"]
    tls_url = None
    if tls:
        tport = free_port()
        listen += ["--tls-listen", f"127.0.0.1:{tport}"]
        tls_url = f"https://127.0.0.1:{tport}"
    full_env = dict(os.environ, NETSLATE_DATA_DIR=str(data_dir), **(env or {}))
    full_env.pop("NETSLATE_SERVER", None)
    proc = subprocess.Popen([sys.executable, "-m", "netslate", "serve", *listen, "--log-level", "warning", *args],
                            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server = ServeProcess(proc, f"http://127.0.0.1:{port}", port, tls_url)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {proc.stdout.read()}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200 and (
                    tls_url is None or httpx.get(f"{tls_url}/healthz", timeout=5, verify=False).status_code == 200):
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise AssertionError(f"serve did not become healthy on {'both listeners' if tls else server.url} in {timeout:.0f} s")


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


