"""append-only audit events (admin break-glass actions)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 04:45:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_events',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('actor_kind', sa.SmallInteger(), nullable=False),
    sa.Column('actor_key_id', sa.String(length=64), nullable=False),
    sa.Column('reseller_id', sa.UUID(), nullable=True),
    sa.Column('customer_id', sa.UUID(), nullable=True),
    sa.Column('project_id', sa.UUID(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_events')),
    schema='tenancy'
    )
    op.create_index(op.f('ix_audit_events_customer_id_create_time'), 'audit_events', ['customer_id', 'create_time'],
                    unique=False, schema='tenancy')
    # Append-only: the record of a break-glass action must not be editable by the same role that took it.
    op.execute("""
        CREATE FUNCTION tenancy.audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'tenancy.audit_events is append-only (% refused)', TG_OP;
        END $$
    """)
    op.execute("""
        CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON tenancy.audit_events
        FOR EACH ROW EXECUTE FUNCTION tenancy.audit_events_append_only()
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_events_append_only ON tenancy.audit_events")
    op.execute("DROP FUNCTION tenancy.audit_events_append_only()")
    op.drop_index(op.f('ix_audit_events_customer_id_create_time'), table_name='audit_events', schema='tenancy')
    op.drop_table('audit_events', schema='tenancy')
