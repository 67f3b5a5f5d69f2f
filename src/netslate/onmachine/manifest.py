"""Reading image manifests on the machine: what the pull client, the initramfs and the image
library agree on. Standard library only.

A manifest payload (signed by the server, see `envelope`) names every artifact of one image
version as a list of [offset, size, chunk id] that must tile the artifact exactly:

    {"kind": "netslate-manifest/1", "name": N, "version": V, "created_at": T,
     "artifacts": {"rootfs": {"size": S, "sha256": HEX, "chunks": [[0, 65536, ID], ...],
                              "format": "squashfs"}, "kernel": {...}, "initrd": {...}}}

The server builds manifests in `netslate.images.manifest`, which checks chunk lists with the
same `check_chunk_list`.
"""

from __future__ import annotations

import re

from netslate.onmachine.envelope import payload_digest

MANIFEST_KIND = "netslate-manifest/1"
TAG_KIND = "netslate-tag/1"
ARTIFACTS = ("kernel", "initrd", "rootfs")
MAX_CHUNK_BYTES = 16 * 1024 * 1024  # no chunk is larger (the chunker cuts at ~64 KiB)

CHUNK_ID = re.compile(r"^[0-9a-f]{64}\Z")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}\Z")
IMAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


class ManifestError(ValueError):
    """A manifest (or a part of one) that cannot be used; the message is one line."""


def valid_image_name(name: str) -> bool:
    """An image name as it may appear in a URL path (no '..', no '/')."""
    return bool(IMAGE_NAME.match(name)) and ".." not in name


def valid_ref(ref: str) -> bool:
    """A version number or a tag name."""
    return ref.isdigit() or valid_image_name(ref)


def check_chunk_list(chunks, size: int) -> None:
    """The chunk entries must be [offset, size, id] with a SHA-256 hex id and 0 < size <=
    MAX_CHUNK_BYTES, in order, tiling [0, size) exactly. Raises ManifestError."""
    expected = 0
    for entry in chunks if isinstance(chunks, (list, tuple)) else [None]:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
            raise ManifestError("chunk entries are [offset, size, id]")
        off, length, cid = entry
        if (off != expected or not isinstance(length, int) or isinstance(length, bool) or not 0 < length <= MAX_CHUNK_BYTES
                or not isinstance(cid, str) or not CHUNK_ID.match(cid)):
            raise ManifestError(f"chunk list does not tile the artifact at offset {expected}")
        expected += length
    if expected != size:
        raise ManifestError(f"chunks cover {expected} bytes but the artifact has {size}")


def artifact(payload: dict, name: str) -> dict:
    """The artifact record `name` of a manifest payload, its chunk list checked. Raises ManifestError."""
    arts = payload.get("artifacts") if isinstance(payload, dict) else None
    art = arts.get(name) if isinstance(arts, dict) else None
    if not isinstance(art, dict):
        raise ManifestError(f"{payload.get('name') if isinstance(payload, dict) else '?'}@"
                            f"{payload.get('version') if isinstance(payload, dict) else '?'} has no {name}")
    size = art.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{name}: the artifact has no valid size")
    check_chunk_list(art.get("chunks"), size)
    return art


def stored_manifest_ok(meta, digest: str | None = None) -> bool:
    """A manifest kept on disk as {"payload": {...}, "digest": "sha256:..."}: the digest must be the
    payload's own (and `digest`, when given)."""
    if not isinstance(meta, dict) or not isinstance(meta.get("payload"), dict):
        return False
    if digest and meta.get("digest") != digest:
        return False
    return meta.get("digest") == payload_digest(meta["payload"])
