"""Fault injection: corrupt chunks, forged/truncated/replayed manifests, killed imports, full disks."""

import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netslate.crypto.keys import SigningKey
from netslate.images.pull import PullError, pull


class CannedServer:
    """A real HTTP server on loopback answering with canned bodies (a hostile or replaying server)."""

    def __init__(self, routes: dict[str, tuple[int, bytes]], upstream: str | None = None):
        outer = self
        self.routes = routes
        self.upstream = upstream
        self.default = (404, b"{}")

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path in outer.routes:
                    status, body = outer.routes[self.path]
                elif outer.upstream:
                    with urllib.request.urlopen(outer.upstream + self.path, timeout=10) as r:
                        status, body = r.status, r.read()
                else:
                    status, body = outer.default
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def test_corrupt_chunk_on_server_fails_cleanly_without_output(live_server, tree, tmp_path):
    lib = live_server.ctx.library
    lib.import_files("c", rootfs=tree)
    cid = lib.resolve("c", "1").artifacts["rootfs"]["chunks"][3][2]
    path, _enc = live_server.ctx.chunks.locate(cid)
    path.write_bytes(b"garbage")
    out = tmp_path / "out.img"
    with pytest.raises(PullError, match="failed verification"):
        pull(live_server.url, "c", "1", tmp_path / "cache", out, retries=1)
    assert not out.exists()
    report = lib.verify("c")
    assert not report["ok"] and report["corrupt"] == [cid] and report["affected"] == ["c@1:rootfs"]


def test_corrupt_cached_chunk_is_fetched_again(live_server, tree, tmp_path, monkeypatch):
    import netslate.images.pull as pullmod

    live_server.ctx.library.import_files("cc", rootfs=tree)
    cache, out = tmp_path / "cache", tmp_path / "out.img"
    # Per-chunk fetches (the stdlib path for scattered chunks) keep each chunk in the cache directory.
    monkeypatch.setattr(pullmod, "_zstd", None)
    pull(live_server.url, "cc", "1", cache, out, range_min_chunks=10**9)
    monkeypatch.undo()
    files = sorted(p for p in (cache / "chunks").rglob("*") if p.is_file())
    assert files
    files[0].write_bytes(b"bit rot")
    out.unlink()
    s = pull(live_server.url, "cc", "1", cache, out)
    assert s.chunks_refetched == 1 and s.chunks_downloaded == 1
    assert hashlib.sha256(out.read_bytes()).hexdigest() == live_server.ctx.library.resolve("cc", "1").artifacts["rootfs"]["sha256"]


