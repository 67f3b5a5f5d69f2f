"""The data directory and the database are nobody else's (issue 11 #5): 0700 and 0600 after
`serve` and after a local CLI command, existing wider modes are tightened, and `nobody` cannot read
the database."""

from __future__ import annotations

import os
import stat
import subprocess

from hostile_support import serve_process
from nstest import run_cli


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _check(data) -> list[str]:
    assert _mode(data) == 0o700, oct(_mode(data))
    seen = []
    for name in ("netslate.db", "netslate.db-wal", "netslate.db-shm"):
        p = data / name
        if p.exists():
            assert _mode(p) == 0o600, (name, oct(_mode(p)))
            seen.append(name)
    assert "netslate.db" in seen
    return seen


def _nobody_cannot_read(path) -> None:
    r = subprocess.run(["runuser", "-u", "nobody", "--", "cat", str(path)], capture_output=True, timeout=30)
    assert r.returncode != 0, "nobody read the database"
    assert b"SQLite" not in r.stdout


def test_local_cli_creates_private_files(tmp_path):
    os.umask(0o022)
    data = tmp_path / "fresh" / "data"  # not there yet: the CLI creates it
    r = run_cli("token", "create", "secretholder", "--role", "viewer", data_dir=data)
    assert r.code == 0, r.stderr
    _check(data)
    _nobody_cannot_read(data / "netslate.db")


def test_serve_creates_private_files_and_wal(tmp_path):
    os.umask(0o022)
    data = tmp_path / "data"
    with serve_process(data) as (url, _proc, token):
        import httpx

        r = httpx.post(url + "/api/v1/tokens", json={"name": "t1", "role": "viewer"},
                       headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 201, r.text
        seen = _check(data)
        assert "netslate.db-wal" in seen and "netslate.db-shm" in seen, seen  # checked while serve holds them
        tmp_path.chmod(0o755)  # so only the data directory's and the files' own modes keep nobody out
        _nobody_cannot_read(data / "netslate.db")
        _nobody_cannot_read(data / "netslate.db-wal")


def test_existing_wide_modes_are_tightened(tmp_path):
    data = tmp_path / "data"
    assert run_cli("token", "list", data_dir=data).code == 0
    data.chmod(0o755)
    (data / "netslate.db").chmod(0o644)
    assert run_cli("token", "list", data_dir=data).code == 0
    assert _mode(data) & 0o077 == 0o000 or _mode(data) == 0o750, oct(_mode(data))
    assert _mode(data / "netslate.db") == 0o600
