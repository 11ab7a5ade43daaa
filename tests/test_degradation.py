"""Graceful degradation: an LLM that cannot serve is HTTP 503 with the reason, on every chat endpoint, and the API
recovers by itself when it is back; every wait is bounded.

The real app, in-process, over a one-document index (real embedded Qdrant, MiniLM, SQLite). Ollama is
`FakeOllama`, a real HTTP server speaking Ollama's API through the real `ollama` client, put through each outage:
down (connection refused), 5xx, hanging (accepts, never answers), dying mid-answer, stalling past LLM_TIMEOUT_S.
The embedded model is the real SmolLM2-135M GGUF: missing, corrupt, and stuck in a generation. PostgreSQL's
connect and statement timeouts run against a real PostgreSQL server (skipped where there is none).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from conftest import SAMPLE_COLLECTION, make_settings
from fake_ollama import DEFAULT_MODEL, FakeOllama
from fastapi.testclient import TestClient
from postgres import PostgresServer

from assistant.app import create_app
from assistant.components import Components
from assistant.db import connect
from assistant.embedding import SentenceTransformerEmbedder
from assistant.llm import LlamaCppLLM
from assistant.models import fetch
from assistant.settings import IngestSettings, LLMSettings, OllamaSettings, Settings
from ingest.pipeline import Ingestor

POLICY = """# Treasury policy of Northwind Ltd

## Cash reserves

Northwind keeps a minimum cash reserve of 42 million euros at all times, held at no fewer than three banks.
"""
QUESTION = "What minimum cash reserve does Northwind keep?"
REPLY = "Northwind keeps a minimum cash reserve of 42 million euros at all times [1]."
MODELS_DIR = Path(os.environ.get("FINRAG_TEST_MODELS", Path(__file__).resolve().parents[1] / "data" / "models"))
SMALL_MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder) -> Iterator[Components]:
    """One policy document indexed; the components' store, embedder and database are shared by every app here."""
    data = tmp_path_factory.mktemp("degradation")
    docs = data / "docs"
    docs.mkdir()
    (docs / "treasury-policy.md").write_text(POLICY, encoding="utf-8")
    components = Components(make_settings(data / "data", ingest=IngestSettings(workers=0, _env_file=None)),  # type: ignore[call-arg]
                            embedder=embedder)
    report = Ingestor(components).ingest([docs], SAMPLE_COLLECTION, progress=False)
    assert not report.failed, report.failed
    yield components
    components.close()


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama(reply=lambda _messages: REPLY) as fake:
        yield fake


def app_over(indexed: Components, llm_settings: LLMSettings, *, ollama: OllamaSettings | None = None,
             data_dir: Path | None = None, **components: Any) -> TestClient:
    """The real app whose generator is set by `llm_settings` (and `ollama`), over the shared index; `components`
    hands in ready-made ones (`llm=`)."""
    update: dict[str, Any] = {"llm": llm_settings}
    if ollama is not None:
        update["ollama"] = ollama
    if data_dir is not None:
        update["data_dir"] = data_dir
    settings: Settings = indexed.settings.model_copy(update=update)
    served = Components(settings, embedder=indexed.embedder, store=indexed.store, engine=indexed.engine, **components)
    return TestClient(create_app(settings, served, preload=False))


def ollama_client(indexed: Components, host: str, *, timeout_s: float = 10, connect_timeout_s: float = 1) -> TestClient:
    return app_over(indexed, LLMSettings(_env_file=None, backend="ollama", timeout_s=timeout_s, max_tokens=64),  # type: ignore[call-arg]
                    ollama=OllamaSettings(_env_file=None, host=host, model=DEFAULT_MODEL,  # type: ignore[call-arg]
                                          connect_timeout_s=connect_timeout_s))


