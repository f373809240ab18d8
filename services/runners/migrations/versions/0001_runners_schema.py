"""runners schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-23 13:13:51.196674
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
    schema='runners'
    )
    op.create_table('runners',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('scope', sa.SmallInteger(), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=True),
    sa.Column('status', sa.SmallInteger(), nullable=False),
    sa.Column('maintenance', sa.Boolean(), nullable=False),
    sa.Column('allowed_processors', postgresql.ARRAY(sa.String(length=200)), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('processors', postgresql.ARRAY(sa.String(length=200)), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('tags', postgresql.ARRAY(sa.String(length=64)), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('max_concurrent_jobs', sa.Integer(), nullable=False),
    sa.Column('version', sa.String(length=100), nullable=False),
    sa.Column('hostname', sa.String(length=255), nullable=False),
    sa.Column('session_id', sa.String(length=64), nullable=True),
    sa.Column('token_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('token_prefix', sa.String(length=16), nullable=False),
    sa.Column('last_heartbeat_time', postgresql.TIMESTAMP(timezone=True), nullable=True),
    sa.Column('connect_time', postgresql.TIMESTAMP(timezone=True), nullable=True),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('update_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.CheckConstraint('(scope = 2) = (customer_id IS NOT NULL)', name=op.f('ck_runners_customer_iff_customer_scope')),
    sa.CheckConstraint('scope IN (1, 2)', name=op.f('ck_runners_scope_known')),
    sa.CheckConstraint('status IN (1, 2, 3, 4)', name=op.f('ck_runners_status_known')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runners')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_runners_token_hash')),
    schema='runners'
    )
    op.create_index(op.f('ix_runners_create_time_id'), 'runners', ['create_time', 'id'], unique=False, schema='runners')
    op.create_index(op.f('ix_runners_customer_id_create_time_id'), 'runners', ['customer_id', 'create_time', 'id'], unique=False, schema='runners')


def downgrade() -> None:
    op.drop_index(op.f('ix_runners_customer_id_create_time_id'), table_name='runners', schema='runners')
    op.drop_index(op.f('ix_runners_create_time_id'), table_name='runners', schema='runners')
    op.drop_table('runners', schema='runners')
    op.drop_table('idempotency_keys', schema='runners')
