"""Ram-mode boot, power-on to the image's init, for a given source tree (issue 14 goal 5: the
booting machine's pull must not get slower). Two QEMU TCG boots of the tiny test image
(tests/initramfs/initramfs_world.py) with the tree's own initramfs and server:

    vmlock uv run python bench/images_ram_boot.py [TREE]     (TREE: a copy of the repo, default this one)

To compare before/after a change, run it on a copy of the tree without the change, then on this one.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent).resolve()
sys.path[:0] = [str(root / "src"), str(root / "tests" / "initramfs"), str(root / "tests"), str(root / "bench")]
os.environ.setdefault("NETSLATE_VMLAB_ACCEL", "tcg")

import netslate  # noqa: E402

assert str(netslate.__file__).startswith(str(root)), netslate.__file__
from initramfs_boot import timed_boot  # noqa: E402
from initramfs_world import make_world, ns_args  # noqa: E402


def main() -> None:
    out = []
    with tempfile.TemporaryDirectory(prefix="ramboot-") as tmp, make_world(Path(tmp)) as w:
        via = [w.hostile["pass"]]
        r1 = w.ctx.library.resolve("tiny", "1")
        for i in range(2):
            out.append(timed_boot(w, f"r{i}", ns_args(w, r1, "ram", servers=via)))
    print(json.dumps({"tree": str(root), "ram": out, "load": os.getloadavg()}))


if __name__ == "__main__":
    main()
