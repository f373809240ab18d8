"""money: refunds and adjustments are idempotent per wallet; refunds and captures found by job

Revision ID: 0002_money
Revises: 0001
Create Date: 2026-12-05 06:50:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002_money'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('uq_transfers_money_request', 'transfers', ['wallet_id', 'request_id'], unique=True,
                    schema='billing', postgresql_where=sa.text('kind IN (6, 7)'))
    op.create_index('ix_transfers_refund_job', 'transfers', ['wallet_id', 'job_id'], unique=False,
                    schema='billing', postgresql_where=sa.text('kind = 6'))
    op.create_index(op.f('ix_holds_customer_id_job_id'), 'holds', ['customer_id', 'job_id'], unique=False,
                    schema='billing')
    op.create_index(op.f('ix_transfers_wallet_id_create_time'), 'transfers', ['wallet_id', 'create_time'],
                    unique=False, schema='billing')


def downgrade() -> None:
    op.drop_index(op.f('ix_transfers_wallet_id_create_time'), table_name='transfers', schema='billing')
    op.drop_index(op.f('ix_holds_customer_id_job_id'), table_name='holds', schema='billing')
    op.drop_index('ix_transfers_refund_job', table_name='transfers', schema='billing',
                  postgresql_where=sa.text('kind = 6'))
    op.drop_index('uq_transfers_money_request', table_name='transfers', schema='billing',
                  postgresql_where=sa.text('kind IN (6, 7)'))
