"""wallet opening outbox

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 10:50:24.508325
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('wallet_openings',
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('reseller_id', sa.UUID(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('customer_id', name=op.f('pk_wallet_openings')),
    schema='tenancy'
    )
    op.create_index(op.f('ix_wallet_openings_next_attempt_time'), 'wallet_openings', ['next_attempt_time'], unique=False, schema='tenancy')


def downgrade() -> None:
    op.drop_index(op.f('ix_wallet_openings_next_attempt_time'), table_name='wallet_openings', schema='tenancy')
    op.drop_table('wallet_openings', schema='tenancy')
