"""`make demo` is itself a check: without a terminal it runs every step and exits 0 only if all held."""

import os
import re
import urllib.request

import pytest
import subprocess
import sys


def test_demo_runs_every_step_without_a_terminal(tmp_path):
    env = dict(os.environ, CI="true", NETSLATE_DEMO_DIR=str(tmp_path / "demo"))
    proc = subprocess.run([sys.executable, "-m", "netslate.demo"], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "every step did what it claims" in proc.stdout
    assert "saved" in proc.stdout
    # It stopped the server it started: its port no longer answers.
    url = re.search(r"server (http://127\.0\.0\.1:\d+)", proc.stdout).group(1)
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/healthz", timeout=5)
