"""HTTP routes of conversations: list them, read one back with its turns. Include `router` in the app."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from .auth import principal_of
from .conversations import Conversations
from .schemas import UtcDatetime

router = APIRouter()


class TurnOut(BaseModel):
    answer_id: str
    question: str = Field(description="The question as the user asked it.")
    standalone_question: str | None = Field(
        description="What retrieval and the LLM answered: the question rewritten with the conversation's history."
    )
    answer: str
    created_at: UtcDatetime
    refused: bool = Field(default=False, description="True when the documents did not contain the answer.")
    citations: list[dict[str, Any]] = Field(
        default_factory=list, description="As recorded: {n, point_id, doc_id, source, pages, section, snippet, "
        "score, quote} (answers recorded before a field existed lack it).",
    )


class ConversationSummaryOut(BaseModel):
    id: str
    collection: str
    title: str | None = Field(description="The first question, truncated.")
    created_at: UtcDatetime
    updated_at: UtcDatetime = Field(description="When its latest answer was recorded.")


class ConversationOut(ConversationSummaryOut):
    turns: list[TurnOut] = Field(description="Oldest first.")


@router.get("/v1/conversations", response_model=list[ConversationSummaryOut], tags=["conversations"])
def list_conversations(request: Request, collection: str | None = None,
                       limit: int = Query(default=50, ge=1, le=500)) -> list[ConversationSummaryOut]:
    """Conversations with at least one answer, most recently continued first (optionally of one collection)."""
    return [ConversationSummaryOut(id=c.id, collection=c.collection, title=c.title, created_at=c.created_at,
                                   updated_at=c.updated_at)
            for c in Conversations(request.app.state.components.engine).recent(
                limit, collection, tenant=principal_of(request).tenant)]


@router.get("/v1/conversations/{conversation_id}", response_model=ConversationOut, tags=["conversations"])
def get_conversation(conversation_id: str, request: Request) -> ConversationOut:
    """A conversation and its turns, oldest first. 404 `unknown_conversation` for an id never returned."""
    c = Conversations(request.app.state.components.engine).get(conversation_id, tenant=principal_of(request).tenant)
    return ConversationOut(
        id=c.id, collection=c.collection, title=c.title, created_at=c.created_at, updated_at=c.updated_at,
        turns=[TurnOut(answer_id=t.answer_id or "", question=t.question, standalone_question=t.standalone,
                       answer=t.answer, created_at=t.created_at or c.created_at, refused=bool(t.refused),
                       citations=t.citations or []) for t in c.turns],
    )
