"""billing schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-23 10:51:41.316974
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('accounts',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('kind', sa.SmallInteger(), nullable=False),
    sa.Column('owner_id', sa.UUID(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('reseller_id', sa.UUID(), nullable=True),
    sa.Column('credit_limit', sa.BigInteger(), nullable=False),
    sa.Column('debits_posted', sa.BigInteger(), nullable=False),
    sa.Column('credits_posted', sa.BigInteger(), nullable=False),
    sa.Column('debits_pending', sa.BigInteger(), nullable=False),
    sa.Column('credits_pending', sa.BigInteger(), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('update_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name=op.f('ck_accounts_currency_iso')),
    sa.CheckConstraint('credit_limit >= 0', name=op.f('ck_accounts_credit_limit_nonnegative')),
    sa.CheckConstraint('debits_posted >= 0 AND credits_posted >= 0 AND debits_pending >= 0 AND credits_pending >= 0', name=op.f('ck_accounts_counters_nonnegative')),
    sa.CheckConstraint('kind <> 1 OR debits_posted + debits_pending <= credits_posted + credit_limit', name=op.f('ck_accounts_no_overdraft')),
    sa.CheckConstraint('kind IN (1, 2, 3, 4)', name=op.f('ck_accounts_kind_known')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_accounts')),
    schema='billing'
    )
    op.create_index(op.f('ix_accounts_kind_owner_id_currency'), 'accounts', ['kind', 'owner_id', 'currency'], unique=True, schema='billing')
    op.create_table('holds',
    sa.Column('hold_id', sa.String(length=200), nullable=False),
    sa.Column('wallet_id', sa.UUID(), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('job_id', sa.String(length=200), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.SmallInteger(), nullable=False),
    sa.Column('captured', sa.BigInteger(), nullable=False),
    sa.Column('released', sa.BigInteger(), nullable=False),
    sa.Column('commission', sa.BigInteger(), nullable=False),
    sa.Column('reseller_id', sa.UUID(), nullable=True),
    sa.Column('commission_rate_bps', sa.Integer(), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('expire_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('resolve_time', postgresql.TIMESTAMP(timezone=True), nullable=True),
    sa.CheckConstraint('amount > 0', name=op.f('ck_holds_amount_positive')),
    sa.CheckConstraint('captured >= 0 AND released >= 0 AND (status = 1 OR captured + released = amount OR captured > amount)', name=op.f('ck_holds_resolution_sums')),
    sa.CheckConstraint('status BETWEEN 1 AND 4', name=op.f('ck_holds_status_known')),
    sa.PrimaryKeyConstraint('hold_id', name=op.f('pk_holds')),
    schema='billing'
    )
    op.create_index('ix_holds_active_expire_time', 'holds', ['expire_time'], unique=False, schema='billing', postgresql_where=sa.text('status = 1'))
    op.create_index(op.f('ix_holds_wallet_id'), 'holds', ['wallet_id'], unique=False, schema='billing', postgresql_where=sa.text('status = 1'))
    op.create_table('reconciliations',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('trigger', sa.SmallInteger(), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=True),
    sa.Column('dry_run', sa.Boolean(), nullable=False),
    sa.Column('start_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('complete_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('wallets_checked', sa.BigInteger(), nullable=False),
    sa.Column('holds_checked', sa.BigInteger(), nullable=False),
    sa.Column('transfers_checked', sa.BigInteger(), nullable=False),
    sa.Column('consistent', sa.Boolean(), nullable=False),
    sa.Column('findings', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reconciliations')),
    schema='billing'
    )
    op.create_index(op.f('ix_reconciliations_start_time_id'), 'reconciliations', ['start_time', 'id'], unique=False, schema='billing')
    op.create_table('transfers',
    sa.Column('seq', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('kind', sa.SmallInteger(), nullable=False),
    sa.Column('debit_account_id', sa.UUID(), nullable=False),
    sa.Column('credit_account_id', sa.UUID(), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('pending_amount', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('wallet_id', sa.UUID(), nullable=True),
    sa.Column('customer_id', sa.UUID(), nullable=True),
    sa.Column('balance_after', sa.BigInteger(), nullable=False),
    sa.Column('held_after', sa.BigInteger(), nullable=False),
    sa.Column('hold_id', sa.String(length=200), nullable=True),
    sa.Column('job_id', sa.String(length=200), nullable=False),
    sa.Column('request_id', sa.String(length=200), nullable=True),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('reseller_id', sa.UUID(), nullable=True),
    sa.Column('commission_rate_bps', sa.Integer(), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.CheckConstraint('amount > 0 OR (kind = 3 AND amount = 0)', name=op.f('ck_transfers_amount_positive')),
    sa.CheckConstraint('debit_account_id <> credit_account_id', name=op.f('ck_transfers_distinct_accounts')),
    sa.CheckConstraint('kind BETWEEN 1 AND 8', name=op.f('ck_transfers_kind_known')),
    sa.CheckConstraint('kind NOT IN (2, 3, 4, 5) OR hold_id IS NOT NULL', name=op.f('ck_transfers_hold_id_present')),
    sa.CheckConstraint('pending_amount >= 0 AND (kind = 3 OR pending_amount = 0)', name=op.f('ck_transfers_pending_amount_capture')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_transfers')),
    sa.UniqueConstraint('seq', name=op.f('uq_transfers_seq')),
    schema='billing'
    )
    op.create_index(op.f('ix_transfers_reseller_id_create_time'), 'transfers', ['reseller_id', 'create_time'], unique=False, schema='billing', postgresql_where=sa.text('reseller_id IS NOT NULL'))
    op.create_index(op.f('ix_transfers_wallet_id_seq'), 'transfers', ['wallet_id', 'seq'], unique=False, schema='billing')
    op.create_index('uq_transfers_hold_created', 'transfers', ['hold_id'], unique=True, schema='billing', postgresql_where=sa.text('kind = 2'))
    op.create_index('uq_transfers_hold_resolved', 'transfers', ['hold_id'], unique=True, schema='billing', postgresql_where=sa.text('kind IN (3, 4, 5)'))
    op.create_index('uq_transfers_top_up_request', 'transfers', ['credit_account_id', 'request_id'], unique=True, schema='billing', postgresql_where=sa.text('kind = 1'))
    # The journal is append-only: corrections are new transfers, never edits.
    op.execute("""
        CREATE FUNCTION billing.refuse_journal_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'billing.transfers is append-only (% refused)', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$
    """)
    op.execute("""
        CREATE TRIGGER transfers_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON billing.transfers
        FOR EACH STATEMENT EXECUTE FUNCTION billing.refuse_journal_change()
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER transfers_append_only ON billing.transfers")
    op.execute("DROP FUNCTION billing.refuse_journal_change()")
    op.drop_index('uq_transfers_top_up_request', table_name='transfers', schema='billing', postgresql_where=sa.text('kind = 1'))
    op.drop_index('uq_transfers_hold_resolved', table_name='transfers', schema='billing', postgresql_where=sa.text('kind IN (3, 4, 5)'))
    op.drop_index('uq_transfers_hold_created', table_name='transfers', schema='billing', postgresql_where=sa.text('kind = 2'))
    op.drop_index(op.f('ix_transfers_wallet_id_seq'), table_name='transfers', schema='billing')
    op.drop_index(op.f('ix_transfers_reseller_id_create_time'), table_name='transfers', schema='billing', postgresql_where=sa.text('reseller_id IS NOT NULL'))
    op.drop_table('transfers', schema='billing')
    op.drop_index(op.f('ix_reconciliations_start_time_id'), table_name='reconciliations', schema='billing')
    op.drop_table('reconciliations', schema='billing')
    op.drop_index(op.f('ix_holds_wallet_id'), table_name='holds', schema='billing', postgresql_where=sa.text('status = 1'))
    op.drop_index('ix_holds_active_expire_time', table_name='holds', schema='billing', postgresql_where=sa.text('status = 1'))
    op.drop_table('holds', schema='billing')
    op.drop_index(op.f('ix_accounts_kind_owner_id_currency'), table_name='accounts', schema='billing')
    op.drop_table('accounts', schema='billing')
