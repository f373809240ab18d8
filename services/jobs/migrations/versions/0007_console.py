"""console: batch cancel/retry records, request id search, dead letters across tenants

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 09:00:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('job_batches',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('project_id', sa.UUID(), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('action', sa.String(length=20), nullable=False),
    sa.Column('filter', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('matched_count', sa.BigInteger(), nullable=False),
    sa.Column('changed_count', sa.BigInteger(), nullable=False),
    sa.Column('skipped_count', sa.BigInteger(), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_batches')),
    schema='jobs'
    )
    op.create_index(op.f('ix_job_batches_project_id_create_time'), 'job_batches', ['project_id', 'create_time'], unique=False, schema='jobs')
    op.create_index('ix_jobs_dead_letter_time_id', 'jobs', ['dead_letter_time', 'id'], unique=False, schema='jobs', postgresql_where=sa.text('dead_lettered'))
    op.create_index('ix_jobs_request_id', 'jobs', ['request_id'], unique=False, schema='jobs', postgresql_where=sa.text("request_id <> ''"))


def downgrade() -> None:
    op.drop_index('ix_jobs_request_id', table_name='jobs', schema='jobs', postgresql_where=sa.text("request_id <> ''"))
    op.drop_index('ix_jobs_dead_letter_time_id', table_name='jobs', schema='jobs', postgresql_where=sa.text('dead_lettered'))
    op.drop_index(op.f('ix_job_batches_project_id_create_time'), table_name='job_batches', schema='jobs')
    op.drop_table('job_batches', schema='jobs')
