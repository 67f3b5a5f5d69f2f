"""Shared fixtures: a fresh data directory, a real server on loopback, and the real CLI.

Helper functions live in tests/nstest.py; they are re-exported here for older imports.
"""

from pathlib import Path

import pytest

from netslate.context import Context
from nstest import CliResult, LiveServer, free_port, run_cli, start_server  # noqa: F401
from webworld import browser, page  # noqa: F401  (the shared headless Chromium of the web tests)
from ldapworld import ldap_world  # noqa: F401  (the shared slapd of the identity and web tests)

# Tests that boot QEMU guests (TCG: one busy core each) or share the one libvirtd, marked `vm` so
# that `pytest -m vm` / `-m "not vm"` select them. `make test` runs the suite on two pytest-xdist
# workers with --dist loadfile and the scheduling below: a file's tests run on one worker, in order,
# so a module-scoped world (one VM world per module) is built once and its tests see each other's
# steps; the files under tests/desktops/ (one libvirtd, its networks and VNC ports) run on one
# worker, one after the other; two other VM files may run at once (two TCG guests, one per core).
# Not --dist loadgroup: pytest 9 keeps a node's id in `item._id`, and xdist 3.8 marks a group by
# rewriting `item._nodeid`, so groups were ignored and a module's tests could land on both workers.
SERIAL_DIRS = ("tests/desktops/",)


def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile, except that each of SERIAL_DIRS is one unit of work (one worker, in order)."""
    from xdist.scheduler import LoadFileScheduling

    class FilesAndSerialDirs(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return next((d for d in SERIAL_DIRS if path.startswith(d)), path)

    return FilesAndSerialDirs(config, log)
VM_PATHS = (
    "tests/boot_e2e/", "tests/e2e/", "tests/desktops/", "tests/test_demo.py",
    "tests/initramfs/test_initramfs_vm.py", "tests/images_build/test_images_build_real.py",
    "tests/agent/test_agent_live.py",
)


def pytest_collection_modifyitems(config, items):
    root = Path(str(config.rootpath))
    for item in items:
        where = Path(str(item.path)).relative_to(root).as_posix()
        if item.get_closest_marker("vm") or where.startswith(VM_PATHS):
            item.add_marker(pytest.mark.vm)

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


@pytest.fixture(params=["local", "remote"])
def cli_mode(request) -> str:
    """Every CLI test runs twice: on the data directory, and through a real server over it."""
    return request.param


@pytest.fixture
def cli(data_dir, cli_mode, request):
    servers: dict[Path, LiveServer] = {}

    def server_for(directory: Path) -> LiveServer:
        """In remote mode, one real server on loopback per data directory the test names."""
        directory = Path(directory)
        if directory not in servers:
            own = request.getfixturevalue("ctx") if directory == data_dir else Context(directory).init()
            servers[directory] = start_server(own)
            request.addfinalizer(servers[directory].stop)
        return servers[directory]

    def _run(*args: str, **kw) -> CliResult:
        kw.setdefault("data_dir", data_dir)
        if cli_mode == "remote" and "NETSLATE_SERVER" not in (kw.get("env") or {}) and "--server" not in args:
            server = server_for(kw["data_dir"])
            kw["env"] = {"NETSLATE_SERVER": server.url, "NETSLATE_TOKEN": server.admin_token, **(kw.get("env") or {})}
        return run_cli(*args, **kw)

    _run.mode = cli_mode
    _run.server_for = server_for
    return _run
