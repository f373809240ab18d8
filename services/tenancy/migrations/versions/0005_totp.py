"""second factor: account policies (TOTP required), the last TOTP step a user spent

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 07:00:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('account_policies',
    sa.Column('account_kind', sa.SmallInteger(), nullable=False),
    sa.Column('account_id', sa.UUID(), nullable=False),
    sa.Column('require_totp', sa.Boolean(), nullable=False),
    sa.Column('update_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('account_kind', 'account_id', name=op.f('pk_account_policies')),
    schema='tenancy'
    )
    op.add_column('users', sa.Column('totp_last_step', sa.BigInteger(), nullable=True), schema='tenancy')


def downgrade() -> None:
    op.drop_column('users', 'totp_last_step', schema='tenancy')
    op.drop_table('account_policies', schema='tenancy')
