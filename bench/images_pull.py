"""Pull throughput from `netslate serve` on loopback, cold cache, against curl fetching the whole
artifact (GET /images/NAME/1/rootfs) from the same server in the same run. Goal: pull >= curl.

Artifact: an uncompressed squashfs of /usr/share (>= 512 MiB of real
files). Both clients write the whole artifact to a file; the pull also verifies every chunk and
the whole SHA-256 and keeps the chunks in its cache. Runs alternate (pull, curl, pull, curl).
"""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, Server, netslate, record, squashfs  # noqa: E402

SOURCES = [Path("/usr/share")]
ROUNDS = 2


def main() -> None:
    base = WORK / "pull"
    shutil.rmtree(base, ignore_errors=True)
    data = base / "data"
    data.mkdir(parents=True)
    img = squashfs([s for s in SOURCES if s.is_dir()], base / "big.squashfs")
    size = img.stat().st_size
    if size < 512 << 20:
        raise SystemExit(f"artifact only {size} bytes")
    imp = json.loads(netslate("image", "import", "big", "--rootfs", str(img), "--json", data_dir=data).stdout)
    img.unlink()
    runs = []
    with Server(data) as srv:
        for i in range(ROUNDS):
            cache, out = base / f"cache{i}", base / f"pull{i}.img"
            t = time.monotonic()
            p = json.loads(netslate("image", "pull", srv.url, "big@1", "--cache", str(cache), "--output", str(out), "--json", data_dir=data).stdout)
            pull_s = time.monotonic() - t
            shutil.rmtree(cache)
            out.unlink()
            t = time.monotonic()
            proc = subprocess.run(["curl", "-sS", "-f", "-o", str(base / "curl.img"), "-w", "%{size_download}",
                                   f"{srv.url}/images/big/1/rootfs"], capture_output=True, text=True)
            curl_s = time.monotonic() - t
            if proc.returncode != 0 or int(proc.stdout) != size:
                raise SystemExit(f"curl failed: {proc.stderr} {proc.stdout}")
            (base / "curl.img").unlink()
            runs.append({"pull_seconds": round(pull_s, 2), "pull_internal_seconds": p["seconds"],
                         "pull_mb_per_s": round(size / 1e6 / pull_s, 1), "pull_bytes_on_wire": p["bytes_on_wire"],
                         "curl_seconds": round(curl_s, 2), "curl_mb_per_s": round(size / 1e6 / curl_s, 1)})
    best_pull = min(r["pull_seconds"] for r in runs)
    best_curl = min(r["curl_seconds"] for r in runs)
    record("images_pull", {
        "artifact_bytes": size, "chunks": imp["artifacts"]["rootfs"]["chunks"], "runs": runs,
        "best": {"pull_seconds": best_pull, "curl_seconds": best_curl,
                 "pull_mb_per_s": round(size / 1e6 / best_pull, 1), "curl_mb_per_s": round(size / 1e6 / best_curl, 1)},
        "goal_pull_at_least_as_fast_as_curl": best_pull <= best_curl,
        "note": "pull wall time includes Python start-up, manifest fetch and verification, and the final whole-file SHA-256",
    })
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
