"""ops_runner_schedules: the schedules each runner plans with

Revision ID: 0002_b
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002_b'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ops_runner_schedules',
    sa.Column('runner_id', sa.String(length=64), nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('schedule', sa.Text(), nullable=False),
    sa.Column('timezone', sa.Text(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('config_digest', sa.String(length=64), nullable=False),
    sa.Column('config_source', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('runner_id', 'job_id')
    )


def downgrade() -> None:
    op.drop_table('ops_runner_schedules')
