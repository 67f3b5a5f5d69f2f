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


def test_a_local_import_opens_the_database_on_another_thread_while_it_chunks(tmp_path, ctx):
    """`image import` on an existing data directory: SQLAlchemy is imported and the database
    opened on the `netslate-open-catalog` thread, not before the chunking starts; the version is
    published all the same."""
    src = _file(tmp_path, size=3_000_000, seed=1)
    spy = tmp_path / "spy.py"
    spy.write_text(
        "import runpy, sys, threading\n"
        "class Spy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'sqlalchemy':\n"
        "            sys.stderr.write('SQLALCHEMY-IMPORTED-ON ' + threading.current_thread().name + '\\n')\n"
        "sys.meta_path.insert(0, Spy())\n"
        "sys.argv = ['netslate'] + sys.argv[1:]\n"
        "runpy.run_module('netslate', run_name='__main__')\n")
    env = dict(os.environ, NETSLATE_DATA_DIR=str(ctx.data_dir))
    env.pop("NETSLATE_SERVER", None)
    r = subprocess.run([sys.executable, str(spy), "image", "import", "beside", "--rootfs", str(src), "--json"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "SQLALCHEMY-IMPORTED-ON netslate-open-catalog" in r.stderr, r.stderr
    assert json.loads(r.stdout)["version"] == 1
    assert ctx.library.resolve("beside", 1).artifacts["rootfs"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()


def test_an_import_without_its_database_stops_early_with_one_line(tmp_path, ctx):
    """The catalog fails to open while the file is chunked: the import stops at its next batch
    (not at the end of the file) and says why; nothing is published."""
    from netslate.errors import Unavailable
    from netslate.images.library import Library

    class Unreachable(Library):
        def open_catalog(self):
            raise Unavailable("cannot reach the database: connection refused")

    src = _file(tmp_path, size=48_000_000, name="big.img")
    seen: list[int] = []
    try:
        Unreachable(ctx).import_files("nodb", rootfs=src, progress=lambda _a, done, _t: seen.append(done))
    except Unavailable as exc:
        assert "cannot reach the database" in str(exc)
    else:
        raise AssertionError("the import published without a database")
    assert not seen or max(seen) < src.stat().st_size // 2, seen[-3:]
    assert ctx.library.list_images() == []


def test_cli_import_with_an_unreachable_database_is_one_line_exit_2(tmp_path):
    src = _file(tmp_path, size=2_000_000)
    env = dict(os.environ, NETSLATE_DATA_DIR=str(tmp_path / "data"),
               NETSLATE_DATABASE_URL="postgresql+psycopg://nobody@127.0.0.1:9/none")  # port 9: nothing listens
    env.pop("NETSLATE_SERVER", None)
    r = subprocess.run([sys.executable, "-m", "netslate", "image", "import", "x", "--rootfs", str(src)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: cannot reach the database:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
