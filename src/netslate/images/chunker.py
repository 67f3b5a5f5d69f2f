"""Content-defined chunking (FastCDC 2020 via pyfastcdc) — pure: bytes in, cut points out.

Parameters are fixed for the whole store: changing them would stop new versions sharing chunks
with old ones. min + avg ≈ 64 KiB mean chunk size (pyfastcdc's mean is avg_size + min_size).
"""

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pyfastcdc import FastCDC

AVG_SIZE = 49152
MIN_SIZE = 16384
MAX_SIZE = 262144

_local = threading.local()


def _cdc() -> FastCDC:
    # A FastCDC object is not safe to share between threads (pyfastcdc says so).
    cdc = getattr(_local, "cdc", None)
    if cdc is None:
        cdc = _local.cdc = FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE)
    return cdc


@dataclass(frozen=True)
class Piece:
    offset: int
    size: int
    chunk_id: str
    data: memoryview


def cut(buf) -> Iterator[Piece]:
    """Cut a buffer into content-defined chunks and hash each (SHA-256 of the uncompressed bytes)."""
    for c in _cdc().cut_buf(buf):
        data = c.data
        yield Piece(c.offset, c.length, hashlib.sha256(data).hexdigest(), data)


def cut_file(path: Path) -> Iterator[Piece]:
    """Chunk a file through pyfastcdc's own mmap reader, so a multi-GiB rootfs is never copied whole."""
    if os.path.getsize(path) == 0:
        return
    for c in _cdc().cut_file(str(path)):
        data = c.data
        yield Piece(c.offset, c.length, hashlib.sha256(data).hexdigest(), data)


def boundaries(view) -> Iterator[tuple[int, int]]:
    """(offset, size) of each content-defined chunk of a buffer (a memoryview of an mmap), without
    hashing: the ingest pipeline hashes and compresses chunks on other threads."""
    if len(view) == 0:
        return
    for c in _cdc().cut_buf(view):
        yield c.offset, c.length
