"""A site cache (issue 14): nginx proxy_cache, configured by `netslate serve --print-site-cache-config`,
in front of a server. A second pull through it costs the origin zero chunk bytes (counted in the
origin front's access log), and a chunk the cache serves tampered is still refused by the client."""

import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netslate.images import pull as pullmod
from netslate.images.frontend import FrontSettings, NginxFront, nginx_binary, read_access_log
from nstest import free_port, start_server


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"port {port} never opened")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from netslate.context import Context

    root = tmp_path_factory.mktemp("sitecache")
    ctx = Context(root / "data").init()
    tree = root / "tree"
    (tree / "etc").mkdir(parents=True)
    for i in range(5):
        (tree / "etc" / f"r{i}").write_bytes(os.urandom(400_000))
        (tree / "etc" / f"z{i}").write_bytes(b"site cache %d\n" % i * 30_000)
    v = ctx.library.import_files("lab", rootfs=tree, warn=lambda *_: None)
    srv = start_server(ctx)
    oport, cport = free_port(), free_port()
    origin = NginxFront(FrontSettings("127.0.0.1", oport, int(srv.url.rsplit(":", 1)[1]), str(ctx.chunks.root),
                                      str(ctx.data_dir / "serve"), str(root / "origin-nginx"), workers=1)).start()
    assert origin.wait_ready(30)
    cdir = root / "cache"
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (cdir / "tmp" / d).mkdir(parents=True)
    out = subprocess.run([sys.executable, "-m", "netslate", "serve", "--print-site-cache-config",
                          "--origin", f"http://127.0.0.1:{oport}", "--cache-dir", str(cdir),
                          "--cache-listen", f"127.0.0.1:{cport}"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    conf = out.stdout
    assert "proxy_cache_path" in conf and f"server 127.0.0.1:{oport};" in conf
    if os.geteuid() == 0:  # nginx would drop to nobody, which cannot enter the test's 0700 temp dirs
        conf = "user root root;\n" + conf
    (cdir / "nginx.conf").write_text(conf)
    cache = subprocess.Popen([nginx_binary(), "-p", str(cdir), "-c", str(cdir / "nginx.conf"), "-e", str(cdir / "error.log")],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(cport)
        yield {"ctx": ctx, "v": v, "cache_url": f"http://127.0.0.1:{cport}", "cache_dir": cdir,
               "origin_log": Path(origin.settings.state_dir) / "access.log", "root": root}
    finally:
        cache.terminate()
        cache.wait(15)
        try:
            os.killpg(cache.pid, 9)
        except ProcessLookupError:
            pass
        origin.stop()
        srv.stop()


def origin_rows(site) -> list[dict]:
    time.sleep(1.3)  # the access log is flushed every second
    return read_access_log(site["origin_log"])


def chunk_bytes(rows: list[dict]) -> int:
    """Bytes the origin served of chunk data: chunks, packs, and artifacts (which are chunks assembled)."""
    return sum(r["bytes"] for r in rows if r["uri"].startswith(("/chunks/", "/packs/"))
               or (r["uri"].startswith("/images/") and not r["uri"].endswith("/manifest")))


def record(site):
    _r, rec = site["ctx"].library.artifact_record("lab", "1", "rootfs")
    return rec


@pytest.mark.parametrize("zstd", [True, False], ids=["packs", "ranges"])
def test_second_pull_through_the_cache_costs_the_origin_no_chunk_bytes(site, tmp_path, monkeypatch, zstd):
    if not zstd:
        monkeypatch.setattr(pullmod, "_zstd", None)  # the initramfs: byte ranges of the artifact
    sha = record(site)["sha256"]
    before = len(origin_rows(site))
    pullmod.pull(site["cache_url"], "lab", "1", tmp_path / "a", tmp_path / "a.img")
    assert hashlib.sha256((tmp_path / "a.img").read_bytes()).hexdigest() == sha
    first = origin_rows(site)
    assert chunk_bytes(first[before:]) > 0  # the first pull went to the origin
    s2 = pullmod.pull(site["cache_url"], "lab", "1", tmp_path / "b", tmp_path / "b.img")  # another machine
    assert hashlib.sha256((tmp_path / "b.img").read_bytes()).hexdigest() == sha
    assert s2.chunks_downloaded > 0
    second = origin_rows(site)[len(first):]
    assert chunk_bytes(second) == 0, second


def _cached_files(cache_dir: Path, key_prefix: bytes) -> list[Path]:
    """Every cache entry whose key starts with key_prefix (a URL is cached once per encoding variant:
    `$uri|zstd` and `$uri|`)."""
    found = [p for p in (cache_dir / "cache").rglob("*") if p.is_file() and b"\nKEY: " + key_prefix in p.read_bytes()[:4096]]
    assert found, f"nothing cached under {key_prefix!r}"
    return found


def test_tampered_chunk_from_the_cache_is_refused(site, tmp_path):
    rec = record(site)
    digest = site["v"]["manifest_digest"]
    plan = pullmod.pack_plan(rec["chunks"])
    pullmod.pull(site["cache_url"], "lab", "1", tmp_path / "warm", tmp_path / "warm.img")  # the cache holds every pack
    # 1. corrupt the last chunk of pack 0 inside the cached pack: the client refuses it, fetches that
    #    one chunk alone (through the cache, from the origin), and the image is still right
    for pack0 in _cached_files(site["cache_dir"], pullmod.pack_path("lab", 1, "rootfs", digest, 0).encode() + b"|"):
        data = bytearray(pack0.read_bytes())
        data[-1] ^= 0xFF
        pack0.write_bytes(bytes(data))
    victim = plan[0][-1]
    before = len(origin_rows(site))
    s = pullmod.pull(site["cache_url"], "lab", "1", tmp_path / "c1", tmp_path / "c1.img")
    assert hashlib.sha256((tmp_path / "c1.img").read_bytes()).hexdigest() == rec["sha256"]
    assert s.chunks_downloaded == len(set(c for *_x, c in rec["chunks"]))
    assert any(r["uri"] == f"/chunks/{victim}" for r in origin_rows(site)[before:])
    # 2. now corrupt that chunk's own cache entry too: nothing verifiable is left, the pull fails
    #    with no output (and never writes the tampered bytes)
    for single in _cached_files(site["cache_dir"], f"/chunks/{victim}|".encode()):  # each encoding variant
        data = bytearray(single.read_bytes())
        data[-1] ^= 0xFF
        single.write_bytes(bytes(data))
    with pytest.raises(pullmod.PullError, match="failed verification"):
        pullmod.pull(site["cache_url"], "lab", "1", tmp_path / "c2", tmp_path / "c2.img", retries=1)
    assert not (tmp_path / "c2.img").exists()
    assert not (tmp_path / "c2" / "chunks" / victim[:2] / victim).exists()
