"""Build the agent zipapp and install it into an image tree (used by `netslate image build`).

The zipapp holds only stdlib-only modules: `netslate/__init__.py`, `netslate/agent/*` (minus this
installer) and the on-machine library `netslate/onmachine/*`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipapp
from pathlib import Path

PYZ_PATH = "/usr/lib/netslate/netslate-agent.pyz"
WRAPPER_PATH = "/usr/bin/netslate-agent"
UNIT_NAME = "netslate-agent.service"
UNIT_PATH = f"/usr/lib/systemd/system/{UNIT_NAME}"
WANTS_LINK = f"/etc/systemd/system/multi-user.target.wants/{UNIT_NAME}"

WRAPPER = """#!/bin/sh
# netslate-agent: the zipapp needs only python3's standard library.
for py in /usr/bin/python3 /usr/local/bin/python3; do
    [ -x "$py" ] && exec "$py" %s "$@"
done
echo "netslate-agent: python3 is not installed in this image; the agent cannot run" >&2
exit 1
""" % PYZ_PATH

EXCLUDE = {"install.py"}


def _pkg_root() -> Path:
    return Path(__file__).resolve().parent.parent  # .../netslate


def unit_text() -> str:
    packaged = _pkg_root().parent.parent / "packaging" / "systemd" / UNIT_NAME
    if packaged.is_file():
        return packaged.read_text()
    return _UNIT


_UNIT = """[Unit]
Description=netslate agent: configure this machine from its signed config bundle
Wants=network-online.target
After=network-online.target systemd-networkd.service

[Service]
Type=simple
ExecStart=/usr/bin/netslate-agent run
Restart=always
RestartSec=5
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""


def stage(dest: Path) -> list[str]:
    """Copy the agent's modules into `dest` as a package tree; returns the relative paths."""
    src = _pkg_root()
    files = [src / "__init__.py"] + sorted((src / "onmachine").glob("*.py"))
    files += sorted(p for p in (src / "agent").glob("*.py") if p.name not in EXCLUDE)
    out = []
    for f in files:
        rel = f.relative_to(src.parent)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
        out.append(str(rel))
    (dest / "__main__.py").write_text("from netslate.agent.cli import main\n\nraise SystemExit(main())\n")
    return out


def build_zipapp(output: Path) -> dict:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="netslate-agent-") as tmp:
        files = stage(Path(tmp))
        part = output.with_name(f".{output.name}.part")
        zipapp.create_archive(tmp, part, interpreter="/usr/bin/env python3", compressed=True)
        os.chmod(part, 0o755)
        os.replace(part, output)
    return {"output": str(output), "size": output.stat().st_size, "files": files}


def install_into(tree: Path) -> dict:
    """Zipapp → /usr/lib/netslate, wrapper → /usr/bin/netslate-agent, unit enabled for multi-user.target."""
    tree = Path(tree)

    def at(p: str) -> Path:
        return tree / p.lstrip("/")

    info = build_zipapp(at(PYZ_PATH))
    at(WRAPPER_PATH).parent.mkdir(parents=True, exist_ok=True)
    at(WRAPPER_PATH).write_text(WRAPPER)
    os.chmod(at(WRAPPER_PATH), 0o755)
    at(UNIT_PATH).parent.mkdir(parents=True, exist_ok=True)
    at(UNIT_PATH).write_text(unit_text())
    link = at(WANTS_LINK)
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(UNIT_PATH, link)
    at("/var/lib/netslate-agent").mkdir(parents=True, exist_ok=True)
    return info
