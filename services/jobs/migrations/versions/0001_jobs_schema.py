"""jobs schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-23 11:28:24.494490
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('idempotency_keys',
    sa.Column('scope', sa.String(length=200), nullable=False),
    sa.Column('request_id', sa.String(length=200), nullable=False),
    sa.Column('request_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('resource_id', sa.UUID(), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('scope', 'request_id', name=op.f('pk_idempotency_keys')),
    schema='jobs'
    )
    op.create_table('job_types',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('project_id', sa.UUID(), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('reseller_id', sa.UUID(), nullable=True),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('default_priority', sa.SmallInteger(), nullable=False),
    sa.Column('retry_max_attempts', sa.Integer(), nullable=False),
    sa.Column('retry_initial_interval_seconds', sa.Integer(), nullable=False),
    sa.Column('retry_backoff_multiplier', sa.Double(), nullable=False),
    sa.Column('retry_max_interval_seconds', sa.Integer(), nullable=False),
    sa.Column('non_retryable_error_types', postgresql.ARRAY(sa.String(length=200)), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('default_persistence_policy', sa.SmallInteger(), nullable=False),
    sa.Column('base_cost_cents', sa.BigInteger(), nullable=False),
    sa.Column('max_cost_cents', sa.BigInteger(), nullable=False),
    sa.Column('currency_code', sa.String(length=3), nullable=False),
    sa.Column('over_capture_policy', sa.SmallInteger(), nullable=False),
    sa.Column('charge_on_failure', sa.Boolean(), nullable=False),
    sa.Column('processor_type', sa.SmallInteger(), nullable=False),
    sa.Column('external_api', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('max_batch_size', sa.Integer(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('required_tags', postgresql.ARRAY(sa.String(length=64)), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('timeout_seconds', sa.Integer(), nullable=False),
    sa.Column('sensitive_fields', postgresql.ARRAY(sa.String(length=200)), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('update_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.CheckConstraint('base_cost_cents >= 0 AND max_cost_cents >= 0', name=op.f('ck_job_types_costs_not_negative')),
    sa.CheckConstraint('default_persistence_policy BETWEEN 1 AND 4', name=op.f('ck_job_types_persistence_known')),
    sa.CheckConstraint('default_priority BETWEEN 1 AND 4', name=op.f('ck_job_types_priority_known')),
    sa.CheckConstraint('processor_type BETWEEN 1 AND 4', name=op.f('ck_job_types_processor_known')),
    sa.CheckConstraint('retry_max_attempts >= 1 AND retry_backoff_multiplier >= 1 AND retry_initial_interval_seconds >= 0 AND retry_max_interval_seconds >= retry_initial_interval_seconds', name=op.f('ck_job_types_retry_policy_sane')),
    sa.CheckConstraint('timeout_seconds > 0', name=op.f('ck_job_types_timeout_positive')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_types')),
    schema='jobs'
    )
    op.create_index(op.f('ix_job_types_create_time_id'), 'job_types', ['create_time', 'id'], unique=False, schema='jobs')
    op.create_index(op.f('ix_job_types_customer_id_create_time_id'), 'job_types', ['customer_id', 'create_time', 'id'], unique=False, schema='jobs')
    op.create_index(op.f('ix_job_types_project_id_create_time_id'), 'job_types', ['project_id', 'create_time', 'id'], unique=False, schema='jobs')
    op.create_index(op.f('ix_job_types_project_id_name'), 'job_types', ['project_id', 'name'], unique=True, schema='jobs')
    op.create_index(op.f('ix_job_types_reseller_id_create_time_id'), 'job_types', ['reseller_id', 'create_time', 'id'], unique=False, schema='jobs')


def downgrade() -> None:
    op.drop_index(op.f('ix_job_types_reseller_id_create_time_id'), table_name='job_types', schema='jobs')
    op.drop_index(op.f('ix_job_types_project_id_name'), table_name='job_types', schema='jobs')
    op.drop_index(op.f('ix_job_types_project_id_create_time_id'), table_name='job_types', schema='jobs')
    op.drop_index(op.f('ix_job_types_customer_id_create_time_id'), table_name='job_types', schema='jobs')
    op.drop_index(op.f('ix_job_types_create_time_id'), table_name='job_types', schema='jobs')
    op.drop_table('job_types', schema='jobs')
    op.drop_table('idempotency_keys', schema='jobs')
