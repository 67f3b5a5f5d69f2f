"""Fixtures for desktop tests: a running libvirtd, a tiny TCG guest, a ready installation."""

import pytest

from desktops_fixtures import build_guest, cleanup, ensure_libvirtd, setup_installation


@pytest.fixture(scope="session")
def desktop_guest(tmp_path_factory):
    ensure_libvirtd()
    d = tmp_path_factory.mktemp("desktop-guest")
    from desktops_fixtures import traversable

    traversable(d)
    return build_guest(d)


@pytest.fixture
def dctx(data_dir, desktop_guest):
    ctx = setup_installation(data_dir, desktop_guest)
    yield ctx
    cleanup(ctx)
