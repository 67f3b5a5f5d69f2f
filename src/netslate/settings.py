"""Where netslate keeps its state. A system install uses /var/lib/netslate (FHS)."""

import os
import stat
from pathlib import Path

SYSTEM_DATA_DIR = Path("/var/lib/netslate")
DATA_DIR_MODE = 0o700  # the database, keys and tokens live here: nobody else reads them
PRIVATE_FILE_MODE = 0o600
DATABASE_FILE = "netslate.db"  # the embedded SQLite database inside the data directory


def resolve_data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """--data-dir, then NETSLATE_DATA_DIR, then the system default."""
    if explicit:
        return Path(explicit).resolve()
    env = os.environ.get("NETSLATE_DATA_DIR")
    if env:
        return Path(env).resolve()
    return SYSTEM_DATA_DIR


def make_private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) with mode 0700; an existing one loses every bit for others
    and group write (0750 stays possible for a service group, 0755 becomes 0750)."""
    path = Path(path)
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=DATA_DIR_MODE)
        except FileExistsError:
            pass
        os.chmod(path, DATA_DIR_MODE)  # mkdir's mode is filtered through the umask
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o027:
        os.chmod(path, mode & ~0o027)
    return path


def make_private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 unless it exists; an existing one is tightened to 0600."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
        os.close(fd)
    except FileExistsError:
        pass
    except PermissionError:
        return  # a directory we may not write: whoever opens the file reports that
    tighten(path)


def tighten(path: Path) -> None:
    """chmod 0600 when `path` exists and is ours with wider permissions."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.geteuid():
        os.chmod(path, PRIVATE_FILE_MODE)
