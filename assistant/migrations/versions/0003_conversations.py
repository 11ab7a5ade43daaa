"""Conversations: a table of conversations, and each answer's conversation, standalone question and inferred
filters.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("collection", sa.String(128), nullable=False),
        sa.Column("title", sa.Text),
    )
    # SQLite cannot add a foreign key in place: batch mode copies the table (feedback rows keep their answers)
    with op.batch_alter_table("answers") as batch:
        batch.add_column(sa.Column("conversation_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("standalone_question", sa.Text, nullable=True))
        batch.add_column(sa.Column("inferred_filters", sa.JSON, nullable=True))
        batch.create_foreign_key("fk_answers_conversation_id", "conversations", ["conversation_id"], ["id"])
        batch.create_index("ix_answers_conversation_id", ["conversation_id"])


def downgrade() -> None:
    with op.batch_alter_table("answers") as batch:
        batch.drop_index("ix_answers_conversation_id")
        batch.drop_constraint("fk_answers_conversation_id", type_="foreignkey")
        batch.drop_column("inferred_filters")
        batch.drop_column("standalone_question")
        batch.drop_column("conversation_id")
    op.drop_table("conversations")
