"""wallet events on notification channels: deliveries of billing's events and the feed's cursor

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 12:15:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('wallet_event_cursor',
    sa.Column('name', sa.String(length=40), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_wallet_event_cursor')),
    schema='keys'
    )
    # From billing's first event: only events younger than a subscribing channel are delivered.
    op.execute("INSERT INTO keys.wallet_event_cursor (name, seq) VALUES ('billing', 0)")
    op.alter_column('deliveries', 'record_id', existing_type=sa.UUID(), nullable=True, schema='keys')
    op.add_column('deliveries', sa.Column('wallet_event', sa.LargeBinary(), nullable=True), schema='keys')


def downgrade() -> None:
    op.execute("DELETE FROM keys.deliveries WHERE record_id IS NULL")
    op.drop_column('deliveries', 'wallet_event', schema='keys')
    op.alter_column('deliveries', 'record_id', existing_type=sa.UUID(), nullable=False, schema='keys')
    op.drop_table('wallet_event_cursor', schema='keys')
