"""no submit intents: billing's active holds by creation time tell recovery which submits died

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 10:00:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # An intent left by a submit that died before this upgrade names a hold that is still active
    # and has no job: recovery's first pass over every active hold releases it.
    op.drop_index(op.f('ix_submit_intents_create_time'), table_name='submit_intents', schema='jobs')
    op.drop_table('submit_intents', schema='jobs')


def downgrade() -> None:
    op.create_table('submit_intents',
    sa.Column('hold_id', sa.String(length=100), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('hold_id', name=op.f('pk_submit_intents')),
    schema='jobs'
    )
    op.create_index(op.f('ix_submit_intents_create_time'), 'submit_intents', ['create_time'], unique=False, schema='jobs')
