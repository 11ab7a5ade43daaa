"""HTTP routes: thin wrappers over the services held by the app state."""

from __future__ import annotations

from dataclasses import asdict

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response, status

from .chat import ChatService
from .components import Components
from .conversations import Conversations, Rewriter
from .db import documents
from .records import AnswerLog, FeedbackLog
from .schemas import (
    ChatRequest,
    ChatResponse,
    CitationOut,
    CollectionOut,
    ComponentHealth,
    FeedbackRequest,
    FeedbackResponse,
    HealthResponse,
)

router = APIRouter()


def _components(request: Request) -> Components:
    return request.app.state.components


def _chat(request: Request) -> ChatService:
    """The chat service, built on first use so that starting the app loads nothing it does not need."""
    state = request.app.state
    if getattr(state, "chat", None) is None:
        c, s = state.components, state.settings
        state.chat = ChatService(
            c.answerer, AnswerLog(c.engine, c.embedder.name), default_collection=s.collection,
            max_question_chars=s.max_question_chars, conversations=Conversations(c.engine), rewriter=Rewriter(),
            llm_for=c.llm_for,
        )
    return state.chat


@router.post("/v1/chat", response_model=ChatResponse, tags=["chat"])
def chat(body: ChatRequest, request: Request) -> ChatResponse:
    """Answer a question from the indexed documents, citing sources as [n]."""
    result = _chat(request).ask(body.question, collection=body.collection, filters=body.filters, top_k=body.top_k)
    a = result.answer
    return ChatResponse(
        answer_id=result.answer_id, answer=a.answer,
        citations=[CitationOut(**asdict(c)) for c in a.citations], refused=a.refused, warnings=a.warnings,
        inferred_filters=a.inferred_filters,
        model=a.model, prompt_version=a.prompt_version, latency_ms=result.latency_ms,
    )


@router.post("/v1/feedback", response_model=FeedbackResponse, status_code=status.HTTP_201_CREATED,
             tags=["feedback"])
def post_feedback(body: FeedbackRequest, request: Request) -> FeedbackResponse:
    """Rate an answer thumbs-up or thumbs-down, with an optional comment."""
    feedback_id = FeedbackLog(_components(request).engine).add(body.answer_id, body.rating, body.comment)
    return FeedbackResponse(feedback_id=feedback_id, answer_id=body.answer_id, rating=body.rating)


@router.get("/v1/collections", response_model=list[CollectionOut], tags=["collections"])
def list_collections(request: Request) -> list[CollectionOut]:
    comp = _components(request)
    with comp.engine.connect() as conn:
        counts: dict[str, int] = dict(conn.execute(
            sa.select(documents.c.collection, sa.func.count()).group_by(documents.c.collection)
        ).all())
    return [CollectionOut(name=name, chunks=comp.store.count(name), documents=int(counts.get(name, 0)))
            for name in comp.store.collections()]


@router.get("/health", response_model=HealthResponse, tags=["health"])
def health(request: Request, response: Response) -> HealthResponse:
    """Each component's state. 200 when all are ready, 503 otherwise."""
    comp = _components(request)
    checks: dict[str, ComponentHealth] = {}

    def check(name: str, probe: object) -> None:
        try:
            detail = probe() if callable(probe) else str(probe)
            checks[name] = ComponentHealth(ok=True, detail=str(detail))
        except Exception as exc:  # health reports every failure instead of raising it
            checks[name] = ComponentHealth(ok=False, detail=f"{type(exc).__name__}: {exc}")

    check("store", lambda: f"{'embedded' if getattr(comp.store, 'embedded', False) else 'server'} qdrant, "
                           f"collections: {comp.store.collections()}")
    check("embedder", lambda: f"{comp.embedder.name} ({comp.embedder.dim}-d)")
    check("llm", lambda: _llm_probe(comp))
    check("database", lambda: _db_probe(comp))
    ok = all(c.ok for c in checks.values())
    response.status_code = 200 if ok else 503
    return HealthResponse(status="ok" if ok else "degraded", components=checks)


def _db_probe(comp: Components) -> str:
    with comp.engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    return comp.engine.dialect.name


def _llm_probe(comp: Components) -> str:
    llm = comp.llm
    ping = getattr(llm, "ping", None)
    if ping is not None:
        ping()
    return llm.name
