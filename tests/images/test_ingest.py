"""The ingest pipeline (issue 14 goal 3): one pass over the file, chunks hashed, compressed and
written on several threads; the result must not depend on the number of threads, and concurrent
or killed imports must leave the store consistent."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from netslate.images import chunker, ingest
from netslate.images.chunkstore import ChunkStore
from netslate.images.leases import ImportLease


def _file(tmp_path: Path, size: int = 6_000_000, seed: int = 5, name: str = "input.img") -> Path:
    rnd = random.Random(seed)
    block = bytes(rnd.getrandbits(8) for _ in range(200_000))
    text = ("".join(rnd.choice("abcdefgh \n") for _ in range(300_000))).encode()
    data = bytearray()
    while len(data) < size:  # compressible, incompressible and repeated stretches
        data += rnd.choice([block, text, text[:50_000], bytes(70_000)])
    p = tmp_path / name
    p.write_bytes(bytes(data[:size]))
    return p


def _store_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_parallel_ingest_gives_the_same_record_and_chunk_files_as_serial(tmp_path):
    src = _file(tmp_path)
    results = []
    for workers in (1, 2, 4):
        d = tmp_path / f"w{workers}"
        store, lease = ChunkStore(d / "chunks"), ImportLease(d / "imports")
        try:
            record, new = ingest.store_file(store, src, "raw", lease, None, workers=workers)
        finally:
            lease.close()
        results.append((record.as_dict(), new, _store_tree(d / "chunks")))
    assert results[0] == results[1] == results[2]
    record = results[0][0]
    data = src.read_bytes()
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    # the same cut points and ids as the chunker's own reference path
    assert record["chunks"] == [[p.offset, p.size, p.chunk_id] for p in chunker.cut(data)]
    # and the record of a remote import (hash only) agrees
    rec2, _pieces = ingest.chunk_list(src, workers=2)
    assert rec2.as_dict() == {k: v for k, v in record.items() if k != "format"}


def test_empty_file(tmp_path):
    p = tmp_path / "empty"
    p.write_bytes(b"")
    store, lease = ChunkStore(tmp_path / "chunks"), ImportLease(tmp_path / "imports")
    record, new = ingest.store_file(store, p, None, lease, None, workers=2)
    lease.close()
    assert record.chunks == [] and new == 0 and record.sha256 == hashlib.sha256(b"").hexdigest()


def _cli(data_dir: Path, *args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, NETSLATE_DATA_DIR=str(data_dir))
    env.pop("NETSLATE_SERVER", None)
    return subprocess.Popen([sys.executable, "-m", "netslate", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_concurrent_imports_are_safe(tmp_path, ctx):
    a, b = _file(tmp_path, seed=1, name="a.img"), _file(tmp_path, seed=2, name="b.img")
    procs = [_cli(ctx.data_dir, "image", "import", "same", "--rootfs", str(p), "--json") for p in (a, b, a)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    assert sorted(o["version"] for o in outs) == [1, 2, 3]
    report = ctx.library.verify("same")
    assert report["ok"], report
    for o, src in zip(outs, (a, b, a)):
        assert ctx.library.resolve("same", o["version"]).artifacts["rootfs"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()


def test_killed_import_leaves_the_store_consistent(tmp_path, ctx):
    big = tmp_path / "big.img"
    with open(big, "wb") as f:  # ~120 MB of varied bytes: the import is still running when killed
        rnd = random.Random(9)
        block = bytes(rnd.getrandbits(8) for _ in range(1 << 20))
        for i in range(120):
            f.write(block[i % 7 * 1000:] + block[:i % 7 * 1000])
    p = _cli(ctx.data_dir, "image", "import", "killed", "--rootfs", str(big))
    deadline = time.monotonic() + 120
    chunks = ctx.data_dir / "chunks"
    while time.monotonic() < deadline and sum(1 for _ in chunks.rglob("*.zst")) + sum(1 for _ in chunks.rglob("*.raw")) < 20:
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=60)
    assert ctx.library.list_images() == [] or all(i["name"] != "killed" for i in ctx.library.list_images())
    store = ChunkStore(chunks)
    for cid, _path in store.iter_ids():  # every chunk file there is whole and verified
        store.read(cid, verify=True)
    # the dead importer's temp files and lease go at the next gc, every unreferenced chunk with them
    result = ctx.library.gc(grace_seconds=0)
    assert not list(store.iter_ids()) and not list(store.temp_files()), result
    assert not [p for p in (ctx.data_dir / "imports").iterdir() if p.suffix == ".lease"]
