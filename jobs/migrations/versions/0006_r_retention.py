"""retention: the indexes pruning needs, and ops_leases (one pruner at a time)

Revision ID: 0006_r
Revises: 0005_a
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import jobs.db

revision = '0006_r'
down_revision = '0005_a'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Pruning finds old runs by age and old emails by status and age: without these each
    # hourly pass would read the whole table.
    op.create_index('ops_runs_created_idx', 'ops_runs', ['created_at'], unique=False)
    op.create_index('ops_email_outbox_status_created_idx', 'ops_email_outbox',
                    ['status', 'created_at'], unique=False)
    op.create_table(
        'ops_leases',
        sa.Column('name', sa.String(64), primary_key=True),
        sa.Column('holder', sa.String(64), nullable=True),
        sa.Column('until', jobs.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column('done_at', jobs.db.UTCDateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table('ops_leases')
    op.drop_index('ops_email_outbox_status_created_idx', table_name='ops_email_outbox')
    op.drop_index('ops_runs_created_idx', table_name='ops_runs')
