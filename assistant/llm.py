"""Generators. The one required method is `LLM.stream`; `complete` is built on it.

- `LlamaCppLLM`: a GGUF model run in-process by xllamacpp (prebuilt llama.cpp). The default. One context,
  one generation at a time: requests queue in arrival order (`LLM_QUEUE_TIMEOUT_S`).
- `OllamaLLM`: an Ollama server through the official `ollama` client.

Both bound every wait (`LLM_TIMEOUT_S` for a whole generation, `LLM_QUEUE_TIMEOUT_S` for the embedded model's
queue, `OLLAMA_CONNECT_TIMEOUT_S` for connecting to Ollama and for health probes), report an LLM that cannot
serve as `ComponentUnavailable` (HTTP 503) with what to do, and hold no state that an outage could break: each
request tries afresh, so the API recovers by itself when the server is back. `ping()` is the health probe.

Both also offer `count_tokens(text)` and `context_tokens` (the model's window), which prompt packing
(`assistant.packing`) uses to fit the sources.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypedDict

from .errors import ComponentUnavailable, ModelMissing

log = logging.getLogger(__name__)


class Message(TypedDict):
    role: str  # "system" | "user" | "assistant"
    content: str


class LLM(Protocol):
    name: str

    def stream(
        self, messages: Sequence[Message], *, max_tokens: int = 256, temperature: float = 0.0
    ) -> Iterator[str]:
        """Yield the answer's text piece by piece."""
        ...


def complete(llm: LLM, messages: Sequence[Message], *, max_tokens: int = 256, temperature: float = 0.0) -> str:
    return "".join(llm.stream(messages, max_tokens=max_tokens, temperature=temperature))


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate: 3.5 characters a token, but one token per digit.

    Qwen's and Llama 3's tokenizers split figures into single digits (or groups of up to three), so a table
    row costs about twice what its length suggests: a 10-Q row of 188 characters is 95 Qwen tokens, where
    chars/3.5 says 54 and this says 85; English prose of 198 characters is 42 tokens, this says 59.
    """
    digits = sum(ch.isdigit() for ch in text)
    return math.ceil(digits + (len(text) - digits) / 3.5)


# --- embedded llama.cpp -----------------------------------------------------------------------------------

_DONE = object()


class _FifoGate:
    """A lock granted in arrival order; a waiter gives up after its timeout without disturbing the others."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._waiters: deque[threading.Event] = deque()

    @property
    def queued(self) -> int:
        """Requests holding or waiting for the lock."""
        with self._mutex:
            return len(self._waiters) + self._held

    def acquire(self, timeout: float) -> bool:
        with self._mutex:
            if not self._held:
                self._held = True
                return True
            turn = threading.Event()
            self._waiters.append(turn)
        if turn.wait(timeout):
            return True
        with self._mutex:
            if turn.is_set():  # handed over just as we gave up: ours now
                return True
            self._waiters.remove(turn)
            return False

    def release(self) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().set()  # handed straight to the next in line: stays held
            else:
                self._held = False


