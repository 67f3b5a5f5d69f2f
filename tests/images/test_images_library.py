"""The library against a real data directory and a real server on loopback."""

import hashlib
import io
import json
import os
import subprocess
import tarfile
import threading
import urllib.request

import pytest

from netslate.errors import Conflict, NotFound, UserError
from netslate.images.pull import PullError, pull

from images_trees import change_tree


def _get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.headers, r.read()


def test_import_versions_tags_and_dedup(ctx, tree, kernel_file, copy_tree, tmp_path):
    lib = ctx.library
    v1 = lib.import_files("desktop", rootfs=tree, kernel=kernel_file, tag="stable", note="first")
    assert v1["version"] == 1 and v1["bytes_new"] > 0
    assert set(v1["artifacts"]) == {"rootfs", "kernel"}
    assert v1["artifacts"]["rootfs"]["format"] == "squashfs"
    tree2 = copy_tree(tree, tmp_path / "tree2")
    change_tree(tree2)
    v2 = lib.import_files("desktop", rootfs=tree2, kernel=kernel_file)
    assert v2["version"] == 2
    # Only changed chunks take new space: the kernel is identical, the rootfs mostly shared.
    assert v2["bytes_new"] < 0.3 * v1["bytes_total"]
    d = lib.diff("desktop", "1", "2")
    assert d["chunks_shared"] > d["chunks_new"] > 0
    assert lib.resolve("desktop", "stable").version == 1
    lib.set_tag("desktop", 2, "stable", reason="promote")
    assert lib.resolve("desktop", "stable").version == 2
    info = lib.show("desktop", "2")
    assert info["parent_version"] == 1 and info["tags"] == ["stable"]
    assert [(e["from"], e["to"], e["reason"]) for e in info["tag_history"]] == [(None, 1, "set at import of version 1"), (1, 2, "promote")]
    with pytest.raises(Conflict):
        lib.remove_version("desktop", 2)  # tagged
    lib.remove_version("desktop", 1)
    with pytest.raises(NotFound):
        lib.resolve("desktop", "1")


def test_manifest_is_signed_and_digest_pinnable(ctx, tree):
    from netslate.crypto.envelope import open_envelope, payload_digest

    lib = ctx.library
    lib.import_files("img", rootfs=tree)
    doc = lib.manifest_document("img", "1")
    payload = open_envelope(doc["manifest"], ctx.signing_key.public_bytes)
    assert payload["name"] == "img" and payload["version"] == 1
    assert doc["digest"] == payload_digest(payload) == lib.resolve("img", "1").manifest_digest


def test_serving_endpoints(live_server, tree, kernel_file):
    lib = live_server.ctx.library
    lib.import_files("web", rootfs=tree, kernel=kernel_file, tag="stable")
    base = live_server.url
    status, headers, body = _get(f"{base}/images/web/stable/kernel")
    assert status == 200 and body == kernel_file.read_bytes()
    assert headers["X-Netslate-Version"] == "1"
    status, headers, body = _get(f"{base}/images/web/1/kernel", {"Range": "bytes=100000-100099"})
    assert status == 206 and body == kernel_file.read_bytes()[100000:100100]
    assert headers["Content-Range"] == f"bytes 100000-100099/{kernel_file.stat().st_size}"
    status, headers, body = _get(f"{base}/images/web/1/kernel", {"Range": "bytes=-10"})
    assert body == kernel_file.read_bytes()[-10:]
    rec = lib.resolve("web", "1").artifacts["kernel"]
    cid = rec["chunks"][0][2]
    status, headers, body = _get(f"{base}/chunks/{cid}")
    assert hashlib.sha256(body).hexdigest() == cid
    assert "immutable" in headers["Cache-Control"] and headers["ETag"] == f'"{cid}"'
    req = urllib.request.Request(f"{base}/chunks/{cid}", method="HEAD")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) == rec["chunks"][0][1]
    with pytest.raises(urllib.error.HTTPError) as e:
        _get(f"{base}/chunks/{'0' * 64}")
    assert e.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        _get(f"{base}/images/web/1/kernel", {"Range": "bytes=99999999-"})
    assert e.value.code == 416
    status, _h, body = _get(f"{base}/api/v1/keys")
    assert json.loads(body)["keys"][0]["fingerprint"] == live_server.ctx.signing_key.fingerprint
    status, _h, body = _get(f"{base}/api/v1/openapi.json")
    assert "/api/v1/images" in json.loads(body)["paths"]


