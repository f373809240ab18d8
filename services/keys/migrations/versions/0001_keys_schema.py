"""keys schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-23 13:25:13.443441
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('access_records',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('sequence', sa.BigInteger(), nullable=False),
    sa.Column('type', sa.SmallInteger(), nullable=False),
    sa.Column('access_id', sa.String(length=64), nullable=False),
    sa.Column('project_id', sa.String(length=64), nullable=False),
    sa.Column('job_type_id', sa.String(length=64), nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('processor_id', sa.String(length=128), nullable=False),
    sa.Column('processor_kind', sa.SmallInteger(), nullable=False),
    sa.Column('processor_name', sa.String(length=256), nullable=False),
    sa.Column('purpose', sa.SmallInteger(), nullable=False),
    sa.Column('requested_fields', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('returned_fields', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('client_reference', sa.String(length=256), nullable=False),
    sa.Column('outcome', sa.SmallInteger(), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('key_id', sa.String(length=64), nullable=False),
    sa.Column('client_key_version', sa.Integer(), nullable=False),
    sa.Column('project_key_version', sa.Integer(), nullable=False),
    sa.Column('processing_succeeded', sa.Boolean(), nullable=False),
    sa.Column('duration_ms', sa.BigInteger(), nullable=False),
    sa.Column('output_summary', sa.Text(), nullable=False),
    sa.Column('platform_request_id', sa.String(length=64), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_access_records')),
    schema='keys'
    )
    op.create_index(op.f('ix_access_records_access_id'), 'access_records', ['access_id'], unique=False, schema='keys')
    op.create_index(op.f('ix_access_records_customer_id_job_id'), 'access_records', ['customer_id', 'job_id'], unique=False, schema='keys')
    op.create_index(op.f('ix_access_records_customer_id_sequence'), 'access_records', ['customer_id', 'sequence'], unique=True, schema='keys')
    op.create_table('accesses',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('status', sa.SmallInteger(), nullable=False),
    sa.Column('processor_id', sa.String(length=128), nullable=False),
    sa.Column('context', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('grant_time', postgresql.TIMESTAMP(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_accesses')),
    schema='keys'
    )
    op.create_index(op.f('ix_accesses_status_create_time'), 'accesses', ['status', 'create_time'], unique=False, schema='keys', postgresql_where=sa.text('status IN (1, 2)'))
    op.create_table('chain_heads',
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('sequence', sa.BigInteger(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('customer_id', name=op.f('pk_chain_heads')),
    schema='keys'
    )
    op.create_table('client_key_versions',
    sa.Column('key_id', sa.UUID(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('endpoint_url', sa.String(length=2048), nullable=False),
    sa.Column('external_key_id', sa.String(length=512), nullable=False),
    sa.Column('key_manager_key_version', sa.String(length=128), nullable=False),
    sa.Column('destroyed', sa.Boolean(), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key_id', 'version', name=op.f('pk_client_key_versions')),
    schema='keys'
    )
    op.create_table('client_keys',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('sealed_secrets', sa.LargeBinary(), nullable=False),
    sa.Column('secret_fingerprints', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('policy', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('timeout_ms', sa.Integer(), nullable=False),
    sa.Column('state', sa.SmallInteger(), nullable=False),
    sa.Column('current_version', sa.Integer(), nullable=False),
    sa.Column('min_decryption_version', sa.Integer(), nullable=False),
    sa.Column('last_verify_time', postgresql.TIMESTAMP(timezone=True), nullable=True),
    sa.Column('last_verify_error', sa.Text(), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('update_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('disable_time', postgresql.TIMESTAMP(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_client_keys')),
    schema='keys'
    )
    op.create_index(op.f('ix_client_keys_customer_id_create_time_id'), 'client_keys', ['customer_id', 'create_time', 'id'], unique=False, schema='keys')
    op.create_table('data_keys',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('project_id', sa.String(length=64), nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('key_id', sa.UUID(), nullable=False),
    sa.Column('project_key_version', sa.Integer(), nullable=False),
    sa.Column('wrapped', sa.LargeBinary(), nullable=True),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('update_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_data_keys')),
    sa.UniqueConstraint('job_id', name=op.f('uq_data_keys_job_id')),
    schema='keys'
    )
    op.create_index(op.f('ix_data_keys_project_id_project_key_version'), 'data_keys', ['project_id', 'project_key_version'], unique=False, schema='keys')
    op.create_table('deliveries',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('channel_id', sa.UUID(), nullable=False),
    sa.Column('record_id', sa.UUID(), nullable=False),
    sa.Column('trigger', sa.SmallInteger(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('done', sa.Boolean(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=False),
    sa.Column('next_attempt_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deliveries')),
    schema='keys'
    )
    op.create_index(op.f('ix_deliveries_channel_id'), 'deliveries', ['channel_id'], unique=False, schema='keys')
    op.create_index(op.f('ix_deliveries_next_attempt_time'), 'deliveries', ['next_attempt_time'], unique=False, schema='keys', postgresql_where=sa.text('done = false'))
    op.create_table('idempotency_keys',
    sa.Column('scope', sa.String(length=200), nullable=False),
    sa.Column('request_id', sa.String(length=200), nullable=False),
    sa.Column('request_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('resource_id', sa.UUID(), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('scope', 'request_id', name=op.f('pk_idempotency_keys')),
    schema='keys'
    )
    op.create_table('notification_channels',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('display_name', sa.String(length=200), nullable=False),
    sa.Column('type', sa.SmallInteger(), nullable=False),
    sa.Column('webhook_url', sa.String(length=2048), nullable=False),
    sa.Column('triggers', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('sealed_secret', sa.LargeBinary(), nullable=False),
    sa.Column('secret_fingerprint', sa.String(length=8), nullable=False),
    sa.Column('last_delivery_time', postgresql.TIMESTAMP(timezone=True), nullable=True),
    sa.Column('last_delivery_error', sa.Text(), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notification_channels')),
    schema='keys'
    )
    op.create_index(op.f('ix_notification_channels_customer_id_create_time_id'), 'notification_channels', ['customer_id', 'create_time', 'id'], unique=False, schema='keys')
    op.create_table('project_key_versions',
    sa.Column('project_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('key_id', sa.UUID(), nullable=False),
    sa.Column('client_key_version', sa.Integer(), nullable=False),
    sa.Column('wrapped', sa.LargeBinary(), nullable=True),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('update_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('project_id', 'version', name=op.f('pk_project_key_versions')),
    schema='keys'
    )
    op.create_index(op.f('ix_project_key_versions_key_id_client_key_version'), 'project_key_versions', ['key_id', 'client_key_version'], unique=False, schema='keys')
    op.create_table('project_keys',
    sa.Column('project_id', sa.String(length=64), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('key_id', sa.UUID(), nullable=False),
    sa.Column('current_version', sa.Integer(), nullable=False),
    sa.Column('min_decryption_version', sa.Integer(), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('update_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('project_id', name=op.f('pk_project_keys')),
    schema='keys'
    )
    op.create_index(op.f('ix_project_keys_key_id'), 'project_keys', ['key_id'], unique=False, schema='keys')
    # The access log is append-only: the service never updates or deletes a record, and the
    # database refuses it too (someone able to drop this trigger is what :verify is for).
    op.execute("""
        CREATE FUNCTION keys.access_records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'keys.access_records is append-only'; END $$;
        CREATE TRIGGER access_records_append_only BEFORE UPDATE OR DELETE ON keys.access_records
            FOR EACH ROW EXECUTE FUNCTION keys.access_records_append_only();
    """)
    # ### end Alembic commands ###


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS access_records_append_only ON keys.access_records;"
               " DROP FUNCTION IF EXISTS keys.access_records_append_only();")
    # ### commands auto generated by Alembic - please adjust! ###
    op.drop_index(op.f('ix_project_keys_key_id'), table_name='project_keys', schema='keys')
    op.drop_table('project_keys', schema='keys')
    op.drop_index(op.f('ix_project_key_versions_key_id_client_key_version'), table_name='project_key_versions', schema='keys')
    op.drop_table('project_key_versions', schema='keys')
    op.drop_index(op.f('ix_notification_channels_customer_id_create_time_id'), table_name='notification_channels', schema='keys')
    op.drop_table('notification_channels', schema='keys')
    op.drop_table('idempotency_keys', schema='keys')
    op.drop_index(op.f('ix_deliveries_next_attempt_time'), table_name='deliveries', schema='keys', postgresql_where=sa.text('done = false'))
    op.drop_index(op.f('ix_deliveries_channel_id'), table_name='deliveries', schema='keys')
    op.drop_table('deliveries', schema='keys')
    op.drop_index(op.f('ix_data_keys_project_id_project_key_version'), table_name='data_keys', schema='keys')
    op.drop_table('data_keys', schema='keys')
    op.drop_index(op.f('ix_client_keys_customer_id_create_time_id'), table_name='client_keys', schema='keys')
    op.drop_table('client_keys', schema='keys')
    op.drop_table('client_key_versions', schema='keys')
    op.drop_table('chain_heads', schema='keys')
    op.drop_index(op.f('ix_accesses_status_create_time'), table_name='accesses', schema='keys', postgresql_where=sa.text('status IN (1, 2)'))
    op.drop_table('accesses', schema='keys')
    op.drop_index(op.f('ix_access_records_customer_id_sequence'), table_name='access_records', schema='keys')
    op.drop_index(op.f('ix_access_records_customer_id_job_id'), table_name='access_records', schema='keys')
    op.drop_index(op.f('ix_access_records_access_id'), table_name='access_records', schema='keys')
    op.drop_table('access_records', schema='keys')
    # ### end Alembic commands ###
