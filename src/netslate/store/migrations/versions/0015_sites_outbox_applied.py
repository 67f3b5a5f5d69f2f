"""sites: the events a branch server's outbox applied on the primary, branch servers' replica status (issue 15)

Revision ID: 0015_sites
Revises: 0001_core
"""
from alembic import op
import sqlalchemy as sa


revision = '0015_sites'
down_revision = '0001_core'
branch_labels = ('sites',)
depends_on = None


def upgrade() -> None:
    op.create_table('sites_outbox_applied',
    sa.Column('event_id', sa.String(length=36), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('origin', sa.String(length=63), nullable=False),
    sa.Column('queued_at', sa.DateTime(), nullable=True),
    sa.Column('applied_at', sa.DateTime(), nullable=False),
    sa.Column('outcome', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('event_id')
    )
    op.create_index(op.f('ix_sites_outbox_applied_applied_at'), 'sites_outbox_applied', ['applied_at'], unique=False)
    op.create_table('sites_server_status',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('read_only', sa.Boolean(), nullable=False),
    sa.Column('lag_seconds', sa.Float(), nullable=True),
    sa.Column('outbox_pending', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('sites_server_status')
    op.drop_index(op.f('ix_sites_outbox_applied_applied_at'), table_name='sites_outbox_applied')
    op.drop_table('sites_outbox_applied')
