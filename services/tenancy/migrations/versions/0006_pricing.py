"""a project's billing currency

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 09:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('projects', sa.Column('billing_currency_code', sa.String(length=3), server_default=sa.text("''"),
                                        nullable=False), schema='tenancy')


def downgrade() -> None:
    op.drop_column('projects', 'billing_currency_code', schema='tenancy')
