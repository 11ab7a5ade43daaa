"""Conversations: stored history, and follow-up questions rewritten into standalone ones.

SKELETON — being implemented (storage in the database, rewriting). Interface:

- `Turn`: one question/answer exchange of a conversation.
- `Conversations(engine)`: `start(collection) -> id`, `history(id) -> list[Turn]` (UnknownConversation, 404).
- `Rewriter`: `rewrite(question, history) -> Rewrite` (the standalone question and how it was made).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa


@dataclass(frozen=True)
class Turn:
    question: str  # as the user asked it
    answer: str
    standalone: str | None = None  # the rewritten question, when it was rewritten
    inferred_filters: dict[str, Any] | None = None


@dataclass(frozen=True)
class Rewrite:
    question: str
    method: str  # "unchanged", "rules", "llm", …


class Conversations:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def start(self, collection: str) -> str:
        return str(uuid.uuid4())

    def history(self, conversation_id: str) -> list[Turn]:
        return []


class Rewriter:
    def rewrite(self, question: str, history: Sequence[Turn]) -> Rewrite:
        return Rewrite(question, "unchanged")
