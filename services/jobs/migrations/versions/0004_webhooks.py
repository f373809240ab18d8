"""webhooks per project, their deliveries and the fan-out cursor

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 06:39:50.873008
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('webhook_cursor',
    sa.Column('name', sa.String(length=40), nullable=False),
    sa.Column('change_id', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_webhook_cursor')),
    schema='jobs'
    )
    # The fan-out starts at the present: history before webhooks existed is not sent.
    op.execute("INSERT INTO jobs.webhook_cursor (name, change_id) "
               "SELECT 'deliveries', COALESCE(max(id), 0) FROM jobs.job_status_changes")
    op.create_table('webhook_deliveries',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('webhook_id', sa.UUID(), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('change_id', sa.BigInteger(), nullable=False),
    sa.Column('event_type', sa.String(length=40), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('state', sa.SmallInteger(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_status_code', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=False),
    sa.Column('next_attempt_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('last_attempt_time', postgresql.TIMESTAMP(timezone=True), nullable=True),
    sa.Column('expire_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.CheckConstraint('state BETWEEN 1 AND 3', name=op.f('ck_webhook_deliveries_state_known')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries')),
    schema='jobs'
    )
    op.create_index(op.f('ix_webhook_deliveries_webhook_id_next_attempt_time'), 'webhook_deliveries', ['webhook_id', 'next_attempt_time'], unique=False, schema='jobs', postgresql_where=sa.text('state = 1'))
    op.create_index(op.f('ix_webhook_deliveries_webhook_id_change_id_event_type'), 'webhook_deliveries', ['webhook_id', 'change_id', 'event_type'], unique=True, schema='jobs')
    op.create_index(op.f('ix_webhook_deliveries_webhook_id_create_time_id'), 'webhook_deliveries', ['webhook_id', 'create_time', 'id'], unique=False, schema='jobs')
    op.create_table('webhooks',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('project_id', sa.UUID(), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('reseller_id', sa.UUID(), nullable=True),
    sa.Column('url', sa.String(length=2048), nullable=False),
    sa.Column('events', postgresql.ARRAY(sa.String(length=40)), nullable=False),
    sa.Column('description', sa.String(length=200), nullable=False),
    sa.Column('sealed_secret', sa.LargeBinary(), nullable=False),
    sa.Column('secret_fingerprint', sa.String(length=8), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhooks')),
    schema='jobs'
    )
    op.create_index(op.f('ix_webhooks_customer_id'), 'webhooks', ['customer_id'], unique=False, schema='jobs')
    op.create_index(op.f('ix_webhooks_project_id_create_time_id'), 'webhooks', ['project_id', 'create_time', 'id'], unique=False, schema='jobs')


def downgrade() -> None:
    op.drop_index(op.f('ix_webhooks_project_id_create_time_id'), table_name='webhooks', schema='jobs')
    op.drop_index(op.f('ix_webhooks_customer_id'), table_name='webhooks', schema='jobs')
    op.drop_table('webhooks', schema='jobs')
    op.drop_index(op.f('ix_webhook_deliveries_webhook_id_create_time_id'), table_name='webhook_deliveries', schema='jobs')
    op.drop_index(op.f('ix_webhook_deliveries_webhook_id_change_id_event_type'), table_name='webhook_deliveries', schema='jobs')
    op.drop_index(op.f('ix_webhook_deliveries_webhook_id_next_attempt_time'), table_name='webhook_deliveries', schema='jobs', postgresql_where=sa.text('state = 1'))
    op.drop_table('webhook_deliveries', schema='jobs')
    op.drop_table('webhook_cursor', schema='jobs')
