"""an index for the metrics scrape: each job's newest run of a status

Revision ID: 0004_n
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = '0004_n'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # /metrics reads each job's newest succeeded run and its running runs on every scrape:
    # with this index both are a lookup, however long the history.
    op.create_index('ops_runs_job_status_idx', 'ops_runs', ['job_id', 'status', 'finished_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ops_runs_job_status_idx', table_name='ops_runs')
