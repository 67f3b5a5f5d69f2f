"""Autogenerate a migration from the models: uv run python scripts/new-migration.py REV_ID "message" (--branch LABEL | --on REV)

A new part starts its own branch off 0001_core (--branch boot); later changes build on it (--on 0003_boot).
Add the part's models module to netslate/store/registry.py first.
"""

import argparse
import tempfile

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine

from netslate.store.db import MIGRATIONS_DIR

parser = argparse.ArgumentParser()
parser.add_argument("rev_id")
parser.add_argument("message")
group = parser.add_mutually_exclusive_group(required=True)
group.add_argument("--branch", help="label of a new branch off 0001_core")
group.add_argument("--on", help="revision this one follows")
args = parser.parse_args()

with tempfile.TemporaryDirectory() as tmp:
    engine = create_engine(f"sqlite:///{tmp}/db.sqlite")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")
        if args.branch:
            command.revision(cfg, message=args.message, autogenerate=True, rev_id=args.rev_id,
                             head="0001_core", branch_label=args.branch, splice=True)
        else:
            command.revision(cfg, message=args.message, autogenerate=True, rev_id=args.rev_id, head=args.on)
