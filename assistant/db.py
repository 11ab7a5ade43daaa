"""The relational database: answers, conversations, feedback, the document registry, API keys and tenants.

SQLite under DATA_DIR by default (WAL mode, busy timeout, foreign keys on); PostgreSQL for replicated
deployments (DATABASE_URL=postgresql+psycopg://user:pass@host:5432/finrag, a pooled engine; a bare
`postgresql://` URL uses psycopg too). The schema is owned by Alembic migrations in
`assistant/migrations/versions`, applied on start-up by `connect()` (on PostgreSQL under an advisory lock, so
replicas starting together migrate once); the table objects below mirror the latest migration. The queries in
`records`, `conversations`, `memory` and the exporter are plain SQLAlchemy Core, the same on both databases.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from .errors import InvalidCollectionName

log = logging.getLogger(__name__)

COLLECTION_CHARS = 128  # the collection columns: PostgreSQL refuses longer values where SQLite would keep them
TENANT_CHARS = 63

metadata = sa.MetaData()

documents = sa.Table(
    "documents",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # doc_id: stable per (collection, path)
    sa.Column("collection", sa.String(COLLECTION_CHARS), nullable=False, index=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("title", sa.Text),
    sa.Column("doc_type", sa.String(32), nullable=False),
    sa.Column("file_hash", sa.String(64), nullable=False),
    sa.Column("size_bytes", sa.Integer, nullable=False),
    sa.Column("pages", sa.Integer),
    sa.Column("chunks", sa.Integer, nullable=False),
    sa.Column("indexed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("pipeline", sa.String(64), nullable=False, server_default=""),  # see ingest.pipeline
)

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, index=True),  # its latest answer
    sa.Column("collection", sa.String(COLLECTION_CHARS), nullable=False),
    sa.Column("title", sa.Text),  # the first question, truncated
    sa.Column("tenant", sa.String(TENANT_CHARS), nullable=False, server_default="default", index=True),
)

answers = sa.Table(
    "answers",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("collection", sa.String(COLLECTION_CHARS), nullable=False),
    sa.Column("question", sa.Text, nullable=False),
    sa.Column("answer", sa.Text, nullable=False),
    sa.Column("refused", sa.Boolean, nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("prompt_version", sa.String(64), nullable=False),
    sa.Column("embedder", sa.String(200), nullable=False),
    sa.Column("filters", sa.JSON),
    sa.Column("retrieved", sa.JSON, nullable=False),  # [{point_id, source, pages, section, score}]
    sa.Column("citations", sa.JSON, nullable=False),  # [{n, point_id, source, pages, section, score}]
    sa.Column("latency_ms", sa.Integer, nullable=False),
    sa.Column("timings", sa.JSON),
    sa.Column("conversation_id", sa.String(36), sa.ForeignKey("conversations.id", name="fk_answers_conversation_id"),
              index=True),
    sa.Column("standalone_question", sa.Text),  # what retrieval and the LLM saw, when it was rewritten
    sa.Column("inferred_filters", sa.JSON),  # what retrieval kept to because the question named it
    sa.Column("versions", sa.JSON),  # {embedder, reranker, index, memory}: what served it (assistant/learn.py)
    sa.Column("memory", sa.JSON),  # [{feedback_id, similarity, point_id, effect}]: feedback that moved its ranking
    sa.Column("tenant", sa.String(TENANT_CHARS), nullable=False, server_default="default", index=True),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("answer_id", sa.String(36), sa.ForeignKey("answers.id"), nullable=False, index=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("rating", sa.String(8), nullable=False),  # up | down
    sa.Column("comment", sa.Text),
    sa.Column("user_id", sa.String(200), nullable=False, server_default="anonymous"),  # one vote per user+answer
    sa.Column("segment", sa.String(100)),  # team or role
    sa.Column("reason", sa.String(32)),  # wrong_answer | wrong_evidence | incomplete | outdated | other
    sa.Column("correction", sa.Text),  # the answer the user says is right
    sa.Column("citation_marks", sa.JSON),  # [{n, point_id, source, section, pages, useful}]
    sa.Column("updated_at", sa.DateTime(timezone=True)),  # when the user changed their vote
    sa.Column("tenant", sa.String(TENANT_CHARS), nullable=False, server_default="default", index=True),
    sa.Index("uq_feedback_answer_user", "answer_id", "user_id", unique=True),
)

api_keys = sa.Table(  # see assistant.keys: only a hash of each key's secret is stored
    "api_keys",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),  # public part of the key, shown in lists and logs
    sa.Column("secret_hash", sa.String(64), nullable=False),  # sha256 of the secret part, hex
    sa.Column("tenant", sa.String(TENANT_CHARS), nullable=False, index=True),
    sa.Column("role", sa.String(16), nullable=False),  # member | admin
    sa.Column("name", sa.String(200), nullable=False),  # what the key is for
    sa.Column("rate_limit_per_minute", sa.Float),  # None: RATE_LIMIT_PER_MINUTE
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
)

collection_owners = sa.Table(  # see assistant.tenancy: a collection without a row is the default tenant's
    "collection_owners",
    metadata,
    sa.Column("name", sa.String(COLLECTION_CHARS), primary_key=True),
    sa.Column("tenant", sa.String(TENANT_CHARS), nullable=False, index=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

MIGRATIONS = Path(__file__).parent / "migrations"


def storable(text: str) -> str:
    """`text` as every database stores it: PostgreSQL refuses NUL characters in text, so they become U+FFFD."""
    return text.replace("\x00", "\ufffd")


def checked_collection(name: str) -> str:
    """`name`, or InvalidCollectionName (422) when it is longer than the collection columns hold."""
    if len(name) > COLLECTION_CHARS:
        raise InvalidCollectionName(
            f"the collection name has {len(name)} characters; collection names have at most {COLLECTION_CHARS}"
        )
    return name


# PostgreSQL connections per process: the API's worker threads share them (a request holds one for a few ms);
# pre-ping drops connections the server or a proxy closed while idle.
POSTGRES_POOL: dict[str, Any] = {"pool_size": 10, "max_overflow": 20, "pool_timeout": 30, "pool_pre_ping": True,
                                 "pool_recycle": 1800}
MIGRATION_LOCK = 0x66696E726167  # pg_advisory_xact_lock key ("finrag"): one migrating replica at a time


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def database_url(url: str) -> sa.URL:
    """`url` parsed; PostgreSQL without a driver named gets psycopg (3), the driver installed with finrag."""
    parsed = sa.make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def connect(url: str, *, connect_timeout_s: int = 10, statement_timeout_s: float = 30.0) -> sa.Engine:
    """An engine on `url` with the schema migrated to the latest version. PostgreSQL connections give up
    connecting after `connect_timeout_s` and cancel a statement after `statement_timeout_s` (0: never;
    DATABASE_CONNECT_TIMEOUT_S, DATABASE_STATEMENT_TIMEOUT_S); migrations run without the statement limit."""
    parsed = database_url(url)
    options: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    elif parsed.get_backend_name() == "postgresql":
        limits: dict[str, Any] = {"connect_timeout": max(1, int(connect_timeout_s))}
        if statement_timeout_s and "options" not in parsed.query:  # options given in the URL win
            limits["options"] = f"-c statement_timeout={int(statement_timeout_s * 1000)}"
        options = {**POSTGRES_POOL, "connect_args": limits}
    engine = sa.create_engine(parsed, **options)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    migrate(engine)
    return engine


def migrate(engine: sa.Engine) -> None:
    """Upgrade the schema to the latest migration.

    On SQLite, foreign keys are off while migrations run: batch migrations copy a table and drop the
    original, which SQLite refuses while other tables' rows reference it. The pragma only takes effect
    outside a transaction; the references are checked before the migration commits.
    On PostgreSQL (transactional DDL) the migration holds an advisory lock until it commits: replicas started
    together wait for the first, then find the schema at the latest version.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        if sqlite:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                if engine.dialect.name == "postgresql":
                    conn.execute(sa.text("SET LOCAL statement_timeout = 0"))  # a long migration, or waiting for one
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise RuntimeError(f"the migrated database has broken references: {broken[:5]}")
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()
