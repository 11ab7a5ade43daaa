"""Streaming chat: `POST /v1/chat` with `"stream": true` answers in Server-Sent Events.

The real app over the sample index, called in-process (TestClient) and, for the test that tokens really arrive
as they are generated, over a real uvicorn server on a loopback port. The generator is the Ollama backend
through the real `ollama` client against `FakeOllama` (fast and deterministic); one slow test streams from the
embedded Qwen2.5-Coder-0.5B.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from conftest import SAMPLE_COLLECTION, SampleIndex, serve
from fake_ollama import DEFAULT_MODEL, FakeOllama
from fastapi import FastAPI
from fastapi.testclient import TestClient

from assistant import errors
from assistant.app import create_app
from assistant.components import Components
from assistant.db import answers
from assistant.schemas import ChatResponse
from assistant.settings import LLMSettings, OllamaSettings, Settings

APPLE_Q = "What was Apple's total net sales in the quarter ended July 1, 2023?"
# [42] points to no source: the streamed raw text keeps it, the recorded answer must not.
RAW_REPLY = "Net sales fell in the quarter [1]. Services grew as well [42]."
OTHER_MODEL = "llama3.2:1b"


# --- helpers ----------------------------------------------------------------------------------------------


@dataclass
class Event:
    event: str | None
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


def parse_sse(text: str) -> list[Event]:
    """Server-Sent Events as the spec reads them: blank-line separated blocks of `field: value` lines."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        if name is not None or data:
            events.append(Event(name, "\n".join(data)))
    return events


def answer_row(engine: sa.Engine, answer_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(answers).where(answers.c.id == answer_id)).mappings().one())


def ollama_app(sample_index: SampleIndex, host: str) -> FastAPI:
    """An app whose LLM is Ollama at `host`, over the session's store, embedder and database."""
    shared = sample_index.components
    settings: Settings = sample_index.settings.model_copy(update={
        "llm": LLMSettings(_env_file=None, backend="ollama", timeout_s=20),
        "ollama": OllamaSettings(_env_file=None, host=host, model=DEFAULT_MODEL),
    })
    components = Components(settings, embedder=shared.embedder, store=shared.store, engine=shared.engine)
    return create_app(settings, components, preload=False)


def stream_chat(client: TestClient, question: str, **extra: Any) -> tuple[httpx.Response, list[Event]]:
    with client.stream("POST", "/v1/chat", json={"question": question, "stream": True, **extra}) as response:
        text = response.read().decode()
    return response, parse_sse(text)


# --- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with FakeOllama(reply=lambda _messages: RAW_REPLY, models=(DEFAULT_MODEL, OTHER_MODEL)) as server:
        yield server


@pytest.fixture(scope="module")
def client(sample_index: SampleIndex, fake: FakeOllama) -> TestClient:
    # Not entered as a context manager: the components' store and database are the session's shared ones.
    return TestClient(ollama_app(sample_index, fake.url))


@pytest.fixture(scope="module")
def engine(sample_index: SampleIndex) -> sa.Engine:
    return sample_index.components.engine


@pytest.fixture(scope="module")
def streamed(client: TestClient) -> tuple[httpx.Response, list[Event]]:
    return stream_chat(client, APPLE_Q)


# --- the stream -------------------------------------------------------------------------------------------


def test_stream_is_server_sent_events(streamed: tuple[httpx.Response, list[Event]]) -> None:
    response, events = streamed
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    names = [e.event for e in events]
    assert names[-1] == "done" and names.count("done") == 1, names
    assert set(names[:-1]) == {"token"}, names
    assert len(names) > 3  # FakeOllama sends one word per chunk: the answer came in pieces


