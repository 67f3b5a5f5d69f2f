"""A small boot storm (bench/boot_storm.py, bounded: 16 boots, a 2 MB image) for correctness, not
timing: every simulated ram-mode boot (iPXE script, kernel, initrd, the initramfs pull, SHA-256 of
the whole rootfs) succeeds against one server, two servers behind discovery DNS SRV, and a site cache."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "boot_storm.py"


def test_small_storm_boots_every_machine(tmp_path):
    out = subprocess.run([sys.executable, str(BENCH), "--n", "16", "--image-mb", "2", "--procs", "2", "--rounds", "4",
                          "--timeout", "240", "--scenarios", "one,srv2,cache", "--no-record", "--json", "--work", str(tmp_path / "w")],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:] + out.stdout[-2000:]
    result = json.loads(out.stdout)
    assert set(result["scenarios"]) == {"one", "srv2", "cache"}
    for name, s in result["scenarios"].items():
        assert s["boots"] == 16 and s["ok"] == 16 and s["failed"] == 0, (name, s)
        assert s["delivered_gb"] > 0
    # both servers behind SRV took boots (RFC 2782 weights 100/100: all 16 on one has p = 2^-15)
    assert len(result["scenarios"]["srv2"]["boots_per_server"]) == 2