# --- the four ways to ask --------------------------------------------------------------------------------------


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """(event, data) of each Server-Sent Event."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        if name is not None or data:
            events.append((name, "\n".join(data)))
    return events


def chat(client: TestClient) -> httpx.Response:
    return client.post("/v1/chat", json={"question": QUESTION})


def chat_stream(client: TestClient) -> httpx.Response:
    return client.post("/v1/chat", json={"question": QUESTION, "stream": True})


def completion(client: TestClient, stream: bool = False) -> httpx.Response:
    return client.post("/v1/chat/completions", json={
        "model": SAMPLE_COLLECTION, "messages": [{"role": "user", "content": QUESTION}], "stream": stream})


def completion_stream(client: TestClient) -> httpx.Response:
    return completion(client, stream=True)


ASKS: list[Callable[[TestClient], httpx.Response]] = [chat, chat_stream, completion, completion_stream]


def assert_unavailable(response: httpx.Response, *expected: str, code: str = "unavailable") -> str:
    """A 503 in the endpoint's error shape (OpenAI's for /v1/chat/completions), saying `expected`; its message."""
    assert response.status_code == 503, response.text
    body = response.json()
    if response.request.url.path == "/v1/chat/completions":
        error = body["error"]
        assert (error["type"], error["code"]) == ("server_error", code)
        message = str(error["message"])
    else:
        assert body["error"] == code
        message = str(body["detail"])
    for words in expected:
        assert words in message, message
    return message


def assert_answers(client: TestClient) -> None:
    """Every way of asking answers; /health is ok."""
    answered = chat(client)
    assert answered.status_code == 200, answered.text
    assert "42 million euros" in answered.json()["answer"]
    events = sse_events(chat_stream(client).text)
    assert events[-1][0] == "done" and [e for e, _ in events[:-1]] == ["token"] * (len(events) - 1)
    assert "42 million" in completion(client).json()["choices"][0]["message"]["content"]
    assert completion_stream(client).text.rstrip().endswith("data: [DONE]")
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["components"]["llm"]["ok"], health.text


def assert_llm_degraded(client: TestClient, *expected: str) -> None:
    health = client.get("/health")
    assert health.status_code == 503, health.text
    body = health.json()
    assert body["status"] == "degraded"
    assert body["components"]["store"]["ok"] and body["components"]["database"]["ok"]
    llm = body["components"]["llm"]
    assert not llm["ok"]
    for words in expected:
        assert words in llm["detail"], llm["detail"]


# --- Ollama ----------------------------------------------------------------------------------------------------


def test_ollama_down_is_503_everywhere_and_the_api_recovers_when_it_is_back(indexed: Components,
                                                                             ollama: FakeOllama) -> None:
    client = ollama_client(indexed, ollama.url)
    assert_answers(client)

    ollama.stop()
    for ask in ASKS:
        assert_unavailable(ask(client), f"Ollama at {ollama.url} is unreachable", "start it with `ollama serve`")
    assert_llm_degraded(client, "is unreachable", "`ollama serve`")

    ollama.start()  # the same address: no restart of the API, nothing to reset
    assert_answers(client)


def test_ollama_answering_5xx_is_503_with_its_words(indexed: Components, ollama: FakeOllama) -> None:
    client = ollama_client(indexed, ollama.url)
    ollama.chat_error = (500, "model requires more system memory (5.6 GiB) than is available (3.1 GiB)")
    for ask in ASKS:
        assert_unavailable(ask(client), "answered HTTP 500", "model requires more system memory")
    ollama.chat_error = None
    assert_answers(client)


def test_a_missing_ollama_model_says_what_to_pull(indexed: Components, ollama: FakeOllama) -> None:
    ollama.models = ["llama3.2:1b"]
    client = ollama_client(indexed, ollama.url)
    for ask in ASKS:
        assert_unavailable(ask(client), f"run `ollama pull {DEFAULT_MODEL}`")
    assert_llm_degraded(client, f"run `ollama pull {DEFAULT_MODEL}`")
    ollama.models = [DEFAULT_MODEL]  # pulled
    assert_answers(client)


def test_a_hanging_ollama_is_503_within_the_timeout(indexed: Components, ollama: FakeOllama) -> None:
    """Ollama accepts the connection and never answers: each request fails at LLM_TIMEOUT_S, /health within
    OLLAMA_CONNECT_TIMEOUT_S, and answers come back once it does."""
    client = ollama_client(indexed, ollama.url, timeout_s=1.0, connect_timeout_s=0.5)
    assert_answers(client)
    ollama.hang()
    for ask in ASKS:
        started = time.monotonic()
        assert_unavailable(ask(client), "sent nothing for 1s (LLM_TIMEOUT_S)", "retry, or raise LLM_TIMEOUT_S")
        assert 1.0 <= time.monotonic() - started < 2.5
    started = time.monotonic()
    assert_llm_degraded(client, "did not answer within 0.5s (OLLAMA_CONNECT_TIMEOUT_S)")
    assert time.monotonic() - started < 2.0
    ollama.hang(False)
    assert_answers(client)


def test_ollama_dying_mid_answer_ends_the_stream_with_an_error(indexed: Components, ollama: FakeOllama) -> None:
    """Once tokens have gone out the status line is sent: the stream ends with an error event (no `done`, no
    `[DONE]`); a request that is not streamed is a plain 503."""
    client = ollama_client(indexed, ollama.url)
    ollama.drop_after = 6  # of 13 words (the answerer may hold the first few back: injection.PromptGuard)
    reason = f"Ollama at {ollama.url} broke off while serving {DEFAULT_MODEL}"

    streamed = chat_stream(client)
    assert streamed.status_code == 200
    events = sse_events(streamed.text)
    names = [e for e, _ in events]
    assert names[-1] == "error" and len(names) >= 2 and set(names[:-1]) == {"token"}, names
    error = json.loads(events[-1][1])
    assert error["error"] == "unavailable" and error["detail"].startswith(reason), error
    assert "retry, and if it recurs check Ollama's log" in error["detail"]

    chunks = sse_events(completion_stream(client).text)
    last = json.loads(chunks[-1][1])
    assert last["error"]["code"] == "unavailable" and last["error"]["message"].startswith(reason)
    assert all(data != "[DONE]" for _, data in chunks)

    assert_unavailable(chat(client), reason)
    assert_unavailable(completion(client), reason)

    ollama.drop_after = None
    assert_answers(client)


def test_an_error_line_mid_answer_is_503_with_ollamas_words(indexed: Components, ollama: FakeOllama) -> None:
    client = ollama_client(indexed, ollama.url)
    ollama.stream_error = "model runner has unexpectedly stopped"  # after the first word
    for ask in (chat, completion):
        assert_unavailable(ask(client), f"failed while answering with {DEFAULT_MODEL}: model runner has unexpectedly "
                                        "stopped")
    ollama.stream_error = None
    assert_answers(client)


def test_an_answer_that_stalls_is_cut_at_llm_timeout(indexed: Components, ollama: FakeOllama) -> None:
    """LLM_TIMEOUT_S bounds the whole answer strictly, however the pieces trickle in."""
    client = ollama_client(indexed, ollama.url, timeout_s=1.0)
    ollama.chunk_delay_s = 0.15  # 13 words: 2 s in all
    started = time.monotonic()
    events = sse_events(chat_stream(client).text)
    assert time.monotonic() - started < 2.5
    assert events[0][0] == "token" and events[-1][0] == "error"
    assert json.loads(events[-1][1])["detail"] == (f"Ollama at {ollama.url} did not finish answering with "
                                                   f"{DEFAULT_MODEL} within 1s (LLM_TIMEOUT_S); retry, or raise "
                                                   "LLM_TIMEOUT_S")
    ollama.chunk_delay_s = 0.0
    assert_answers(client)


# --- the embedded model ----------------------------------------------------------------------------------------


def small_model() -> Path:
    path = MODELS_DIR / f"{SMALL_MODEL}.gguf"
    return path if path.is_file() else fetch(SMALL_MODEL, MODELS_DIR)


def test_an_embedded_model_missing_or_corrupt_is_503_model_missing_until_fetched(indexed: Components,
                                                                                 tmp_path: Path) -> None:
    client = app_over(indexed, LLMSettings(_env_file=None, model=SMALL_MODEL, max_tokens=16, threads=1),  # type: ignore[call-arg]
                      data_dir=tmp_path)
    weights = tmp_path / "models" / f"{SMALL_MODEL}.gguf"
    for ask in ASKS:
        assert_unavailable(ask(client), f"model weights {weights} are missing",
                           f"run `python -m assistant.models fetch {SMALL_MODEL}`", code="model_missing")
    assert_llm_degraded(client, "ModelMissing", "are missing")

    weights.parent.mkdir(parents=True)
    weights.write_bytes(small_model().read_bytes()[:1_000_000])  # a download cut short
    for ask in (chat, completion):
        assert_unavailable(ask(client), f"cannot load GGUF model {weights}", "truncated, corrupt or not a GGUF model",
                           f"fetch it again (`python -m assistant.models fetch {SMALL_MODEL}`", code="model_missing")

    weights.unlink()
    weights.symlink_to(small_model())  # fetched: the next request loads it, no restart
    answered = chat(client)
    assert answered.status_code == 200, answered.text
    assert answered.json()["model"] == SMALL_MODEL
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["components"]["llm"]["detail"] == SMALL_MODEL


class Stuck:
    """Wraps the embedded llama.cpp server: while `stuck` is set, a generation does not return until it is cleared
    (llama.cpp wedged, deaf to the request to stop)."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.free = threading.Event()
        self.free.set()

    def handle_chat_completions(self, request: dict[str, Any], callback: Callable[[Any], bool]) -> Any:
        assert self.free.wait(60), "a test left a generation stuck"
        return self.server.handle_chat_completions(request, callback)


