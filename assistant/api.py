"""HTTP routes: thin wrappers over the services held by the app state, and the Server-Sent Events plumbing
that both this router and the OpenAI-compatible one (assistant.openai_api) stream with."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any, TypeVar

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response, status
from fastapi.responses import StreamingResponse

from .auth import principal_of
from .chat import ChatService, RecordedAnswer, checked_question
from .components import Components
from .corrections import correction_sources
from .db import documents
from .errors import FinragError, UnknownCollection
from .feedback_stats import feedback_stats
from .learned import is_reembedded
from .records import AnswerLog, FeedbackLog
from .schemas import (
    ChatRequest,
    ChatResponse,
    CollectionOut,
    ComponentHealth,
    FacetsOut,
    FeedbackRequest,
    FeedbackResponse,
    FeedbackStatsResponse,
    HealthResponse,
    HitOut,
    RetrieveRequest,
    RetrieveResponse,
    UtcDatetime,
)
from .sources import page_list
from .tenancy import CollectionOwners, Principal

log = logging.getLogger(__name__)
router = APIRouter()
T = TypeVar("T")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the events


def components_of(request: Request) -> Components:
    return request.app.state.components


def readable_collection(request: Request, collection: str | None) -> tuple[Principal, str]:
    """(the caller, the collection asked for or the default) — UnknownCollection when it is another tenant's."""
    principal = principal_of(request)
    comp = components_of(request)
    name = collection or comp.settings.collection
    return principal, CollectionOwners(comp.engine).require(principal, name)


def chat_service(request: Request) -> ChatService:
    """The chat service, built on first use so that starting the app loads nothing it does not need."""
    state = request.app.state
    if getattr(state, "chat", None) is None:
        state.chat = state.components.chat_service()
    return state.chat


# --- Server-Sent Events ----------------------------------------------------------------------------------------


def sse(data: str, event: str | None = None) -> str:
    """One Server-Sent Event; `data` is a single line (JSON)."""
    return (f"event: {event}\n" if event else "") + f"data: {data}\n\n"


def started(events: Iterator[T]) -> Iterator[T]:
    """`events`, advanced to its first item now: errors raised at the start (a bad request, an unknown
    conversation, the LLM down) then become ordinary HTTP error responses instead of a stream that breaks."""
    first = next(events)
    return itertools.chain([first], events)


def final(events: Iterator[str | RecordedAnswer]) -> RecordedAnswer:
    """The RecordedAnswer that ends a chat stream, the text pieces before it skipped."""
    *_, last = events
    assert isinstance(last, RecordedAnswer)
    return last


def event_stream(chunks: Iterator[str]) -> StreamingResponse:
    # A sync iterator: Starlette advances it in its thread pool, so generation does not block the event loop.
    return StreamingResponse(chunks, media_type="text/event-stream", headers=SSE_HEADERS)


def error_event_data(exc: Exception) -> dict[str, Any]:
    """The error of a stream that has already started (its status line is sent): logged, then told as data."""
    if isinstance(exc, FinragError):
        if exc.status_code >= 500:
            log.error("stream failed: %s: %s", exc.code, exc.message)
        return {"error": exc.code, "detail": exc.message, "status": exc.status_code}
    log.exception("stream failed")  # the client gets no internals, as with any unexpected error
    return {"error": "internal_error", "detail": "the answer failed midway; the server log says why", "status": 500}


# --- chat ------------------------------------------------------------------------------------------------------

_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"example": 'event: token\ndata: {"text": " Net"}\n\n'
                                                       'event: done\ndata: {"answer_id": "…", "answer": "…", …}\n\n'}},
          "description": "The answer (JSON), or with `stream: true` Server-Sent Events: `token`… then `done`."},
}


@router.post("/v1/chat", response_model=ChatResponse, responses=_SSE_DOC, tags=["chat"])
def chat(body: ChatRequest, request: Request) -> ChatResponse | StreamingResponse:
    """Answer a question from the indexed documents, citing sources as [n]; `stream: true` streams it (SSE)."""
    principal, collection = readable_collection(request, body.collection)
    events = chat_service(request).stream(
        body.question, collection=collection, filters=body.filters, top_k=body.top_k,
        conversation_id=body.conversation_id, model=body.model, tenant=principal.tenant,
    )
    if not body.stream:
        return ChatResponse.of(final(events))
    return event_stream(_chat_events(started(events)))


def _chat_events(events: Iterator[str | RecordedAnswer]) -> Iterator[str]:
    """`token` events with the model's raw text, then `done` with the whole response; or `error`, and the end."""
    try:
        for event in events:
            if isinstance(event, str):
                yield sse(json.dumps({"text": event}), "token")
            else:
                yield sse(ChatResponse.of(event).model_dump_json(), "done")
    except Exception as exc:  # the status line is sent: the error can only be told in the stream
        data = error_event_data(exc)
        yield sse(json.dumps({"error": data["error"], "detail": data["detail"]}), "error")


