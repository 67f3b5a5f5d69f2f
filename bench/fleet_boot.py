"""Fleet boot benchmark: power-on → "configured" for ram and cache mode (first boots, the cache
VM's update boot and its boot from the cache with the server down), and the bytes per boot and per
update, with real QEMU VMs PXE-booting the demo's systemd image (netslate.demo_fleet).

    uv run python bench/fleet_boot.py      # prints one JSON object (about 7 minutes under TCG)
"""

import json
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from netslate.context import Context  # noqa: E402
from netslate.demo_fleet import Fleet, fleet_steps  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        work = Path(tmp)
        Context(work / "data").init()
        fl = Fleet(work, work / "data")
        lines: list[str] = []
        try:
            for _title, fn in fleet_steps(fl, lines.append):
                fn()
            accel = fl.vms["vm-ram"].accel
            out = {"machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "accel": accel},
                   **fl.results}
        finally:
            fl.close()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
