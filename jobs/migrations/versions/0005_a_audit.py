"""who changed what: ops_audit, and why a job is paused

Revision ID: 0005_a
Revises: 0004_n
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import jobs.db

revision = '0005_a'
down_revision = '0004_n'
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'ops_audit',
        sa.Column('id', _Id, primary_key=True, autoincrement=True),
        sa.Column('at', jobs.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('actor', sa.Text, nullable=False),
        sa.Column('action', sa.String(32), nullable=False),
        sa.Column('job_id', sa.String(64), nullable=True),
        sa.Column('run_id', _Id, nullable=True),
        sa.Column('detail', sa.Text, nullable=True),
        sa.Column('reason', sa.Text, nullable=True),
    )
    op.create_index('ops_audit_at_idx', 'ops_audit', ['at'], unique=False)
    with op.batch_alter_table('ops_job_state') as batch:
        batch.add_column(sa.Column('paused_reason', sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('ops_job_state') as batch:
        batch.drop_column('paused_reason')
    op.drop_index('ops_audit_at_idx', table_name='ops_audit')
    op.drop_table('ops_audit')
