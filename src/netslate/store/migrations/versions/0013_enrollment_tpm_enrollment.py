"""enrollment: TPM enrollments, single-use challenges, site approval policies (issue 13)

Revision ID: 0013_enrollment
Revises: 0001_core
"""
from alembic import op
import sqlalchemy as sa


revision = '0013_enrollment'
down_revision = '0001_core'
branch_labels = ('enrollment',)
depends_on = None


def upgrade() -> None:
    op.create_table('enrollment_tpm',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('machine_id', sa.Integer(), nullable=False),
    sa.Column('ek_sha256', sa.String(length=64), nullable=False),
    sa.Column('ek_public', sa.Text(), nullable=False),
    sa.Column('ek_cert', sa.Text(), nullable=True),
    sa.Column('ak_public', sa.Text(), nullable=False),
    sa.Column('ak_name', sa.String(length=132), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('flags', sa.JSON(), nullable=False),
    sa.Column('claimed', sa.JSON(), nullable=False),
    sa.Column('remote', sa.String(length=45), nullable=True),
    sa.Column('approved_by', sa.String(length=128), nullable=True),
    sa.Column('activated_ak', sa.String(length=132), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('approved_at', sa.DateTime(), nullable=True),
    sa.Column('activated_at', sa.DateTime(), nullable=True),
    sa.Column('last_attested_at', sa.DateTime(), nullable=True),
    sa.Column('last_pcr_digest', sa.String(length=128), nullable=True),
    sa.ForeignKeyConstraint(['machine_id'], ['machines.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('ek_sha256')
    )
    with op.batch_alter_table('enrollment_tpm', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_enrollment_tpm_machine_id'), ['machine_id'], unique=False)

    op.create_table('enrollment_challenges',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('handle', sa.String(length=64), nullable=False),
    sa.Column('enrollment_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('expect_sha256', sa.String(length=64), nullable=True),
    sa.Column('nonce', sa.String(length=128), nullable=True),
    sa.Column('ak_name', sa.String(length=132), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('used_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['enrollment_id'], ['enrollment_tpm.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('handle')
    )
    with op.batch_alter_table('enrollment_challenges', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_enrollment_challenges_enrollment_id'), ['enrollment_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_enrollment_challenges_expires_at'), ['expires_at'], unique=False)

    op.create_table('enrollment_policies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('value', sa.String(length=128), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('kind', 'value')
    )


def downgrade() -> None:
    op.drop_table('enrollment_policies')
    with op.batch_alter_table('enrollment_challenges', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_enrollment_challenges_expires_at'))
        batch_op.drop_index(batch_op.f('ix_enrollment_challenges_enrollment_id'))
    op.drop_table('enrollment_challenges')
    with op.batch_alter_table('enrollment_tpm', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_enrollment_tpm_machine_id'))
    op.drop_table('enrollment_tpm')
