"""The OpenAI-compatible API, called with the official `openai` client.

The client talks to the real app in-process (Starlette's TestClient is an httpx client over ASGI, which the
openai client accepts as `http_client`) and, in two tests, over a real uvicorn server on a loopback port with
its own default transport. The generator is Ollama through the real `ollama` client against `FakeOllama`;
the slow test answers with the embedded Qwen2.5-Coder-0.5B.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import sqlalchemy as sa
from conftest import SAMPLE_COLLECTION, SampleIndex
from fake_ollama import DEFAULT_MODEL, FakeOllama
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from starlette.requests import Request
from test_streaming import RAW_REPLY, answer_row, ollama_app, serve

from assistant.answering import REFUSAL_TEXT
from assistant.api import chat_service
from assistant.app import create_app
from assistant.conversations import Turn
from assistant.schemas import CitationOut

APPLE_Q = "What was Apple's total net sales in the quarter ended July 1, 2023?"
APPLE_Q3 = "2023 Q3 AAPL.pdf"
FOLLOW_UP = "And in the quarter before?"
OTHER_MODEL = "llama3.2:1b"


def openai_client(app: FastAPI) -> openai.OpenAI:
    # TestClient is not entered: the app's shutdown would close the session's shared components.
    return openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=TestClient(app), max_retries=0)


def ask(client: openai.OpenAI, question: str = APPLE_Q, **extra: Any) -> ChatCompletion:
    return client.chat.completions.create(model=SAMPLE_COLLECTION, messages=[{"role": "user", "content": question}],
                                          **extra)


def ask_streaming(client: openai.OpenAI, question: str = APPLE_Q, **extra: Any) -> list[ChatCompletionChunk]:
    stream = client.chat.completions.create(
        model=SAMPLE_COLLECTION, messages=[{"role": "user", "content": question}], stream=True, **extra
    )
    return list(stream)


def content_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def extras(obj: ChatCompletion | ChatCompletionChunk) -> dict[str, Any]:
    """finrag's fields beyond OpenAI's, as the openai client keeps them."""
    assert obj.model_extra is not None
    return obj.model_extra


def sources_lines(citations: list[CitationOut]) -> list[str]:
    lines = []
    for c in citations:
        where = [c.source]
        if c.pages:
            where.append(f"p. {c.pages[0]}" if len(c.pages) == 1 else f"pp. {c.pages[0]}–{c.pages[-1]}")
        if c.section:
            where.append(f"section {c.section}")
        lines.append(f"[{c.n}] {', '.join(where)}")
    return lines


# --- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with FakeOllama(reply=lambda _messages: RAW_REPLY, models=(DEFAULT_MODEL, OTHER_MODEL)) as server:
        yield server


@pytest.fixture(scope="module")
def app(sample_index: SampleIndex, fake: FakeOllama) -> FastAPI:
    return ollama_app(sample_index, fake.url)


@pytest.fixture(scope="module")
def client(app: FastAPI) -> openai.OpenAI:
    return openai_client(app)


@pytest.fixture(scope="module")
def engine(sample_index: SampleIndex) -> sa.Engine:
    return sample_index.components.engine


@pytest.fixture(scope="module")
def completion(client: openai.OpenAI) -> ChatCompletion:
    return ask(client)


@pytest.fixture(scope="module")
def chunks(client: openai.OpenAI) -> list[ChatCompletionChunk]:
    return ask_streaming(client, stream_options={"include_usage": True})


# --- models -----------------------------------------------------------------------------------------------


def test_models_are_the_collections(client: openai.OpenAI, sample_index: SampleIndex) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == sample_index.components.store.collections()
    [samples] = [m for m in models if m.id == SAMPLE_COLLECTION]
    assert (samples.object, samples.owned_by) == ("model", "finrag")
    assert samples.created > 1_600_000_000  # when the sample corpus was indexed (this session)
    assert client.models.retrieve(SAMPLE_COLLECTION).id == SAMPLE_COLLECTION
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("no-such-collection")
    assert raised.value.code == "unknown_collection"


# --- a completion -----------------------------------------------------------------------------------------


def test_completion_content_is_the_answer_and_its_sources(completion: ChatCompletion, engine: sa.Engine) -> None:
    assert completion.object == "chat.completion"
    assert completion.model == SAMPLE_COLLECTION
    assert completion.id.startswith("chatcmpl-")
    [choice] = completion.choices
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    content = choice.message.content
    assert content is not None
    answer, heading, sources = content.partition("\n\nSources:\n")
    assert heading, content
    assert "[1]" in answer and "[42]" not in answer  # the model's invalid [42] was removed
    citations = [CitationOut.model_validate(c) for c in extras(completion)["citations"]]
    assert [c.n for c in citations] == [1]
    assert sources.splitlines() == sources_lines(citations)
    assert sources.startswith(f"[1] {citations[0].source}, ")

    row = answer_row(engine, extras(completion)["answer_id"])
    assert row["answer"] == answer == extras(completion)["finrag"]["answer"]
    assert row["question"] == APPLE_Q and row["collection"] == SAMPLE_COLLECTION
    assert [c["point_id"] for c in row["citations"]] == [c.point_id for c in citations]


def test_completion_carries_finrag_fields(completion: ChatCompletion) -> None:
    more = extras(completion)
    assert more["refused"] is False
    assert isinstance(more["warnings"], list)
    finrag = more["finrag"]
    assert finrag["model"] == f"ollama:{DEFAULT_MODEL}"
    assert finrag["conversation_id"] and finrag["standalone_question"] is None
    assert finrag["prompt_version"] == completion.system_fingerprint
    assert {"retrieve", "generate"} <= set(finrag["timings_ms"])
    assert completion.usage is not None and completion.usage.total_tokens == 0  # zeros: no token counts


def test_content_parts_and_extra_fields(client: openai.OpenAI, fake: FakeOllama, engine: sa.Engine) -> None:
    completion = client.chat.completions.create(
        model=SAMPLE_COLLECTION, messages=[{"role": "user", "content": [{"type": "text", "text": APPLE_Q}]}],
        max_tokens=50, temperature=0.2,
        extra_body={"generator": f"ollama:{OTHER_MODEL}", "top_k": 3, "filters": {"source": APPLE_Q3}},
    )
    assert extras(completion)["finrag"]["model"] == f"ollama:{OTHER_MODEL}"
    assert fake.chats[-1]["model"] == OTHER_MODEL
    row = answer_row(engine, extras(completion)["answer_id"])
    assert row["question"] == APPLE_Q
    assert row["filters"] == {"source": APPLE_Q3}
    assert 1 <= len(row["retrieved"]) <= 3
    assert {r["source"] for r in row["retrieved"]} == {APPLE_Q3}


# --- streaming --------------------------------------------------------------------------------------------


def test_stream_chunks(chunks: list[ChatCompletionChunk], engine: sa.Engine) -> None:
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    *text_chunks, last, usage = chunks
    assert usage.choices == [] and usage.usage is not None and usage.usage.total_tokens == 0
    assert all(c.choices[0].finish_reason is None for c in text_chunks)
    assert last.choices[0].finish_reason == "stop"
    assert len(text_chunks) > 3  # one per word from FakeOllama: it streamed
    content = content_of(chunks)
    raw, heading, sources = content.partition("\n\nSources:\n")
    assert raw == RAW_REPLY and heading  # the deltas are the model's raw text; the Sources list comes last
    more = extras(last)
    citations = [CitationOut.model_validate(c) for c in more["citations"]]
    assert sources.splitlines() == sources_lines(citations)
    row = answer_row(engine, more["answer_id"])
    assert row["answer"] == more["finrag"]["answer"]
    assert "[42]" not in row["answer"]
    assert [c["n"] for c in row["citations"]] == [c.n for c in citations] == [1]


def test_stream_refused_by_the_evidence_gate(client: openai.OpenAI) -> None:
    chunks = ask_streaming(client, extra_body={"filters": {"source": "no such file.pdf"}})
    assert content_of(chunks) == REFUSAL_TEXT
    assert extras(chunks[-1])["refused"] is True and extras(chunks[-1])["citations"] == []


def test_error_midway_raises_api_error(sample_index: SampleIndex) -> None:
    with FakeOllama(reply=lambda _m: RAW_REPLY, stream_error="llama runner process has terminated") as broken:
        client = openai_client(ollama_app(sample_index, broken.url))
        stream = client.chat.completions.create(
            model=SAMPLE_COLLECTION, messages=[{"role": "user", "content": APPLE_Q}], stream=True
        )
        received = []
        with pytest.raises(openai.APIError, match="llama runner process has terminated") as raised:
            received.extend(stream)
    assert content_of(received) == RAW_REPLY.split()[0]  # the first word came before the failure
    assert raised.value.code == "unavailable"


# --- conversation -----------------------------------------------------------------------------------------


def test_earlier_messages_are_the_history(app: FastAPI, client: openai.OpenAI, fake: FakeOllama,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    service = chat_service(Request({"type": "http", "app": app}))
    calls: list[tuple[str, dict[str, Any]]] = []
    real_stream = service.stream

    def spy(question: str, **options: Any) -> Any:
        calls.append((question, options))
        return real_stream(question, **options)

    monkeypatch.setattr(service, "stream", spy)
    first = ask(client).choices[0].message.content
    assert first is not None
    follow_up = client.chat.completions.create(model=SAMPLE_COLLECTION, messages=[
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": APPLE_Q},
        {"role": "assistant", "content": first},  # as the client got it, Sources list included
        {"role": "user", "content": FOLLOW_UP},
    ])
    question, options = calls[-1]
    assert question == FOLLOW_UP
    assert options["collection"] == SAMPLE_COLLECTION
    assert options["history"] == [Turn(APPLE_Q, first.split("\n\nSources:\n")[0])]
    assert not any("pirate" in m["content"] for chat in fake.chats for m in chat["messages"])
    standalone = extras(follow_up)["finrag"]["standalone_question"]
    assert standalone is None or standalone.strip()  # rewritten or not, per the conversation rewriter


# --- errors in OpenAI's shape -----------------------------------------------------------------------------


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as raised:
            client.chat.completions.create(model="no-such-collection", stream=stream,
                                           messages=[{"role": "user", "content": APPLE_Q}])
        assert raised.value.code == "unknown_collection"
        assert raised.value.type == "invalid_request_error"
        assert "'no-such-collection'" in raised.value.message


@pytest.mark.parametrize("messages", [
    [],
    [{"role": "user", "content": APPLE_Q}, {"role": "assistant", "content": "An answer."}],
    [{"role": "system", "content": "Be brief."}],
    [{"role": "user", "content": "   "}],
])
def test_bad_messages_are_422(client: openai.OpenAI, messages: list[dict[str, Any]]) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.chat.completions.create(model=SAMPLE_COLLECTION, messages=messages)  # type: ignore[arg-type]
    assert raised.value.type == "invalid_request_error"
    assert raised.value.code in ("invalid_request", "bad_request")
    assert raised.value.body is not None and re.search(r"messages|question", str(raised.value.body))


def test_bad_extra_field_is_422(client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        ask(client, extra_body={"filters": {"colour": "red"}})
    assert raised.value.code == "invalid_filter"


def test_ollama_down_is_a_server_error(sample_index: SampleIndex) -> None:
    with FakeOllama() as stopped:
        url = stopped.url
    client = openai_client(ollama_app(sample_index, url))
    with pytest.raises(openai.InternalServerError) as raised:
        ask(client)
    assert raised.value.status_code == 503
    assert raised.value.type == "server_error" and raised.value.code == "unavailable"
    assert url in raised.value.message


def test_native_api_errors_keep_their_shape(app: FastAPI) -> None:
    response = TestClient(app).post("/v1/chat", json={"question": APPLE_Q, "collection": "no-such-collection"})
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_collection"  # {"error": code, "detail": …}, not OpenAI's
    paths = TestClient(app).get("/openapi.json").json()["paths"]
    assert {"/v1/models", "/v1/models/{model_id}", "/v1/chat/completions"} <= set(paths)


# --- over a real server -----------------------------------------------------------------------------------


def test_openai_client_over_http(app: FastAPI, engine: sa.Engine) -> None:
    # The openai client's own transport over a real socket: the same answer, whole and streamed.
    with serve(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        completion = ask(client)
        chunks = ask_streaming(client)
    whole, streamed = completion.choices[0].message.content, content_of(chunks)
    assert whole is not None
    assert whole.startswith(extras(completion)["finrag"]["answer"] + "\n\nSources:\n[1] ")
    assert streamed.startswith(RAW_REPLY + "\n\nSources:\n[1] ")
    assert whole.partition("Sources:")[2] == streamed.partition("Sources:")[2]
    assert answer_row(engine, extras(chunks[-1])["answer_id"])["answer"] == extras(chunks[-1])["finrag"]["answer"]


@pytest.mark.slow
def test_openai_client_with_the_embedded_model(sample_index: SampleIndex, engine: sa.Engine) -> None:
    app = create_app(sample_index.settings, sample_index.components, preload=False)
    with serve(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=600)
        chunks = ask_streaming(client)
    last = extras(chunks[-1])
    assert last["finrag"]["model"] == "qwen2.5-coder-0.5b-instruct"
    assert not last["refused"] and content_of(chunks).strip()
    row = answer_row(engine, last["answer_id"])
    assert row["answer"] == last["finrag"]["answer"]
    citations = [CitationOut.model_validate(c) for c in last["citations"]]
    marks = {int(n) for n in re.findall(r"\[(\d+)\]", last["finrag"]["answer"])}
    assert marks == {c.n for c in citations}
    if citations:
        assert content_of(chunks).endswith("\n\nSources:\n" + "\n".join(sources_lines(citations)))
