"""Fleet boot benchmark: power-on → "configured" for ram and cache mode (first and second boots,
the cache VM's update boot and its boot from the cache with the server down, through the firmware's
fall-back to the NETSLATE disk), and the bytes per boot and per update, with real QEMU VMs PXE-booting the demo's systemd image (netslate.demo_fleet).

    uv run python bench/fleet_boot.py      # prints one JSON object, appends it to bench/results/fleet_boot.json (about 6 minutes under TCG)
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import record  # noqa: E402
from netslate.context import Context  # noqa: E402
from netslate.demo_fleet import Fleet, fleet_steps  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        work = Path(tmp)
        Context(work / "data").init()
        fl = Fleet(work, work / "data")
        lines: list[str] = []
        try:
            for _title, fn in fleet_steps(fl, lines.append, second_boot=True):
                fn()
            out = {"accel": fl.vms["vm-ram"].accel, **fl.results, "steps": lines}
        finally:
            fl.close()
    record("fleet_boot", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
