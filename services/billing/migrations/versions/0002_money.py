"""money: refunds, adjustments, statements and credit grants

Revision ID: 0002_money
Revises: 0001
Create Date: 2026-12-05 06:50:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0002_money'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('uq_transfers_money_request', 'transfers', ['wallet_id', 'request_id'], unique=True,
                    schema='billing', postgresql_where=sa.text('kind IN (6, 7)'))
    op.create_index('ix_transfers_refund_job', 'transfers', ['wallet_id', 'job_id'], unique=False,
                    schema='billing', postgresql_where=sa.text('kind = 6'))
    op.create_index(op.f('ix_holds_customer_id_job_id'), 'holds', ['customer_id', 'job_id'], unique=False,
                    schema='billing')
    op.create_index(op.f('ix_transfers_wallet_id_create_time'), 'transfers', ['wallet_id', 'create_time'],
                    unique=False, schema='billing')
    # Credit grants: a promotion account kind, two transfer kinds, the wallets' promo counter.
    op.drop_constraint(op.f('ck_accounts_kind_known'), 'accounts', schema='billing', type_='check')
    op.create_check_constraint(op.f('ck_accounts_kind_known'), 'accounts', 'kind IN (1, 2, 3, 4, 5)', schema='billing')
    op.drop_constraint(op.f('ck_transfers_kind_known'), 'transfers', schema='billing', type_='check')
    op.create_check_constraint(op.f('ck_transfers_kind_known'), 'transfers', 'kind BETWEEN 1 AND 10', schema='billing')
    op.add_column('accounts', sa.Column('promo', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
                  schema='billing')
    op.create_check_constraint(op.f('ck_accounts_promo_nonnegative'), 'accounts', 'promo >= 0', schema='billing')
    op.create_table('credit_grants',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('wallet_id', sa.UUID(), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('remaining', sa.BigInteger(), nullable=False),
    sa.Column('expired', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.SmallInteger(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('request_id', sa.String(length=200), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('expire_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.CheckConstraint('amount > 0 AND remaining >= 0 AND remaining <= amount AND expired >= 0',
                       name=op.f('ck_credit_grants_amounts_valid')),
    sa.CheckConstraint('status IN (1, 2)', name=op.f('ck_credit_grants_status_known')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credit_grants')),
    schema='billing'
    )
    op.create_index('uq_credit_grants_request', 'credit_grants', ['wallet_id', 'request_id'], unique=True,
                    schema='billing')
    op.create_index('ix_credit_grants_active_expire_time', 'credit_grants', ['expire_time'], unique=False,
                    schema='billing', postgresql_where=sa.text('status = 1'))
    op.create_index(op.f('ix_credit_grants_wallet_id_create_time_id'), 'credit_grants',
                    ['wallet_id', 'create_time', 'id'], unique=False, schema='billing')
    # Low-balance alerts: a threshold per wallet, one event per crossing.
    op.add_column('accounts', sa.Column('low_balance_threshold', sa.BigInteger(), server_default=sa.text('0'),
                                        nullable=False), schema='billing')
    op.add_column('accounts', sa.Column('low_balance_alerted', sa.Boolean(), server_default=sa.text('false'),
                                        nullable=False), schema='billing')
    op.create_check_constraint(op.f('ck_accounts_low_balance_threshold_nonnegative'), 'accounts',
                               'low_balance_threshold >= 0', schema='billing')
    op.create_table('wallet_events',
    sa.Column('seq', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('type', sa.String(length=100), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('wallet_id', sa.UUID(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('available', sa.BigInteger(), nullable=False),
    sa.Column('balance', sa.BigInteger(), nullable=False),
    sa.Column('held', sa.BigInteger(), nullable=False),
    sa.Column('threshold', sa.BigInteger(), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_wallet_events')),
    sa.UniqueConstraint('seq', name=op.f('uq_wallet_events_seq')),
    schema='billing'
    )
    op.create_index(op.f('ix_wallet_events_wallet_id_seq'), 'wallet_events', ['wallet_id', 'seq'], unique=False,
                    schema='billing')
    # Monthly spending limits per customer (wallet) and project.
    op.add_column('accounts', sa.Column('spending_limited', sa.Boolean(), server_default=sa.text('false'),
                                        nullable=False), schema='billing')
    op.add_column('holds', sa.Column('project_id', sa.String(length=200), server_default='', nullable=False),
                  schema='billing')
    op.create_table('spending_limits',
    sa.Column('wallet_id', sa.UUID(), nullable=False),
    sa.Column('project_id', sa.String(length=200), nullable=False),
    sa.Column('monthly_limit', sa.BigInteger(), nullable=False),
    sa.Column('update_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.CheckConstraint('monthly_limit >= 0', name=op.f('ck_spending_limits_limit_nonnegative')),
    sa.PrimaryKeyConstraint('wallet_id', 'project_id', name=op.f('pk_spending_limits')),
    schema='billing'
    )
    # Usage reports: the job's type on its holds, captures by customer and time.
    op.add_column('holds', sa.Column('job_type_id', sa.String(length=200), server_default='', nullable=False),
                  schema='billing')
    op.create_index('ix_holds_captured_customer', 'holds', ['customer_id', 'resolve_time'], unique=False,
                    schema='billing', postgresql_where=sa.text('status = 2'))
    # Multi-currency: operator exchange rates (for converted reports only).
    op.create_table('exchange_rates',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('base', sa.String(length=3), nullable=False),
    sa.Column('quote', sa.String(length=3), nullable=False),
    sa.Column('rate_ppm', sa.BigInteger(), nullable=False),
    sa.Column('effective_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.CheckConstraint('rate_ppm > 0', name=op.f('ck_exchange_rates_rate_positive')),
    sa.CheckConstraint('base <> quote', name=op.f('ck_exchange_rates_distinct_currencies')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_exchange_rates')),
    schema='billing'
    )
    op.create_index(op.f('ix_exchange_rates_base_quote_effective_time'), 'exchange_rates',
                    ['base', 'quote', 'effective_time'], unique=False, schema='billing')
    op.create_index(op.f('ix_exchange_rates_effective_time_id'), 'exchange_rates', ['effective_time', 'id'],
                    unique=False, schema='billing')
    op.create_table('spend_counters',
    sa.Column('wallet_id', sa.UUID(), nullable=False),
    sa.Column('project_id', sa.String(length=200), nullable=False),
    sa.Column('month', sa.String(length=7), nullable=False),
    sa.Column('captured', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('wallet_id', 'project_id', 'month', name=op.f('pk_spend_counters')),
    schema='billing'
    )


def downgrade() -> None:
    op.drop_table('spend_counters', schema='billing')
    op.drop_table('exchange_rates', schema='billing')
    op.drop_index('ix_holds_captured_customer', table_name='holds', schema='billing',
                  postgresql_where=sa.text('status = 2'))
    op.drop_column('holds', 'job_type_id', schema='billing')
    op.drop_table('spending_limits', schema='billing')
    op.drop_column('holds', 'project_id', schema='billing')
    op.drop_column('accounts', 'spending_limited', schema='billing')
    op.drop_table('wallet_events', schema='billing')
    op.drop_constraint(op.f('ck_accounts_low_balance_threshold_nonnegative'), 'accounts', schema='billing',
                       type_='check')
    op.drop_column('accounts', 'low_balance_alerted', schema='billing')
    op.drop_column('accounts', 'low_balance_threshold', schema='billing')
    op.drop_table('credit_grants', schema='billing')
    op.drop_constraint(op.f('ck_accounts_promo_nonnegative'), 'accounts', schema='billing', type_='check')
    op.drop_column('accounts', 'promo', schema='billing')
    op.drop_constraint(op.f('ck_transfers_kind_known'), 'transfers', schema='billing', type_='check')
    op.create_check_constraint(op.f('ck_transfers_kind_known'), 'transfers', 'kind BETWEEN 1 AND 8', schema='billing')
    op.drop_constraint(op.f('ck_accounts_kind_known'), 'accounts', schema='billing', type_='check')
    op.create_check_constraint(op.f('ck_accounts_kind_known'), 'accounts', 'kind IN (1, 2, 3, 4)', schema='billing')
    op.drop_index(op.f('ix_transfers_wallet_id_create_time'), table_name='transfers', schema='billing')
    op.drop_index(op.f('ix_holds_customer_id_job_id'), table_name='holds', schema='billing')
    op.drop_index('ix_transfers_refund_job', table_name='transfers', schema='billing',
                  postgresql_where=sa.text('kind = 6'))
    op.drop_index('uq_transfers_money_request', table_name='transfers', schema='billing',
                  postgresql_where=sa.text('kind IN (6, 7)'))
