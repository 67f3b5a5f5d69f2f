"""`make demo` is itself a check: without a terminal it runs every step and exits 0 only if all held."""

import os
import re
import urllib.request

import pytest
import subprocess
import sys


@pytest.mark.timeout(1500)  # the fleet part boots real VMs under TCG: about 7 minutes on 2 cores
def test_demo_runs_every_step_without_a_terminal(tmp_path):
    env = dict(os.environ, CI="true", NETSLATE_DEMO_DIR=str(tmp_path / "demo"))
    with subprocess.Popen([sys.executable, "-m", "netslate.demo"], env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        out, err = p.communicate(timeout=1500)
    proc = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    demo_pid = p.pid
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "every step did what it claims" in proc.stdout
    assert "saved" in proc.stdout
    # It stopped the server it started: its port no longer answers.
    url = re.search(r"server (http://127\.0\.0\.1:\d+)", proc.stdout).group(1)
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/healthz", timeout=5)
    if os.environ.get("NETSLATE_DEMO_FLEET", "1") != "0":
        out = proc.stdout
        assert re.search(r"vm-ram +configured +fleet@2 +server", out), out[-3000:]
        assert re.search(r"vm-cache +configured +fleet@2 +server", out), out[-3000:]
        assert "applied it live" in out
        assert re.search(r"vm-cache rebooted onto fleet@4: downloaded [\d.]+ MiB \(\d+ of \d+ chunks", out)
        # the outage boot: PXE found nothing, the BIOS booted the NETSLATE disk's extlinux
        assert "the BIOS went on to the NETSLATE disk: extlinux loaded the cached kernel + initramfs of fleet@4" in out
        assert "source=cache booted via the local disk, queued report config_source=cache delivered" in out
        assert "config rollback to generation 1 published as generation 3" in out
        # it removed the namespace it made (vmlab names it nslab-<pid>-…)
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"nslab-{demo_pid}-" not in netns