def test_mutations_need_a_token_with_the_right_role(live_server, tree):
    import httpx

    from netslate.server.auth import create_token

    live_server.ctx.library.import_files("auth", rootfs=tree)
    url = f"{live_server.url}/api/v1/images/auth/tags/stable"
    assert httpx.put(url, json={"version": 1}).status_code == 401
    viewer = create_token(live_server.ctx, "v", "viewer")
    r = httpx.put(url, json={"version": 1}, headers={"Authorization": f"Bearer {viewer}"})
    assert r.status_code == 403
    r = httpx.put(url, json={"version": 1}, headers={"Authorization": f"Bearer {live_server.admin_token}"})
    assert r.status_code == 200 and r.json()["version"] == 1
    assert httpx.put(url, json={"version": 1}, headers={"Authorization": "Bearer nst_forged"}).status_code == 401


def test_delta_pull_downloads_only_changed_chunks(live_server, tree, copy_tree, tmp_path):
    lib = live_server.ctx.library
    lib.import_files("os", rootfs=tree, tag="stable")
    cache, out = tmp_path / "cache", tmp_path / "rootfs.img"
    s1 = pull(live_server.url, "os", "stable", cache, out)
    assert s1.version == 1 and s1.chunks_reused == 0 and s1.bytes_downloaded == s1.bytes_total
    assert hashlib.sha256(out.read_bytes()).hexdigest() == lib.resolve("os", "1").artifacts["rootfs"]["sha256"]
    # Same version again: nothing to download.
    s1b = pull(live_server.url, "os", "1", cache, out)
    assert s1b.chunks_downloaded == 0
    tree2 = copy_tree(tree, tmp_path / "t2")
    change_tree(tree2)
    lib.import_files("os", rootfs=tree2, tag="stable")
    s2 = pull(live_server.url, "os", "stable", cache, out)
    assert s2.version == 2
    assert 0 < s2.bytes_downloaded < 0.3 * s2.bytes_total
    assert s2.bytes_reused + s2.bytes_downloaded == sum(  # unique chunk bytes
        size for cid, size in {c[2]: c[1] for c in lib.resolve("os", "2").artifacts["rootfs"]["chunks"]}.items())
    assert hashlib.sha256(out.read_bytes()).hexdigest() == lib.resolve("os", "2").artifacts["rootfs"]["sha256"]


def test_pull_seeds_from_an_existing_output_file(live_server, tree, copy_tree, tmp_path):
    lib = live_server.ctx.library
    lib.import_files("seeded", rootfs=tree)
    out = tmp_path / "rootfs.img"
    pull(live_server.url, "seeded", "1", tmp_path / "cache-a", out)
    tree2 = copy_tree(tree, tmp_path / "t2")
    change_tree(tree2)
    lib.import_files("seeded", rootfs=tree2)
    # A new, empty cache directory: only the old output file can supply chunks.
    s = pull(live_server.url, "seeded", "2", tmp_path / "cache-b", out)
    assert s.chunks_from_seed > 0
    assert s.bytes_downloaded < 0.5 * s.bytes_total


def test_concurrent_imports_make_distinct_versions(ctx, tree):
    results, errors = [], []

    def run():
        try:
            results.append(ctx.library.import_files("race", rootfs=tree)["version"])
        except Exception as exc:  # noqa: BLE001 - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(results) == [1, 2, 3]
    assert ctx.library.verify("race")["ok"]


def test_gc_removes_only_unreferenced_chunks(ctx, tree, copy_tree, tmp_path):
    lib = ctx.library
    lib.import_files("g", rootfs=tree)
    tree2 = copy_tree(tree, tmp_path / "t2")
    change_tree(tree2)
    lib.import_files("g", rootfs=tree2, tag="stable")
    only_v1 = set(c[2] for c in lib.resolve("g", "1").artifacts["rootfs"]["chunks"]) - set(
        c[2] for c in lib.resolve("g", "2").artifacts["rootfs"]["chunks"])
    lib.remove_version("g", 1)
    assert lib.gc(grace_seconds=3600)["chunks_removed"] == 0  # all still within the grace period
    result = lib.gc(grace_seconds=0)
    assert result["chunks_removed"] == len(only_v1)
    assert lib.verify("g")["ok"]
    assert not any(ctx.chunks.has(c) for c in only_v1)


def test_gc_spares_chunks_of_an_import_in_progress(ctx):
    from netslate.images.library import ImportLease

    lease = ImportLease(ctx.library.imports_dir)
    data = b"in flight" * 1000
    cid = hashlib.sha256(data).hexdigest()
    ctx.chunks.put(cid, data)
    lease.note(cid)
    lease.flush()
    assert ctx.library.gc(grace_seconds=0)["chunks_removed"] == 0 and ctx.chunks.has(cid)
    lease.close()
    assert ctx.library.gc(grace_seconds=0)["chunks_removed"] == 1 and not ctx.chunks.has(cid)


