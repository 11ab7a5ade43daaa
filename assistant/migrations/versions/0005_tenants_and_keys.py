"""Tenants and API keys: hashed API keys, the owner of each collection, and the tenant of every answer,
conversation and vote (rows written before tenants existed are the default tenant's).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SCOPED = ("answers", "conversations", "feedback")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("rate_limit_per_minute", sa.Float, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant"])
    op.create_table(
        "collection_owners",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_collection_owners_tenant", "collection_owners", ["tenant"])
    for table in SCOPED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("tenant", sa.String(63), nullable=False, server_default="default"))
        op.create_index(f"ix_{table}_tenant", table, ["tenant"])


def downgrade() -> None:
    for table in SCOPED:
        op.drop_index(f"ix_{table}_tenant", table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("tenant")
    op.drop_index("ix_collection_owners_tenant", table_name="collection_owners")
    op.drop_table("collection_owners")
    op.drop_index("ix_api_keys_tenant", table_name="api_keys")
    op.drop_table("api_keys")
