"""alert state, alert events and deliveries, run counters

Revision ID: 0003
Revises: 0002_b
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import jobs.db

revision = '0003'
down_revision = '0002_b'
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('ops_job_state') as batch:
        batch.add_column(sa.Column('alert_state', sa.String(length=16), server_default='ok', nullable=False))
        batch.add_column(sa.Column('failing_since', jobs.db.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('overdue_since', jobs.db.UTCDateTime(timezone=True), nullable=True))
    op.create_table('ops_run_counts',
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('count', sa.BigInteger(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('job_id', 'status')
    )
    # Runs that ended before the counter existed are counted once, here.
    op.execute(
        "INSERT INTO ops_run_counts (job_id, status, count) "
        "SELECT job_id, status, COUNT(*) FROM ops_runs WHERE status <> 'running' "
        "GROUP BY job_id, status"
    )
    op.create_table('ops_alerts',
    sa.Column('id', _Id, autoincrement=True, nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=True),
    sa.Column('run_id', _Id, nullable=True),
    sa.Column('at', jobs.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    op.create_index('ops_alerts_at_idx', 'ops_alerts', ['at'], unique=False)
    op.create_table('ops_alert_deliveries',
    sa.Column('id', _Id, autoincrement=True, nullable=False),
    sa.Column('alert_id', _Id, nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('target', sa.Text(), nullable=False),
    sa.Column('target_label', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_attempt_at', jobs.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('sent_at', jobs.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('claimed_by', sa.String(length=64), nullable=True),
    sa.Column('claimed_until', jobs.db.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('alert_id', 'target', name='ops_alert_deliveries_uq')
    )
    op.create_index('ops_alert_deliveries_due_idx', 'ops_alert_deliveries', ['status', 'next_attempt_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ops_alert_deliveries_due_idx', table_name='ops_alert_deliveries')
    op.drop_table('ops_alert_deliveries')
    op.drop_index('ops_alerts_at_idx', table_name='ops_alerts')
    op.drop_table('ops_alerts')
    op.drop_table('ops_run_counts')
    with op.batch_alter_table('ops_job_state') as batch:
        batch.drop_column('overdue_since')
        batch.drop_column('failing_since')
        batch.drop_column('alert_state')
