"""The OpenAI-compatible API: `GET /v1/models` (one model per collection) and `POST /v1/chat/completions`.

Existing OpenAI clients work unchanged: `model` names the collection, the earlier user/assistant messages are
the conversation, and the reply's content is the answer followed by a "Sources:" list. finrag's structured
fields (`answer_id`, `citations`, `warnings`, `refused`, `finrag`) ride along at the top level of the
completion, or of the last chunk when streaming, for clients that know them.

Errors take OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the HTTP status the finrag
error carries (so the openai client raises NotFoundError, UnprocessableEntityError, InternalServerError …).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic_core import to_json

from .answering import Citation
from .api import chat_service, components_of, error_event_data, event_stream, final, readable_collection, sse, started
from .auth import principal_of
from .chat import RecordedAnswer
from .conversations import Turn
from .db import documents
from .errors import BadRequest, FinragError, UnknownCollection
from .ratelimit import retry_after_headers
from .schemas import (
    OPENAI_ERROR_RESPONSES,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    ChatResponse,
    Choice,
    FinragExtras,
    MessageIn,
    ModelList,
    ModelOut,
    Usage,
)
from .tenancy import CollectionOwners

log = logging.getLogger(__name__)
SOURCES_HEADING = "\n\nSources:\n"


def openai_error(status: int, message: str, code: str) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status)


class OpenAIRoute(APIRoute):
    """A route whose errors (finrag's and request validation's) are answered in OpenAI's error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handle(request)
            except FinragError as exc:
                if exc.status_code >= 500:
                    log.error("%s: %s", exc.code, exc.message)
                response = openai_error(exc.status_code, exc.message, exc.code)
                response.headers.update(retry_after_headers(exc))  # on a 429 (the openai client honours it)
                return response
            except RequestValidationError as exc:
                problems = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
                            for e in exc.errors()]
                return openai_error(422, "; ".join(problems), "invalid_request")

        return route


router = APIRouter(route_class=OpenAIRoute, tags=["openai"], responses=OPENAI_ERROR_RESPONSES)


# --- models: the collections ----------------------------------------------------------------------------------


@router.get("/v1/models", response_model=ModelList)
def list_models(request: Request) -> ModelList:
    """One model per collection: pass its id as `model` to /v1/chat/completions."""
    return ModelList(data=_models(request))


@router.get("/v1/models/{model_id}", response_model=ModelOut)
def get_model(model_id: str, request: Request) -> ModelOut:
    for model in _models(request):
        if model.id == model_id:
            return model
    raise UnknownCollection(f"no collection {model_id!r}; GET /v1/models lists them")


def _models(request: Request) -> list[ModelOut]:
    comp = components_of(request)
    with comp.engine.connect() as conn:
        first: dict[str, datetime | None] = dict(conn.execute(
            sa.select(documents.c.collection, sa.func.min(documents.c.indexed_at)).group_by(documents.c.collection)
        ).all())
    names = CollectionOwners(comp.engine).visible(principal_of(request), comp.store.collections())
    return [ModelOut(id=name, created=_unix(first.get(name))) for name in names]


def _unix(when: datetime | None) -> int:
    if when is None:
        return 0
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())


# --- chat completions -----------------------------------------------------------------------------------------


@router.post("/v1/chat/completions", response_model=ChatCompletion)
def chat_completions(body: ChatCompletionRequest, request: Request) -> ChatCompletion | StreamingResponse:
    """Answer the last user message from the collection named by `model`, with the earlier messages as the
    conversation. max_tokens and temperature are accepted and the server's settings apply."""
    question, history = split_messages(body.messages)
    principal, collection = readable_collection(request, body.model)
    events = chat_service(request).stream(
        question, collection=collection, filters=body.filters, top_k=body.top_k, history=history,
        model=body.generator, tenant=principal.tenant,
    )
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return event_stream(_chunks(started(events), completion_id, created, body.model, include_usage))
    result = final(events)
    message = AssistantMessage(content=result.answer.answer + sources_text(result.answer.citations))
    return ChatCompletion(
        id=completion_id, created=created, model=body.model, choices=[Choice(message=message)],
        usage=Usage(),  # zeros, not estimates: the LLM seam yields text pieces, not token counts
        system_fingerprint=result.answer.prompt_version, **_finrag_fields(result),
    )


