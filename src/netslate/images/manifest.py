"""Manifests and tag statements — pure functions over plain dicts.

A manifest names every artifact of one image version as a list of (offset, size, chunk id).
Its digest (`sha256:` of its canonical JSON) is what a boot command line pins.
"""

from dataclasses import dataclass, field

from netslate.crypto.envelope import payload_digest

# What machines read back (kinds, artifact names, the chunk-list rule) is the on-machine library's.
from netslate.onmachine.manifest import ARTIFACTS, MANIFEST_KIND, TAG_KIND, check_chunk_list  # noqa: F401


@dataclass
class ArtifactRecord:
    size: int
    sha256: str
    chunks: list[list]  # [[offset, size, chunk_id], ...]
    format: str | None = None  # rootfs: erofs | squashfs | ext4 | raw

    def as_dict(self) -> dict:
        d = {"size": self.size, "sha256": self.sha256, "chunks": self.chunks}
        if self.format:
            d["format"] = self.format
        return d


def build_manifest(name: str, version: int, created_at: str, artifacts: dict[str, ArtifactRecord]) -> dict:
    return {
        "kind": MANIFEST_KIND,
        "name": name,
        "version": version,
        "created_at": created_at,
        "artifacts": {k: v.as_dict() for k, v in sorted(artifacts.items())},
    }


def tag_statement(name: str, tag: str, version: int, seq: int, manifest_digest: str) -> dict:
    return {"kind": TAG_KIND, "name": name, "tag": tag, "version": version, "seq": seq, "manifest_digest": manifest_digest}


def digest(manifest: dict) -> str:
    return payload_digest(manifest)


@dataclass
class DiffStats:
    chunks_shared: int = 0
    chunks_new: int = 0
    bytes_shared: int = 0
    bytes_new: int = 0
    chunks_removed: int = 0
    bytes_removed: int = 0
    per_artifact: dict = field(default_factory=dict)


def chunk_sizes(manifest: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for art in manifest["artifacts"].values():
        for _off, size, cid in art["chunks"]:
            out[cid] = size
    return out


def diff(a: dict, b: dict) -> dict:
    """What a holder of version `a` shares with, and must fetch for, version `b` (unique chunks)."""
    ca, cb = chunk_sizes(a), chunk_sizes(b)
    shared = cb.keys() & ca.keys()
    new = cb.keys() - ca.keys()
    removed = ca.keys() - cb.keys()
    total_b = sum(cb.values())
    return {
        "from": a["version"],
        "to": b["version"],
        "chunks_shared": len(shared),
        "chunks_new": len(new),
        "chunks_removed": len(removed),
        "bytes_shared": sum(cb[c] for c in shared),
        "bytes_new": sum(cb[c] for c in new),
        "bytes_removed": sum(ca[c] for c in removed),
        "bytes_total": total_b,
        "new_fraction": round(sum(cb[c] for c in new) / total_b, 4) if total_b else 0.0,
    }
