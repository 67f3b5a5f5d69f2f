"""Update bytes (issue 14 goal 4): what a machine holding v1 downloads to reach v2, on two pairs
(bench/images_pairs.py): "bench" (minbase + python3-minimal systemd netbase iproute2 → + less file
bzip2) and "issue" (minbase + openssh-server curl vim-tiny → + git htop tmux, − vim-tiny, /etc edited).
Side by side, on loopback, in one run:
  * netslate: `netslate image import` of both files, `netslate serve`, `netslate image pull` of v1
    then v2 into one cache: the new chunks come as delta groups (images/delta.py) against v1;
    the wire bytes counted are the pull's own (frames or chunks) plus the manifest;
  * netslate without deltas: the stored (zstd) size of the chunks v1 lacks (what the whole-chunk
    path sends);
  * casync (Debian's): `casync make --chunk-size=16384:65536:262144 --compression=zstd` of both
    files into one store, served by a byte-counting static HTTP server, `casync extract --seed=v1`;
  * xdelta3 (Debian's, default options): `xdelta3 -e -s v1 v2`, the size of the delta (the floor);
  * the full v2 (raw, and zstd -3).
Goals: netslate <= 0.8 x casync's new compressed chunks and <= 1.3 x xdelta3, on both pairs.
"""

import hashlib
import http.server
import json
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, Server, netslate, record, run  # noqa: E402
from images_pairs import pair  # noqa: E402

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


def stored_size(data: Path, cid: str) -> int:
    for suffix in (".zst", ".raw"):
        p = data / "chunks" / cid[:2] / (cid + suffix)
        if p.exists():
            return p.stat().st_size
    return 0


def one_pair(label: str) -> dict:
    v1_img, v2_img = pair(label)
    base = WORK / "update" / label
    shutil.rmtree(base, ignore_errors=True)
    data = base / "data"
    data.mkdir(parents=True)
    for img in (v1_img, v2_img):
        netslate("image", "import", label, "--rootfs", str(img), "--json", data_dir=data)
    diff = json.loads(netslate("image", "diff", label, "1", "2", "--json", data_dir=data).stdout)
    with Server(data) as srv:
        cache, out = base / "cache", base / "pull" / "rootfs.img"
        p1 = json.loads(netslate("image", "pull", srv.url, f"{label}@1", "--cache", str(cache), "--output", str(out), "--json", data_dir=data).stdout)
        t = time.monotonic()
        p2 = json.loads(netslate("image", "pull", srv.url, f"{label}@2", "--cache", str(cache), "--output", str(out), "--json", data_dir=data).stdout)
        pull_wall = time.monotonic() - t
        import urllib.request
        manifest_bytes = len(urllib.request.urlopen(f"{srv.url}/images/{label}/2/manifest").read())
    if hashlib.sha256(out.read_bytes()).hexdigest() != hashlib.sha256(v2_img.read_bytes()).hexdigest():
        raise SystemExit("netslate produced a different v2")
    # whole-chunk path: the stored size of every chunk v1 lacks
    from netslate.context import Context

    lib = Context(data).init().library
    c1 = {c[2] for c in lib.resolve(label, 1).artifacts["rootfs"]["chunks"]}
    new_ids = {c[2] for c in lib.resolve(label, 2).artifacts["rootfs"]["chunks"]} - c1
    whole_chunks = sum(stored_size(data, c) for c in new_ids)

    store = base / "casync" / "store"
    store.mkdir(parents=True)
    for v, img in (("v1", v1_img), ("v2", v2_img)):
        run(["casync", "make", f"--chunk-size={CASYNC_CHUNK}", "--compression=zstd", f"--store={store}",
             str(base / "casync" / f"{v}.caibx"), str(img)])
    CountingHandler.counter.update(bytes=0, requests=0)
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
    t = time.monotonic()
    run(["xdelta3", "-e", "-f", "-s", str(v1_img), str(v2_img), str(base / "v2.xd3")])
    xdelta_seconds = time.monotonic() - t
    xdelta = (base / "v2.xd3").stat().st_size
    full = v2_img.stat().st_size
    import zstandard
    full_zstd = len(zstandard.ZstdCompressor(level=3).compress(v2_img.read_bytes()))
    ns_wire = p2["bytes_on_wire"] + manifest_bytes
    shutil.rmtree(base, ignore_errors=True)
    return {
        "library_diff_v1_v2": {k: diff[k] for k in ("bytes_new", "bytes_total", "new_fraction", "chunks_new", "chunks_shared")},
        "netslate": {"bytes_on_wire_chunks": p2["bytes_on_wire"], "manifest_bytes": manifest_bytes, "bytes_on_wire_total": ns_wire,
                     "chunks_downloaded": p2["chunks_downloaded"], "chunks_from_delta": p2.get("chunks_from_delta"),
                     "delta_base_version": p2.get("delta_base_version"), "pull_seconds": p2["seconds"],
                     "pull_command_wall_seconds": round(pull_wall, 2), "cold_v1_pull_seconds": p1["seconds"]},
        "netslate_whole_chunks": {"bytes": whole_chunks, "chunks": len(new_ids)},
        "casync": {"bytes_new_chunks": casync_bytes, "index_bytes": caibx_bytes, "requests": casync_requests,
                   "seconds": round(casync_seconds, 2), "chunk_size": CASYNC_CHUNK, "compression": "zstd"},
        "xdelta3": {"bytes": xdelta, "encode_seconds": round(xdelta_seconds, 2), "options": "-e -s (defaults)"},
        "full_v2": {"bytes": full, "bytes_zstd3": full_zstd},
        "ratios": {"netslate_over_casync": round(ns_wire / casync_bytes, 3), "netslate_over_xdelta3": round(ns_wire / xdelta, 3),
                   "whole_chunks_over_casync": round((whole_chunks + manifest_bytes) / casync_bytes, 3)},
        "goals": {"le_0_8_casync": ns_wire <= 0.8 * casync_bytes, "le_1_3_xdelta3": ns_wire <= 1.3 * xdelta},
    }


def main() -> None:
    labels = sys.argv[1:] or ["bench", "issue"]
    record("images_update", {"pairs": {label: one_pair(label) for label in labels}})


if __name__ == "__main__":
    main()