def split_messages(messages: Sequence[MessageIn]) -> tuple[str, list[Turn]]:
    """The question (the last message, a user's) and the turns before it. System, developer and tool
    messages are ignored; a user message with no assistant reply after it is a turn with an empty answer."""
    said = [m for m in messages if m.role in ("user", "assistant")]
    if not said or said[-1].role != "user":
        raise BadRequest("the last message must be the question, with role \"user\"")
    turns: list[Turn] = []
    asked: str | None = None
    for m in said[:-1]:
        if m.role == "user":
            if asked is not None:
                turns.append(Turn(asked, ""))
            asked = m.text
        else:  # our own earlier reply comes back with its Sources list: the answer is what precedes it
            turns.append(Turn(asked or "", m.text.split(SOURCES_HEADING, 1)[0]))
            asked = None
    if asked is not None:
        turns.append(Turn(asked, ""))
    return said[-1].text, turns


def sources_text(citations: Sequence[Citation]) -> str:
    """"\n\nSources:\n[1] file.pdf, p. 3, section Item 2" — one line per citation; empty without citations."""
    if not citations:
        return ""
    return SOURCES_HEADING + "\n".join(f"[{c.n}] {_where(c)}" for c in citations)


def _where(c: Citation) -> str:
    parts = [c.source]
    if c.pages:
        parts.append(f"p. {c.pages[0]}" if len(c.pages) == 1 else f"pp. {c.pages[0]}–{c.pages[-1]}")
    if c.section:
        parts.append(f"section {c.section}")
    return ", ".join(parts)


def _finrag_fields(result: RecordedAnswer) -> dict[str, Any]:
    """The fields beyond OpenAI's, the same in a completion and in the last chunk of a stream."""
    native = ChatResponse.of(result)
    return {
        "answer_id": native.answer_id, "citations": native.citations, "warnings": native.warnings,
        "refused": native.refused,
        "finrag": FinragExtras(
            answer=native.answer, model=native.model, prompt_version=native.prompt_version,
            latency_ms=native.latency_ms, conversation_id=native.conversation_id,
            standalone_question=native.standalone_question, inferred_filters=native.inferred_filters,
            timings_ms=native.timings_ms,
        ),
    }


def _chunks(events: Iterator[str | RecordedAnswer], completion_id: str, created: int, model: str,
            include_usage: bool) -> Iterator[str]:
    """`chat.completion.chunk` events: the role, the model's raw text as it comes, then a last chunk with the
    Sources list, finish_reason "stop" and finrag's fields; `[DONE]`. An error midway is sent as OpenAI's
    error object (the openai client raises APIError on it) and ends the stream without `[DONE]`."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [choice], **extra}
        return sse(to_json(body).decode())

    yield chunk({"role": "assistant", "content": ""})
    streamed = False
    try:
        for event in events:
            if isinstance(event, str):
                streamed = True
                yield chunk({"content": event})
                continue
            answer = event.answer
            if not streamed:  # nothing came from the model (the evidence gate refused): the answer is all new
                tail = answer.answer
            elif answer.refused:  # the model's NOT_FOUND was streamed: say what it means
                tail = "\n\n" + answer.answer
            else:
                tail = ""
            yield chunk({"content": tail + sources_text(answer.citations)}, "stop", **_finrag_fields(event))
    except Exception as exc:  # the status line is sent: the error can only be told in the stream
        data = error_event_data(exc)
        kind = "invalid_request_error" if data["status"] < 500 else "server_error"
        yield sse(to_json({"error": {"message": data["detail"], "type": kind, "param": None,
                                     "code": data["error"]}}).decode())
        return
    if include_usage:
        # Zeros, not estimates: the LLM seam (LLM.stream) yields text pieces, not token counts.
        usage = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [], "usage": Usage().model_dump()}
        yield sse(to_json(usage).decode())
    yield sse("[DONE]")
