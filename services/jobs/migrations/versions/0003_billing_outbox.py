"""billing outbox (captures and releases of attempt endings, settled after their commit); waiting jobs by update time; status indexes narrowed; hold expiry per job

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 05:10:00.000000
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('billing_outbox',
    sa.Column('hold_id', sa.String(length=100), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('amount_cents', sa.BigInteger(), nullable=True),
    sa.Column('held_cents', sa.BigInteger(), nullable=False),
    sa.Column('over_capture_policy', sa.SmallInteger(), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('next_try_time', postgresql.TIMESTAMP(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), server_default=sa.text("''"), nullable=False),
    sa.PrimaryKeyConstraint('hold_id', name=op.f('pk_billing_outbox')),
    schema='jobs'
    )
    op.create_index(op.f('ix_billing_outbox_create_time'), 'billing_outbox', ['create_time'], unique=False,
                    schema='jobs')
    op.create_index(op.f('ix_jobs_update_time'), 'jobs', ['update_time'], unique=False, schema='jobs',
                    postgresql_where=sa.text('status IN (1, 6)'))
    op.add_column('jobs', sa.Column('hold_expire_time', postgresql.TIMESTAMP(timezone=True), nullable=True),
                  schema='jobs')
    op.execute("UPDATE jobs.jobs SET hold_expire_time = COALESCE(schedule_time, create_time) + interval '7 days' "
               "WHERE hold_id <> '' AND status IN (1, 2, 6)")  # what submits reserved until now
    op.create_index(op.f('ix_jobs_hold_expire_time'), 'jobs', ['hold_expire_time'], unique=False, schema='jobs',
                    postgresql_where=sa.text('status IN (1, 2, 6)'))
    # Indexes narrowed to the statuses their queries ask for: finished jobs take no entries.
    op.drop_index('ix_jobs_job_type_id_status', table_name='jobs', schema='jobs')
    op.drop_index('ix_jobs_status_lease_expire_time', table_name='jobs', schema='jobs')
    op.create_index('ix_jobs_job_type_id_unfinished', 'jobs', ['job_type_id'], unique=False, schema='jobs',
                    postgresql_where=sa.text('status IN (1, 2, 6)'))
    op.create_index('ix_jobs_lease_expire_time_running', 'jobs', ['lease_expire_time'], unique=False,
                    schema='jobs', postgresql_where=sa.text('status = 2'))


def downgrade() -> None:
    op.drop_index(op.f('ix_jobs_hold_expire_time'), table_name='jobs', schema='jobs',
                  postgresql_where=sa.text('status IN (1, 2, 6)'))
    op.drop_column('jobs', 'hold_expire_time', schema='jobs')
    op.drop_index('ix_jobs_lease_expire_time_running', table_name='jobs', schema='jobs')
    op.drop_index('ix_jobs_job_type_id_unfinished', table_name='jobs', schema='jobs')
    op.create_index('ix_jobs_status_lease_expire_time', 'jobs', ['status', 'lease_expire_time'], unique=False,
                    schema='jobs')
    op.create_index('ix_jobs_job_type_id_status', 'jobs', ['job_type_id', 'status'], unique=False, schema='jobs')
    op.drop_index(op.f('ix_jobs_update_time'), table_name='jobs', schema='jobs',
                  postgresql_where=sa.text('status IN (1, 6)'))
    op.drop_index(op.f('ix_billing_outbox_create_time'), table_name='billing_outbox', schema='jobs')
    op.drop_table('billing_outbox', schema='jobs')
