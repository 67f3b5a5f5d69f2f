"""Run the real `netslate serve` inside a lab namespace, listening on the bridge address."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from netslate.vmlab.net import LabNetwork


class NetslateServer:
    def __init__(self, lab: LabNetwork, data_dir: Path, args: list[str] | tuple[str, ...] = (), port: int = 8080,
                 log_path: Path | None = None) -> None:
        self.lab = lab
        self.data_dir = Path(data_dir)
        self.port = port
        self.args = list(args)
        self.url = f"http://{lab.address}:{port}"
        self.log_path = Path(log_path) if log_path else self.data_dir.parent / f"netslate-serve-{port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "NetslateServer":
        env = dict(os.environ, NETSLATE_DATA_DIR=str(self.data_dir))
        env.pop("NETSLATE_SERVER", None)
        env.pop("NETSLATE_TOKEN", None)
        argv = [sys.executable, "-m", "netslate", "serve", "--listen", f"{self.lab.address}:{self.port}", *self.args]
        log = open(self.log_path, "ab")
        try:
            self.proc = self.lab.popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"netslate serve exited ({self.proc.returncode}):\n{self.log_tail()}")
            code, _ = self.lab.http_get(self.url + "/healthz", timeout=5)
            if code in (200, 503):
                return self
            time.sleep(0.3)
        raise TimeoutError(f"netslate serve did not answer within {timeout}s:\n{self.log_tail()}")

    def get(self, path: str) -> tuple[int, bytes]:
        return self.lab.http_get(self.url + path)

    def health(self) -> dict:
        code, body = self.get("/healthz")
        return json.loads(body) if body else {"status": code}

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            self.lab.stop(self.proc, timeout=15)
            self.proc = None

    def __enter__(self) -> "NetslateServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