def test_a_stuck_embedded_model_is_503_then_reported_then_recovers(indexed: Components) -> None:
    llm = LlamaCppLLM(small_model(), name=SMALL_MODEL, threads=1, context_tokens=2048, timeout_s=60,
                      queue_timeout_s=0.3)
    stuck = Stuck(llm._server)
    llm._server = stuck
    client = app_over(indexed, LLMSettings(_env_file=None, model=SMALL_MODEL, max_tokens=16), llm=llm)  # type: ignore[call-arg]
    try:
        assert chat(client).status_code == 200
        assert client.get("/health").json()["components"]["llm"] == {"ok": True, "detail": SMALL_MODEL}

        llm.timeout_s = 0.5  # from here on; a real answer takes longer on a shared CPU
        stuck.free.clear()
        started = time.monotonic()
        assert_unavailable(chat(client), f"the embedded model {SMALL_MODEL} did not finish within 0.5s (LLM_TIMEOUT_S)",
                           "raise LLM_TIMEOUT_S or serve a smaller model")
        assert time.monotonic() - started < 2.0
        # The generation still holds the model: the next request waits its turn, then gives up.
        assert_unavailable(completion(client), "the embedded model is busy", "LLM_QUEUE_TIMEOUT_S")
        time.sleep(1.1)  # past twice LLM_TIMEOUT_S: /health says it is stuck
        assert_llm_degraded(client, "more than twice LLM_TIMEOUT_S (0.5s), and does not stop: restart the server")

        stuck.free.set()  # llama.cpp returns after all
        deadline = time.monotonic() + 30
        while llm.queued and time.monotonic() < deadline:
            time.sleep(0.05)
        llm.timeout_s = 60
        assert chat(client).status_code == 200
        assert client.get("/health").status_code == 200
    finally:
        stuck.free.set()
        llm.close()


