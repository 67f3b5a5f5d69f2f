"""Static assets of the web console, served by netslate itself (no CDN: isolated networks).

- Our own files (`web/static/`): `/static/<digest>/<file>`, the digest being the file's content
  hash, so a changed file gets a new URL and every URL can be cached for a year.
- Browser libraries installed by `npm ci` from `web/assets/package-lock.json` (scripts/install-deps.sh):
  `/static/vendor/<package>@<version>/<file>`, the version read from the installed package.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse

HERE = Path(__file__).parent
STATIC = HERE / "static"
NODE_MODULES = HERE / "assets" / "node_modules"
# package → the files of it the pages may load (nothing else under node_modules is served)
VENDOR_FILES = {"htmx.org": ("dist/htmx.min.js",)}
LONG_CACHE = {"Cache-Control": "public, max-age=31536000, immutable"}

router = APIRouter(include_in_schema=False)


@lru_cache(maxsize=None)
def _digest(name: str) -> str | None:
    path = STATIC / name
    if "/" in name or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def static_url(name: str) -> str:
    """`/static/<digest>/<name>` for one of our own files."""
    return f"/static/{_digest(name) or 'missing'}/{name}"


@lru_cache(maxsize=None)
def vendor_version(package: str) -> str | None:
    try:
        return json.loads((NODE_MODULES / package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def vendor_url(package: str, file: str) -> str:
    """`/static/vendor/<package>@<version>/<basename>` of an installed browser library."""
    return f"/static/vendor/{package}@{vendor_version(package) or 'missing'}/{file.rsplit('/', 1)[-1]}"


def _not_found(what: str) -> JSONResponse:
    return JSONResponse({"detail": f"no static file {what}"}, status_code=404)


@router.get("/static/vendor/{spec}/{file}")
def vendor_file(spec: str, file: str):
    package, _, version = spec.rpartition("@")
    wanted = [f for f in VENDOR_FILES.get(package, ()) if f.rsplit("/", 1)[-1] == file]
    if not wanted or version != vendor_version(package):
        return _not_found(f"{spec}/{file}" if package in VENDOR_FILES else spec)
    return FileResponse(NODE_MODULES / package / wanted[0], media_type="text/javascript", headers=LONG_CACHE)


@router.get("/static/{digest}/{file}")
def static_file(digest: str, file: str):
    current = _digest(file)
    if current is None:
        return _not_found(file)
    # An old digest still gets the file (a page cached before an upgrade), but not for a year.
    headers = LONG_CACHE if digest == current else {"Cache-Control": "no-cache"}
    media = mimetypes.guess_type(file)[0] or "application/octet-stream"
    return FileResponse(STATIC / file, media_type=media, headers=headers)
