"""Every part's Alembic branch, applied together, matches the models exactly."""

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine

from netslate.store.db import MIGRATIONS_DIR
from netslate.store.registry import MODEL_MODULES, import_all_models


def test_migrations_match_models(tmp_path):
    import_all_models()
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")
        command.check(cfg)  # raises if autogenerate would produce any operation


def test_registry_lists_every_models_module():
    from pathlib import Path

    import netslate

    root = Path(netslate.__file__).parent
    found = {"netslate." + ".".join(p.relative_to(root).with_suffix("").parts) for p in root.rglob("models.py")}
    assert found <= set(MODEL_MODULES), f"models modules missing from registry.py: {found - set(MODEL_MODULES)}"


def test_quick_head_check_agrees_with_alembic(tmp_path):
    """`migrate` skips importing Alembic when alembic_version already names the heads read from the
    migration files (start-up time, issue 14): that reading must be Alembic's own answer."""
    from netslate.store import db as store_db

    database = store_db.Database(f"sqlite:///{tmp_path / 'q.db'}")
    assert store_db._file_heads() == database._heads()
    assert store_db._stamped(database.engine) is None  # a fresh database: the Alembic path runs
    database.migrate()
    assert store_db._stamped(database.engine) == store_db._file_heads()