# --- the database ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer.start()
    yield server
    server.stop()


def test_postgres_statements_past_the_timeout_are_cancelled(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database()
    engine = connect(url, statement_timeout_s=0.5)  # the migrations ran: they are not limited
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SHOW statement_timeout")).scalar() == "500ms"
            started = time.monotonic()
            with pytest.raises(sa.exc.OperationalError, match="canceling statement due to statement timeout"):
                conn.execute(sa.text("SELECT pg_sleep(5)"))
            assert time.monotonic() - started < 3
    finally:
        engine.dispose()
    unlimited = connect(url, statement_timeout_s=0)
    with unlimited.connect() as conn:
        assert conn.execute(sa.text("SHOW statement_timeout")).scalar() == "0"
    unlimited.dispose()


def test_postgres_that_does_not_accept_connections_fails_within_the_connect_timeout(unresponsive_port: int) -> None:
    """A host that never completes the handshake (its listen queue is full): connect() gives up in seconds."""
    started = time.monotonic()
    with pytest.raises(sa.exc.OperationalError, match="timeout"):
        connect(f"postgresql://finrag@127.0.0.1:{unresponsive_port}/finrag", connect_timeout_s=2)
    assert time.monotonic() - started < 10  # libpq's least timeout is 2 s (per address tried)
