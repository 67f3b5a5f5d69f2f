"""A real software TPM 2.0 (swtpm, manufactured by swtpm_setup with EK certificates) per test.

`swtpm_factory()` starts one in its own state directory under tmp_path, on free loopback ports, and
returns its TCTI for tpm2-tools (`swtpm:host=127.0.0.1,port=N`). Stopped when the test ends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from nstest import free_port


class SoftTpm:
    def __init__(self, state: Path, create_ek_cert: bool = True):
        self.state = Path(state)
        self.state.mkdir(parents=True, exist_ok=True)
        if not any(self.state.iterdir()):
            args = ["swtpm_setup", "--tpm2", "--tpmstate", str(self.state), "--createek", "--overwrite"]
            if create_ek_cert:
                args += ["--create-ek-cert"]
            subprocess.run(args, check=True, capture_output=True, timeout=120)
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> "SoftTpm":
        for _attempt in range(5):  # a free port can be taken between the probe and the bind
            self.port = free_port()
            ctrl = self.port + 1  # the swtpm TCTI talks to the control channel at port + 1
            self.proc = subprocess.Popen(
                ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state}",
                 "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                 "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1", "--flags", "not-need-init,startup-clear"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        return self
                except OSError:
                    time.sleep(0.05)
            self.stop()
        raise RuntimeError("swtpm did not start")

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def tools(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=cwd, env=dict(os.environ, TPM2TOOLS_TCTI=self.tcti),
                              capture_output=True, check=True, timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def swtpm_factory(tmp_path):
    started: list[SoftTpm] = []

    def make(name: str = "tpm", create_ek_cert: bool = True) -> SoftTpm:
        t = SoftTpm(tmp_path / "swtpm" / name, create_ek_cert).start()
        started.append(t)
        return t

    yield make
    for t in started:
        t.stop()