def test_corrupt_seed_bytes_are_fetched_again(live_server, tree, tmp_path):
    live_server.ctx.library.import_files("cs", rootfs=tree)
    cache, out = tmp_path / "cache", tmp_path / "out.img"
    pull(live_server.url, "cs", "1", cache, out)
    with open(out, "r+b") as f:  # damage the middle of the previous output, which seeds the next pull
        f.seek(out.stat().st_size // 2)
        f.write(b"\xff" * 100)
    s = pull(live_server.url, "cs", "1", cache, out)
    assert 1 <= s.chunks_downloaded <= 2
    assert hashlib.sha256(out.read_bytes()).hexdigest() == live_server.ctx.library.resolve("cs", "1").artifacts["rootfs"]["sha256"]


def test_interrupted_pull_resumes(live_server, tree, tmp_path):
    lib = live_server.ctx.library
    lib.import_files("res", rootfs=tree)
    doc = urllib.request.urlopen(f"{live_server.url}/images/res/1/manifest").read()
    keys = urllib.request.urlopen(f"{live_server.url}/api/v1/keys").read()
    chunks = lib.resolve("res", "1").artifacts["rootfs"]["chunks"]
    half = {f"/chunks/{c[2]}": (200, lib.ctx.chunks.read(c[2])) for c in chunks[: len(chunks) // 2]}
    # A server that delivers only the first half of the chunks, then "dies" (500 for the rest).
    flaky = CannedServer({"/images/res/1/manifest": (200, doc), "/api/v1/keys": (200, keys), **half})
    flaky.default = (500, b"gone")
    cache, out = tmp_path / "cache", tmp_path / "out.img"
    try:
        with pytest.raises(PullError):
            pull(flaky.url, "res", "1", cache, out, range_min_chunks=10**9, retries=0)
    finally:
        flaky.close()
    assert not out.exists()
    s = pull(live_server.url, "res", "1", cache, out)
    assert s.chunks_reused >= len(chunks) // 2 - 1
    assert s.chunks_downloaded <= len(chunks) - len(chunks) // 2 + 1
    assert hashlib.sha256(out.read_bytes()).hexdigest() == lib.resolve("res", "1").artifacts["rootfs"]["sha256"]


def test_manifest_signed_by_another_key_is_refused(live_server, tree, tmp_path):
    live_server.ctx.library.import_files("f", rootfs=tree)
    cache = tmp_path / "cache"
    pull(live_server.url, "f", "1", cache, tmp_path / "ok.img")  # pins the real key
    doc = json.loads(urllib.request.urlopen(f"{live_server.url}/images/f/1/manifest").read())
    forger = SigningKey(Ed25519PrivateKey.generate())
    payload = doc["manifest"]["payload"]
    forged = {**doc, "manifest": forger.sign(payload)}
    evil = CannedServer({"/images/f/1/manifest": (200, json.dumps(forged).encode()),
                         "/api/v1/keys": (200, json.dumps({"keys": [{"public_key": forger.public_b64}]}).encode())},
                        upstream=live_server.url)
    try:
        with pytest.raises(PullError, match="manifest refused"):
            pull(evil.url, "f", "1", cache, tmp_path / "evil.img")
        # A fresh cache that trusts the real fingerprint refuses the forger's key outright.
        with pytest.raises(PullError, match="does not match --trust"):
            pull(evil.url, "f", "1", tmp_path / "fresh", tmp_path / "evil.img", trust=live_server.ctx.signing_key.fingerprint)
        # Tampered payload under the genuine signature.
        tampered = {**doc, "manifest": {**doc["manifest"], "payload": {**payload, "version": 1, "created_at": "x"}}}
        evil.routes["/images/f/1/manifest"] = (200, json.dumps(tampered).encode())
        with pytest.raises(PullError, match="signature"):
            pull(evil.url, "f", "1", cache, tmp_path / "evil.img")
        # Truncated manifest.
        evil.routes["/images/f/1/manifest"] = (200, json.dumps(doc).encode()[:200])
        with pytest.raises(PullError, match="truncated"):
            pull(evil.url, "f", "1", cache, tmp_path / "evil.img")
    finally:
        evil.close()
    assert not (tmp_path / "evil.img").exists()


def test_replayed_older_tag_is_refused(live_server, tree, tmp_path, copy_tree):
    from images_trees import change_tree

    lib = live_server.ctx.library
    lib.import_files("r", rootfs=tree, tag="stable")
    old_doc = urllib.request.urlopen(f"{live_server.url}/images/r/stable/manifest").read()
    t2 = copy_tree(tree, tmp_path / "t2")
    change_tree(t2)
    lib.import_files("r", rootfs=t2, tag="stable")
    cache = tmp_path / "cache"
    assert pull(live_server.url, "r", "stable", cache, tmp_path / "a.img").version == 2
    mitm = CannedServer({"/images/r/stable/manifest": (200, old_doc)}, upstream=live_server.url)
    try:
        with pytest.raises(PullError, match="replayed tag refused"):
            pull(mitm.url, "r", "stable", cache, tmp_path / "b.img")
    finally:
        mitm.close()
    # A legitimate rollback is a new, higher tag event and is accepted.
    lib.set_tag("r", 1, "stable", reason="rollback")
    assert pull(live_server.url, "r", "stable", cache, tmp_path / "c.img").version == 1


def test_import_killed_halfway_leaves_no_version(data_dir, tmp_path, cli):
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    env = dict(os.environ, NETSLATE_DATA_DIR=str(data_dir))
    proc = subprocess.Popen([sys.executable, "-m", "netslate", "image", "import", "k", "--rootfs", str(big)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    chunks_dir = data_dir / "chunks"
    deadline = time.time() + 60
    while time.time() < deadline and sum(1 for _ in chunks_dir.rglob("*.raw")) < 50:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert sum(1 for _ in chunks_dir.rglob("*.raw")) >= 50, "import was not caught halfway"
    r = cli("image", "list", "--json", data_dir=data_dir)
    assert r.code == 0 and r.json() == []
    r = cli("image", "gc", "--grace", "0", "--json", data_dir=data_dir)
    assert r.code == 0 and r.json()["chunks_removed"] >= 50
    r = cli("image", "import", "k", "--rootfs", str(big), "--json", data_dir=data_dir)
    assert r.code == 0 and r.json()["version"] == 1


@pytest.fixture
def data_dir(tmp_path, request):
    """The data directory (in remote mode the server's too): a 6 MiB tmpfs when parametrized "small"."""
    d = tmp_path / "data"
    d.mkdir()
    if getattr(request, "param", None) == "small":
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(d)], check=True)
        request.addfinalizer(lambda: subprocess.run(["umount", "--lazy", str(d)], check=True))  # the server's database may still be open
    return d


@pytest.mark.parametrize("data_dir", ["small"], indirect=True)
def test_full_disk_during_import_leaves_no_partial_version(tmp_path, data_dir, cli):
    big = tmp_path / "big.img"
    big.write_bytes(os.urandom(12 << 20))
    r = cli("image", "import", "full", "--rootfs", str(big))
    assert r.code == 2, r.stderr
    assert "disk full" in r.stderr and "Traceback" not in r.stderr
    r = cli("image", "list", "--json")
    assert r.code == 0 and r.json() == []
