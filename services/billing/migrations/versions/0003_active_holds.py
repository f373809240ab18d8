"""active holds by creation time: the jobs service's sweep for holds of submits that died

Revision ID: 0003_active_holds
Revises: 0002_money
Create Date: 2026-12-05 09:45:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003_active_holds'
down_revision = '0002_money'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_holds_active_create_time', 'holds', ['create_time', 'hold_id'], unique=False,
                    schema='billing', postgresql_where=sa.text('status = 1'))


def downgrade() -> None:
    op.drop_index('ix_holds_active_create_time', table_name='holds', schema='billing',
                  postgresql_where=sa.text('status = 1'))
