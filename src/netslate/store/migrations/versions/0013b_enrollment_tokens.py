"""enrollment: one-time enrollment tokens (admin-issued, or host-asserted in a VM's SMBIOS OEM strings; issue 13)

Revision ID: 0013b_enrollment
Revises: 0013_enrollment
"""
from alembic import op
import sqlalchemy as sa


revision = '0013b_enrollment'
down_revision = '0013_enrollment'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('enrollment_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('machine_id', sa.Integer(), nullable=True),
    sa.Column('domain_uuid', sa.String(length=36), nullable=True),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('used_at', sa.DateTime(), nullable=True),
    sa.Column('used_from', sa.String(length=45), nullable=True),
    sa.Column('used_by', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['machine_id'], ['machines.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sha256')
    )
    with op.batch_alter_table('enrollment_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_enrollment_tokens_machine_id'), ['machine_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_enrollment_tokens_domain_uuid'), ['domain_uuid'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('enrollment_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_enrollment_tokens_domain_uuid'))
        batch_op.drop_index(batch_op.f('ix_enrollment_tokens_machine_id'))
    op.drop_table('enrollment_tokens')
