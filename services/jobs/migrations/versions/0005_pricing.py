"""catalog job types (no project), their price versions, resellers' markups per customer

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 09:20:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A catalog type is the operator's: no project, customer or reseller.
    op.alter_column('job_types', 'project_id', existing_type=sa.UUID(), nullable=True, schema='jobs')
    op.alter_column('job_types', 'customer_id', existing_type=sa.UUID(), nullable=True, schema='jobs')
    op.add_column('job_types', sa.Column('catalog', sa.Boolean(), server_default=sa.text('false'), nullable=False),
                  schema='jobs')
    op.create_check_constraint('ck_job_types_catalog_has_no_owner', 'job_types',
                               '(catalog AND project_id IS NULL AND customer_id IS NULL) OR '
                               '(NOT catalog AND project_id IS NOT NULL AND customer_id IS NOT NULL)', schema='jobs')
    op.create_index('ix_job_types_catalog_name', 'job_types', ['name'], unique=True, schema='jobs',
                    postgresql_where=sa.text('catalog'))
    op.create_table('job_type_prices',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('job_type_id', sa.UUID(), nullable=False),
    sa.Column('currency_code', sa.String(length=3), nullable=False),
    sa.Column('model', sa.SmallInteger(), nullable=False),
    sa.Column('unit_price_cents', sa.BigInteger(), nullable=False),
    sa.Column('cap_cents', sa.BigInteger(), nullable=False),
    sa.Column('effective_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.Column('create_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.CheckConstraint('model BETWEEN 1 AND 3', name=op.f('ck_job_type_prices_model_known')),
    sa.CheckConstraint('unit_price_cents >= 0 AND cap_cents >= 0', name=op.f('ck_job_type_prices_not_negative')),
    sa.ForeignKeyConstraint(['job_type_id'], ['jobs.job_types.id'], name=op.f('fk_job_type_prices_job_type_id_job_types'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_type_prices')),
    schema='jobs'
    )
    op.create_index(op.f('ix_job_type_prices_job_type_id_currency_code_effective_time'), 'job_type_prices',
                    ['job_type_id', 'currency_code', 'effective_time'], unique=False, schema='jobs')
    op.create_table('price_markups',
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('reseller_id', sa.UUID(), nullable=True),
    sa.Column('markup_bps', sa.Integer(), nullable=False),
    sa.Column('update_time', postgresql.TIMESTAMP(timezone=True), nullable=False),
    sa.CheckConstraint('markup_bps BETWEEN -10000 AND 100000', name=op.f('ck_price_markups_markup_in_range')),
    sa.PrimaryKeyConstraint('customer_id', name=op.f('pk_price_markups')),
    schema='jobs'
    )


def downgrade() -> None:
    op.drop_table('price_markups', schema='jobs')
    op.drop_index(op.f('ix_job_type_prices_job_type_id_currency_code_effective_time'), table_name='job_type_prices', schema='jobs')
    op.drop_table('job_type_prices', schema='jobs')
    op.drop_index('ix_job_types_catalog_name', table_name='job_types', schema='jobs')
    op.drop_constraint('ck_job_types_catalog_has_no_owner', 'job_types', schema='jobs')
    op.drop_column('job_types', 'catalog', schema='jobs')
    op.execute("DELETE FROM jobs.job_types WHERE project_id IS NULL")
    op.alter_column('job_types', 'customer_id', existing_type=sa.UUID(), nullable=False, schema='jobs')
    op.alter_column('job_types', 'project_id', existing_type=sa.UUID(), nullable=False, schema='jobs')
