"""Imports every part's models so that Base.metadata is complete (for Alembic checks and tests)."""

import importlib

MODEL_MODULES = [
    "netslate.store.models",
    "netslate.store.outbox",
    "netslate.images.models",
    "netslate.boot.models",
    "netslate.discovery.models",
    "netslate.config.models",
    "netslate.desktops.models",
    "netslate.identity.models",
    "netslate.enrollment.models",
]


def import_all_models() -> None:
    for name in MODEL_MODULES:
        importlib.import_module(name)
