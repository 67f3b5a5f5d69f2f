"""machine credentials (issue 13): one row per issued credential (hash, sealed bundle key, trust,
expiry, revocation); the credential hashes kept on machines so far move in at trust `token`

Revision ID: 0004c_config
Revises: 0004b_config_ippools
"""
import datetime as dt

from alembic import op
import sqlalchemy as sa


revision = '0004c_config'
down_revision = '0004b_config_ippools'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('machine_credentials',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('machine_id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('sealed_key', sa.Text(), nullable=True),
    sa.Column('trust', sa.String(length=8), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=True),
    sa.Column('revoked_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['machine_id'], ['machines.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sha256')
    )
    with op.batch_alter_table('machine_credentials', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_machine_credentials_machine_id'), ['machine_id'], unique=False)
    conn = op.get_bind()
    machines = sa.table("machines", sa.column("id", sa.Integer), sa.column("credential_sha256", sa.String))
    creds = sa.table("machine_credentials", sa.column("machine_id", sa.Integer), sa.column("sha256", sa.String),
                     sa.column("trust", sa.String), sa.column("created_at", sa.DateTime), sa.column("created_by", sa.String))
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    rows = conn.execute(sa.select(machines.c.id, machines.c.credential_sha256).where(machines.c.credential_sha256.is_not(None))).all()
    for mid, sha in rows:
        conn.execute(creds.insert().values(machine_id=mid, sha256=sha, trust="token", created_at=now, created_by="migration"))


def downgrade() -> None:
    with op.batch_alter_table('machine_credentials', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_machine_credentials_machine_id'))
    op.drop_table('machine_credentials')
