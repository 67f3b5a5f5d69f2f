"""Chunk mirrors (issue 15 §2) with real parts: a central server and a branch server (`--site b`,
`mirror_from` central) on loopback, over one database (what the branch's standby replicates), each
with its own chunk store. No VMs.

- prefetch of every version the site's machines are assigned (pin, tag), status missing → complete;
- pull-through of a chunk nobody prefetched, by artifact, pack and chunk id;
- a tampered upstream chunk and a manifest signed by another key are refused and never stored;
- concurrent requests for one missing chunk fetch it from upstream once;
- central stopped: a pull from the branch succeeds with zero upstream requests;
- `netslate mirror status --json` and `mirror sync` locally and over --server.
"""

import base64
import hashlib
import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import zstandard

from nstest import run_cli, start_server
from netslate.boot import store as boot_store
from netslate.context import Context
from netslate.crypto import records
from netslate.crypto.keys import write_site_files
from netslate.discovery import store as discovery
from netslate.images.pull import pull
from netslate.store.models import Machine


def _files(d: Path, seed: int, size: int = 1_500_000) -> dict:
    d.mkdir(parents=True, exist_ok=True)
    rnd = hashlib.sha256(str(seed).encode()).digest()
    rootfs = d / "rootfs.img"
    # deterministic, incompressible-ish data: SHA-256 counter stream
    rootfs.write_bytes(b"".join(hashlib.sha256(rnd + i.to_bytes(4, "big")).digest() for i in range(size // 32)))
    kernel = d / "vmlinuz"
    kernel.write_bytes(os.urandom(70_000))
    return {"rootfs": rootfs, "kernel": kernel}


def _chunk_ids(ctx, name: str, version: int, artifact: str | None = None) -> list[str]:
    r = ctx.library.resolve(name, version)
    arts = [r.artifacts[artifact]] if artifact else r.artifacts.values()
    return list(dict.fromkeys(c for a in arts for _o, _s, c in a["chunks"]))


def _api(srv, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, srv.url + path, headers={"Authorization": f"Bearer {srv.admin_token}"}, timeout=120, **kw)


@pytest.fixture
def world(tmp_path):
    """Central (root key, the database, images os@1, os@2=stable, other@1) and branch b mirroring it."""
    ctx = Context(tmp_path / "central").init()
    discovery.add_site(ctx, "b")
    discovery.add_subnet(ctx, "b", "10.2.0.0/16")
    lib = ctx.library
    lib.import_files("os", **_files(tmp_path / "f1", 1))
    lib.import_files("os", **_files(tmp_path / "f2", 2), tag="stable")
    lib.import_files("other", **_files(tmp_path / "f3", 3))
    with ctx.db.session() as s:
        s.add(Machine(name="pc-b", tree_path="/", labels={}, status={}, ip_address="10.2.0.5"))
        s.add(Machine(name="pc-a", tree_path="/", labels={}, status={}, ip_address="10.1.0.5"))
    boot_store.pin_machine(ctx, "pc-b", "os@1")  # the branch's machine: os@1 is assigned to site b
    central = start_server(ctx)
    root = ctx.signing_key
    cert, pem = root.issue_site_cert("b", 1, 30)
    with ctx.db.session() as s:
        records.add_site_cert(s, cert)
    keys = tmp_path / "branch" / "keys"
    write_site_files(keys, cert, pem, root.public_bytes)
    branch_ctx = Context(tmp_path / "branch", database_url=ctx.db.url).init()
    branch = start_server(branch_ctx, {"site": "b", "mirror_from": central.url, "mirror_interval": 3600})
    mirror = branch.app.state.parts.mirror
    w = SimpleNamespace(ctx=ctx, central=central, branch=branch, branch_ctx=branch_ctx, mirror=mirror, tmp=tmp_path,
                        root_b64=base64.b64encode(root.public_bytes).decode(), site_b=(cert, pem, root.public_bytes))
    yield w
    branch.stop()
    central.stop()


def _status(srv) -> dict:
    r = httpx.get(srv.url + "/api/v1/mirror", timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _wait_first_pass(w) -> dict:
    # the loop's first pass starts with the server; `sync` waits for it, then runs one more (a no-op)
    r = _api(w.branch, "POST", "/api/v1/mirror/sync")
    assert r.status_code == 200, r.text
    return _status(w.branch)


def _pull(w, server: str, name: str, ref: str, artifact: str = "rootfs", tag: str = "") -> Path:
    out = w.tmp / f"out-{name}-{ref}-{artifact}{tag}"
    pull(server, name, ref, w.tmp / f"cache{tag}", out, artifact=artifact, trust=w.root_b64, workers=4, retries=1)
    return out


def test_prefetch_assigned_versions_and_status(world):
    w = world
    st = _wait_first_pass(w)
    assert st["configured"] and st["upstream"] == w.central.url and st["site"] == "b" and st["running"]
    by = {(v["name"], v["version"]): v for v in st["versions"]}
    # os@1: pc-b's pin (site b by its subnet); os@2: tag stable. other@1 is nobody's: not prefetched.
    assert set(by) == {("os", 1), ("os", 2)}, by
    assert any("boot pin for pc-b" in r for r in by[("os", 1)]["reasons"]) and "tag stable" in by[("os", 2)]["reasons"]
    for v in by.values():
        assert v["complete"] and v["chunks_missing"] == 0 and v["chunks_present"] == v["chunks_total"] > 10, v
        assert v["bytes_present"] == v["bytes_total"] > 1_000_000 and v["last_sync"] and v["last_error"] is None
    store = w.branch_ctx.chunks
    assert all(store.has(c) for c in _chunk_ids(w.ctx, "os", 1) + _chunk_ids(w.ctx, "os", 2))
    assert not any(store.has(c) for c in _chunk_ids(w.ctx, "other", 1))
    # every stored chunk re-hashes to its id
    for c in _chunk_ids(w.ctx, "os", 2):
        assert hashlib.sha256(store.read(c)).hexdigest() == c

    # a new version tagged at central: missing at the branch until a pass, then complete
    w.ctx.library.import_files("os", **_files(w.tmp / "f4", 4))
    w.ctx.library.set_tag("os", 3, "stable")
    by = {(v["name"], v["version"]): v for v in _status(w.branch)["versions"]}
    assert ("os", 2) not in by  # no longer tagged nor pinned
    new = by[("os", 3)]
    assert not new["complete"] and new["chunks_missing"] == new["chunks_total"] > 10 and new["bytes_missing"] > 1_000_000
    r = _api(w.branch, "POST", "/api/v1/mirror/sync")
    assert r.status_code == 200 and r.json()["errors"] == [] and r.json()["bytes_fetched"] >= new["bytes_missing"]
    by = {(v["name"], v["version"]): v for v in _status(w.branch)["versions"]}
    assert by[("os", 3)]["complete"] and by[("os", 3)]["bytes_missing"] == 0
    # mirror status over the API is open to read, sync needs operator
    assert httpx.post(w.branch.url + "/api/v1/mirror/sync", timeout=30).status_code == 401
    # central mirrors nothing
    assert _status(w.central)["configured"] is False


def test_pull_through_of_a_version_nobody_prefetched(world):
    w = world
    _wait_first_pass(w)
    store, before = w.branch_ctx.chunks, dict(w.mirror.counters)
    rootfs_ids, kernel_ids = _chunk_ids(w.ctx, "other", 1, "rootfs"), _chunk_ids(w.ctx, "other", 1, "kernel")
    assert not any(store.has(c) for c in rootfs_ids + kernel_ids)
    out = _pull(w, w.branch.url, "other", "1")  # packs and chunks through the branch
    assert out.read_bytes() == (w.tmp / "f3" / "rootfs.img").read_bytes()
    assert all(store.has(c) for c in rootfs_ids)
    # a whole artifact (what iPXE fetches) and a single chunk by id
    r = httpx.get(f"{w.branch.url}/images/other/1/kernel", timeout=60)
    assert r.status_code == 200 and r.content == (w.tmp / "f3" / "vmlinuz").read_bytes()
    assert all(store.has(c) for c in kernel_ids)
    assert w.mirror.counters["chunks_fetched"] - before["chunks_fetched"] == len(set(rootfs_ids + kernel_ids))
    assert w.mirror.counters["chunks_refused"] == before["chunks_refused"] == 0
    # a chunk id no verified manifest lists is not fetched: 404, no upstream request
    n = w.mirror.counters["upstream_requests"]
    assert httpx.get(f"{w.branch.url}/chunks/{'ab' * 32}", timeout=30).status_code == 404
    assert w.mirror.counters["upstream_requests"] == n


def _corrupt(ctx, cid: str) -> None:
    path, encoding = ctx.chunks.locate(cid)
    size = len(ctx.chunks.read(cid))
    evil = bytes(size)  # same size, other bytes
    path.write_bytes(zstandard.ZstdCompressor().compress(evil) if encoding == "zstd" else evil)


def test_tampered_chunk_and_forged_manifest_are_refused(world):
    w = world
    _wait_first_pass(w)
    store = w.branch_ctx.chunks
    ids = _chunk_ids(w.ctx, "other", 1, "rootfs")
    bad = ids[3]
    _corrupt(w.ctx, bad)
    r = httpx.get(f"{w.branch.url}/chunks/{bad}", timeout=30)
    assert r.status_code == 502 and "does not match" in r.json()["detail"], r.text
    assert not store.has(bad) and w.mirror.counters["chunks_refused"] >= 1
    r = httpx.get(f"{w.branch.url}/images/other/1/rootfs", timeout=60)
    assert r.status_code == 502 and not store.has(bad)
    with pytest.raises(Exception):
        _pull(w, w.branch.url, "other", "1", tag="-bad")
    assert not store.has(bad)
    assert not list(store.temp_files())

    # a version whose manifest another key signed (a rogue installation writing into the database):
    rogue = Context(w.tmp / "rogue", database_url=w.ctx.db.url).init()
    assert rogue.signing_key.fingerprint != w.ctx.signing_key.fingerprint
    rogue.library.import_files("forged", **_files(w.tmp / "f5", 5))
    forged = _chunk_ids(rogue, "forged", 1)
    for cid in forged:  # even with its chunks on central's disk
        w.ctx.chunks.put(cid, rogue.chunks.read(cid))
    refused = w.mirror.counters["manifests_refused"]
    r = httpx.get(f"{w.branch.url}/images/forged/1/rootfs", timeout=60)
    assert r.status_code == 502 and "manifest of forged@1 refused" in r.json()["detail"], r.text
    digest = w.ctx.library.resolve("forged", 1).manifest_digest.removeprefix("sha256:")
    assert httpx.get(f"{w.branch.url}/packs/forged/1/rootfs/{digest}/0", timeout=60).status_code == 502
    assert httpx.get(f"{w.branch.url}/chunks/{forged[0]}", timeout=30).status_code == 404  # no verified manifest lists it
    assert w.mirror.counters["manifests_refused"] > refused
    assert not any(store.has(c) for c in forged)


def test_concurrent_requests_for_one_missing_chunk_fetch_it_once(world):
    w = world
    _wait_first_pass(w)
    cid = _chunk_ids(w.ctx, "other", 1, "rootfs")[5]
    want = w.ctx.chunks.read(cid)
    before = dict(w.mirror.counters)
    results: list = []
    barrier = threading.Barrier(8)

    def get():
        barrier.wait(10)
        r = httpx.get(f"{w.branch.url}/chunks/{cid}", timeout=60)
        results.append((r.status_code, r.content))

    threads = [threading.Thread(target=get) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [s for s, _ in results] == [200] * 8 and all(body == want for _s, body in results)
    assert w.mirror.counters["upstream_requests"] - before["upstream_requests"] == 1
    assert w.mirror.counters["chunks_fetched"] - before["chunks_fetched"] == 1


def test_wan_outage_branch_serves_everything_mirrored(world):
    w = world
    st = _wait_first_pass(w)
    assert all(v["complete"] for v in st["versions"])
    w.central.stop()
    with pytest.raises(httpx.HTTPError):
        httpx.get(w.central.url + "/healthz", timeout=5)
    before = dict(w.mirror.counters)
    for ref, files in (("stable", "f2"), ("1", "f1")):  # the tag and the pin
        for artifact, fname in (("rootfs", "rootfs.img"), ("kernel", "vmlinuz")):
            out = _pull(w, w.branch.url, "os", ref, artifact, tag=f"-{ref}")
            assert out.read_bytes() == (w.tmp / files / fname).read_bytes()
        r = httpx.get(f"{w.branch.url}/images/os/{ref}/kernel", timeout=60)  # what iPXE fetches
        assert r.status_code == 200 and r.content == (w.tmp / files / "vmlinuz").read_bytes()
    assert w.mirror.counters["upstream_requests"] == before["upstream_requests"]
    # something never mirrored: one clear error, not a hang
    r = httpx.get(f"{w.branch.url}/images/other/1/kernel", timeout=60)
    assert r.status_code == 503 and "unreachable" in r.json()["detail"]
    # a pass during the outage records the error per version, status still answers
    w.ctx.library.set_tag("other", 1, "beta")  # a version the branch does not have yet
    r = _api(w.branch, "POST", "/api/v1/mirror/sync")
    assert r.status_code == 200 and any("other@1" in e and "unreachable" in e for e in r.json()["errors"]), r.text
    st = _status(w.branch)
    by = {(v["name"], v["version"]): v for v in st["versions"]}
    assert by[("other", 1)]["complete"] is False and "unreachable" in by[("other", 1)]["last_error"]
    assert all(v["complete"] for k, v in by.items() if k != ("other", 1))
    # the outage is what the mirror is for: /healthz stays 200, the mirror's check counts the errors
    h = httpx.get(w.branch.url + "/healthz", timeout=30)
    assert h.status_code == 200 and h.json()["checks"]["chunk-mirror"]["errors"] >= 1, h.text


def test_mirror_cli_local_and_remote(world):
    w = world
    _wait_first_pass(w)
    local_env = {"NETSLATE_DATABASE_URL": str(w.ctx.db.url)}
    remote_env = {"NETSLATE_SERVER": w.branch.url, "NETSLATE_TOKEN": w.branch.admin_token}
    outs = []
    for env in (local_env, remote_env):
        r = run_cli("mirror", "status", "--json", data_dir=w.branch_ctx.data_dir, env=env)
        assert r.code == 0, r.stderr
        d = json.loads(r.stdout)
        assert d["configured"] and d["upstream"] == w.central.url and d["site"] == "b"
        outs.append({(v["name"], v["version"], v["complete"], v["chunks_total"]) for v in d["versions"]})
        r = run_cli("mirror", "status", data_dir=w.branch_ctx.data_dir, env={**env, "COLUMNS": "200"})
        assert r.code == 0 and "os@1" in r.stdout and "boot pin for pc-b" in r.stdout, r.stdout
        r = run_cli("mirror", "sync", "--json", data_dir=w.branch_ctx.data_dir, env=env)
        assert r.code == 0, r.stderr
        assert json.loads(r.stdout)["errors"] == [] and json.loads(r.stdout)["versions"] == 2
    assert outs[0] == outs[1] and len(outs[0]) == 2 and all(complete for _n, _v, complete, _c in outs[0])
    # central is not a mirror: sync says so in one line, exit 2
    r = run_cli("mirror", "sync", data_dir=w.ctx.data_dir)
    assert r.code == 2 and "not a chunk mirror" in r.stderr and "Traceback" not in r.stderr


def _own_branch(w, name: str, upstream: str):
    """A branch server over its own database (nothing in its catalog): e.g. a standby still behind."""
    write_site_files(w.tmp / name / "keys", *w.site_b)
    own = Context(w.tmp / name).init()
    return own, start_server(own, {"site": "b", "mirror_from": upstream, "mirror_interval": 3600})


def test_manifests_the_catalog_lacks_come_from_upstream_verified(world):
    w = world
    own, srv = _own_branch(w, "branch2", w.central.url)
    try:
        with pytest.raises(Exception):
            own.library.resolve("os", "stable")  # its catalog knows nothing
        out = _pull(w, srv.url, "os", "stable", tag="-own")  # manifest + tag statement, packs: from central, verified
        assert out.read_bytes() == (w.tmp / "f2" / "rootfs.img").read_bytes()
        r = httpx.get(f"{srv.url}/images/other/1/kernel", timeout=60)
        assert r.status_code == 200 and r.content == (w.tmp / "f3" / "vmlinuz").read_bytes()
        assert (own.data_dir / "mirror" / "manifests" / "os" / "2.json").exists()
        assert httpx.get(f"{srv.url}/images/nosuch/1/manifest", timeout=30).status_code == 404
        w.central.stop()
        # upstream gone: what it kept answers numbered refs; what it never saw fails at once
        r = httpx.get(f"{srv.url}/images/other/1/kernel", timeout=60)
        assert r.status_code == 200 and r.content == (w.tmp / "f3" / "vmlinuz").read_bytes()
        out = _pull(w, srv.url, "os", "2", tag="-own-offline")
        assert out.read_bytes() == (w.tmp / "f2" / "rootfs.img").read_bytes()
        r = httpx.get(f"{srv.url}/images/os/1/manifest", timeout=60)
        assert r.status_code == 503 and "unreachable" in r.json()["detail"]
    finally:
        srv.stop()


def test_an_upstream_signing_with_another_key_is_refused(world):
    w = world
    rogue = Context(w.tmp / "rogue-up").init()  # its own root key and database
    rogue.library.import_files("os", **_files(w.tmp / "f6", 6), tag="stable")
    rogue_srv = start_server(rogue)
    own, srv = _own_branch(w, "branch3", rogue_srv.url)
    try:
        for path in ("/images/os/1/manifest", "/images/os/stable/manifest", "/images/os/1/rootfs"):
            r = httpx.get(srv.url + path, timeout=60)
            assert r.status_code == 502 and "refused" in r.json()["detail"], (path, r.text)
        with pytest.raises(Exception):
            _pull(w, srv.url, "os", "1", tag="-rogue")
        ids = _chunk_ids(rogue, "os", 1)
        assert httpx.get(f"{srv.url}/chunks/{ids[0]}", timeout=30).status_code == 404
        assert not any(own.chunks.has(c) for c in ids)
        assert not (own.data_dir / "mirror" / "manifests").exists()
        assert srv.app.state.parts.mirror.counters["manifests_refused"] >= 3
    finally:
        srv.stop()
        rogue_srv.stop()
