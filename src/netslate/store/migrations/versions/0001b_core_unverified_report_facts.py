"""unverified report facts: facts stored by reports without a machine credential move out of the
template input (issue 11 #2)

Before, every report wrote `machines.status["facts"]`, the facts templates are rendered with, so an
anonymous report for a machine that is not enrolled could put its own values into a signed bundle.
Now only a report authenticated by the machine credential writes them; an anonymous one is kept
under `status["fleet"]["unverified"]`. Existing facts whose last report was not authenticated are
moved there too. Data only; no schema change.

Revision ID: 0001b_core
Revises: 0001_core
"""
import json

from alembic import op
import sqlalchemy as sa


revision = '0001b_core'
down_revision = '0001_core'
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    machines = sa.table("machines", sa.column("id", sa.Integer), sa.column("status", sa.JSON))
    for mid, status in conn.execute(sa.select(machines.c.id, machines.c.status)).all():
        if isinstance(status, str):
            status = json.loads(status)
        if not isinstance(status, dict) or "facts" not in status:
            continue
        fleet = status.get("fleet") if isinstance(status.get("fleet"), dict) else {}
        if fleet.get("authenticated") is True:
            continue  # written by the machine itself
        status = dict(status)
        fleet = dict(fleet)
        fleet["unverified"] = {"received_at": fleet.get("received_at"), "address": fleet.get("remote"),
                               "facts": status.pop("facts")}
        status["fleet"] = fleet
        conn.execute(machines.update().where(machines.c.id == mid).values(status=status))


def downgrade() -> None:
    pass  # the facts stay apart: putting them back would feed bundles again
