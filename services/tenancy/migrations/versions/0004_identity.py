"""identity: users, one-time tokens, sessions; API keys with a role and expiry; richer audit events

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 06:50:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

TS = postgresql.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.create_table('users',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('account_kind', sa.SmallInteger(), nullable=False),
    sa.Column('reseller_id', sa.UUID(), nullable=True),
    sa.Column('customer_id', sa.UUID(), nullable=True),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('display_name', sa.String(length=200), nullable=False),
    sa.Column('role', sa.SmallInteger(), nullable=False),
    sa.Column('password_hash', sa.Text(), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('locale', sa.String(length=16), nullable=False),
    sa.Column('time_zone', sa.String(length=64), nullable=False),
    sa.Column('totp_secret', sa.LargeBinary(), nullable=True),
    sa.Column('recovery_codes', postgresql.ARRAY(sa.LargeBinary(length=32)), server_default=sa.text("'{}'"),
              nullable=False),
    sa.Column('failed_logins', sa.Integer(), nullable=False),
    sa.Column('locked_until', TS, nullable=True),
    sa.Column('create_time', TS, nullable=False),
    sa.Column('update_time', TS, nullable=False),
    sa.CheckConstraint('account_kind IN (1, 2, 3)', name=op.f('ck_users_account_kind_known')),
    sa.CheckConstraint('role BETWEEN 1 AND 5', name=op.f('ck_users_role_known')),
    sa.ForeignKeyConstraint(['customer_id'], ['tenancy.customers.id'], name=op.f('fk_users_customer_id_customers'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['reseller_id'], ['tenancy.resellers.id'], name=op.f('fk_users_reseller_id_resellers'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    schema='tenancy'
    )
    # One person, one sign-in name: e-mail addresses are unique across the platform, case-insensitively.
    op.create_index('ux_users_email', 'users', [sa.text('lower(email)')], unique=True, schema='tenancy')
    op.create_index(op.f('ix_users_customer_id_create_time_id'), 'users', ['customer_id', 'create_time', 'id'],
                    unique=False, schema='tenancy')
    op.create_index(op.f('ix_users_reseller_id_create_time_id'), 'users', ['reseller_id', 'create_time', 'id'],
                    unique=False, schema='tenancy')
    op.create_table('user_tokens',
    sa.Column('token_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('user_id', sa.UUID(), nullable=False),
    sa.Column('purpose', sa.String(length=16), nullable=False),
    sa.Column('expire_time', TS, nullable=False),
    sa.Column('use_time', TS, nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['tenancy.users.id'], name=op.f('fk_user_tokens_user_id_users'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_user_tokens')),
    schema='tenancy'
    )
    op.create_index(op.f('ix_user_tokens_user_id'), 'user_tokens', ['user_id'], unique=False, schema='tenancy')
    op.create_table('sessions',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('token_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('user_id', sa.UUID(), nullable=False),
    sa.Column('client_address', sa.String(length=64), nullable=False),
    sa.Column('create_time', TS, nullable=False),
    sa.Column('last_use_time', TS, nullable=False),
    sa.Column('expire_time', TS, nullable=False),
    sa.Column('revoke_time', TS, nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['tenancy.users.id'], name=op.f('fk_sessions_user_id_users'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sessions')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_sessions_token_hash')),
    schema='tenancy'
    )
    op.create_index(op.f('ix_sessions_user_id'), 'sessions', ['user_id'], unique=False, schema='tenancy')
    op.add_column('api_keys', sa.Column('role', sa.SmallInteger(), nullable=True), schema='tenancy')
    op.add_column('api_keys', sa.Column('display_name', sa.String(length=200), server_default='', nullable=False),
                  schema='tenancy')
    op.add_column('api_keys', sa.Column('expire_time', TS, nullable=True), schema='tenancy')
    op.add_column('api_keys', sa.Column('last_use_time', TS, nullable=True), schema='tenancy')
    op.add_column('audit_events', sa.Column('actor_user_id', sa.String(length=64), server_default='', nullable=False),
                  schema='tenancy')
    op.add_column('audit_events', sa.Column('target', sa.String(length=200), server_default='', nullable=False),
                  schema='tenancy')
    op.add_column('audit_events', sa.Column('client_address', sa.String(length=64), server_default='',
                                            nullable=False), schema='tenancy')
    op.add_column('audit_events', sa.Column('request_id', sa.String(length=128), server_default='', nullable=False),
                  schema='tenancy')
    op.create_index(op.f('ix_audit_events_reseller_id_create_time'), 'audit_events', ['reseller_id', 'create_time'],
                    unique=False, schema='tenancy')


def downgrade() -> None:
    op.drop_index(op.f('ix_audit_events_reseller_id_create_time'), table_name='audit_events', schema='tenancy')
    for column in ('request_id', 'client_address', 'target', 'actor_user_id'):
        op.drop_column('audit_events', column, schema='tenancy')
    for column in ('last_use_time', 'expire_time', 'display_name', 'role'):
        op.drop_column('api_keys', column, schema='tenancy')
    op.drop_table('sessions', schema='tenancy')
    op.drop_table('user_tokens', schema='tenancy')
    op.drop_table('users', schema='tenancy')