class LlamaCppLLM:
    """An embedded llama.cpp server (xllamacpp): generation runs in-process on one context (`n_parallel=1`).

    Generations never overlap: each waits its turn in a FIFO queue, for at most `queue_timeout_s`. The turn
    lasts the whole generation, also when the consumer stops early: closing the stream asks llama.cpp to
    stop at its next token, and the worker thread gives the turn to the next request once llama.cpp has
    returned (a prompt still being read is finished first — llama.cpp offers no earlier stop).

    `count_tokens` uses the model's own tokenizer through llama.cpp's `/tokenize`, served by the HTTP
    listener that xllamacpp starts on a loopback port beside the in-process server (`listening_address`);
    `ping` asks that listener's `/health`, and says the model is stuck when one generation has held it for more
    than twice `timeout_s` (llama.cpp ignored the request to stop: only a restart frees it).

    A file that is missing is `ModelMissing` (from `assistant.models.require_model`); one that llama.cpp cannot
    load (truncated, corrupt, not a GGUF model) is `ModelMissing` too, saying to fetch it again.
    """

    PROBE_TIMEOUT_S = 5.0  # the loopback listener's /health answers in milliseconds
    TOKENIZE_TIMEOUT_S = 30.0  # /tokenize: milliseconds too, but on a CPU that a generation may be keeping busy

    def __init__(
        self, model_path: Path, *, name: str, threads: int = 2, context_tokens: int = 4096,
        timeout_s: float = 180.0, queue_timeout_s: float = 120.0,
    ) -> None:
        import httpx
        import xllamacpp as xlc

        params = xlc.CommonParams()
        params.model.path = str(model_path)
        params.n_ctx = context_tokens
        params.n_parallel = 1
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.warmup = False
        params.endpoint_metrics = False
        params.hostnames = ["127.0.0.1"]  # xllamacpp's own listener: loopback only, on a free port
        params.port = 0
        params.verbosity = -1  # llama.cpp's own logging; our errors surface as exceptions
        started = time.perf_counter()
        try:
            self._server = xlc.Server(params)
        except Exception as exc:  # the binding raises plain RuntimeErrors on bad files
            raise ModelMissing(
                f"cannot load GGUF model {model_path} ({exc}): the file is truncated, corrupt or not a GGUF model; "
                f"delete it and fetch it again (`python -m assistant.models fetch {name}` for a registered model)"
            ) from exc
        self.name = name
        self.context_tokens = context_tokens
        self.timeout_s = timeout_s
        self.queue_timeout_s = queue_timeout_s
        self._gate = _FifoGate()
        self._generating_since: float | None = None  # monotonic start of the generation holding the model
        address = self._server.listening_address
        # No pooled connections: nothing is left open when the model is dropped without close().
        no_pool = httpx.Limits(max_keepalive_connections=0)
        self._http = httpx.Client(base_url=address, timeout=self.TOKENIZE_TIMEOUT_S,
                                  limits=no_pool) if address else None
        log.info("llm %s loaded in %.1fs (%d threads)", name, time.perf_counter() - started, threads)

    @property
    def queued(self) -> int:
        """Requests generating or waiting for their turn."""
        return self._gate.queued

    def ping(self) -> None:
        """Raise ComponentUnavailable when the model cannot serve: its loopback listener does not answer
        `/health`, or one generation has held the model for more than twice LLM_TIMEOUT_S."""
        import httpx

        since = self._generating_since
        if since is not None and (held := time.monotonic() - since) > 2 * self.timeout_s:
            raise ComponentUnavailable(
                f"the embedded model {self.name} has been generating one answer for {held:.0f}s, more than twice "
                f"LLM_TIMEOUT_S ({self.timeout_s:g}s), and does not stop: restart the server"
            )
        if self._http is None:
            return
        try:
            self._http.get("/health", timeout=self.PROBE_TIMEOUT_S).raise_for_status()
        except httpx.HTTPError as exc:
            raise ComponentUnavailable(
                f"the embedded model {self.name} does not answer its health check ({exc!r}); restart the server"
            ) from exc

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes in this model's prompt (its own tokenizer; no BOS or template tokens)."""
        if not text:
            return 0
        import httpx

        if self._http is None:
            raise ComponentUnavailable(f"cannot count tokens with {self.name}: xllamacpp started no loopback listener")
        try:
            reply = self._http.post("/tokenize", json={"content": text, "add_special": False})
            reply.raise_for_status()
            return len(reply.json()["tokens"])
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise ComponentUnavailable(f"cannot count tokens with {self.name}'s tokenizer: {exc}") from exc

    def stream(
        self, messages: Sequence[Message], *, max_tokens: int = 256, temperature: float = 0.0
    ) -> Generator[str, None, None]:
        ahead = self._gate.queued
        if not self._gate.acquire(self.queue_timeout_s):
            raise ComponentUnavailable(
                f"the embedded model is busy: {self.name} had {ahead} answer(s) to generate before this one and "
                f"did not get to it within {self.queue_timeout_s:g}s (LLM_QUEUE_TIMEOUT_S); try again shortly, or "
                "serve with Ollama (LLM_BACKEND=ollama) for more load"
            )
        pieces: queue.Queue[Any] = queue.Queue()
        cancelled = threading.Event()
        request = {
            "messages": list(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "seed": 7,
            "stream": True,
        }

        def on_chunk(chunk: Any) -> bool:
            if isinstance(chunk, dict):
                if "error" in chunk:
                    pieces.put(ComponentUnavailable(f"llama.cpp error: {chunk['error']}"))
                    return True
                for choice in chunk.get("choices", []):
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        pieces.put(text)
            return cancelled.is_set()  # True stops generation early

        def run() -> None:
            self._generating_since = time.monotonic()
            try:
                result = self._server.handle_chat_completions(request, on_chunk)
                if isinstance(result, dict) and "error" in result:
                    pieces.put(ComponentUnavailable(f"llama.cpp error: {result['error']}"))
            except Exception as exc:  # surfaced to the consumer below
                pieces.put(exc)
            finally:
                self._generating_since = None
                self._gate.release()  # the context is free only once llama.cpp has returned
                pieces.put(_DONE)

        worker = threading.Thread(target=run, name=f"llamacpp-generate-{self.name}", daemon=True)
        try:
            worker.start()
        except BaseException:
            self._gate.release()
            raise
        deadline = time.monotonic() + self.timeout_s
        try:
            while True:
                try:
                    item = pieces.get(timeout=max(0.1, deadline - time.monotonic()))
                except queue.Empty:
                    raise ComponentUnavailable(
                        f"the embedded model {self.name} did not finish within {self.timeout_s:g}s (LLM_TIMEOUT_S); "
                        "try again, and if it keeps happening raise LLM_TIMEOUT_S or serve a smaller model (LLM_MODEL)"
                    ) from None
                if item is _DONE:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            cancelled.set()  # closed, failed or timed out: llama.cpp stops at its next token

    def close(self) -> None:
        if self._http is not None:
            self._http.close()


# --- Ollama -----------------------------------------------------------------------------------------------

_START_HINT = "start it with `ollama serve` or set OLLAMA_HOST"
_GO_DURATION = re.compile(r"-?(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+")


def keep_alive_value(value: str) -> str | float:
    """OLLAMA_KEEP_ALIVE as Ollama's API takes it: a Go duration ("30m", "1h30m") or seconds as a number
    ("0" unloads at once, "-1" keeps the model loaded for good). Raises ValueError otherwise."""
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        if _GO_DURATION.fullmatch(text):
            return text
    raise ValueError(f"{value!r} is no duration: use e.g. 30m, 1h, 300 (seconds), 0 or -1")


class OllamaLLM:
    """An Ollama server, through the official client (`/api/chat`, streamed NDJSON).

    Every chat sends `keep_alive` (how long Ollama keeps the model loaded after it) and `num_ctx` =
    `context_tokens`, so the window prompts are packed for is the one Ollama uses. `count_tokens` is an estimate
    (`estimate_tokens`): Ollama has no tokenize API.

    Timeouts: `connect_timeout_s` bounds opening the connection, so a down server is reported in seconds;
    `timeout_s` bounds the whole answer, strictly: the stream is read by a worker thread and the consumer waits
    for each piece at most until the deadline, so a server that accepts the request and then sends nothing, or
    stalls halfway, fails at `timeout_s` (the worker's own read timeout, also `timeout_s`, then ends it). `ping`
    and `models` are health probes: `connect_timeout_s` bounds the whole call.
    """

    def __init__(
        self, host: str, model: str, *, timeout_s: float = 180.0, connect_timeout_s: float = 5.0,
        keep_alive: str = "30m", context_tokens: int = 8192,
    ) -> None:
        import httpx
        import ollama

        self._client = ollama.Client(host=host, timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s))
        self._probe = ollama.Client(host=host, timeout=httpx.Timeout(connect_timeout_s))
        self.host = host
        self.model = model
        self.name = f"ollama:{model}"
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.keep_alive = keep_alive_value(keep_alive)
        self.context_tokens = context_tokens

    def count_tokens(self, text: str) -> int:
        """An estimate (`estimate_tokens`: chars/3.5, one token per digit); Ollama's API cannot tokenize."""
        return estimate_tokens(text)

    def stream(
        self, messages: Sequence[Message], *, max_tokens: int = 256, temperature: float = 0.0
    ) -> Generator[str, None, None]:
        import httpx

        deadline = time.monotonic() + self.timeout_s
        pieces: queue.Queue[Any] = queue.Queue()
        stop = threading.Event()
        chat = [dict(m) for m in messages]
        options = {"num_predict": max_tokens, "temperature": temperature, "seed": 7, "num_ctx": self.context_tokens}

        def read() -> None:
            parts: Any = None
            try:
                parts = self._client.chat(model=self.model, messages=chat, stream=True, keep_alive=self.keep_alive,
                                          options=options)
                for part in parts:
                    if part.done:
                        self._log_done(part)
                    text = part.message.content if part.message else None
                    if text:
                        pieces.put(text)
                    if stop.is_set():  # the consumer is gone (closed, failed or timed out)
                        break
                pieces.put(_DONE)
            except Exception as exc:  # surfaced to the consumer below
                pieces.put(exc)
            finally:
                if isinstance(parts, Generator):  # the client's stream: closing it closes the connection, so an
                    with contextlib.suppress(Exception):  # abandoned answer stops Ollama generating
                        parts.close()

        threading.Thread(target=read, name=f"ollama-{self.model}", daemon=True).start()
        received = False
        try:
            while True:
                try:
                    item = pieces.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise self._timed_out(received) from None
                if item is _DONE:
                    return
                if isinstance(item, httpx.TimeoutException) and not isinstance(item, httpx.ConnectTimeout):
                    raise self._timed_out(received) from item  # the worker's read timeout: the same deadline
                if isinstance(item, Exception):
                    translated = self._unavailable(item)
                    if translated is None:
                        raise item
                    raise translated from item
                received = True
                yield item
        finally:
            stop.set()

    def _timed_out(self, received: bool) -> ComponentUnavailable:
        if not received:
            return ComponentUnavailable(
                f"Ollama at {self.host} sent nothing for {self.timeout_s:g}s (LLM_TIMEOUT_S) while serving "
                f"{self.model}; it may still be loading the model, or be stuck: retry, or raise LLM_TIMEOUT_S"
            )
        return ComponentUnavailable(
            f"Ollama at {self.host} did not finish answering with {self.model} within {self.timeout_s:g}s "
            "(LLM_TIMEOUT_S); retry, or raise LLM_TIMEOUT_S"
        )

    def ping(self) -> None:
        """Raise ComponentUnavailable unless the server answers and has the model (`/api/show`), within
        `connect_timeout_s` in all."""
        try:
            self._probe.show(self.model)
        except Exception as exc:
            translated = self._unavailable(exc)
            if translated is None:
                raise
            raise translated from exc

    def models(self) -> list[str]:
        """The model tags the server has pulled (`/api/tags`), e.g. ["qwen2.5:7b-instruct"]."""
        try:
            return [m.model for m in self._probe.list().models if m.model]
        except Exception as exc:
            translated = self._unavailable(exc)
            if translated is None:
                raise
            raise translated from exc

    def close(self) -> None:
        self._client.close()
        self._probe.close()

    def _log_done(self, part: Any) -> None:
        prompt, generated = part.prompt_eval_count or 0, part.eval_count or 0
        log.debug("ollama %s: %d prompt tokens, %d generated (%s)", self.model, prompt, generated, part.done_reason)
        if prompt + generated >= self.context_tokens:
            log.warning("ollama %s: the prompt filled the %d-token window (OLLAMA_CONTEXT_TOKENS); Ollama may have "
                        "cut its start", self.model, self.context_tokens)

    def _unavailable(self, exc: Exception) -> ComponentUnavailable | None:
        """The client's or httpx's exception as a ComponentUnavailable that says what to do; None for any
        other exception (ours, or a bug), which is raised as it is."""
        import httpx
        import ollama
        import pydantic

        where = f"Ollama at {self.host}"
        if isinstance(exc, ollama.ResponseError):
            error = str(exc.error).strip()[:300] or "no details"  # a proxy's HTML page, or nothing at all
            if exc.status_code == 404 and error.startswith("model"):
                # 'model "x" not found, try pulling it first' (chat), "model 'x' not found" (show)
                return ComponentUnavailable(f"{where} has no model '{self.model}'; run `ollama pull {self.model}`")
            if exc.status_code == -1:  # an {"error": ...} line in the middle of the stream
                return ComponentUnavailable(f"{where} failed while answering with {self.model}: {error}")
            hint = "; is OLLAMA_HOST an Ollama server?" if exc.status_code in (404, 405) else ""
            return ComponentUnavailable(f"{where} answered HTTP {exc.status_code} for {self.model}: {error}{hint}")
        if isinstance(exc, httpx.ConnectTimeout):
            return ComponentUnavailable(
                f"{where} is unreachable (no connection within {self.connect_timeout_s:g}s, OLLAMA_CONNECT_TIMEOUT_S); "
                f"{_START_HINT}"
            )
        if isinstance(exc, httpx.TimeoutException):  # a probe's (a chat's timeouts are told by `stream`)
            return ComponentUnavailable(
                f"{where} accepted the connection but did not answer within {self.connect_timeout_s:g}s "
                "(OLLAMA_CONNECT_TIMEOUT_S); it is overloaded or stuck: check it (`ollama ps`) or restart it"
            )
        if isinstance(exc, httpx.ConnectError | ConnectionError):
            reason = exc.__context__ if isinstance(exc, ConnectionError) and exc.__context__ else exc
            return ComponentUnavailable(f"{where} is unreachable ({reason}); {_START_HINT}")
        if isinstance(exc, httpx.HTTPError):
            return ComponentUnavailable(
                f"{where} broke off while serving {self.model} ({exc!r}); retry, and if it recurs check Ollama's log"
            )
        if isinstance(exc, json.JSONDecodeError | pydantic.ValidationError):
            return ComponentUnavailable(f"{where} sent a reply that is not Ollama's API ({exc}); check OLLAMA_HOST")
        return None
