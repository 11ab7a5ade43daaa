"""Generators. The one required method is `LLM.stream`; `complete` is built on it.

- `LlamaCppLLM`: a GGUF model run in-process by xllamacpp (prebuilt llama.cpp). The default.
- `OllamaLLM`: an Ollama server through the official `ollama` client.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypedDict

from .errors import ComponentUnavailable

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


_DONE = object()


class LlamaCppLLM:
    """An embedded llama.cpp server (xllamacpp), called in-process, never over the network."""

    def __init__(
        self, model_path: Path, *, name: str, threads: int = 2, context_tokens: int = 4096,
        timeout_s: float = 180.0,
    ) -> None:
        import xllamacpp as xlc

        params = xlc.CommonParams()
        params.model.path = str(model_path)
        params.n_ctx = context_tokens
        params.n_parallel = 1
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.warmup = False
        params.endpoint_metrics = False
        params.verbosity = -1  # llama.cpp's own logging; our errors surface as exceptions
        started = time.perf_counter()
        try:
            self._server = xlc.Server(params)
        except Exception as exc:  # the binding raises plain RuntimeErrors on bad files
            raise ComponentUnavailable(f"cannot load GGUF model {model_path}: {exc}") from exc
        self.name = name
        self.timeout_s = timeout_s
        log.info("llm %s loaded in %.1fs (%d threads)", name, time.perf_counter() - started, threads)

    def stream(
        self, messages: Sequence[Message], *, max_tokens: int = 256, temperature: float = 0.0
    ) -> Iterator[str]:
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
            try:
                result = self._server.handle_chat_completions(request, on_chunk)
                if isinstance(result, dict) and "error" in result:
                    pieces.put(ComponentUnavailable(f"llama.cpp error: {result['error']}"))
            except Exception as exc:  # surfaced to the consumer below
                pieces.put(exc)
            finally:
                pieces.put(_DONE)

        worker = threading.Thread(target=run, name="llamacpp-generate", daemon=True)
        worker.start()
        deadline = time.monotonic() + self.timeout_s
        try:
            while True:
                try:
                    item = pieces.get(timeout=max(0.1, deadline - time.monotonic()))
                except queue.Empty:
                    cancelled.set()
                    raise ComponentUnavailable(f"the LLM did not finish within {self.timeout_s:.0f}s") from None
                if item is _DONE:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            cancelled.set()


class OllamaLLM:
    """An Ollama server, through the official client (`/api/chat`, streamed NDJSON)."""

    def __init__(self, host: str, model: str, *, timeout_s: float = 180.0) -> None:
        import ollama

        self._client = ollama.Client(host=host, timeout=timeout_s)
        self.host = host
        self.model = model
        self.name = f"ollama:{model}"
        self.timeout_s = timeout_s

    def stream(
        self, messages: Sequence[Message], *, max_tokens: int = 256, temperature: float = 0.0
    ) -> Iterator[str]:
        import httpx
        import ollama

        try:
            for part in self._client.chat(
                model=self.model,
                messages=[dict(m) for m in messages],
                stream=True,
                options={"num_predict": max_tokens, "temperature": temperature, "seed": 7},
            ):
                text = part.message.content if part.message else None
                if text:
                    yield text
        except ollama.ResponseError as exc:
            raise self._response_error(exc) from exc
        except httpx.TimeoutException as exc:
            raise ComponentUnavailable(
                f"Ollama at {self.host} did not answer within {self.timeout_s:.0f}s (per read)"
            ) from exc
        except (httpx.HTTPError, ConnectionError) as exc:
            raise ComponentUnavailable(f"Ollama at {self.host} is unreachable: {exc}") from exc

    def _response_error(self, exc: Exception) -> ComponentUnavailable:
        if getattr(exc, "status_code", None) == 404:
            return ComponentUnavailable(
                f"Ollama at {self.host} has no model {self.model!r}; run `ollama pull {self.model}` there"
            )
        return ComponentUnavailable(f"Ollama at {self.host} failed: {getattr(exc, 'error', exc)}")

    def ping(self) -> None:
        """Raise ComponentUnavailable unless the server answers and has the model."""
        import httpx
        import ollama

        try:
            self._client.show(self.model)
        except ollama.ResponseError as exc:
            raise self._response_error(exc) from exc
        except (httpx.HTTPError, ConnectionError) as exc:
            raise ComponentUnavailable(f"Ollama at {self.host} is unreachable: {exc}") from exc

    def close(self) -> None:
        self._client.close()
