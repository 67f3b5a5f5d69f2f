"""Fixtures for the agent tests; helpers live in agent_support.py."""

import pytest

from netslate import inventory

from agent_support import *  # noqa: F401,F403 - DOC, MAC, publish, ... used by the fixture
from agent_support import DOC, MAC, bstore, publish  # noqa: F401


@pytest.fixture
def world(ctx):
    m = inventory.add_machine(ctx, [MAC], name="m1")
    gen = publish(ctx, DOC)
    return {"machine": m, "generation": gen}


