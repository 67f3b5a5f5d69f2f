"""Chunk mirror prefetch bytes per new version (issue 15 §2), for docs/sites.md's scale on paper.

A central `netslate serve` and a branch `netslate serve --site b --mirror-from central` (its own
chunk store, the central database as its catalog) on loopback, with the Debian image pairs of
bench/images_pairs.py (v1 → v2 tagged `stable` in turn, each followed by `netslate mirror sync`). Measured from the branch's mirror
counters: the bytes received from central for the cold v1 prefetch and for the v2 prefetch that
follows, and the seconds of each pass; side by side, in the same run:
  * the stored (zstd) bytes of the chunks v2 adds over v1 at central: the floor for any
    whole-chunk transfer (what the mirror should approach; packs it fetches whole add the few
    chunks it already had);
  * the stored bytes of all of v2's chunks: what a mirror without chunk reuse (a plain copy of the
    version) would ship.
Usage: python bench/mirror.py [bench|issue]
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, Server, netslate, record  # noqa: E402
from images_pairs import pair  # noqa: E402

from netslate.context import Context  # noqa: E402
from netslate.identity.tokens import ADMIN_TOKEN_FILE  # noqa: E402


def stored_bytes(data: Path, ids) -> int:
    total = 0
    for cid in ids:
        for suffix in (".zst", ".raw"):
            p = data / "chunks" / cid[:2] / (cid + suffix)
            if p.exists():
                total += p.stat().st_size
                break
    return total


def chunk_ids(manifest: dict) -> set[str]:
    return {c for a in manifest["artifacts"].values() for _o, _s, c in a["chunks"]}


def _remote(branch: Server, data: Path, *args: str) -> dict:
    env = dict(os.environ, NETSLATE_SERVER=branch.url, NETSLATE_TOKEN=(data / ADMIN_TOKEN_FILE).read_text().strip())
    proc = subprocess.run([sys.executable, "-m", "netslate", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"netslate {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def sync(branch: Server, data: Path) -> dict:
    t = time.monotonic()
    out = _remote(branch, data, "mirror", "sync", "--json")
    out["wall_seconds"] = round(time.monotonic() - t, 2)
    st = _remote(branch, data, "mirror", "status", "--json")
    out["counters"] = st["counters"]
    out["complete"] = all(v["complete"] for v in st["versions"])
    return out


def one_pair(label: str) -> dict:
    v1, v2 = pair(label)
    root = WORK / "mirror" / label
    shutil.rmtree(root, ignore_errors=True)
    central, branch = root / "central", root / "branch"
    central.mkdir(parents=True)
    netslate("site", "add", "b", data_dir=central)
    netslate("key", "site-cert", "b", "--out", str(root / "b-keys"), data_dir=central)
    (branch / "keys").mkdir(parents=True)
    for f in (root / "b-keys").iterdir():
        shutil.copy2(f, branch / "keys" / f.name)
    db_url = str(Context(central).db.url)
    with Server(central) as c, Server(branch, ("--site", "b", "--database-url", db_url, "--mirror-from", c.url,
                                               "--mirror-interval", "86400")) as b:
        sync(b, branch)  # the pass at start (nothing yet), so the next one is timed alone
        netslate("image", "import", "os", "--rootfs", str(v1), "--tag", "stable", data_dir=central)
        first = sync(b, branch)
        netslate("image", "import", "os", "--rootfs", str(v2), "--tag", "stable", data_dir=central)
        second = sync(b, branch)
    ctx = Context(central)
    p1, p2 = ctx.library.resolve("os", 1).manifest, ctx.library.resolve("os", 2).manifest
    new_ids = chunk_ids(p2) - chunk_ids(p1)
    v1_received = first["counters"]["bytes_received"]
    v2_received = second["counters"]["bytes_received"] - v1_received
    floor = stored_bytes(central, new_ids)
    return {
        "pair": label,
        "v1_bytes": v1.stat().st_size,
        "v2_bytes": v2.stat().st_size,
        "v1_prefetch_received": v1_received,
        "v1_prefetch_seconds": first["seconds"],
        "v2_prefetch_received": v2_received,
        "v2_prefetch_seconds": second["seconds"],
        "v2_new_chunks": len(new_ids),
        "v2_new_chunks_stored_bytes": floor,
        "v2_all_chunks_stored_bytes": stored_bytes(central, chunk_ids(p2)),
        "v2_received_vs_floor": round(v2_received / floor, 3) if floor else None,
        "complete": first["complete"] and second["complete"],
        "upstream_requests_v2": second["counters"]["upstream_requests"] - first["counters"]["upstream_requests"],
    }


def main() -> None:
    labels = sys.argv[1:] or ["bench", "issue"]
    results = [one_pair(lab) for lab in labels]
    record("mirror", {"pairs": results})


if __name__ == "__main__":
    main()
