"""Ingest, side by side with casync (issue 14 goal 3): the whole `netslate image import` command
against `casync make --chunk-size=65536` on the same file, in one run, rounds interleaved.

Files (bench/images_pairs.py builds them):
  * squashfs: the issue pair's v2, an uncompressed squashfs of a Debian minbase with
    openssh-server, curl, git, htop and tmux (what `image import DIR` makes);
  * concat:   issue v2 + bench v2 + issue v2 + bench v2 (two images, half of the file repeated).
Each command writes into a fresh store: casync a new --store directory, netslate a data directory
that was initialised (migrated, key made) beforehand — the fresh-directory cost (`image list` on
an empty directory) is measured on its own. The file is in the page cache for both (read once
before the rounds). Figures: median wall seconds of ROUNDS, CPU seconds (user+sys of the child).
Before each timed command the page cache's dirty data is written out (`sync`, not timed):
netslate ends an import with syncfs (its chunks are durable before the database names them),
which would otherwise also flush the previous casync round's chunks, and casync would start with
netslate's. casync's own writeback is left to the kernel after it exits, as a user sees it. The stores are
deleted only after the last round, and the order of the two commands alternates: on ext4, creating
files right after thousands were deleted costs more with every round (perf: the inode allocator's
`recently_deleted` and `find_get_block_common`; casync alone went from 0.3 s to 4.1 s of system
time in seven create-and-delete rounds on the same file), which would tax whichever runs later.
The kernel's reason (fs/ext4/ialloc.c, recently_deleted, which runs on an ext4 without a journal,
as this machine's root is): a freed inode is not reused for up to 5 minutes, so the allocator
reads past thousands of them. So the
stores of both files are deleted only at the very end, and a run should start at least 6 minutes
after the last mass deletion (an earlier run's, or a test suite's): rounds that ran inside that
window took casync 3.0 s instead of 1.7 s and netslate 1.9 s instead of 0.9 s on the same file.
Goal: netslate wall <= 0.5 x casync wall on both files.
"""

import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, record  # noqa: E402
from images_pairs import pair  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "3"))


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.monotonic() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def netslate_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "netslate", *args]


def main() -> None:
    base = WORK / "ingest"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    (_b1, b2), (_i1, i2) = pair("bench"), pair("issue")
    concat = WORK / "pairs" / "concat.img"
    if not concat.exists():
        with open(concat.with_suffix(".tmp"), "wb") as out:
            for src in (i2, b2, i2, b2):
                with open(src, "rb") as f:
                    shutil.copyfileobj(f, out, 8 << 20)
        os.replace(concat.with_suffix(".tmp"), concat)
    files = {"squashfs": i2, "concat": concat}

    fresh = []
    for r in range(ROUNDS):
        d = base / f"fresh{r}"
        fresh.append(timed(netslate_cmd("image", "list", "--json"), dict(os.environ, NETSLATE_DATA_DIR=str(d)))[0])
        shutil.rmtree(d)

    results = {}
    for label, path in files.items():
        with open(path, "rb") as f:  # into the page cache for both commands
            while f.read(8 << 20):
                pass
        ns, cs = [], []
        for r in range(ROUNDS):
            data = base / f"data-{label}-{r}"
            env = dict(os.environ, NETSLATE_DATA_DIR=str(data))
            env.pop("NETSLATE_SERVER", None)
            timed(netslate_cmd("image", "list", "--json"), env)  # initialise the data directory (not timed)
            store = base / f"casync-{label}-{r}"
            store.mkdir()
            runs = [(ns, netslate_cmd("image", "import", "bench", "--rootfs", str(path), "--json"), env),
                    (cs, ["casync", "make", "--chunk-size=65536", f"--store={store / 'store'}", str(store / "x.caibx"), str(path)], None)]
            for into, cmd, cmd_env in runs if r % 2 == 0 else runs[::-1]:  # who goes first alternates
                os.sync()  # neither command pays for the other's writeback (netslate's syncfs would flush casync's)
                into.append(timed(cmd, cmd_env))
        nw, cw = statistics.median(w for w, _c in ns), statistics.median(w for w, _c in cs)
        results[label] = {
            "bytes": path.stat().st_size,
            "netslate_import": {"wall_seconds": [round(w, 2) for w, _c in ns], "cpu_seconds": [round(c, 2) for _w, c in ns],
                                "median_wall": round(nw, 2), "mb_per_s": round(path.stat().st_size / 1e6 / nw, 1)},
            "casync_make": {"wall_seconds": [round(w, 2) for w, _c in cs], "cpu_seconds": [round(c, 2) for _w, c in cs],
                            "median_wall": round(cw, 2), "mb_per_s": round(path.stat().st_size / 1e6 / cw, 1)},
            "netslate_over_casync_wall": round(nw / cw, 3),
            "goal_le_0_5": nw <= 0.5 * cw,
        }
    for label in files:  # deleted only now, after every file's rounds: see the docstring
        for r in range(ROUNDS):
            shutil.rmtree(base / f"data-{label}-{r}")
            shutil.rmtree(base / f"casync-{label}-{r}")
    record("ingest", {
        "rounds": ROUNDS,
        "fresh_data_dir_image_list_seconds": [round(x, 2) for x in fresh],
        "casync": subprocess.run(["casync", "--version"], capture_output=True, text=True).stdout.strip(),
        "files": results,
    })


if __name__ == "__main__":
    main()
