"""`make demo` is itself a check: without a terminal it runs every step and exits 0 only if all held."""

import os
import subprocess
import sys


def test_demo_runs_every_step_without_a_terminal(tmp_path):
    env = dict(os.environ, CI="true", NETSLATE_DEMO_DIR=str(tmp_path / "demo"))
    proc = subprocess.run([sys.executable, "-m", "netslate.demo"], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "every step did what it claims" in proc.stdout
    assert "saved" in proc.stdout
    # It stopped the server it started.
    ps = subprocess.run(["pgrep", "-f", f"netslate serve.*{tmp_path}"], capture_output=True, text=True)
    assert ps.stdout.strip() == ""
