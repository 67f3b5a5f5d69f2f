"""Measure the two choices the image library rests on, and write down why.

1. Chunker: pyfastcdc (what we use) against the `fastcdc` package 1.7.0 (its Cython build and its
   pure-Python fallback), same parameters, chunking only (no hashing). `fastcdc` runs in a
   throw-away environment (`uv run --no-project --with fastcdc==1.7.0`); it is not a dependency.
2. Root filesystem format: chunk reuse between two Debian versions (v2 = v1 + less, file, bzip2)
   built as uncompressed EROFS (erofs-utils 1.5), uncompressed squashfs (-noI -noD -noF -noX)
   and default compressed squashfs (gzip). Reuse = bytes of v2 found in v1's chunks.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, debian_trees, erofs, record, squashfs  # noqa: E402

from netslate.images import chunker  # noqa: E402

SAMPLE = 256 << 20
PURE_SAMPLE = 16 << 20

FASTCDC_SCRIPT = r"""
import json, sys, time
from fastcdc.fastcdc_cy import fastcdc_cy
from fastcdc.fastcdc_py import fastcdc_py
path, n, npure, mn, avg, mx = sys.argv[1], *map(int, sys.argv[2:])
data = open(path, "rb").read(n)
out = {}
for label, fn, size in (("fastcdc_1.7.0_cython", fastcdc_cy, n), ("fastcdc_1.7.0_pure_python", fastcdc_py, npure)):
    buf = data[:size]
    t = time.process_time()
    count = sum(1 for _ in fn(buf, min_size=mn, avg_size=avg, max_size=mx))
    cpu = time.process_time() - t
    out[label] = {"bytes": size, "chunks": count, "cpu_seconds": round(cpu, 3), "mb_per_s": round(size / 1e6 / cpu, 1)}
print(json.dumps(out))
"""


def chunker_speeds(sample_file: Path) -> dict:
    from pyfastcdc import FastCDC

    data = open(sample_file, "rb").read(SAMPLE)
    cdc = FastCDC(chunker.AVG_SIZE, min_size=chunker.MIN_SIZE, max_size=chunker.MAX_SIZE)
    t = time.process_time()
    count = sum(1 for _ in cdc.cut_buf(data))
    cpu = time.process_time() - t
    out = {"pyfastcdc": {"bytes": len(data), "chunks": count, "cpu_seconds": round(cpu, 3), "mb_per_s": round(len(data) / 1e6 / cpu, 1)}}
    # fastcdc's avg_size is the mean (pyfastcdc's mean is avg + min), so give it the real mean.
    mean = chunker.AVG_SIZE + chunker.MIN_SIZE
    proc = subprocess.run(
        ["uv", "run", "--no-project", "--quiet", "--with", "fastcdc==1.7.0", "python", "-c", FASTCDC_SCRIPT,
         str(sample_file), str(SAMPLE), str(PURE_SAMPLE), str(chunker.MIN_SIZE), str(mean), str(chunker.MAX_SIZE)],
        capture_output=True, text=True, timeout=1200)
    if proc.returncode == 0:
        out.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    else:
        out["fastcdc_1.7.0"] = {"error": (proc.stderr or proc.stdout).strip()[-300:]}
    return out


def reuse(a: Path, b: Path) -> dict:
    ca = {p.chunk_id for p in chunker.cut_file(a)}
    import zstandard

    cctx = zstandard.ZstdCompressor(level=3)
    total = new = new_wire = 0
    seen = set()
    for p in chunker.cut_file(b):
        total += p.size
        if p.chunk_id not in ca and p.chunk_id not in seen:
            new += p.size
            new_wire += min(len(cctx.compress(p.data)), p.size)  # what the store keeps and the pull moves
        seen.add(p.chunk_id)
    return {"v1_bytes": a.stat().st_size, "v2_bytes": b.stat().st_size, "v2_bytes_new": new, "v2_bytes_new_zstd": new_wire,
            "reused_fraction": round(1 - new / total, 4), "new_fraction": round(new / total, 4)}


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    v1, v2 = debian_trees()
    out_dir = WORK / "formats"
    out_dir.mkdir(exist_ok=True)
    formats = {}
    for label, build in (
        ("erofs_uncompressed", lambda t, o: erofs(t, o)),
        ("squashfs_uncompressed", lambda t, o: squashfs([t], o)),
        ("squashfs_gzip", lambda t, o: squashfs([t], o, compressed=True)),
    ):
        a, b = out_dir / f"{label}-v1.img", out_dir / f"{label}-v2.img"
        build(v1, a)
        build(v2, b)
        formats[label] = reuse(a, b)
    sample = out_dir / "squashfs_uncompressed-v2.img"
    ingest_img = WORK / "ingest-usr.squashfs"
    if ingest_img.exists() and ingest_img.stat().st_size >= SAMPLE:
        sample = ingest_img
    speeds = chunker_speeds(sample)
    record("images_chunker_choice", {
        "chunker_params": {"min": chunker.MIN_SIZE, "avg_param": chunker.AVG_SIZE, "max": chunker.MAX_SIZE},
        "chunker_sample": str(sample),
        "chunkers": speeds,
        "formats_v1_to_v2": formats,
        "v2_change": "v1 + less, file, bzip2 (mmdebstrap bookworm minbase + python3-minimal systemd netbase iproute2)",
    })


if __name__ == "__main__":
    main()
