"""an attempt's end written from the lease's copy of its job: the check that the job is unchanged

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 08:30:00.000000
"""
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A completion decided from the copy of its jobs the lease returned writes them only if none
    # changed since (their row version, `xmin`, is the lease's): otherwise the whole statement
    # fails with this SQLSTATE and the completion reads the jobs under lock instead (runsql.py).
    op.execute("""
        CREATE FUNCTION jobs.unchanged_since_lease(expected bigint, written bigint) RETURNS bigint
        LANGUAGE plpgsql AS $$
        BEGIN
            IF written <> expected THEN
                RAISE EXCEPTION 'a job changed since its lease (% of % unchanged)', written, expected
                    USING ERRCODE = 'IJ001';
            END IF;
            RETURN written;
        END $$
    """)
    # An attempt's row is updated once, at its end, in no indexed column: room on its page makes
    # that update HOT (no new index entry), as it was for only a fifth of attempts.
    op.execute("ALTER TABLE jobs.job_attempts SET (fillfactor = 70)")


def downgrade() -> None:
    op.execute("ALTER TABLE jobs.job_attempts RESET (fillfactor)")
    op.execute("DROP FUNCTION jobs.unchanged_since_lease(bigint, bigint)")
