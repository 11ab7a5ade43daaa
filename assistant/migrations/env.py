"""Alembic environment: runs on the connection handed over by assistant.db.migrate()."""

from alembic import context

from assistant.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only assistant.db.migrate() runs migrations
    raise RuntimeError("run migrations through assistant.db.migrate()")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
