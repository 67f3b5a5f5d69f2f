"""Where netslate keeps its state. A system install uses /var/lib/netslate (FHS)."""

import os
from pathlib import Path

SYSTEM_DATA_DIR = Path("/var/lib/netslate")


def resolve_data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """--data-dir, then NETSLATE_DATA_DIR, then the system default."""
    if explicit:
        return Path(explicit).resolve()
    env = os.environ.get("NETSLATE_DATA_DIR")
    if env:
        return Path(env).resolve()
    return SYSTEM_DATA_DIR
