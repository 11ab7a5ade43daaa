"""Conversations: the stored history of questions and answers.

`Conversations(engine)`: `start(collection) -> id`, `history(id) -> list[Turn]` (oldest first) and `get(id)`,
read from the `conversations` and `answers` tables; an unknown id raises UnknownConversation (404), a collection
name longer than the tables hold InvalidCollectionName (422).
Follow-up questions are made standalone by `assistant.rewriting.Rewriter`.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from .db import answers, checked_collection, conversations, storable
from .errors import UnknownConversation
from .tenancy import DEFAULT_TENANT

log = logging.getLogger(__name__)

TITLE_CHARS = 80
HISTORY_TURNS = 20


@dataclass(frozen=True)
class Turn:
    question: str  # as the user asked it
    answer: str
    standalone: str | None = None  # the rewritten question, when it was rewritten
    inferred_filters: dict[str, Any] | None = None
    answer_id: str | None = None  # stored turns only
    created_at: datetime | None = None
    citations: list[dict[str, Any]] | None = None  # stored turns: as recorded ({n, point_id, source, pages ...})
    refused: bool | None = None


@dataclass(frozen=True)
class ConversationSummary:
    id: str
    collection: str
    title: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Conversation:
    id: str
    collection: str
    title: str | None
    created_at: datetime
    updated_at: datetime
    turns: list[Turn]


def title_of(question: str, chars: int = TITLE_CHARS) -> str:
    """A conversation's title: its first question, cut at a word boundary to at most `chars` characters."""
    text = " ".join(question.split())
    if len(text) <= chars:
        return text
    cut = text[: chars - 1].rsplit(" ", 1)[0] or text[: chars - 1]
    return cut.rstrip(" ,;:") + "…"


class Conversations:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def start(self, collection: str, title: str | None = None, *, tenant: str = DEFAULT_TENANT) -> str:
        """A new conversation of `tenant`; its title is set by its first recorded answer unless given here."""
        conversation_id = str(uuid.uuid4())
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(sa.insert(conversations).values(
                id=conversation_id, created_at=now, updated_at=now, collection=checked_collection(collection),
                title=title_of(storable(title)) if title else None, tenant=tenant,
            ))
        return conversation_id

    def history(self, conversation_id: str, limit: int = HISTORY_TURNS, *, tenant: str | None = None) -> list[Turn]:
        """The last `limit` turns, oldest first. `tenant`: only its conversations exist (None: any)."""
        with self.engine.connect() as conn:
            self._row(conn, conversation_id, tenant)
            rows = conn.execute(
                sa.select(answers).where(answers.c.conversation_id == conversation_id)
                .order_by(answers.c.created_at.desc(), answers.c.id.desc()).limit(limit)
            ).mappings().all()
        return [_turn(row) for row in reversed(rows)]

    def get(self, conversation_id: str, *, tenant: str | None = None) -> Conversation:
        """The conversation with all its turns, oldest first. `tenant`: only its conversations exist."""
        with self.engine.connect() as conn:
            row = self._row(conn, conversation_id, tenant)
            rows = conn.execute(
                sa.select(answers).where(answers.c.conversation_id == conversation_id)
                .order_by(answers.c.created_at, answers.c.id)
            ).mappings().all()
        return Conversation(row["id"], row["collection"], row["title"], row["created_at"], row["updated_at"],
                            [_turn(r) for r in rows])

    def recent(self, limit: int = 50, collection: str | None = None, *,
               tenant: str | None = None) -> list[ConversationSummary]:
        """Conversations with at least one answer, most recently continued first (`tenant`'s; None: all)."""
        query = sa.select(conversations).where(conversations.c.title.is_not(None))
        if tenant is not None:
            query = query.where(conversations.c.tenant == tenant)
        if collection is not None:
            query = query.where(conversations.c.collection == collection)
        with self.engine.connect() as conn:
            rows = conn.execute(
                query.order_by(conversations.c.updated_at.desc(), conversations.c.id).limit(limit)
            ).mappings().all()
        return [ConversationSummary(r["id"], r["collection"], r["title"], r["created_at"], r["updated_at"])
                for r in rows]

    @staticmethod
    def _row(conn: sa.Connection, conversation_id: str, tenant: str | None) -> sa.RowMapping:
        row = conn.execute(sa.select(conversations).where(conversations.c.id == conversation_id)).mappings().first()
        if row is None or (tenant is not None and row["tenant"] != tenant):  # another tenant's: unknown
            raise unknown_conversation(conversation_id)
        return row


def unknown_conversation(conversation_id: str) -> UnknownConversation:
    return UnknownConversation(
        f"no conversation with id {conversation_id!r}; ask without a conversation_id to start one, then continue "
        "it with the conversation_id its answers return"
    )


def _turn(row: sa.RowMapping) -> Turn:
    return Turn(question=row["question"], answer=row["answer"], standalone=row["standalone_question"],
                inferred_filters=row["inferred_filters"], answer_id=row["id"], created_at=row["created_at"],
                citations=list(row["citations"] or []), refused=bool(row["refused"]))


