"""discovery: a registered server's TLS listener (port and certificate pin), published in locate answers

Revision ID: 0005b_discovery
Revises: 0005_discovery
"""
from alembic import op
import sqlalchemy as sa


revision = '0005b_discovery'
down_revision = '0005_discovery'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('discovery_servers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tls_port', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('tls_pin', sa.String(length=80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('discovery_servers', schema=None) as batch_op:
        batch_op.drop_column('tls_pin')
        batch_op.drop_column('tls_port')
