"""rewrap leases: a replica claims a project key version or data key before rewrapping it

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05 05:00:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('project_key_versions', sa.Column('rewrap_lease_until', postgresql.TIMESTAMP(timezone=True),
                                                    nullable=True), schema='keys')
    op.add_column('data_keys', sa.Column('rewrap_lease_until', postgresql.TIMESTAMP(timezone=True), nullable=True),
                  schema='keys')


def downgrade() -> None:
    op.drop_column('data_keys', 'rewrap_lease_until', schema='keys')
    op.drop_column('project_key_versions', 'rewrap_lease_until', schema='keys')
