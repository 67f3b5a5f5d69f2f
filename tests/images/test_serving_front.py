"""Cacheable serving (issue 14): GET chunk packs with immutable headers, the nginx static front
(chunks straight from the store, artifacts and packs by X-Accel-Redirect) answering exactly as the
Python routes do, its supervisor, and a pull through each."""

import hashlib
import os
import socket
import time
from pathlib import Path

import httpx
import pytest
import zstandard

from netslate.images import pull as pullmod
from netslate.images.frontend import FrontSettings, NginxFront, read_access_log, render_front_conf
from nstest import free_port, start_server

IMMUTABLE = "public, max-age=31536000, immutable"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One data directory with a two-version image (v2 shares most chunks with v1), a Python
    server on loopback, and an nginx front in front of it."""
    from netslate.context import Context

    root = tmp_path_factory.mktemp("serving")
    ctx = Context(root / "data").init()
    rnd = os.urandom
    tree = root / "tree"
    (tree / "etc").mkdir(parents=True)
    for i in range(6):
        (tree / "etc" / f"r{i}").write_bytes(rnd(300_000))  # incompressible: stored raw
        (tree / "etc" / f"z{i}").write_bytes(b"netslate serving test %d\n" % i * 20_000)  # stored zstd
    v1 = ctx.library.import_files("web", rootfs=tree, warn=lambda *_: None)
    (tree / "etc" / "r0").write_bytes(rnd(300_000))
    v2 = ctx.library.import_files("web", rootfs=tree, warn=lambda *_: None)
    srv = start_server(ctx)
    port = free_port()
    front = NginxFront(FrontSettings("127.0.0.1", port, int(srv.url.rsplit(":", 1)[1]), str(ctx.chunks.root),
                                     str(ctx.data_dir / "serve"), str(root / "nginx"), workers=2)).start()
    assert front.wait_ready(30)
    yield {"ctx": ctx, "py": srv.url, "front": f"http://127.0.0.1:{port}", "nginx": front, "v1": v1, "v2": v2, "root": root}
    front.stop()
    srv.stop()


def _chunks(ctx, name="web", ref="1"):
    _r, record = ctx.library.artifact_record(name, ref, "rootfs")
    return record


def _stored(ctx, encoding: str) -> str:
    for cid, path in ctx.chunks.iter_ids():
        if path.suffix == (".zst" if encoding == "zstd" else ".raw"):
            return cid
    raise AssertionError(f"no {encoding} chunk in the store")


def ctx_size(ctx, cid: str) -> int:
    return ctx.chunks.stored_size(cid)


class Raw:
    """A response as on the wire (httpx would decode zstd): status, lower-case headers, body."""

    def __init__(self, url: str, headers: dict | None = None, method: str = "GET"):
        import http.client
        import urllib.parse

        u = urllib.parse.urlsplit(url)
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        try:
            c.request(method, u.path + ("?" + u.query if u.query else ""), headers=headers or {})
            r = c.getresponse()
            self.content = r.read()
            self.status_code = r.status
            self.headers = {k.lower(): v for k, v in r.getheaders()}
        finally:
            c.close()


HEADERS = ("cache-control", "etag", "vary", "content-encoding", "content-length", "content-type")


@pytest.mark.parametrize("stored", ["zstd", "raw"])
@pytest.mark.parametrize("accept", ["", "zstd", "gzip, zstd", "gzip"])
def test_front_chunk_answers_as_the_python_route(world, stored, accept):
    cid = _stored(world["ctx"], stored)
    headers = {"Accept-Encoding": accept}
    a = Raw(f"{world['py']}/chunks/{cid}", headers)
    b = Raw(f"{world['front']}/chunks/{cid}", headers)
    assert a.status_code == b.status_code == 200
    assert a.content == b.content  # the bytes on the wire
    for h in HEADERS:
        assert a.headers.get(h) == b.headers.get(h), h
    assert b.headers["cache-control"] == IMMUTABLE and b.headers["etag"] == f'"{cid}"'
    body = zstandard.ZstdDecompressor().decompress(b.content, max_output_size=1 << 24) \
        if b.headers.get("content-encoding") == "zstd" else b.content
    assert hashlib.sha256(body).hexdigest() == cid
    assert (b.headers.get("content-encoding") == "zstd") == (stored == "zstd" and "zstd" in accept)
    # HEAD and If-None-Match, on both
    for base in (world["py"], world["front"]):
        h = Raw(f"{base}/chunks/{cid}", headers, method="HEAD")
        assert h.status_code == 200 and h.headers["etag"] == f'"{cid}"'
        assert h.headers["content-length"] == b.headers["content-length"]
        nm = Raw(f"{base}/chunks/{cid}", {**headers, "If-None-Match": f'"{cid}"'})
        assert nm.status_code == 304 and nm.content == b""


def test_front_missing_chunk_is_404_as_python(world):
    missing = "ab" * 32
    for base in (world["py"], world["front"]):
        for accept in ("", "zstd"):
            assert httpx.get(f"{base}/chunks/{missing}", headers={"Accept-Encoding": accept}).status_code == 404
        assert httpx.get(f"{base}/chunks/not-an-id").status_code == 404


def test_front_serves_the_chunk_file_itself(world):
    """The front reads the store (sendfile), it does not go through the app for a stored encoding."""
    cid = _stored(world["ctx"], "zstd")
    mark = os.urandom(6).hex()
    r = Raw(f"{world['front']}/chunks/{cid}?{mark}", {"Accept-Encoding": "zstd"})
    assert r.status_code == 200 and len(r.content) == ctx_size(world["ctx"], cid)
    log = Path(world["nginx"].settings.state_dir) / "access.log"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = [r for r in read_access_log(log) if r["uri"] == f"/chunks/{cid}?{mark}"]
        if rows:
            break
        time.sleep(0.2)
    assert rows and rows[-1]["served"] == "static" and rows[-1]["status"] == 200


def test_packs_are_cacheable_gets_identical_on_both(world):
    ctx = world["ctx"]
    digest = world["v1"]["manifest_digest"]
    plan = pullmod.pack_plan(_chunks(ctx)["chunks"])
    assert len(plan) >= 1
    for i in range(len(plan)):
        path = pullmod.pack_path("web", 1, "rootfs", digest, i)
        a = httpx.get(world["py"] + path)
        b = httpx.get(world["front"] + path)
        assert a.status_code == b.status_code == 200
        assert a.content == b.content
        etag = f'"{digest.removeprefix("sha256:")}-rootfs-{i}"'
        for r in (a, b):
            assert r.headers["cache-control"] == IMMUTABLE and r.headers["etag"] == etag
        # the frames carry exactly the plan's chunks, each verifiable
        pos, got = 0, []
        while pos < len(a.content):
            kind, n = a.content[pos], int.from_bytes(a.content[pos + 1:pos + 5], "big")
            raw = a.content[pos + 5:pos + 5 + n]
            data = zstandard.ZstdDecompressor().decompress(raw, max_output_size=1 << 24) if kind == 1 else raw
            got.append(hashlib.sha256(data).hexdigest())
            pos += 5 + n
        assert got == plan[i]
        nm = httpx.get(world["py"] + path, headers={"If-None-Match": etag})
        assert nm.status_code == 304
    # a digest that is not this version's manifest, an index past the end: 404
    assert httpx.get(world["py"] + pullmod.pack_path("web", 1, "rootfs", "0" * 64, 0)).status_code == 404
    assert httpx.get(world["py"] + pullmod.pack_path("web", 1, "rootfs", digest, len(plan))).status_code == 404
    assert httpx.get(world["py"] + pullmod.pack_path("web", 2, "rootfs", digest, 0)).status_code == 404


def test_old_post_pack_still_works(world):
    ids = pullmod.pack_plan(_chunks(world["ctx"])["chunks"])[0][:3]
    for base in (world["py"], world["front"]):
        r = httpx.post(f"{base}/chunks/pack", json={"ids": ids})
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        assert r.content[0] in (0, 1)


def test_front_artifact_identical_with_ranges(world):
    ctx = world["ctx"]
    record = _chunks(ctx)
    size = record["size"]
    for ref in ("1", "latest"):
        a = httpx.get(f"{world['py']}/images/web/{ref}/rootfs")
        b = httpx.get(f"{world['front']}/images/web/{ref}/rootfs")
        assert a.status_code == b.status_code == 200
        assert hashlib.sha256(b.content).hexdigest() == record["sha256"] if ref == "1" else True
        assert a.content == b.content
        for h in ("etag", "cache-control", "x-netslate-version", "content-length", "accept-ranges"):
            assert a.headers.get(h) == b.headers.get(h), h
    for rng in (f"bytes=100-{size // 2}", "bytes=-1000", f"bytes={size - 10}-"):
        a = httpx.get(f"{world['py']}/images/web/1/rootfs", headers={"Range": rng})
        b = httpx.get(f"{world['front']}/images/web/1/rootfs", headers={"Range": rng})
        assert a.status_code == b.status_code == 206
        assert a.content == b.content and a.headers["content-range"] == b.headers["content-range"]
    for base in (world["py"], world["front"]):
        assert httpx.get(f"{base}/images/web/1/rootfs", headers={"Range": f"bytes={size}-"}).status_code == 416
        h = httpx.head(f"{base}/images/web/1/rootfs")
        assert h.status_code == 200 and int(h.headers["content-length"]) == size


@pytest.mark.parametrize("zstd", [True, False], ids=["packs", "ranges"])
def test_pull_through_the_front(world, tmp_path, monkeypatch, zstd):
    """The pull client (packs with zstandard; byte ranges without, as the initramfs) through the
    front: a cold pull of v1, then v2 fetches only the changed chunks."""
    if not zstd:
        monkeypatch.setattr(pullmod, "_zstd", None)
    cache = tmp_path / "cache"
    s1 = pullmod.pull(world["front"], "web", "1", cache, tmp_path / "v1.img")
    assert hashlib.sha256((tmp_path / "v1.img").read_bytes()).hexdigest() == _chunks(world["ctx"])["sha256"]
    assert s1.chunks_downloaded == len({c for *_x, c in _chunks(world["ctx"])["chunks"]})
    s2 = pullmod.pull(world["front"], "web", "2", cache, tmp_path / "v2.img")
    assert hashlib.sha256((tmp_path / "v2.img").read_bytes()).hexdigest() == _chunks(world["ctx"], ref="2")["sha256"]
    assert 0 < s2.chunks_downloaded < s1.chunks_downloaded


def test_pull_uses_cacheable_gets_only(world, tmp_path):
    """No POST on the pull path any more: everything a machine fetches is a cacheable GET."""
    log = Path(world["nginx"].settings.state_dir) / "access.log"
    time.sleep(1.5)  # the log is buffered (1 s): earlier tests' requests are in it by now
    t0 = time.time()
    pullmod.pull(world["front"], "web", "2", tmp_path / "c", tmp_path / "o.img")
    deadline = time.monotonic() + 10
    rows: list = []
    while time.monotonic() < deadline:
        rows = [r for r in read_access_log(log) if r["at"] >= t0]
        if any(r["uri"].startswith("/packs/") for r in rows):
            break
        time.sleep(0.2)
    assert rows and all(r["method"] == "GET" for r in rows)
    assert any(r["uri"].startswith("/packs/") and r["served"] == "static" for r in rows)


def test_front_config_is_pure_and_valid(tmp_path):
    s = FrontSettings("0.0.0.0", 8080, 9000, "/d/chunks", "/d/serve", str(tmp_path), workers=3)
    text = render_front_conf(s)
    assert render_front_conf(s) == text
    assert "worker_processes 3;" in text and "listen 0.0.0.0:8080" in text and "127.0.0.1:9000" in text
    assert "sendfile on;" in text
    front = NginxFront(s)
    front.write_files()
    front.check()  # nginx -t accepts it
    with pytest.raises(ValueError):
        render_front_conf(FrontSettings("0.0.0.0", 8080, 9000, "/d/ch;unks", "/d/serve", str(tmp_path)))


def test_supervisor_starts_restarts_and_stops_nginx(tmp_path):
    from netslate.context import Context

    ctx = Context(tmp_path / "data").init()
    srv = start_server(ctx)
    try:
        port = free_port()
        front = NginxFront(FrontSettings("127.0.0.1", port, int(srv.url.rsplit(":", 1)[1]), str(ctx.chunks.root),
                                         str(ctx.data_dir / "serve"), str(tmp_path / "ng"), workers=2)).start()
        assert front.wait_ready(30)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        # a second supervisor on the same state directory (another uvicorn worker) does nothing
        other = NginxFront(front.settings).start()
        assert not other.owner and other.health()["ok"]
        other.stop()
        pids = front.pids()
        assert len(pids) == 3  # master + 2 workers
        os.kill(pids[0], 9)  # nginx dies: the supervisor starts it again
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (front.restarts == 0 or not front.pids()):
            time.sleep(0.1)
        assert front.restarts == 1 and front.wait_ready(30)
        for p in pids[1:]:  # the killed master's workers are killed too (no stray nginx)
            _wait_gone(p)
        pids = front.pids()
        assert front.health()["ok"]
        front.stop()
        for p in pids:
            _wait_gone(p)
        assert not front.health()["ok"] or not front.owner
    finally:
        srv.stop()


def _wait_gone(pid: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still running")


def test_front_body_limits_mirror_the_app(ctx):
    """`serve` tells the front: every limited route under /api/v1 needs a role (so the front may
    answer a credential-less body 401 before reading it, as the app does), /chunks/pack does not."""
    from netslate.server.app import create_app
    from netslate.server.limits import LIMITS, route_role

    app = create_app(ctx, {})
    for lim in LIMITS:
        path = lim.path.pattern.removesuffix("\\Z").replace("[^/]+", "x" * 64)
        for method in lim.methods:
            role = route_role(app, {"type": "http", "method": method, "path": path, "root_path": ""})
            assert (role is not None) == path.startswith("/api/v1/"), (method, path, role)


def test_front_answers_body_limits_as_the_app(world, tmp_path):
    """413 from the front itself for a Content-Length over the route's limit (JSON detail), 401 for a
    credential-less upload; within limits the app answers."""
    from netslate.server.limits import JSON_LIMIT, LIMITS

    ctx = world["ctx"]
    port = free_port()
    s = FrontSettings("127.0.0.1", port, world["nginx"].settings.upstream_port, str(ctx.chunks.root),
                      str(ctx.data_dir / "serve"), str(tmp_path / "ng"), workers=1,
                      body_limits=tuple((lim.path.pattern, lim.max_bytes) for lim in LIMITS), default_body_limit=JSON_LIMIT,
                      credential_required=tuple(lim.path.pattern for lim in LIMITS if lim.path.pattern.startswith("/api/v1/")))
    front = NginxFront(s).start()
    try:
        assert front.wait_ready(30)
        base = f"http://127.0.0.1:{port}"
        r = httpx.post(f"{base}/api/v1/config/publish", content=b"x" * (JSON_LIMIT + 1), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "too large" in r.json()["detail"]
        r = httpx.put(f"{base}/api/v1/chunks/{'0' * 64}", content=iter([b"x" * 1000]))  # chunked, no credential
        assert r.status_code == 401 and r.json()["detail"]
        r = httpx.post(f"{base}/chunks/pack", json={"ids": []})  # open route, within its limit: the app
        assert r.status_code == 200
        r = httpx.get(f"{base}/api/v1/images/web/versions")  # a read on a limited path is not touched
        assert r.status_code == 200
    finally:
        front.stop()


@pytest.mark.parametrize("zstd", [True, False], ids=["packs", "ranges"])
def test_pull_waits_out_a_saturated_server(world, tmp_path, monkeypatch, zstd):
    """A server answering 503 (Retry-After) or dropping connections for a while: the pull retries
    the same pack/range with backoff and finishes, without falling back to chunk-by-chunk fetches."""
    import http.server
    import threading
    import urllib.error
    import urllib.request

    if not zstd:
        monkeypatch.setattr(pullmod, "_zstd", None)
    seen = {"refused": 0, "chunks": 0}
    upstream = world["py"]

    class Saturated(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            bulk = self.path.startswith("/packs/") or "range" in {k.lower() for k in self.headers}
            if self.path.startswith("/chunks/"):
                seen["chunks"] += 1
            if bulk and seen["refused"] < 2:
                seen["refused"] += 1
                if seen["refused"] == 2:  # a dropped connection, as from a server at its limit
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(503)
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            req = urllib.request.Request(upstream + self.path, headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    status, headers, body = r.status, r.getheaders(), r.read()
            except urllib.error.HTTPError as exc:
                status, headers, body = exc.code, exc.headers.items(), exc.read()
            self.send_response(status)
            for k, v in headers:
                if k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Saturated)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        s = pullmod.pull(f"http://127.0.0.1:{httpd.server_address[1]}", "web", "1", tmp_path / "c", tmp_path / "o.img",
                         workers=1, retries=1)
    finally:
        httpd.shutdown()
    assert hashlib.sha256((tmp_path / "o.img").read_bytes()).hexdigest() == _chunks(world["ctx"])["sha256"]
    assert seen["refused"] == 2 and s.chunks_downloaded > 0
    assert seen["chunks"] == 0  # the bulk requests were retried, not abandoned for per-chunk fetches


def test_served_files_build_once_verify_and_stay_bounded(tmp_path):
    from netslate.images.frontend_files import ServedFiles

    files = ServedFiles(tmp_path / "serve", max_bytes=2500)
    calls = []

    def produce(n):
        def gen():
            calls.append(n)
            yield b"a" * n
        return gen

    good = hashlib.sha256(b"a" * 1000).hexdigest()
    p = files.get(f"artifacts/{good}", produce(1000), sha256=good)
    assert p.read_bytes() == b"a" * 1000 and oct(p.stat().st_mode & 0o777) == "0o644"
    assert files.get(f"artifacts/{good}", produce(1000), sha256=good) == p and calls == [1000]  # built once
    with pytest.raises(ValueError):
        files.get("artifacts/" + "0" * 64, produce(10), sha256="0" * 64)
    assert sorted(x.name for x in (tmp_path / "serve" / "artifacts").iterdir()) == [good]  # nothing half-written left
    os.utime(p, (1, 1))  # the oldest
    files.get("packs/x-rootfs-0", produce(1000))
    files.get("packs/x-rootfs-1", produce(1000))  # 3000 > 2500: the oldest goes
    assert not p.exists() and (tmp_path / "serve" / "packs" / "x-rootfs-1").exists()
