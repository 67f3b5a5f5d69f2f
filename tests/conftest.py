"""Shared fixtures: a fresh data directory, a real server on loopback, and the real CLI.

Helper functions live in tests/nstest.py; they are re-exported here for older imports.
"""

from pathlib import Path

import pytest

from netslate.context import Context
from nstest import CliResult, LiveServer, free_port, run_cli, start_server  # noqa: F401


@pytest.fixture
def data_dir(tmp_path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def ctx(data_dir) -> Context:
    return Context(data_dir).init()


@pytest.fixture
def live_server(ctx):
    srv = start_server(ctx)
    yield srv
    srv.stop()


@pytest.fixture
def cli(data_dir):
    def _run(*args: str, **kw) -> CliResult:
        kw.setdefault("data_dir", data_dir)
        return run_cli(*args, **kw)

    return _run
