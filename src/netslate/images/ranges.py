"""Reading byte ranges of an artifact out of the chunk store (what /images/N/V/ARTIFACT serves)."""

from __future__ import annotations

import bisect
import hashlib
from typing import Iterator


def read_range(store, record: dict, start: int, end: int, block: int = 1 << 20) -> Iterator[bytes]:
    """Yield bytes [start, end) of an artifact in blocks of about `block` bytes (verified: a corrupt
    chunk stops the stream). Blocks, not chunks, because each yield costs a thread hop when served."""
    chunks = record["chunks"]
    offsets = [c[0] for c in chunks]
    i = max(bisect.bisect_right(offsets, start) - 1, 0)
    pending: list[bytes] = []
    pending_len = 0
    while i < len(chunks) and start < end:
        off, size, cid = chunks[i]
        data = store.read(cid, verify=True)
        lo = start - off
        hi = min(size, end - off)
        piece = data[lo:hi] if (lo or hi != size) else data
        pending.append(piece)
        pending_len += len(piece)
        if pending_len >= block:
            yield b"".join(pending)
            pending, pending_len = [], 0
        start = off + hi
        i += 1
    if pending:
        yield b"".join(pending)


def whole_sha256(store, record: dict) -> str:
    """SHA-256 of a whole artifact assembled from the store (every chunk verified on the way)."""
    whole = hashlib.sha256()
    for part in read_range(store, record, 0, record["size"]):
        whole.update(part)
    return whole.hexdigest()