@router.post("/v1/retrieve", response_model=RetrieveResponse, tags=["chat"])
def retrieve(body: RetrieveRequest, request: Request) -> RetrieveResponse:
    """The chunks /v1/chat would answer from, without generating: search for tools, UIs and load tests."""
    comp = components_of(request)
    principal, collection = readable_collection(request, body.collection)
    question = checked_question(body.question, comp.settings.max_question_chars)
    result = comp.retriever.search(question, collection, body.top_k or comp.settings.retrieval.top_k,
                                   principal.scoped(body.filters))
    return RetrieveResponse(
        hits=[HitOut(point_id=h.point_id, doc_id=h.chunk.doc_id, source=h.chunk.source, pages=page_list(h),
                     section=h.chunk.section, score=round(h.score, 4), text=h.chunk.text) for h in result.hits],
        inferred_filters=result.inferred_filters, timings_ms={k: round(v, 1) for k, v in result.timings_ms.items()},
        memory=[asdict(e) for e in result.memory],
    )


@router.post("/v1/feedback", response_model=FeedbackResponse, status_code=status.HTTP_201_CREATED,
             responses={200: {"model": FeedbackResponse, "description": "The user's earlier vote, replaced."}},
             tags=["feedback"])
def post_feedback(body: FeedbackRequest, request: Request, response: Response) -> FeedbackResponse:
    """Rate an answer thumbs-up or thumbs-down, with optionally a reason, a comment, the corrected answer and
    marks on its citations. One vote per user and answer: voting again replaces the vote (200, `updated`)."""
    comp = components_of(request)
    principal = principal_of(request)
    AnswerLog(comp.engine, comp.settings.embedding.model).get(body.answer_id, principal.tenant)  # theirs, or 404
    sources = []
    if body.correction and comp.settings.memory.correction_match < 1.0:  # the chunk the correction quotes
        dense = comp.retriever_for("dense", rerank=False, memory=False)
        sources = correction_sources(comp.engine, dense, body.answer_id, body.correction,
                                     comp.settings.memory.correction_match, principal.tenant)
    vote = FeedbackLog(comp.engine).add(
        body.answer_id, body.rating, body.comment, reason=body.reason, correction=body.correction,
        citations=[(m.n, m.useful) for m in body.citations] if body.citations is not None else None,
        user_id=body.user_id, segment=body.segment, sources=sources, tenant=principal.tenant,
    )
    if vote.updated:
        response.status_code = status.HTTP_200_OK
    return FeedbackResponse(feedback_id=vote.feedback_id, answer_id=body.answer_id, rating=body.rating,
                            updated=vote.updated)


@router.get("/v1/feedback/stats", response_model=FeedbackStatsResponse, tags=["feedback"])
def get_feedback_stats(request: Request, collection: str | None = None,
                       since: UtcDatetime | None = None) -> FeedbackStatsResponse:
    """Votes overall and by segment, model and served versions; reasons of down votes; the cited chunks most
    voted down. `collection` keeps that collection's answers; `since` (ISO 8601) the votes given or changed since."""
    records = FeedbackLog(components_of(request).engine).records(collection=collection, since=since,
                                                                 tenant=principal_of(request).tenant)
    return FeedbackStatsResponse.of(feedback_stats(records))


@router.get("/v1/collections", response_model=list[CollectionOut], tags=["collections"])
def list_collections(request: Request) -> list[CollectionOut]:
    """The collections of the caller's tenant, with their sizes; `default` marks the one asked when none is named."""
    comp = components_of(request)
    with comp.engine.connect() as conn:
        counts: dict[str, int] = dict(conn.execute(
            sa.select(documents.c.collection, sa.func.count()).group_by(documents.c.collection)
        ).all())
    names = [name for name in comp.store.collections() if not is_reembedded(name)]
    return [CollectionOut(name=name, chunks=comp.store.count(name), documents=int(counts.get(name, 0)),
                          default=name == comp.settings.collection)
            for name in CollectionOwners(comp.engine).visible(principal_of(request), names)]


@router.get("/v1/collections/{collection}/facets", response_model=FacetsOut, tags=["collections"])
def collection_facets(collection: str, request: Request) -> FacetsOut:
    """What the collection's documents can be filtered by (companies, forms, periods, regulation families)."""
    comp = components_of(request)
    readable_collection(request, collection)
    if collection not in comp.store.collections():
        raise UnknownCollection(f"no collection named {collection!r}; GET /v1/collections lists them")
    facets = comp.facets(collection)

    def values(name: str) -> list[Any]:
        return sorted(facets.values(name), key=lambda v: (str(type(v)), v))

    return FacetsOut(documents=len(facets.documents), company=values("company"), ticker=values("ticker"),
                     doc_kind=values("doc_kind"), period=values("period"), fiscal_year=values("fiscal_year"),
                     fiscal_quarter=values("fiscal_quarter"), family=values("family"))


@router.get("/health", response_model=HealthResponse, tags=["health"])
def health(request: Request, response: Response) -> HealthResponse:
    """Each component's state. 200 when all are ready, 503 otherwise."""
    comp = components_of(request)
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
