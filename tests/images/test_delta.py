"""Delta groups (issue 14 goal 4): an update's new chunks compressed against the old version's bytes.

Real server on loopback, real zstd, real files; the plan's own rules are checked as a pure function."""

import hashlib
import random
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from netslate.images import delta, deltaplan
from netslate.images.pull import pull


def _text(rnd: random.Random, n: int) -> bytes:
    words = [bytes(rnd.choice(b"abcdefghijklmnop") for _ in range(rnd.randint(2, 9))) for _ in range(400)]
    out = bytearray()
    while len(out) < n:
        out += rnd.choice(words) + b" "
    return bytes(out[:n])


def make_pair(tmp_path: Path) -> tuple[Path, Path]:
    """v1: 3 MB of text-like bytes; v2: an insertion, an edited region and an appended block that
    resembles v1 (what a package update does to an image, in small)."""
    rnd = random.Random(14)
    v1 = _text(rnd, 3_000_000)
    edited = bytearray(v1)
    for i in range(1_500_000, 1_500_000 + 20_000, 97):
        edited[i] = ord("Z")
    v2 = edited[:700_000] + _text(rnd, 5_000) + edited[700_000:] + v1[200_000:400_000].replace(b"a", b"q")
    p1, p2 = tmp_path / "v1.img", tmp_path / "v2.img"
    p1.write_bytes(v1)
    p2.write_bytes(bytes(v2))
    return p1, p2


@pytest.fixture
def pair_server(live_server, tmp_path):
    p1, p2 = make_pair(tmp_path)
    lib = live_server.ctx.library
    lib.import_files("d", rootfs=p1)
    lib.import_files("d", rootfs=p2)
    return live_server, p1, p2


def _new_chunks(lib) -> list[str]:
    a = {c[2] for c in lib.resolve("d", "1").artifacts["rootfs"]["chunks"]}
    return list(dict.fromkeys(c[2] for c in lib.resolve("d", "2").artifacts["rootfs"]["chunks"] if c[2] not in a))


# ---------- the plan (pure) ----------


def test_plan_covers_each_new_chunk_once_in_order_with_bases_inside_the_old_list():
    rnd = random.Random(3)
    old, off = [], 0
    for i in range(300):
        size = rnd.randint(16_384, 200_000)
        old.append([off, size, f"{i:064x}"])
        off += size
    new, off = [], 0
    for i, (_o, size, cid) in enumerate(old):
        if i % 7 == 3:  # replaced
            cid, size = f"{10_000 + i:064x}", size + 5
        if i % 50 == 10:  # inserted before
            new.append([off, 30_000, f"{20_000 + i:064x}"])
            off += 30_000
        new.append([off, size, cid])
        off += size
    new.append([off, 40_000, new[5][2]])  # a repeat of a shared chunk is not new
    groups = deltaplan.plan(old, new)
    old_ids = {c[2] for c in old}
    expected = list(dict.fromkeys(c[2] for c in new if c[2] not in old_ids))
    assert [cid for g in groups for cid, _s in g.chunks] == expected
    assert deltaplan.plan(old, new) == groups  # deterministic: server and client agree
    for g in groups:
        assert g.size <= deltaplan.MAX_GROUP_BYTES or len(g.chunks) == 1
        assert len(g.chunks) <= deltaplan.MAX_GROUP_CHUNKS
        assert g.bases and all(0 <= s < e <= len(old) for s, e in g.bases)
        assert sum(length for _o, length, _e in deltaplan.base_ranges(old, g)) <= deltaplan.MAX_DICT_BYTES
    assert deltaplan.plan([], new) == []


def test_encode_decode_round_trip_and_wrong_base_fails():
    base = _text(random.Random(1), 300_000)
    data = base[1000:90_000] + b"new bytes" + base[120_000:200_000]
    frame = delta.encode(base, data)
    assert len(frame) < len(delta.encode(b"", data)) / 4
    assert delta.decode(base, frame, len(data)) == data
    wrong = bytearray(base)
    wrong[5000:6000] = b"x" * 1000
    try:
        out = delta.decode(bytes(wrong), frame, len(data))
    except Exception:  # noqa: BLE001 - zstd may notice, or decode wrong bytes
        out = None
    assert out != data


# ---------- end to end ----------


def test_delta_pull_round_trip(pair_server, tmp_path):
    srv, p1, p2 = pair_server
    lib = srv.ctx.library
    cache, out = tmp_path / "cache", tmp_path / "out" / "rootfs.img"
    pull(srv.url, "d", "1", cache, out)
    s = pull(srv.url, "d", "2", cache, out)
    assert out.read_bytes() == p2.read_bytes()
    new = _new_chunks(lib)
    assert s.chunks_from_delta == len(new) == s.chunks_downloaded and s.delta_base_version == 1
    whole = sum(lib.store.stored_size(c) for c in new)
    assert s.bytes_on_wire < whole / 2, (s.bytes_on_wire, whole)
    # The URLs are immutable: the same bytes again, with year-long caching and a strong ETag.
    d1, d2 = (lib.resolve("d", v).manifest_digest.removeprefix("sha256:") for v in ("1", "2"))
    with urllib.request.urlopen(f"{srv.url}/deltas/{d1}/{d2}/rootfs/0") as r:
        assert "immutable" in r.headers["Cache-Control"] and r.headers["ETag"]
        body = r.read()
    with urllib.request.urlopen(f"{srv.url}/deltas/{d1}/{d2}/rootfs/0") as r:
        assert r.read() == body


