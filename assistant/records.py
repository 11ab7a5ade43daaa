"""The answer log and the feedback log: every answer is recorded (with its conversation), feedback links to it."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from .answering import Answer, page_list
from .conversations import title_of, unknown_conversation
from .db import answers, conversations, feedback
from .errors import UnknownAnswer
from .store import Filters


class AnswerLog:
    def __init__(self, engine: sa.Engine, embedder_name: str) -> None:
        self.engine = engine
        self.embedder_name = embedder_name

    def record(
        self, answer: Answer, *, question: str, collection: str, filters: Filters | None, latency_ms: int,
        conversation_id: str | None = None, standalone_question: str | None = None,
    ) -> str:
        answer_id = str(uuid.uuid4())
        retrieved = [
            {"point_id": h.point_id, "source": h.chunk.source, "pages": page_list(h), "section": h.chunk.section,
             "score": round(h.score, 4)}
            for h in answer.retrieved
        ]
        now = datetime.now(UTC)
        with self.engine.begin() as conn:  # committed before the response is sent
            if conversation_id is not None:  # the conversation's latest answer; its first question is its title
                touched = conn.execute(sa.update(conversations).where(conversations.c.id == conversation_id).values(
                    updated_at=now, title=sa.func.coalesce(conversations.c.title, title_of(question)),
                ))
                if touched.rowcount == 0:
                    raise unknown_conversation(conversation_id)
            conn.execute(sa.insert(answers).values(
                id=answer_id, created_at=now, collection=collection, question=question,
                answer=answer.answer, refused=answer.refused, model=answer.model,
                prompt_version=answer.prompt_version, embedder=self.embedder_name,
                filters=dict(filters) if filters else None, retrieved=retrieved,
                citations=[asdict(c) for c in answer.citations], latency_ms=latency_ms,
                timings=answer.timings_ms, conversation_id=conversation_id, standalone_question=standalone_question,
                inferred_filters=answer.inferred_filters,
            ))
        return answer_id

    def get(self, answer_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(answers).where(answers.c.id == answer_id)).mappings().first()
        if row is None:
            raise UnknownAnswer(f"no answer with id {answer_id!r}; feedback must name an answer_id from /v1/chat")
        return dict(row)


class FeedbackLog:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def add(self, answer_id: str, rating: str, comment: str | None) -> int:
        with self.engine.begin() as conn:
            exists = conn.execute(sa.select(answers.c.id).where(answers.c.id == answer_id)).first()
            if exists is None:
                raise UnknownAnswer(
                    f"no answer with id {answer_id!r}; feedback must name an answer_id from /v1/chat"
                )
            result = conn.execute(sa.insert(feedback).values(
                answer_id=answer_id, created_at=datetime.now(UTC), rating=rating, comment=comment,
            ))
            key = result.inserted_primary_key
            return int(key[0]) if key else 0

    def for_answer(self, answer_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(feedback).where(feedback.c.answer_id == answer_id).order_by(feedback.c.id)
            ).mappings().all()
        return [dict(r) for r in rows]
