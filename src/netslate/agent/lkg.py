"""Step 4/5: the last-known-good bundle: `bundle.json` in the lkg directory, the signed envelope
exactly as the server sent it (the cache-mode initramfs reads its `image_pin` to choose which
cached image it may boot when no server answers). It is one file replaced atomically, so a crash
or power cut leaves either the old or the new one, never a mix. It is re-verified with the pinned
key every time it is read: a damaged or forged file is ignored (and reported), never applied.
The anti-rollback floor is its generation.
"""

from __future__ import annotations

from pathlib import Path

from netslate.agent import bundle
from netslate.agent.util import read_json, write_json

FILE = "bundle.json"


def save(lkg_dir: Path, envelope: dict, payload: dict) -> None:
    write_json(Path(lkg_dir) / FILE, envelope, mode=0o600)  # may hold the machine's secrets


def last_generation(lkg_dir: Path) -> int | None:
    data = read_json(Path(lkg_dir) / FILE)
    g = data.get("payload", {}).get("generation") if isinstance(data, dict) and isinstance(data.get("payload"), dict) else None
    return g if isinstance(g, int) else None


def load(lkg_dir: Path, key: bytes | None, machine_id: int | None,
         revocations: dict | None = None) -> tuple[dict | None, dict | None, str | None]:
    """(envelope, payload, problem). The payload only if it verifies against the pinned key (a
    site key's bundle: also not revoked by `revocations`)."""
    path = Path(lkg_dir) / FILE
    if not path.exists():
        return None, None, "no last-known-good bundle"
    data = read_json(path)
    if not isinstance(data, dict):
        return None, None, f"last-known-good bundle {path} is damaged"
    try:
        payload = bundle.verify(data, key, machine_id, None, revocations=revocations)
    except bundle.BundleRejected as exc:
        return None, None, f"last-known-good bundle refused: {exc}"
    return data, payload, None
