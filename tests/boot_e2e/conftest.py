"""Shared by the VM tests of this directory that boot to `configured`: the fleet image (mmdebstrap
minbase + systemd + the agent, then the netslate initramfs, tag `stable`) is built once per pytest
process into a seed data directory (`fleet_seed`, ~110 s under TCG load); each module copies that
directory (`fleet_seed.copy_to(data)`) and adds its own machines, rules and servers. All VM tests run on one
xdist worker (tests/conftest.py), so the suite builds the image once for all such modules.
"""

import shutil
import time
from pathlib import Path

import pytest

from netslate.context import Context
from netslate.demo_fleet import build_fleet_image


class FleetSeed:
    def __init__(self, data: Path) -> None:
        self.data = data

    def copy_to(self, data: Path) -> Context:
        """A module's own data directory: a copy of the seed (same image, versions, tags and keys)."""
        shutil.copytree(self.data, data, symlinks=True)
        return Context(data).init()


@pytest.fixture(scope="session")
def fleet_seed(tmp_path_factory) -> FleetSeed:
    tmp = tmp_path_factory.mktemp("fleet-seed")
    data = tmp / "data"
    Context(data).init()
    t0 = time.monotonic()
    build_fleet_image(data, tmp, "e2e")
    print(f"\nfleet image + netslate initramfs built (once per session): {time.monotonic() - t0:.0f}s")
    return FleetSeed(data)
