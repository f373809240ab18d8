"""tenancy schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-23 10:43:44.636757
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
    schema='tenancy'
    )
    op.create_table('resellers',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('commission_rate_bps', sa.Integer(), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('update_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.CheckConstraint('commission_rate_bps BETWEEN 0 AND 10000', name=op.f('ck_resellers_commission_rate_range')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_resellers')),
    schema='tenancy'
    )
    op.create_table('customers',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('reseller_id', sa.UUID(), nullable=True),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('update_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['reseller_id'], ['tenancy.resellers.id'], name=op.f('fk_customers_reseller_id_resellers'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_customers')),
    schema='tenancy'
    )
    op.create_index(op.f('ix_customers_create_time_id'), 'customers', ['create_time', 'id'], unique=False, schema='tenancy')
    op.create_index(op.f('ix_customers_reseller_id_create_time_id'), 'customers', ['reseller_id', 'create_time', 'id'], unique=False, schema='tenancy')
    op.create_table('api_keys',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('key_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('kind', sa.SmallInteger(), nullable=False),
    sa.Column('reseller_id', sa.UUID(), nullable=True),
    sa.Column('customer_id', sa.UUID(), nullable=True),
    sa.Column('label', sa.String(length=64), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('revoke_time', postgresql.TIMESTAMP(timezone=True), nullable=True),
    sa.CheckConstraint('kind IN (1, 2, 3)', name=op.f('ck_api_keys_kind_known')),
    sa.ForeignKeyConstraint(['customer_id'], ['tenancy.customers.id'], name=op.f('fk_api_keys_customer_id_customers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['reseller_id'], ['tenancy.resellers.id'], name=op.f('fk_api_keys_reseller_id_resellers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_keys_key_hash')),
    schema='tenancy'
    )
    op.create_index(op.f('ix_api_keys_customer_id'), 'api_keys', ['customer_id'], unique=False, schema='tenancy')
    op.create_index(op.f('ix_api_keys_reseller_id'), 'api_keys', ['reseller_id'], unique=False, schema='tenancy')
    op.create_table('projects',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('tags', postgresql.ARRAY(sa.String(length=64)), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('encryption_key_id', sa.String(length=64), nullable=True),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('update_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['tenancy.customers.id'], name=op.f('fk_projects_customer_id_customers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_projects')),
    schema='tenancy'
    )
    op.create_index(op.f('ix_projects_customer_id_create_time_id'), 'projects', ['customer_id', 'create_time', 'id'], unique=False, schema='tenancy')


def downgrade() -> None:
    op.drop_index(op.f('ix_projects_customer_id_create_time_id'), table_name='projects', schema='tenancy')
    op.drop_table('projects', schema='tenancy')
    op.drop_index(op.f('ix_api_keys_reseller_id'), table_name='api_keys', schema='tenancy')
    op.drop_index(op.f('ix_api_keys_customer_id'), table_name='api_keys', schema='tenancy')
    op.drop_table('api_keys', schema='tenancy')
    op.drop_index(op.f('ix_customers_reseller_id_create_time_id'), table_name='customers', schema='tenancy')
    op.drop_index(op.f('ix_customers_create_time_id'), table_name='customers', schema='tenancy')
    op.drop_table('customers', schema='tenancy')
    op.drop_table('resellers', schema='tenancy')
    op.drop_table('idempotency_keys', schema='tenancy')