def test_tarball_and_image_file_sources(ctx, tree, tmp_path):
    tarball = tmp_path / "root.tar"
    subprocess.run(["tar", "-cf", str(tarball), "-C", str(tree), "."], check=True)
    v = ctx.library.import_files("tar", rootfs=tarball)
    assert v["artifacts"]["rootfs"]["format"] == "squashfs"
    img = tmp_path / "root.erofs"
    subprocess.run(["mkfs.erofs", "--quiet", str(img), str(tree)], check=True)
    v = ctx.library.import_files("file", rootfs=img)
    assert v["artifacts"]["rootfs"]["format"] == "erofs"
    assert v["artifacts"]["rootfs"]["sha256"] == hashlib.sha256(img.read_bytes()).hexdigest()


def test_a_raw_image_that_starts_with_zeros_is_imported_as_it_is(ctx, tmp_path):
    """512 zero bytes read as an empty tar archive's end to `tarfile.is_tarfile`; a raw image with a
    zeroed head (btrfs's first 64 KiB, a partition table's gap) became an empty squashfs."""
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(65536) + os.urandom(1 << 20))
    v = ctx.library.import_files("zeros", rootfs=img)
    assert v["artifacts"]["rootfs"]["format"] == "raw"
    assert v["artifacts"]["rootfs"]["sha256"] == hashlib.sha256(img.read_bytes()).hexdigest()
    gz = tmp_path / "root.tar.gz"
    with tarfile.open(gz, "w:gz") as t:  # a compressed tarball is still unpacked
        info = tarfile.TarInfo("etc/hostname")
        info.size = 5
        t.addfile(info, io.BytesIO(b"node\n"))
    assert ctx.library.import_files("gz", rootfs=gz)["artifacts"]["rootfs"]["format"] == "squashfs"


def test_register_version_refuses_chunks_that_are_not_stored(ctx, tree):
    """Publishing records put together elsewhere (not a local import, not a verified upload): a
    chunk missing from the store is refused in one line and nothing is published."""
    from netslate.images import manifest as mf

    v = ctx.library.import_files("base", rootfs=tree)
    art = v["artifacts"]["rootfs"]
    rec = ctx.library.resolve("base", v["version"]).artifacts["rootfs"]
    chunks = [list(c) for c in rec["chunks"]]
    chunks[0][2] = "0" * 64  # a chunk id the store lacks
    records = {"rootfs": mf.ArtifactRecord(size=art["size"], sha256=art["sha256"], chunks=chunks, format=rec.get("format"))}
    with pytest.raises(UserError, match="1 chunks are not in the store"):
        ctx.library.register_version("copy", records)
    assert [i["name"] for i in ctx.library.list_images()] == ["base"]


def test_bad_input_errors(ctx, tree, tmp_path):
    for bad in ["../etc", "a/b", "x\x00y"]:
        with pytest.raises(UserError):
            ctx.library.import_files(bad, rootfs=tree)
    with pytest.raises(UserError):
        ctx.library.import_files("x", rootfs=tmp_path / "nope")
    with pytest.raises(UserError):
        ctx.library.import_files("x")
    with pytest.raises(NotFound):
        ctx.library.resolve("never", "1")


def test_pull_without_zstandard_uses_raw_ranges(live_server, tree, tmp_path, monkeypatch):
    """Booting machines have no zstandard: the stdlib path (Range requests, raw chunks) must work alone."""
    import netslate.images.pull as pullmod

    monkeypatch.setattr(pullmod, "_zstd", None)
    lib = live_server.ctx.library
    lib.import_files("plain", rootfs=tree)
    s = pullmod.pull(live_server.url, "plain", "1", tmp_path / "cache", tmp_path / "out.img", range_min_chunks=4)
    assert s.chunks_downloaded == len({c[2] for c in lib.resolve("plain", "1").artifacts["rootfs"]["chunks"]})
    assert s.bytes_on_wire == s.bytes_downloaded  # raw transfer
    assert hashlib.sha256((tmp_path / "out.img").read_bytes()).hexdigest() == lib.resolve("plain", "1").artifacts["rootfs"]["sha256"]


def test_chunk_pack_endpoint_frames_stored_chunks(live_server, tree):
    import httpx
    import zstandard

    lib = live_server.ctx.library
    lib.import_files("pk", rootfs=tree)
    ids = [c[2] for c in lib.resolve("pk", "1").artifacts["rootfs"]["chunks"][:5]] + ["0" * 64]
    r = httpx.post(f"{live_server.url}/chunks/pack", json={"ids": ids})
    assert r.status_code == 200
    body, pos, seen = r.content, 0, []
    for cid in ids:
        kind, length = body[pos], int.from_bytes(body[pos + 1:pos + 5], "big")
        data = body[pos + 5:pos + 5 + length]
        pos += 5 + length
        if kind == 2:
            seen.append(None)
            continue
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 24) if kind == 1 else data
        seen.append(hashlib.sha256(raw).hexdigest())
    assert seen == ids[:5] + [None] and pos == len(body)
    assert httpx.post(f"{live_server.url}/chunks/pack", json={"ids": ["../etc/passwd"]}).status_code == 400
