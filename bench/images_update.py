"""Update efficiency: bytes an up-to-date v1 cache downloads to reach v2.

v1 = `netslate image build` of Debian bookworm minbase + python3-minimal systemd netbase iproute2;
v2 = the same recipe + less, file, bzip2 (a real second mmdebstrap build, as an admin would do).
Side by side, on loopback:
  * netslate: `netslate serve` + `netslate image pull` with a cache warm with v1 (and v1's output file);
  * casync (Debian's): `casync make --chunk-size=16384:65536:262144 --compression=zstd` of the same
    rootfs files into one store, served by a byte-counting static HTTP server, then
    `casync extract --seed=<v1 rootfs>`;
  * a full download of v2's rootfs.
Goals: netslate <= casync, and <= 15 % of the full image when <= 5 % of the files changed.
"""

import hashlib
import http.server
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import V1_PACKAGES, V2_EXTRA, WORK, Server, netslate, record, run  # noqa: E402

CASYNC_CHUNK = "16384:65536:262144"


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    counter = {"bytes": 0, "requests": 0}
    lock = threading.Lock()

    def copyfile(self, source, outputfile):
        n = 0
        while True:
            buf = source.read(65536)
            if not buf:
                break
            outputfile.write(buf)
            n += len(buf)
        with self.lock:
            self.counter["bytes"] += n
            self.counter["requests"] += 1

    def log_message(self, *args):
        pass


def static_server(directory: Path):
    handler = lambda *a, **kw: CountingHandler(*a, directory=str(directory), **kw)  # noqa: E731
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/"


def file_table(root: Path) -> dict[str, str]:
    """path → content hash (or link target / type) for every non-directory entry."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "link:" + os.readlink(p)
            elif os.path.isfile(p):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for blk in iter(lambda: f.read(1 << 20), b""):
                        h.update(blk)
                out[rel] = h.hexdigest()
            else:
                out[rel] = "special"
    return out


def changed_files(img1: Path, img2: Path, tmp: Path) -> dict:
    m1, m2 = tmp / "m1", tmp / "m2"
    m1.mkdir(exist_ok=True)
    m2.mkdir(exist_ok=True)
    run(["mount", "-o", "loop,ro", str(img1), str(m1)])
    try:
        run(["mount", "-o", "loop,ro", str(img2), str(m2)])
        try:
            a, b = file_table(m1), file_table(m2)
        finally:
            run(["umount", str(m2)])
    finally:
        run(["umount", str(m1)])
    added = b.keys() - a.keys()
    removed = a.keys() - b.keys()
    modified = {k for k in a.keys() & b.keys() if a[k] != b[k]}
    return {"files_v1": len(a), "files_v2": len(b), "added": len(added), "removed": len(removed),
            "modified": len(modified), "changed_fraction": round((len(added) + len(removed) + len(modified)) / len(b), 4)}


def main() -> None:
    base = WORK / "update"
    shutil.rmtree(base, ignore_errors=True)
    data = base / "data"
    data.mkdir(parents=True)
    recipes = {}
    for label, pkgs in (("v1", V1_PACKAGES), ("v2", V1_PACKAGES + V2_EXTRA)):
        r = base / f"{label}.yaml"
        r.write_text(json.dumps({"suite": "bookworm", "variant": "minbase", "packages": pkgs}))
        recipes[label] = r
    builds = {}
    for label in ("v1", "v2"):
        t = time.monotonic()
        res = json.loads(netslate("image", "build", "deb", "--recipe", str(recipes[label]), "--json", data_dir=data).stdout)
        builds[label] = {"version": res["version"], "rootfs_bytes": res["artifacts"]["rootfs"]["size"],
                         "bytes_new_in_store": res["bytes_new"], "build_seconds": round(time.monotonic() - t, 1)}
    diff = json.loads(netslate("image", "diff", "deb", "1", "2", "--json", data_dir=data).stdout)

    with Server(data) as srv:
        cache, out = base / "cache", base / "pull" / "rootfs.img"
        p1 = json.loads(netslate("image", "pull", srv.url, "deb@1", "--cache", str(cache), "--output", str(out), "--json", data_dir=data).stdout)
        v1_img = base / "v1.img"
        shutil.copyfile(out, v1_img)  # the v1 file casync seeds from, identical to what netslate had
        p2 = json.loads(netslate("image", "pull", srv.url, "deb@2", "--cache", str(cache), "--output", str(out), "--json", data_dir=data).stdout)
        import urllib.request
        manifest_bytes = len(urllib.request.urlopen(f"{srv.url}/images/deb/2/manifest").read())
    v2_img = base / "v2.img"
    shutil.copyfile(out, v2_img)
    files = changed_files(v1_img, v2_img, base)

    # casync on the very same two files
    store = base / "casync" / "store"
    store.mkdir(parents=True)
    for label, img in (("v1", v1_img), ("v2", v2_img)):
        run(["casync", "make", f"--chunk-size={CASYNC_CHUNK}", "--compression=zstd", f"--store={store}",
             str(base / "casync" / f"{label}.caibx"), str(img)])
    srv, url = static_server(store)
    try:
        t = time.monotonic()
        run(["casync", "extract", f"--store={url}", f"--seed={v1_img}", str(base / "casync" / "v2.caibx"), str(base / "casync" / "v2.out")])
        casync_seconds = time.monotonic() - t
        casync_bytes = CountingHandler.counter["bytes"]
        casync_requests = CountingHandler.counter["requests"]
    finally:
        srv.shutdown()
    if hashlib.sha256((base / "casync" / "v2.out").read_bytes()).hexdigest() != hashlib.sha256(v2_img.read_bytes()).hexdigest():
        raise SystemExit("casync produced a different v2")
    caibx_bytes = (base / "casync" / "v2.caibx").stat().st_size
    full = v2_img.stat().st_size
    import zstandard
    full_zstd = len(zstandard.ZstdCompressor(level=3).compress(v2_img.read_bytes()))

    ns_wire = p2["bytes_on_wire"] + manifest_bytes
    result = {
        "builds": builds,
        "library_diff_v1_v2": {k: diff[k] for k in ("bytes_new", "bytes_total", "new_fraction", "chunks_new", "chunks_shared")},
        "files": files,
        "netslate": {"bytes_on_wire_chunks": p2["bytes_on_wire"], "manifest_bytes": manifest_bytes, "bytes_on_wire_total": ns_wire,
                     "bytes_downloaded_uncompressed": p2["bytes_downloaded"], "chunks_downloaded": p2["chunks_downloaded"],
                     "chunks_reused": p2["chunks_reused"], "seconds": p2["seconds"], "cold_v1_pull_seconds": p1["seconds"]},
        "casync": {"bytes_on_wire_chunks": casync_bytes, "index_bytes": caibx_bytes, "bytes_on_wire_total": casync_bytes + caibx_bytes,
                   "requests": casync_requests, "seconds": round(casync_seconds, 2), "chunk_size": CASYNC_CHUNK, "compression": "zstd"},
        "full_download": {"bytes": full, "bytes_zstd3": full_zstd},
        "netslate_fraction_of_full": round(ns_wire / full, 4),
        "casync_fraction_of_full": round((casync_bytes + caibx_bytes) / full, 4),
        "goals": {"netslate_le_casync": ns_wire <= casync_bytes + caibx_bytes,
                  "le_15pct_of_full": ns_wire <= 0.15 * full, "files_changed_le_5pct": files["changed_fraction"] <= 0.05},
    }
    record("images_update", result)


if __name__ == "__main__":
    main()
