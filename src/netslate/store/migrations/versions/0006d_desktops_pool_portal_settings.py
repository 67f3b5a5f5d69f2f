"""desktop pool settings for the end-user portal: allow_reset, allow_release

Revision ID: 0006d_desktops
Revises: 0006c_desktops
"""
from alembic import op
import sqlalchemy as sa


revision = '0006d_desktops'
down_revision = '0006c_desktops'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('desktop_pools', schema=None) as batch_op:
        batch_op.add_column(sa.Column('allow_reset', sa.Boolean(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('allow_release', sa.Boolean(), server_default='1', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('desktop_pools', schema=None) as batch_op:
        batch_op.drop_column('allow_release')
        batch_op.drop_column('allow_reset')
