"""a joined reserve in its caller's commit: the check that every guard held

Revision ID: 0004_guarded_reserve
Revises: 0003_active_holds
Create Date: 2026-12-07 09:00:00
"""
from alembic import op


revision = '0004_guarded_reserve'
down_revision = '0003_active_holds'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A submit's holds written with its jobs in one round trip, the wallet not read before
    # (ledger.reserve_guarded): the statement ends with this check, and a guard that did not hold
    # (the wallet cannot pay, its spending is limited, a low-balance alert would fire, a hold id
    # exists) fails the whole transaction with this SQLSTATE; the caller then reserves the usual way.
    op.execute("""
        CREATE FUNCTION billing.guards_held(held boolean) RETURNS boolean
        LANGUAGE plpgsql AS $$
        BEGIN
            IF NOT held THEN
                RAISE EXCEPTION 'a guard of a joined reserve did not hold' USING ERRCODE = 'IB001';
            END IF;
            RETURN held;
        END $$
    """)


def downgrade() -> None:
    op.execute("DROP FUNCTION billing.guards_held(boolean)")
