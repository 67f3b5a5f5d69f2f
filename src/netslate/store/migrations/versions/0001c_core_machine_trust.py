"""machine trust level (issue 13): machines.trust, none < token < host < tpm

Machines that already hold a credential (enrolled by an admin) start at `token`.

Revision ID: 0001c_core
Revises: 0001b_core
"""
from alembic import op
import sqlalchemy as sa


revision = '0001c_core'
down_revision = '0001b_core'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('machines', schema=None) as batch_op:
        batch_op.add_column(sa.Column('trust', sa.String(length=8), server_default='none', nullable=False))
    machines = sa.table("machines", sa.column("trust", sa.String), sa.column("credential_sha256", sa.String))
    op.get_bind().execute(machines.update().where(machines.c.credential_sha256.is_not(None)).values(trust="token"))


def downgrade() -> None:
    with op.batch_alter_table('machines', schema=None) as batch_op:
        batch_op.drop_column('trust')
