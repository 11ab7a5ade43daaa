"""HTTP routes of conversations: read one back with its turns. Include `router` in the app."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from .conversations import Conversations

router = APIRouter()


class TurnOut(BaseModel):
    answer_id: str
    question: str = Field(description="The question as the user asked it.")
    standalone_question: str | None = Field(
        description="What retrieval and the LLM answered: the question rewritten with the conversation's history."
    )
    answer: str
    created_at: datetime


class ConversationOut(BaseModel):
    id: str
    collection: str
    title: str | None = Field(description="The first question, truncated.")
    created_at: datetime
    updated_at: datetime = Field(description="When its latest answer was recorded.")
    turns: list[TurnOut] = Field(description="Oldest first.")


@router.get("/v1/conversations/{conversation_id}", response_model=ConversationOut, tags=["conversations"])
def get_conversation(conversation_id: str, request: Request) -> ConversationOut:
    """A conversation and its turns, oldest first. 404 `unknown_conversation` for an id never returned."""
    c = Conversations(request.app.state.components.engine).get(conversation_id)
    return ConversationOut(
        id=c.id, collection=c.collection, title=c.title, created_at=c.created_at, updated_at=c.updated_at,
        turns=[TurnOut(answer_id=t.answer_id or "", question=t.question, standalone_question=t.standalone,
                       answer=t.answer, created_at=t.created_at or c.created_at) for t in c.turns],
    )
