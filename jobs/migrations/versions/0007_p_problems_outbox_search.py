"""indexes for the problems view and the outbox search

Revision ID: 0007_p
Revises: 0006_r
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007_p'
down_revision = '0006_r'
branch_labels = None
depends_on = None

_ERRORS_ONLY = sa.text("status = 'error'")


def upgrade() -> None:
    # Problems over a window: the runs created since then (ops_runs_created_idx, which
    # retention added in 0006_r), and only their failed items (a partial index: a month of
    # history holds millions of items, few of them failed).
    op.create_index('ops_run_items_errors_idx', 'ops_run_items', ['run_id', 'seq'], unique=False,
                    postgresql_where=_ERRORS_ONLY, sqlite_where=_ERRORS_ONLY)
    # The outbox is paged newest first by id, with keys instead of OFFSET: a tenant's and a
    # status's emails each in id order.
    op.drop_index('ops_email_outbox_tenant_idx', table_name='ops_email_outbox')
    op.create_index('ops_email_outbox_tenant_idx', 'ops_email_outbox', ['tenant_id', 'id'],
                    unique=False)
    op.create_index('ops_email_outbox_status_id_idx', 'ops_email_outbox', ['status', 'id'],
                    unique=False)
    # The search's narrow copy of each email's recipient, subject and tenant id, in lower
    # case, so a search scans ~120 bytes per email instead of rows with their bodies.
    op.create_table(
        'ops_email_search',
        sa.Column('email_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                  autoincrement=False, nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('email_id'),
    )
    op.execute("INSERT INTO ops_email_search (email_id, text) "
               "SELECT id, lower(recipient || ' ' || subject || ' ' || coalesce(tenant_id, '')) "
               "FROM ops_email_outbox")


def downgrade() -> None:
    op.drop_table('ops_email_search')
    op.drop_index('ops_email_outbox_status_id_idx', table_name='ops_email_outbox')
    op.drop_index('ops_email_outbox_tenant_idx', table_name='ops_email_outbox')
    op.create_index('ops_email_outbox_tenant_idx', 'ops_email_outbox', ['tenant_id'],
                    unique=False)
    op.drop_index('ops_run_items_errors_idx', table_name='ops_run_items')
