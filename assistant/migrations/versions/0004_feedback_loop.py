"""Rich feedback (user, segment, reason, correction, per-citation marks; one vote per user and answer) and, on
each answer, the model versions that served it and the feedback memory's effect on its ranking.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("user_id", sa.String(200), nullable=False, server_default="anonymous"))
        batch.add_column(sa.Column("segment", sa.String(100), nullable=True))
        batch.add_column(sa.Column("reason", sa.String(32), nullable=True))
        batch.add_column(sa.Column("correction", sa.Text, nullable=True))
        batch.add_column(sa.Column("citation_marks", sa.JSON, nullable=True))
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    # votes given before users were known stay apart: each becomes its own (legacy) voter
    op.execute("UPDATE feedback SET user_id = 'legacy-' || id")
    op.create_index("uq_feedback_answer_user", "feedback", ["answer_id", "user_id"], unique=True)
    with op.batch_alter_table("answers") as batch:
        batch.add_column(sa.Column("versions", sa.JSON, nullable=True))
        batch.add_column(sa.Column("memory", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("answers") as batch:
        batch.drop_column("memory")
        batch.drop_column("versions")
    op.drop_index("uq_feedback_answer_user", table_name="feedback")
    with op.batch_alter_table("feedback") as batch:
        for column in ("updated_at", "citation_marks", "correction", "reason", "segment", "user_id"):
            batch.drop_column(column)
