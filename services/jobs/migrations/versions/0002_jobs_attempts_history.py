"""jobs, attempts, status history

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 13:13:17.534541
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('job_attempts',
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('lease_id', sa.UUID(), nullable=False),
    sa.Column('runner_id', sa.String(length=200), nullable=False),
    sa.Column('outcome', sa.SmallInteger(), nullable=False),
    sa.Column('start_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('end_time', postgresql.TIMESTAMP(timezone=True), nullable=True),
    sa.Column('error', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('actual_cost_cents', sa.BigInteger(), nullable=True),
    sa.Column('details', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.PrimaryKeyConstraint('job_id', 'attempt', name=op.f('pk_job_attempts')),
    schema='jobs'
    )
    op.create_table('job_status_changes',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('status', sa.SmallInteger(), nullable=False),
    sa.Column('time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_status_changes')),
    schema='jobs'
    )
    op.create_index(op.f('ix_job_status_changes_job_id_id'), 'job_status_changes', ['job_id', 'id'], unique=False, schema='jobs')
    op.create_table('jobs',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('project_id', sa.UUID(), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('reseller_id', sa.UUID(), nullable=True),
    sa.Column('job_type_id', sa.UUID(), nullable=False),
    sa.Column('job_type_name', sa.String(length=100), nullable=False),
    sa.Column('queue_name', sa.String(length=400), nullable=False),
    sa.Column('status', sa.SmallInteger(), nullable=False),
    sa.Column('priority', sa.SmallInteger(), nullable=False),
    sa.Column('retry_max_attempts', sa.Integer(), nullable=False),
    sa.Column('retry_initial_interval_seconds', sa.Integer(), nullable=False),
    sa.Column('retry_backoff_multiplier', sa.Double(), nullable=False),
    sa.Column('retry_max_interval_seconds', sa.Integer(), nullable=False),
    sa.Column('non_retryable_error_types', postgresql.ARRAY(sa.String(length=200)), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('persistence_policy', sa.SmallInteger(), nullable=False),
    sa.Column('settings', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('result', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('error_type', sa.String(length=200), nullable=False),
    sa.Column('runner_id', sa.String(length=200), nullable=False),
    sa.Column('attempt_count', sa.Integer(), nullable=False),
    sa.Column('next_attempt_time', postgresql.TIMESTAMP(timezone=True), nullable=True),
    sa.Column('cost_cents', sa.BigInteger(), nullable=False),
    sa.Column('estimated_cost_cents', sa.BigInteger(), nullable=False),
    sa.Column('currency_code', sa.String(length=3), nullable=False),
    sa.Column('hold_id', sa.String(length=100), nullable=False),
    sa.Column('retry_count', sa.Integer(), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('schedule_time', postgresql.TIMESTAMP(timezone=True), nullable=True),
    sa.Column('queue_time', postgresql.TIMESTAMP(timezone=True), nullable=True),
    sa.Column('start_time', postgresql.TIMESTAMP(timezone=True), nullable=True),
    sa.Column('complete_time', postgresql.TIMESTAMP(timezone=True), nullable=True),
    sa.Column('update_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('request_id', sa.String(length=200), nullable=False),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('cancel_reason', sa.Text(), nullable=False),
    sa.Column('cancel_time', postgresql.TIMESTAMP(timezone=True), nullable=True),
    sa.Column('lease_id', sa.UUID(), nullable=True),
    sa.Column('lease_session_id', sa.String(length=200), nullable=False),
    sa.Column('lease_start_time', postgresql.TIMESTAMP(timezone=True), nullable=True),
    sa.Column('lease_expire_time', postgresql.TIMESTAMP(timezone=True), nullable=True),
    sa.Column('progress', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('dead_lettered', sa.Boolean(), nullable=False),
    sa.Column('dead_letter_time', postgresql.TIMESTAMP(timezone=True), nullable=True),
    sa.Column('encryption', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('trace_context', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('purged', sa.Boolean(), nullable=False),
    sa.CheckConstraint('persistence_policy BETWEEN 1 AND 4', name=op.f('ck_jobs_persistence_known')),
    sa.CheckConstraint('priority BETWEEN 1 AND 4', name=op.f('ck_jobs_priority_known')),
    sa.CheckConstraint('status BETWEEN 1 AND 6', name=op.f('ck_jobs_status_known')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs')),
    schema='jobs'
    )
    op.create_index(op.f('ix_jobs_complete_time'), 'jobs', ['complete_time'], unique=False, schema='jobs', postgresql_where=sa.text('complete_time IS NOT NULL'))
    op.create_index(op.f('ix_jobs_create_time_id'), 'jobs', ['create_time', 'id'], unique=False, schema='jobs')
    op.create_index(op.f('ix_jobs_customer_id_create_time_id'), 'jobs', ['customer_id', 'create_time', 'id'], unique=False, schema='jobs')
    op.create_index(op.f('ix_jobs_job_type_id_status'), 'jobs', ['job_type_id', 'status'], unique=False, schema='jobs')
    op.create_index(op.f('ix_jobs_project_id_create_time_id'), 'jobs', ['project_id', 'create_time', 'id'], unique=False, schema='jobs')
    op.create_index(op.f('ix_jobs_project_id_dead_letter_time_id'), 'jobs', ['project_id', 'dead_letter_time', 'id'], unique=False, schema='jobs', postgresql_where=sa.text('dead_lettered'))
    op.create_index(op.f('ix_jobs_reseller_id_create_time_id'), 'jobs', ['reseller_id', 'create_time', 'id'], unique=False, schema='jobs')
    op.create_index(op.f('ix_jobs_status_lease_expire_time'), 'jobs', ['status', 'lease_expire_time'], unique=False, schema='jobs')
    op.create_table('submit_intents',
    sa.Column('hold_id', sa.String(length=100), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('hold_id', name=op.f('pk_submit_intents')),
    schema='jobs'
    )
    op.create_index(op.f('ix_submit_intents_create_time'), 'submit_intents', ['create_time'], unique=False, schema='jobs')


def downgrade() -> None:
    op.drop_index(op.f('ix_submit_intents_create_time'), table_name='submit_intents', schema='jobs')
    op.drop_table('submit_intents', schema='jobs')
    op.drop_index(op.f('ix_jobs_status_lease_expire_time'), table_name='jobs', schema='jobs')
    op.drop_index(op.f('ix_jobs_reseller_id_create_time_id'), table_name='jobs', schema='jobs')
    op.drop_index(op.f('ix_jobs_project_id_dead_letter_time_id'), table_name='jobs', schema='jobs', postgresql_where=sa.text('dead_lettered'))
    op.drop_index(op.f('ix_jobs_project_id_create_time_id'), table_name='jobs', schema='jobs')
    op.drop_index(op.f('ix_jobs_job_type_id_status'), table_name='jobs', schema='jobs')
    op.drop_index(op.f('ix_jobs_customer_id_create_time_id'), table_name='jobs', schema='jobs')
    op.drop_index(op.f('ix_jobs_create_time_id'), table_name='jobs', schema='jobs')
    op.drop_index(op.f('ix_jobs_complete_time'), table_name='jobs', schema='jobs', postgresql_where=sa.text('complete_time IS NOT NULL'))
    op.drop_table('jobs', schema='jobs')
    op.drop_index(op.f('ix_job_status_changes_job_id_id'), table_name='job_status_changes', schema='jobs')
    op.drop_table('job_status_changes', schema='jobs')
    op.drop_table('job_attempts', schema='jobs')
