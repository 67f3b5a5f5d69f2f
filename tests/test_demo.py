"""`make demo` is itself a check: without a terminal it runs every step and exits 0 only if all held."""

import os
import re
import urllib.request

import pytest
import subprocess
import sys


@pytest.mark.timeout(900)
def test_demo_runs_every_step_without_a_terminal(tmp_path):
    # The demo's fleet part (VMs) is the same `demo_fleet.fleet_steps` that tests/e2e/test_fleet_vm.py
    # runs and checks line by line; booting those VMs twice would cost the suite ~9 minutes.
    env = dict(os.environ, CI="true", NETSLATE_DEMO_DIR=str(tmp_path / "demo"), NETSLATE_DEMO_FLEET="0")
    with subprocess.Popen([sys.executable, "-m", "netslate.demo"], env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        out, err = p.communicate(timeout=1500)
    proc = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "every step did what it claims" in proc.stdout
    assert "saved" in proc.stdout
    # It stopped the server it started: its port no longer answers.
    url = re.search(r"server (http://127\.0\.0\.1:\d+)", proc.stdout).group(1)
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/healthz", timeout=5)
