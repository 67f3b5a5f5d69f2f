"""Import into a remote server: chunk locally, upload only the chunks it lacks, then register."""

import hashlib
import shutil
import tempfile
from pathlib import Path

import zstandard

from netslate.images import chunker
from netslate.images.rootfs import prepare_rootfs


def remote_import(api, name, rootfs=None, kernel=None, initrd=None, tag=None, note="", progress=None) -> dict:
    work = Path(tempfile.mkdtemp(prefix="netslate-import-"))
    cctx = zstandard.ZstdCompressor(level=3)
    try:
        files = {}
        if rootfs is not None:
            files["rootfs"] = prepare_rootfs(Path(rootfs), work, name)
        for art, p in (("kernel", kernel), ("initrd", initrd)):
            if p is not None:
                files[art] = (Path(p), None)
        artifacts = {}
        for art, (path, fmt) in files.items():
            pieces = []
            whole = hashlib.sha256()
            total = path.stat().st_size
            for piece in chunker.cut_file(path):
                whole.update(piece.data)
                pieces.append([piece.offset, piece.size, piece.chunk_id])
            ids = [c[2] for c in pieces]
            missing = set(api.post("/api/v1/chunks/missing", json={"ids": ids})["missing"])
            done = 0
            with open(path, "rb") as f:
                for off, size, cid in pieces:
                    if cid in missing:
                        f.seek(off)
                        api.put(f"/api/v1/chunks/{cid}", content=cctx.compress(f.read(size)),
                                headers={"Content-Encoding": "zstd", "Content-Type": "application/octet-stream"})
                        missing.discard(cid)
                    done += size
                    if progress:
                        progress(art, done, total)
            artifacts[art] = {"size": total, "sha256": whole.hexdigest(), "chunks": pieces, "format": fmt}
        return api.post(f"/api/v1/images/{name}/versions", json={"artifacts": artifacts, "tag": tag, "note": note,
                                                                 "source": " ".join(f"{k}={p}" for k, (p, _f) in files.items())})
    finally:
        shutil.rmtree(work, ignore_errors=True)
