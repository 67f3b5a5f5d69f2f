"""`netslate mirror sync` shows the project's progress bar (Rich, on stderr) when stderr is a
terminal, locally and over --server, and stays quiet with --json. The world is tests/sites/
test_mirror.py's: a real central server and a real branch mirror on loopback, no VMs."""

import json
import os
import pty
import select
import subprocess
import sys
import time

from test_mirror import _files, world  # noqa: F401  (the fixture: central + branch mirror)

from netslate.composition import Parts
from netslate.services import Services
from netslate.services.framework import Caller

ADMIN = Caller("local", "test", "admin")


def _new_stable(w, seed: int) -> dict:
    """A new version at central, tagged stable (so the branch must prefetch it): bytes to fetch."""
    return w.ctx.library.import_files("os", **_files(w.tmp / f"f-progress-{seed}", seed, size=3_000_000), tag="stable")


def _run_in_pty(args: list[str], env: dict, timeout: float = 300) -> tuple[int, str, str]:
    """The real CLI with stderr on a terminal (a pty) and stdout on a pipe: (code, stdout, stderr)."""
    master, slave = pty.openpty()
    full = {k: v for k, v in os.environ.items() if k not in ("NETSLATE_SERVER", "NETSLATE_TOKEN", "CI")}
    full.update({"TERM": "xterm", "COLUMNS": "120", **env})
    p = subprocess.Popen([sys.executable, "-m", "netslate", *args], stdout=subprocess.PIPE, stderr=slave,
                         stdin=subprocess.DEVNULL, env=full)
    os.close(slave)
    err = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            err += chunk
        elif p.poll() is not None:
            break
    out = p.stdout.read().decode()
    code = p.wait(30)
    os.close(master)
    return code, out, err.decode(errors="replace")


def test_sync_with_progress_reports_bytes(world):
    w = world
    _new_stable(w, 41)
    sv = Services.local(Parts(w.branch_ctx), ADMIN)
    calls = []
    result = sv.mirror.sync_with_progress(lambda done, total: calls.append((done, total)), every=0.05)
    assert result.errors == [] and result.bytes_fetched > 0
    assert calls, "no progress reported"
    totals = {t for _d, t in calls}
    assert len(totals) == 1 and totals.pop() >= result.bytes_fetched * 0.5  # bytes missing when it began
    done = [d for d, _t in calls]
    assert done == sorted(done) and calls[-1][0] == calls[-1][1]  # never backwards; ends complete


def test_mirror_sync_progress_bar_on_a_terminal_and_quiet_json(world):
    w = world
    local = {"NETSLATE_DATA_DIR": str(w.branch_ctx.data_dir), "NETSLATE_DATABASE_URL": str(w.ctx.db.url)}
    remote = {"NETSLATE_DATA_DIR": str(w.branch_ctx.data_dir), "NETSLATE_SERVER": w.branch.url,
              "NETSLATE_TOKEN": w.branch.admin_token}
    for i, env in enumerate((local, remote)):
        _new_stable(w, 50 + i)
        code, out, err = _run_in_pty(["mirror", "sync"], env)
        assert code == 0, err
        assert "mirror sync: prefetching" in err, err  # the bar was drawn on the terminal (stderr)
        assert "\x1b[" in err  # a live, redrawn line (then erased: transient)
        assert "versions, fetched" in out and "Traceback" not in err
        # --json: nothing on the terminal, JSON on stdout
        _new_stable(w, 60 + i)
        code, out, err = _run_in_pty(["mirror", "sync", "--json"], env)
        assert code == 0, err
        assert err.strip() == "", err
        d = json.loads(out)
        assert d["errors"] == [] and d["bytes_fetched"] > 0
