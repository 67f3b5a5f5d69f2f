"""Files on the machine: atomic writes (temp file in the same directory, fsync, rename, fsync the
directory), tolerant JSON reads, and a whole-file size + SHA-256 check.

Standard library only (the on-machine library): the agent's zipapp and the initramfs ship it, and
the server side imports the same functions through `netslate.fsutil`.
"""

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # some filesystems cannot fsync a directory
            raise
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644, durable: bool = True, tmp_prefix: str = ".tmp-") -> None:
    """durable=False skips both fsyncs: for data that is verified before every use (chunk files:
    a torn one after a crash is discarded and fetched again). `tmp_prefix` names the temp file
    (the chunk store puts the writer's pid in it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)


def read_json(path, default=None):
    """The JSON in `path`, or `default` when it is missing, unreadable or damaged (never fatal)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return default


def file_matches(path, size: int, sha256: str) -> bool:
    """True if the file at `path` has exactly `size` bytes and that SHA-256 (hex)."""
    try:
        if os.stat(path).st_size != size:
            return False
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest() == sha256
    except OSError:
        return False