def test_tokens_are_the_raw_reply_and_done_the_checked_answer(streamed: tuple[httpx.Response, list[Event]],
                                                              engine: sa.Engine) -> None:
    _, events = streamed
    raw = "".join(e.json()["text"] for e in events if e.event == "token")
    assert raw == RAW_REPLY
    done = events[-1].json()
    assert set(done) == set(ChatResponse.model_fields)
    ChatResponse.model_validate(done)
    assert "[42]" not in done["answer"] and "[1]" in done["answer"]  # the invalid citation was removed
    assert [c["n"] for c in done["citations"]] == [1]
    assert done["model"] == f"ollama:{DEFAULT_MODEL}"
    assert done["refused"] is False
    assert done["conversation_id"]
    assert done["standalone_question"] is None  # no history: the question was used as asked
    assert {"retrieve", "first_token", "generate"} <= set(done["timings_ms"])

    row = answer_row(engine, done["answer_id"])  # what the client was told is what was recorded
    assert row["question"] == APPLE_Q
    assert row["collection"] == SAMPLE_COLLECTION
    assert row["answer"] == done["answer"]
    assert row["model"] == done["model"]
    assert row["refused"] is False
    assert [c["n"] for c in row["citations"]] == [1]
    assert row["citations"][0]["point_id"] == done["citations"][0]["point_id"]


def test_non_stream_response_has_the_new_fields(client: TestClient, engine: sa.Engine) -> None:
    response = client.post("/v1/chat", json={"question": APPLE_Q})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == set(ChatResponse.model_fields)
    assert body["answer"] == answer_row(engine, body["answer_id"])["answer"]
    assert "[42]" not in body["answer"]
    assert body["conversation_id"] and body["standalone_question"] is None
    assert "retrieve" in body["timings_ms"]


def test_model_picks_the_generator(client: TestClient, fake: FakeOllama, engine: sa.Engine) -> None:
    _, events = stream_chat(client, APPLE_Q, model=f"ollama:{OTHER_MODEL}")
    done = events[-1].json()
    assert events[-1].event == "done", events
    assert done["model"] == f"ollama:{OTHER_MODEL}"
    assert fake.chats[-1]["model"] == OTHER_MODEL
    assert answer_row(engine, done["answer_id"])["model"] == f"ollama:{OTHER_MODEL}"


def test_follow_up_streams_in_the_same_conversation(client: TestClient, engine: sa.Engine) -> None:
    first = client.post("/v1/chat", json={"question": APPLE_Q}).json()
    _, events = stream_chat(client, "And in the previous quarter?", conversation_id=first["conversation_id"])
    assert events[-1].event == "done", events
    done = events[-1].json()
    assert done["conversation_id"] == first["conversation_id"]
    row = answer_row(engine, done["answer_id"])
    assert row["conversation_id"] == first["conversation_id"]
    assert row["question"] == "And in the previous quarter?"
    # What the conversation rewriter made of it, if anything, is what the response says.
    assert done["standalone_question"] == (row["standalone_question"] if row["standalone_question"] and
                                           row["standalone_question"] != row["question"] else None)


def test_evidence_gate_refusal_streams_only_done(client: TestClient) -> None:
    # A source filter that matches nothing: no evidence, so the model is not asked and no token is sent.
    _, events = stream_chat(client, APPLE_Q, filters={"source": "no such file.pdf"})
    assert [e.event for e in events] == ["done"]
    done = events[0].json()
    assert done["refused"] is True and done["citations"] == []


# --- errors -----------------------------------------------------------------------------------------------


def error_response(client: TestClient, status: int, code: str, **body: Any) -> dict[str, Any]:
    """A request with stream=true that fails at the start: a plain JSON error with its status, not a stream."""
    response = client.post("/v1/chat", json={"question": APPLE_Q, "stream": True, **body})
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    result: dict[str, Any] = response.json()
    assert result["error"] == code, result
    return result


def test_blank_question_is_422_before_streaming(client: TestClient) -> None:
    error_response(client, 422, "bad_request", question="   ")


def test_invalid_filter_is_422_before_streaming(client: TestClient) -> None:
    error_response(client, 422, "invalid_filter", filters={"colour": "red"})


