"""Pure version logic: references (NUMBER, `latest`, TAG), tag names, and the dicts that describe
versions and their artifacts. No I/O; the catalog (`catalog.py`) feeds it database rows."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from netslate.errors import UserError
from netslate.names import check_name


def iso(t: dt.datetime) -> str:
    return t.replace(microsecond=0).isoformat() + "Z"


@dataclass
class Resolved:
    """One version found by a reference, with its signed manifest."""

    name: str
    version: int
    manifest_digest: str
    envelope: dict
    tag: str | None = None

    @property
    def manifest(self) -> dict:
        return self.envelope["payload"]

    @property
    def artifacts(self) -> dict:
        return self.manifest["artifacts"]


def parse_ref(ref: str | int) -> tuple[str, int | str | None]:
    """("number", N) | ("latest", None) | ("tag", TAG) for a version reference."""
    ref = str(ref)
    if ref.isdigit():
        return "number", int(ref)
    if ref == "latest":
        return "latest", None
    return "tag", check_name(ref, "tag")


def check_tag_name(tag: str) -> str:
    """A tag that can be moved: a valid name that cannot be mistaken for a reference."""
    check_name(tag, "tag")
    if tag == "latest" or tag.isdigit():
        raise UserError(f"{tag!r} cannot be a tag name")
    return tag


def artifact_summary(artifact: dict) -> dict:
    """size, sha256, chunk count (and format for a rootfs) of one manifest artifact or record."""
    chunks = artifact["chunks"]
    out = {"size": artifact["size"], "sha256": artifact["sha256"], "chunks": chunks if isinstance(chunks, int) else len(chunks)}
    if artifact.get("format"):
        out["format"] = artifact["format"]
    return out


def tags_of(version: int, tags: dict[str, int]) -> list[str]:
    return sorted(t for t, v in tags.items() if v == version)
