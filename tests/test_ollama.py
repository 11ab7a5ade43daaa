"""`OllamaLLM` through the real `ollama` client against `FakeOllama`, a real HTTP server speaking Ollama's API.

What every backend must do is in test_llm_contract.py; here: what is sent (options, keep_alive, num_ctx),
and every way Ollama fails, each a ComponentUnavailable (HTTP 503) whose message names the host and the fix.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from conftest import make_settings
from fake_ollama import DEFAULT_MODEL, FakeOllama
from pydantic import ValidationError

from assistant.components import Components
from assistant.errors import ComponentUnavailable
from assistant.llm import Message, OllamaLLM, complete, estimate_tokens, keep_alive_value
from assistant.settings import OllamaSettings

QUESTION: list[Message] = [
    {"role": "system", "content": "Answer only from the sources."},
    {"role": "user", "content": "What were total net sales?"},
]
REPLY = "Total net sales were $81,797 million in the three months ended July 1, 2023 [1]."


def _reply(messages: list[dict[str, Any]]) -> str:
    return REPLY


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOllama]:
    with FakeOllama(reply=_reply, models=(DEFAULT_MODEL, "llama3.2:1b")) as fake:
        yield fake


def _unavailable(call: Any) -> ComponentUnavailable:
    with pytest.raises(ComponentUnavailable) as caught:
        call()
    assert caught.value.status_code == 503
    return caught.value


# --- what is sent and received ------------------------------------------------------------------------------


def test_the_answer_streams_piece_by_piece(server: FakeOllama) -> None:
    llm = OllamaLLM(server.url, DEFAULT_MODEL, timeout_s=5)
    pieces = list(llm.stream(QUESTION, max_tokens=100))
    assert len(pieces) == len(REPLY.split())  # the fake sends a word a chunk
    assert "".join(pieces) == REPLY


def test_options_keep_alive_and_window_are_sent(server: FakeOllama) -> None:
    llm = OllamaLLM(server.url, DEFAULT_MODEL, timeout_s=5, keep_alive="30m", context_tokens=16384)
    before = len(server.chats)
    assert complete(llm, QUESTION, max_tokens=5, temperature=0.2) == " ".join(REPLY.split()[:5])
    (body,) = server.chats[before:]
    assert body["model"] == DEFAULT_MODEL and body["stream"] is True
    assert body["messages"] == QUESTION
    assert body["keep_alive"] == "30m"
    assert body["options"]["num_predict"] == 5
    assert body["options"]["temperature"] == pytest.approx(0.2)
    assert body["options"]["num_ctx"] == 16384
    # Ollama keeps the model loaded for the 30 minutes asked (what `ollama ps` shows).
    with ollama.Client(host=server.url, timeout=5) as client:
        (loaded,) = [m for m in client.ps().models if m.model == DEFAULT_MODEL]
    assert loaded.expires_at is not None
    left = loaded.expires_at - datetime.now(UTC)
    assert timedelta(minutes=29) < left <= timedelta(minutes=30)
    assert loaded.context_length == 16384  # with the window asked for


def test_keep_alive_in_seconds_or_forever_is_sent_as_a_number(server: FakeOllama) -> None:
    llm = OllamaLLM(server.url, "llama3.2:1b", timeout_s=5, keep_alive="-1")
    complete(llm, QUESTION, max_tokens=3)
    assert server.chats[-1]["keep_alive"] == -1
    assert server.loaded["llama3.2:1b"][0].year == 9999  # forever


def test_keep_alive_must_be_a_duration() -> None:
    assert keep_alive_value("1h30m") == "1h30m"
    assert keep_alive_value(" 300 ") == 300.0
    with pytest.raises(ValueError, match="no duration"):
        keep_alive_value("forever")
    with pytest.raises(ValidationError, match="OLLAMA_KEEP_ALIVE"):
        OllamaSettings(keep_alive="30 minutes", _env_file=None)  # type: ignore[call-arg]


def test_ping_and_models(server: FakeOllama) -> None:
    llm = OllamaLLM(server.url, DEFAULT_MODEL, timeout_s=5)
    before = len(server.requests)
    llm.ping()
    assert llm.models() == [DEFAULT_MODEL, "llama3.2:1b"]
    assert [(r.method, r.path) for r in server.requests[before:]] == [("POST", "/api/show"), ("GET", "/api/tags")]


def test_tokens_are_estimated_and_the_window_is_known(server: FakeOllama) -> None:
    llm = OllamaLLM(server.url, DEFAULT_MODEL)
    assert llm.context_tokens == 8192
    assert llm.count_tokens("") == 0
    assert llm.count_tokens("a" * 35) == 10  # 3.5 characters a token
    assert llm.count_tokens("81,797") == estimate_tokens("81,797") == 6  # but a token a digit


# --- failures -----------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_server_that_is_down(server: FakeOllama) -> None:
    host = f"http://127.0.0.1:{_closed_port()}"
    llm = OllamaLLM(host, DEFAULT_MODEL, timeout_s=5)
    for call in (lambda: complete(llm, QUESTION), llm.ping, llm.models):
        error = _unavailable(call)
        assert error.message.startswith(f"Ollama at {host} is unreachable"), error.message
        assert "start it with `ollama serve` or set OLLAMA_HOST" in error.message


def test_connecting_gives_up_after_the_connect_timeout(unresponsive_port: int) -> None:
    llm = OllamaLLM(f"http://127.0.0.1:{unresponsive_port}", DEFAULT_MODEL, timeout_s=60, connect_timeout_s=0.3)
    started = time.monotonic()
    error = _unavailable(lambda: complete(llm, QUESTION))
    assert time.monotonic() - started < 5  # the connect timeout, not the 60 s read timeout
    assert "is unreachable (no connection within 0.3s, OLLAMA_CONNECT_TIMEOUT_S)" in error.message
    assert "`ollama serve`" in error.message


@pytest.mark.parametrize("model", ["no-such-model:1b", "qwen2.5:72b"])
def test_a_missing_model_says_what_to_pull(server: FakeOllama, model: str) -> None:
    llm = OllamaLLM(server.url, model, timeout_s=5)
    expected = f"Ollama at {server.url} has no model '{model}'; run `ollama pull {model}`"
    assert _unavailable(lambda: complete(llm, QUESTION)).message == expected  # 404 from /api/chat
    assert _unavailable(llm.ping).message == expected  # 404 from /api/show, worded differently


@pytest.mark.parametrize(("status", "error"), [
    (500, "model requires more system memory (5.6 GiB) than is available (3.1 GiB)"),
    (503, "server busy, please try again.  maximum pending requests exceeded"),
])
def test_other_errors_surface_ollamas_words(status: int, error: str) -> None:
    with FakeOllama(chat_error=(status, error)) as fake:
        url = fake.url
        message = _unavailable(lambda: complete(OllamaLLM(url, DEFAULT_MODEL, timeout_s=5), QUESTION)).message
    assert message == f"Ollama at {url} answered HTTP {status} for {DEFAULT_MODEL}: {error}"


def test_a_host_that_is_no_ollama_server(server: FakeOllama) -> None:
    host = f"{server.url}/not-ollama"  # every path under it is gin's plain-text 404
    message = _unavailable(lambda: complete(OllamaLLM(host, DEFAULT_MODEL, timeout_s=5), QUESTION)).message
    assert message == (f"Ollama at {host} answered HTTP 404 for {DEFAULT_MODEL}: 404 page not found; "
                       "is OLLAMA_HOST an Ollama server?")


def test_an_error_in_the_middle_of_the_stream() -> None:
    with FakeOllama(reply=_reply, stream_error="model runner has unexpectedly stopped") as fake:
        url = fake.url
        stream = OllamaLLM(url, DEFAULT_MODEL, timeout_s=5).stream(QUESTION)
        assert next(stream) == REPLY.split()[0]  # the answer had started
        error = _unavailable(lambda: next(stream))
    assert error.message == (f"Ollama at {url} failed while answering with {DEFAULT_MODEL}: "
                             "model runner has unexpectedly stopped")


def test_a_read_that_takes_too_long() -> None:
    with FakeOllama(reply=_reply, chunk_delay_s=1.0) as fake:
        url = fake.url
        llm = OllamaLLM(url, DEFAULT_MODEL, timeout_s=0.2)
        started = time.monotonic()
        error = _unavailable(lambda: complete(llm, QUESTION))
    assert time.monotonic() - started < 1.0
    assert error.message.startswith(f"Ollama at {url} sent nothing for 0.2s (LLM_TIMEOUT_S)")


def test_an_answer_that_takes_too_long_in_all() -> None:
    with FakeOllama(reply=_reply, chunk_delay_s=0.1) as fake:  # each read is quick, the whole is not
        url = fake.url
        llm = OllamaLLM(url, DEFAULT_MODEL, timeout_s=0.5)
        pieces: list[str] = []
        with pytest.raises(ComponentUnavailable) as caught:
            pieces.extend(llm.stream(QUESTION))
    assert caught.value.message == (f"Ollama at {url} did not finish answering with {DEFAULT_MODEL} within "
                                    "0.5s (LLM_TIMEOUT_S); retry, or raise LLM_TIMEOUT_S")
    assert 0 < len(pieces) < len(REPLY.split())


# --- built from settings ------------------------------------------------------------------------------------


def test_components_build_an_ollama_llm_for_a_requested_model(server: FakeOllama, tmp_path: Path) -> None:
    ollama_settings = OllamaSettings(host=server.url, keep_alive="1h", connect_timeout_s=2.5,  # type: ignore[call-arg]
                                     context_tokens=4096, _env_file=None)
    components = Components(make_settings(tmp_path / "data", ollama=ollama_settings))
    llm = components.llm_for("ollama:llama3.2:1b")
    assert isinstance(llm, OllamaLLM)
    assert (llm.name, llm.model, llm.host) == ("ollama:llama3.2:1b", "llama3.2:1b", server.url)
    assert (llm.keep_alive, llm.connect_timeout_s, llm.context_tokens) == ("1h", 2.5, 4096)
    assert components.llm_for("ollama:llama3.2:1b") is llm  # built once
    assert not components.llm_loaded  # the default (embedded) model was not loaded for it
    assert complete(llm, QUESTION, max_tokens=4) == " ".join(REPLY.split()[:4])
    body = server.chats[-1]
    assert (body["model"], body["keep_alive"], body["options"]["num_ctx"]) == ("llama3.2:1b", "1h", 4096)


# --- the fake itself ----------------------------------------------------------------------------------------


def test_fake_ollama_speaks_the_api(server: FakeOllama) -> None:
    """Through the real client: non-streamed chat, load-only chat, show, tags, version; errors as Ollama's."""
    with ollama.Client(host=server.url, timeout=5) as client:
        whole = client.chat(model=DEFAULT_MODEL, messages=[dict(m) for m in QUESTION], stream=False)
        assert whole.done and whole.done_reason == "stop"
        assert whole.message.content == REPLY
        assert whole.eval_count == len(REPLY.split())
        assert whole.prompt_eval_count == sum(len(m["content"].split()) for m in QUESTION)
        streamed = list(client.chat(model=DEFAULT_MODEL, messages=[dict(m) for m in QUESTION], stream=True))
        assert [p.done for p in streamed] == [False] * len(REPLY.split()) + [True]
        assert streamed[-1].eval_count == len(REPLY.split()) and streamed[-1].message.content == ""
        assert client.chat(model=DEFAULT_MODEL, messages=[]).done_reason == "load"
        shown = client.show(DEFAULT_MODEL)
        assert shown.details is not None and shown.details.format == "gguf"
        assert [m.model for m in client.list().models] == [DEFAULT_MODEL, "llama3.2:1b"]
        with pytest.raises(ollama.ResponseError) as caught:
            client.show("missing")
        assert (caught.value.status_code, caught.value.error) == (404, "model 'missing' not found")
        with pytest.raises(ollama.ResponseError) as caught:
            client.chat(model="missing", messages=[dict(m) for m in QUESTION])
        assert caught.value.error == 'model "missing" not found, try pulling it first'
        with pytest.raises(ollama.ResponseError) as caught:
            client.chat(model=DEFAULT_MODEL, messages=[dict(m) for m in QUESTION], keep_alive="soon")
        assert caught.value.status_code == 400
    assert httpx.get(f"{server.url}/api/version", timeout=5).json() == {"version": "0.12.6"}
    assert httpx.get(f"{server.url}/", timeout=5).text == "Ollama is running"
    missing = httpx.get(f"{server.url}/api/nothing", timeout=5)
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    assert httpx.head(f"{server.url}/api/tags", timeout=5).status_code == 200