def test_unknown_collection_is_404_before_streaming(client: TestClient) -> None:
    error_response(client, 404, "unknown_collection", collection="no-such-collection")


def test_missing_ollama_model_is_503_before_streaming(client: TestClient) -> None:
    body = error_response(client, 503, "unavailable", model="ollama:no-such-model:7b")
    assert "ollama pull no-such-model:7b" in body["detail"]


def test_ollama_down_is_503_before_streaming(sample_index: SampleIndex) -> None:
    with FakeOllama() as stopped:
        url = stopped.url  # nothing listens there once the server has stopped
    client = TestClient(ollama_app(sample_index, url))
    body = error_response(client, 503, "unavailable")
    assert url in body["detail"]


@pytest.mark.skipif(not hasattr(errors, "UnknownConversation"), reason="stored conversations not implemented yet")
def test_unknown_conversation_is_404_before_streaming(client: TestClient) -> None:
    response = client.post("/v1/chat", json={"question": APPLE_Q, "stream": True,
                                             "conversation_id": "00000000-0000-0000-0000-000000000000"})
    assert response.status_code == 404, response.text
    assert response.headers["content-type"] == "application/json"


def test_error_midway_is_an_error_event(sample_index: SampleIndex, engine: sa.Engine) -> None:
    # Ollama fails after its first chunk: the 200 and the first token are sent, then the stream says why.
    with FakeOllama(reply=lambda _m: RAW_REPLY, stream_error="llama runner process has terminated") as broken:
        client = TestClient(ollama_app(sample_index, broken.url))
        response, events = stream_chat(client, APPLE_Q)
    assert response.status_code == 200
    assert [e.event for e in events] == ["token", "error"], events
    assert events[0].json() == {"text": RAW_REPLY.split()[0]}
    error = events[1].json()
    assert error["error"] == "unavailable"
    assert "llama runner process has terminated" in error["detail"]


def test_tokens_arrive_while_the_answer_is_generated(sample_index: SampleIndex) -> None:
    # Over a real server: each token event reaches the client when generated, not all at the end.
    delay = 0.25
    with FakeOllama(reply=lambda _m: RAW_REPLY, chunk_delay_s=delay) as slow, \
            serve(ollama_app(sample_index, slow.url)) as url, \
            httpx.stream("POST", f"{url}/v1/chat", json={"question": APPLE_Q, "stream": True}, timeout=30) as r:
        assert r.status_code == 200
        arrivals: list[tuple[str, float]] = []
        buffer = ""
        for text in r.iter_text():
            buffer += text
            *blocks, buffer = buffer.split("\n\n")
            arrivals += [(e.event or "", time.monotonic()) for e in parse_sse("\n\n".join(blocks))]
    names = [name for name, _ in arrivals]
    assert names[0] == "token" and names[-1] == "done", names
    words = len(RAW_REPLY.split())
    assert arrivals[-1][1] - arrivals[0][1] > delay * (words - 2), arrivals


# --- the embedded model -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_stream_from_the_embedded_model(sample_index: SampleIndex, engine: sa.Engine) -> None:
    client = TestClient(create_app(sample_index.settings, sample_index.components, preload=False))
    response, events = stream_chat(client, APPLE_Q)
    assert response.status_code == 200
    assert [e.event for e in events][-1] == "done", events
    tokens = [e.json()["text"] for e in events if e.event == "token"]
    done = events[-1].json()
    assert done["model"] == sample_index.components.llm.name == "qwen2.5-coder-0.5b-instruct"
    assert tokens and "".join(tokens).strip(), events  # the 0.5B model answers this one (see test_api)
    assert not done["refused"]
    row = answer_row(engine, done["answer_id"])
    assert row["answer"] == done["answer"]
    assert [c["n"] for c in row["citations"]] == [c["n"] for c in done["citations"]]
    marks = {int(n) for n in re.findall(r"\[(\d+)\]", done["answer"])}
    assert marks == {c["n"] for c in done["citations"]}, done  # every [n] left has its citation
