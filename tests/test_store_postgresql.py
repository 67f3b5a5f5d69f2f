"""The store on a real PostgreSQL server (a throwaway cluster on loopback): migrations and a full image flow."""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from netslate.context import Context
from nstest import free_port

PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1] if Path("/usr/lib/postgresql").exists() else None


@pytest.fixture(scope="module")
def postgres():
    assert PG_BIN is not None, "PostgreSQL server binaries missing: scripts/install-deps.sh installs postgresql"
    base = Path(tempfile.mkdtemp(prefix="netslate-pg-"))  # outside pytest's 0700 tree: the server runs as postgres
    os.chmod(base, 0o777)
    datadir = base / "cluster"
    port = free_port()
    run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run(run_as + [str(PG_BIN / "initdb"), "-D", str(datadir), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run(run_as + [str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-l", str(base / "log"), "-w", "start",
                             "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(run_as + [str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_migrations_and_image_flow_on_postgresql(postgres, tmp_path):
    data = tmp_path / "data"
    ctx = Context(data, postgres).init()
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("pg\n")
    (tree / "blob").write_bytes(os.urandom(200_000))
    v = ctx.library.import_files("pgimg", rootfs=tree, tag="stable")
    assert v["version"] == 1
    # A second server process over the same store sees it (servers are stateless over the store).
    other = Context(tmp_path / "data2", postgres).init()
    assert other.library.list_images()[0]["name"] == "pgimg"
    ctx.library.set_tag("pgimg", 1, "testing", reason="pg")
    assert other.library.resolve("pgimg", "testing").version == 1
    # Migrating again is a no-op.
    Context(data, postgres).init()
