"""The on-machine library's pieces: envelopes and Ed25519, atomic writes and JSON files, image formats,
manifest chunk lists, the kernel command line. Real files, real filesystem tools, real keys."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netslate import fsutil as server_fsutil
from netslate.crypto import ed25519 as server_ed25519
from netslate.crypto import envelope as server_envelope
from netslate.crypto.keys import SigningKey
from netslate.images import manifest as server_manifest
from netslate.images import rootfs
from netslate.onmachine import cmdline, ed25519, envelope, formats, fsutil, manifest


# ---------------------------------------------------------------- one copy, server side included
def test_server_side_names_are_the_on_machine_code():
    assert server_envelope.open_envelope is envelope.open_envelope
    assert server_envelope.SignatureError is envelope.SignatureError  # `except` clauses catch either way
    assert server_ed25519.verify is ed25519.verify
    assert server_fsutil.atomic_write is fsutil.atomic_write and server_fsutil.fsync_dir is fsutil.fsync_dir
    assert server_manifest.check_chunk_list is manifest.check_chunk_list
    assert server_manifest.MANIFEST_KIND == manifest.MANIFEST_KIND and server_manifest.ARTIFACTS == manifest.ARTIFACTS
    assert rootfs.detect_format is formats.detect_format


# ---------------------------------------------------------------- envelopes
def test_envelope_signed_by_the_server_key_opens_and_tampering_is_refused():
    key, other = SigningKey(Ed25519PrivateKey.generate()), SigningKey(Ed25519PrivateKey.generate())
    payload = {"kind": "netslate-manifest/1", "name": "tiny", "version": 3, "note": "größe"}
    env = key.sign(payload)
    assert envelope.open_envelope(env, key.public_bytes) == payload
    assert envelope.payload_digest(payload) == "sha256:" + hashlib.sha256(envelope.canonical(payload)).hexdigest()
    assert envelope.canonical({"b": 1, "a": [1, "ü"]}) == '{"a":[1,"ü"],"b":1}'.encode()
    with pytest.raises(envelope.SignatureError, match="signed by key"):
        envelope.open_envelope(env, other.public_bytes)
    unkeyed = dict(env, key=None)
    with pytest.raises(envelope.SignatureError, match="does not verify"):
        envelope.open_envelope(unkeyed, other.public_bytes)
    tampered = dict(env, payload=dict(payload, version=4))
    with pytest.raises(envelope.SignatureError, match="does not verify"):
        envelope.open_envelope(tampered, key.public_bytes)
    for bad, msg in (([], "no payload"), ({"payload": {}}, "no signature"),
                     ({"payload": {}, "signature": "!!"}, "malformed signature encoding")):
        with pytest.raises(envelope.SignatureError, match=msg):
            envelope.open_envelope(bad, key.public_bytes)
    assert envelope.parse_public_key(key.public_b64 + "\n") == key.public_bytes
    for text in ("not base64!", "AAAA"):
        with pytest.raises(envelope.SignatureError):
            envelope.parse_public_key(text)
    assert envelope.fingerprint(key.public_bytes) == "sha256:" + hashlib.sha256(key.public_bytes).hexdigest()


def test_pure_ed25519_agrees_with_cryptography():
    for i in range(8):
        priv = Ed25519PrivateKey.generate()
        pub = priv.public_key().public_bytes_raw()
        msg = os.urandom(i * 37)
        sig = priv.sign(msg)
        assert ed25519.verify(pub, msg, sig)
        assert not ed25519.verify(pub, msg + b"\0", sig)
        flipped = bytearray(sig)
        flipped[i] ^= 1
        assert not ed25519.verify(pub, msg, bytes(flipped))
    assert not ed25519.verify(b"\x01" * 32, b"", b"\x00" * 63)


# ---------------------------------------------------------------- files
def test_atomic_write_replaces_whole_files_with_the_mode(tmp_path):
    target = tmp_path / "deep" / "dir" / "state.json"
    fsutil.atomic_write(target, b"one", mode=0o600)
    assert target.read_bytes() == b"one" and (target.stat().st_mode & 0o777) == 0o600
    fsutil.atomic_write(target, b"two", durable=False)
    assert target.read_bytes() == b"two" and (target.stat().st_mode & 0o777) == 0o644
    with pytest.raises(TypeError):
        fsutil.atomic_write(target, "not bytes")  # fails half-way: the old file stays, no temp file left
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]
    fsutil.fsync_dir(tmp_path)


def test_read_json_never_raises(tmp_path):
    p = tmp_path / "x.json"
    assert fsutil.read_json(p) is None and fsutil.read_json(p, {}) == {}
    p.write_text('{"a": 1}')
    assert fsutil.read_json(p) == {"a": 1}
    p.write_text('{"a": 1')  # torn
    assert fsutil.read_json(p, "d") == "d"
    p.write_bytes(b"\xff\xfe{")  # not UTF-8
    assert fsutil.read_json(p, "d") == "d"
    assert fsutil.read_json(tmp_path, "d") == "d"  # a directory


def test_file_matches_size_and_sha256(tmp_path):
    p = tmp_path / "img"
    data = os.urandom(3 * (1 << 20) + 5)  # more than one read block
    p.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    assert fsutil.file_matches(p, len(data), digest)
    assert not fsutil.file_matches(p, len(data) - 1, digest)
    assert not fsutil.file_matches(p, len(data), "0" * 64)
    assert not fsutil.file_matches(tmp_path / "missing", 0, hashlib.sha256(b"").hexdigest())


# ---------------------------------------------------------------- formats
def test_formats_of_real_filesystem_images(tmp_path):
    src = tmp_path / "tree"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hostname").write_text("x\n")
    sq, ext4, erofs = tmp_path / "a.squashfs", tmp_path / "a.ext4", tmp_path / "a.erofs"
    subprocess.run(["mksquashfs", str(src), str(sq), "-noappend", "-quiet", "-no-progress"], check=True, capture_output=True)
    with open(ext4, "wb") as f:
        f.truncate(4 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(ext4)], check=True, capture_output=True)
    subprocess.run(["mkfs.erofs", str(erofs), str(src)], check=True, capture_output=True)  # erofs-utils 1.5: no -q
    assert formats.detect_format(sq) == "squashfs"
    assert formats.detect_format(ext4) == "ext4"
    assert formats.detect_format(erofs) == "erofs"
    raw = tmp_path / "raw"
    raw.write_bytes(b"\0" * 2048)
    assert formats.detect_format(raw) == "raw"
    short = tmp_path / "short"
    short.write_bytes(b"hs")
    assert formats.detect_format(short) == "raw"
    assert formats.format_of(b"") == "raw" and set(formats.MOUNTABLE) == {"squashfs", "erofs", "ext4"}


# ---------------------------------------------------------------- manifests
def _chunks(*sizes):
    out, off = [], 0
    for i, s in enumerate(sizes):
        out.append([off, s, hashlib.sha256(bytes([i])).hexdigest()])
        off += s
    return out


def test_chunk_list_must_tile_the_artifact():
    manifest.check_chunk_list(_chunks(10, 5), 15)
    manifest.check_chunk_list([], 0)
    bad = [
        (_chunks(10, 5), 16, "chunks cover 15 bytes"),
        ([[0, 10, "a" * 64], [11, 4, "b" * 64]], 15, "at offset 10"),  # a gap
        ([[0, 10, "A" * 64]], 10, "at offset 0"),  # not lower-case hex
        ([[0, 10, "a" * 63]], 10, "at offset 0"),
        ([[0, 0, "a" * 64]], 0, "at offset 0"),  # empty chunk
        ([[0, manifest.MAX_CHUNK_BYTES + 1, "a" * 64]], manifest.MAX_CHUNK_BYTES + 1, "at offset 0"),
        ([[0, True, "a" * 64]], 1, "at offset 0"),
        ([[0, 10]], 10, r"\[offset, size, id\]"),
        ("nope", 0, r"\[offset, size, id\]"),
    ]
    for chunks, size, msg in bad:
        with pytest.raises(manifest.ManifestError, match=msg):
            manifest.check_chunk_list(chunks, size)
    assert issubclass(manifest.ManifestError, ValueError)  # the library and the router catch ValueError


def test_artifact_and_stored_manifest():
    payload = {"kind": manifest.MANIFEST_KIND, "name": "tiny", "version": 2,
               "artifacts": {"rootfs": {"size": 15, "sha256": "0" * 64, "chunks": _chunks(10, 5)},
                             "kernel": {"size": 16, "sha256": "0" * 64, "chunks": _chunks(10, 5)}}}
    assert manifest.artifact(payload, "rootfs")["size"] == 15
    with pytest.raises(manifest.ManifestError, match="tiny@2 has no initrd"):
        manifest.artifact(payload, "initrd")
    with pytest.raises(manifest.ManifestError, match="chunks cover 15 bytes but the artifact has 16"):
        manifest.artifact(payload, "kernel")
    with pytest.raises(manifest.ManifestError, match="no valid size"):
        manifest.artifact({"artifacts": {"rootfs": {"size": "15", "chunks": []}}}, "rootfs")
    digest = envelope.payload_digest(payload)
    assert manifest.stored_manifest_ok({"payload": payload, "digest": digest})
    assert manifest.stored_manifest_ok({"payload": payload, "digest": digest}, digest)
    assert not manifest.stored_manifest_ok({"payload": payload, "digest": digest}, "sha256:" + "1" * 64)
    assert not manifest.stored_manifest_ok({"payload": dict(payload, version=3), "digest": digest})
    assert not manifest.stored_manifest_ok(None) and not manifest.stored_manifest_ok({"payload": "x"})


def test_image_names_and_refs():
    for ok in ("tiny", "desk-top_1.2", "a" * 63):
        assert manifest.valid_image_name(ok)
    for bad in ("", "-x", "a/b", "a..b", "a" * 64, "x\n", "ü"):
        assert not manifest.valid_image_name(bad)
    assert manifest.valid_ref("12") and manifest.valid_ref("stable") and not manifest.valid_ref("../x")
    assert manifest.DIGEST.match("sha256:" + "ab" * 32) and not manifest.DIGEST.match("sha256:" + "ab" * 32 + "\n")


# ---------------------------------------------------------------- kernel command line
def test_kernel_command_line():
    text = 'BOOT_IMAGE=/vmlinuz quiet netslate.server=http://a:1 x="a b" netslate.image=tiny@2 netslate.image=tiny@3 netslate.flag'
    assert cmdline.split_cmdline(text)[3] == "x=a b"
    assert cmdline.netslate_args(text) == {"server": "http://a:1", "image": "tiny@3"}  # last wins, no "=" ignored
    assert cmdline.split_cmdline('a "b') == ["a", '"b']  # unbalanced quote: plain split, like the kernel
    assert cmdline.netslate_args("") == {}
    assert json.dumps(cmdline.netslate_args('netslate.key="QUJD"')) == '{"key": "QUJD"}'