def test_unknown_or_malformed_delta_is_404(pair_server):
    srv, _p1, _p2 = pair_server
    lib = srv.ctx.library
    d1, d2 = (lib.resolve("d", v).manifest_digest.removeprefix("sha256:") for v in ("1", "2"))
    for path in (f"/deltas/{'0' * 64}/{d2}/rootfs/0", f"/deltas/{d1}/{d2}/rootfs/999", f"/deltas/{d1}/{d2}/kernel/0",
                 f"/deltas/{d1}/{d1}/rootfs/0", f"/deltas/..%2F..%2Fetc/{d2}/rootfs/0", f"/deltas/{d1}/{d2}/rootfs/-1"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(srv.url + path)
        assert err.value.code == 404, path


@pytest.mark.parametrize("tamper", ["garbage", "wrong_content"])
def test_tampered_delta_is_refused_and_chunks_come_whole(pair_server, tmp_path, tamper):
    srv, p1, p2 = pair_server
    lib = srv.ctx.library
    d1, d2 = (lib.resolve("d", v).manifest_digest.removeprefix("sha256:") for v in ("1", "2"))
    old = lib.resolve("d", "1").artifacts["rootfs"]["chunks"]
    groups = deltaplan.plan(old, lib.resolve("d", "2").artifacts["rootfs"]["chunks"])
    # What a poisoned cache would serve: the server's own cached frames replaced.
    for n, g in enumerate(groups):
        cached = delta.cache_path(srv.ctx.data_dir, d1, d2, "rootfs", n)
        cached.parent.mkdir(parents=True, exist_ok=True)
        if tamper == "garbage":
            cached.write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 100)
        else:  # a well-formed frame that decodes, to bytes one flipped bit away from the chunks
            base = p1.read_bytes()
            dict_bytes = b"".join(base[o:o + n_] for o, n_, _e in deltaplan.base_ranges(old, g))
            data = bytearray(b"".join(lib.store.read(cid) for cid, _s in g.chunks))
            data[len(data) // 2] ^= 1
            cached.write_bytes(delta.encode(dict_bytes, bytes(data)))
    cache, out = tmp_path / "cache", tmp_path / "out.img"
    pull(srv.url, "d", "1", cache, out)
    s = pull(srv.url, "d", "2", cache, out)
    assert s.chunks_from_delta == 0 and s.chunks_downloaded == len(_new_chunks(lib))
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(p2.read_bytes()).hexdigest()


def test_whole_chunks_when_the_client_lacks_the_base(pair_server, tmp_path):
    srv, p1, p2 = pair_server
    lib = srv.ctx.library
    # 1. no earlier pull at all
    s = pull(srv.url, "d", "2", tmp_path / "c1", tmp_path / "a.img")
    assert s.chunks_from_delta == 0 and (tmp_path / "a.img").read_bytes() == p2.read_bytes()
    # 2. the earlier output is damaged where the dictionaries come from: those groups go whole
    cache, out = tmp_path / "c2", tmp_path / "b.img"
    pull(srv.url, "d", "1", cache, out)
    keep = tmp_path / "b-v1.img"
    out.rename(keep)
    data = bytearray(keep.read_bytes())
    for i in range(0, len(data), 4096):
        data[i] ^= 0xFF
    keep.write_bytes(bytes(data))
    import json

    rec = next((cache / "seeds").glob("*.json"))
    doc = json.loads(rec.read_text())
    doc["output"] = str(keep)
    rec.write_text(json.dumps(doc))
    s = pull(srv.url, "d", "2", cache, out)
    assert s.chunks_from_delta == 0 and out.read_bytes() == p2.read_bytes()
    # 3. the server no longer has the old version: 404, whole chunks
    cache, out = tmp_path / "c3", tmp_path / "c.img"
    pull(srv.url, "d", "1", cache, out)
    lib.remove_version("d", 1)
    s = pull(srv.url, "d", "2", cache, out)
    assert s.chunks_from_delta == 0 and out.read_bytes() == p2.read_bytes()


def test_gc_drops_cached_groups_of_removed_versions(pair_server, tmp_path):
    srv, _p1, _p2 = pair_server
    lib = srv.ctx.library
    cache, out = tmp_path / "cache", tmp_path / "out.img"
    pull(srv.url, "d", "1", cache, out)
    pull(srv.url, "d", "2", cache, out)
    cached = list((srv.ctx.data_dir / "deltas").rglob("*.zst"))
    assert cached
    lib.gc(grace_seconds=0)
    assert list((srv.ctx.data_dir / "deltas").rglob("*.zst")) == cached  # both versions still there
    lib.remove_version("d", 1)
    lib.gc(grace_seconds=0)
    assert list((srv.ctx.data_dir / "deltas").rglob("*.zst")) == []
