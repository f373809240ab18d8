"""wallet.low_balance webhooks: deliveries without a job, and the cursor over billing's wallet events

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 09:10:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column('webhook_deliveries', 'job_id', existing_type=sa.UUID(), nullable=True, schema='jobs')
    # Billing's wallet-event seq already read; billing's events from before this are not sent
    # (the fan-out only sends events newer than the webhook anyway).
    op.execute("INSERT INTO jobs.webhook_cursor (name, change_id) VALUES ('wallet', 0)")


def downgrade() -> None:
    op.execute("DELETE FROM jobs.webhook_cursor WHERE name = 'wallet'")
    op.execute("DELETE FROM jobs.webhook_deliveries WHERE job_id IS NULL")
    op.alter_column('webhook_deliveries', 'job_id', existing_type=sa.UUID(), nullable=False, schema='jobs')
