"""A fake Ollama server that speaks the real HTTP API, so the real `ollama` client is exercised.

Ollama cannot run here, so tests start this instead: a stdlib `ThreadingHTTPServer` on a free loopback
port, in a background thread.

    with FakeOllama(reply=lambda messages: "Net revenue rose 4% [1].") as server:
        llm = OllamaLLM(server.url, "qwen2.5:7b-instruct")
        ...
        server.requests[-1].body["options"]["num_predict"]

Endpoints, as Ollama serves them:
- `POST /api/chat`: NDJSON stream (one JSON object per line, the last with `"done": true`, the done reason and
  the prompt/eval counts and durations), or a single JSON object when the request says `"stream": false`. The
  reply is split into whitespace-led words, one word per chunk and per "token": `options.num_predict` cuts it
  short (`"done_reason": "length"`). No messages only loads the model (`"done_reason": "load"`).
  `keep_alive` (a Go duration such as "30m", or seconds; default 5m) sets when the model unloads.
- `GET /api/ps` (the loaded models and when they unload), `GET /api/tags`, `GET /api/version`, `POST /api/show`,
  `GET /` ("Ollama is running").
- Errors as Ollama sends them: an unknown model is a 404 `{"error": "model \"x\" not found, try pulling it
  first"}` from chat and `{"error": "model 'x' not found"}` from show; an error before any content is the
  status and `{"error": ...}` (`chat_error`); one after it is an `{"error": ...}` line in the stream
  (`stream_error`); an unknown path is gin's plain-text `404 page not found`.

Outages, as tests provoke them (each can be set and cleared while the server runs):
- `stop()` / `start()`: stop listening (connection refused) and listen again on the same port, as an Ollama
  that is restarted.
- `hang()`: accept connections and read requests, then answer nothing until `hang(False)` (a stuck server).
- `chat_error = (status, message)`: chats fail with that status before any content (a 5xx).
- `drop_after = n`: a streamed chat sends n chunks, then the connection is cut without the end of the chunked
  body (the server dying mid-answer).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

Reply = Callable[[list[dict[str, Any]]], str]

DEFAULT_MODEL = "qwen2.5:7b-instruct"
VERSION = "0.12.6"


def cite_first_source(messages: list[dict[str, Any]]) -> str:
    """The default reply: deterministic, depends on the question, and cites source [1]."""
    question = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    words = len(str(question).split())
    return f"According to the filing, the answer is in the first source [1]. The question had {words} words."


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    body: dict[str, Any] = field(default_factory=dict)


def _canonical(model: str) -> str:
    return model if ":" in model else f"{model}:latest"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(keep_alive: Any) -> float:
    """Ollama's keep_alive: absent is 5m; a number is seconds; a string is a Go duration; negative is forever."""
    if keep_alive is None:
        return 300.0
    if isinstance(keep_alive, int | float):
        return float(keep_alive)
    text = str(keep_alive)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text.lstrip("-"):
        raise ValueError(f"time: invalid duration {text!r}")
    total = sum(float(n) * _GO_UNITS[u] for n, u in parts)
    return -total if text.startswith("-") else total


def _tokens(text: str) -> list[str]:
    """Whitespace-led words: joined back together they give the text exactly."""
    return re.findall(r"\s*\S+\s*$|\s*\S+", text) or ([text] if text else [])


class FakeOllama:
    """A real HTTP server on 127.0.0.1 speaking Ollama's API. Use it as a context manager.

    reply: builds the answer text from the request's messages.
    models: tags that `/api/tags` lists and `/api/chat` accepts; any other model is a 404.
    chunk_delay_s: pause before each streamed chunk (to provoke client timeouts); like Ollama, the response
        headers go out with the first chunk.
    stream_error: if set, the stream sends this `{"error": ...}` line after the first chunk.
    chat_error: if set, `(status, message)`: every chat fails before any content, as Ollama does when the model
        cannot load (500) or its queue is full (503).
    drop_after: if set, a streamed chat's connection is cut after this many chunks (no end of the body).
    """

    def __init__(
        self,
        reply: Reply = cite_first_source,
        *,
        models: Sequence[str] = (DEFAULT_MODEL,),
        chunk_delay_s: float = 0.0,
        stream_error: str | None = None,
        chat_error: tuple[int, str] | None = None,
        drop_after: int | None = None,
    ) -> None:
        self.reply = reply
        self.models = [_canonical(m) for m in models]
        self.chunk_delay_s = chunk_delay_s
        self.stream_error = stream_error
        self.chat_error = chat_error
        self.drop_after = drop_after
        self._answering = threading.Event()  # cleared while the server hangs
        self._answering.set()
        self._port = 0
        self._stopped = False
        self.loaded: dict[str, tuple[datetime, int]] = {}  # model -> (when it unloads, num_ctx): /api/ps
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("FakeOllama has not started; use it as a context manager")
        return f"http://127.0.0.1:{self._port}"  # also while stopped: the address it comes back on

    @property
    def chats(self) -> list[dict[str, Any]]:
        """Bodies of the `/api/chat` requests received, oldest first."""
        with self._lock:
            return [r.body for r in self.requests if r.path == "/api/chat"]

    def start(self) -> None:
        """Listen (again, on the same port after `stop`)."""
        if self._server is not None:
            return
        self._stopped = False
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", self._port), handler)  # allow_reuse_address is on
        self._server.daemon_threads = True
        self._port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-ollama", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening: clients get connection refused until `start`. Requests held by `hang` are dropped
        unanswered, and the hang ends."""
        if self._server is None:
            return
        assert self._thread is not None
        self._stopped = True
        self._answering.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = self._thread = None

    def hang(self, on: bool = True) -> None:
        """While on, every request is read and then left unanswered (the client waits for its timeout)."""
        if on:
            self._answering.clear()
        else:
            self._answering.set()

    def __enter__(self) -> FakeOllama:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _record(self, method: str, path: str, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(Recorded(method, path, body))

    def _known(self, model: str) -> bool:
        return _canonical(model) in self.models

    def _keep_loaded(self, model: str, keep_alive: Any, num_ctx: int) -> None:
        seconds = _seconds(keep_alive)
        with self._lock:
            if seconds == 0:
                self.loaded.pop(_canonical(model), None)
            elif seconds < 0:  # forever
                self.loaded[_canonical(model)] = (datetime.max.replace(tzinfo=UTC), num_ctx)
            else:
                self.loaded[_canonical(model)] = (datetime.now(UTC) + timedelta(seconds=seconds), num_ctx)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # the client gave up (a timeout, a closed stream)
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOllama
    protocol_version = "HTTP/1.1"
    server_version = "FakeOllama"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    # --- plumbing -------------------------------------------------------------------------------------

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else {}

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def _not_found(self, model: str) -> None:
        self._send_json(404, {"error": f'model "{model}" not found, try pulling it first'})

    # --- routes ---------------------------------------------------------------------------------------

    def _send_text(self, status: int, text: str, *, body: bool = True) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        if body:
            self.wfile.write(data)
        self.close_connection = True

    def _page_not_found(self) -> None:  # gin's default for a path it has no route for
        self._send_text(404, "404 page not found")

    def _hang_while_asked(self) -> bool:
        """Hold the request while the fake hangs (bounded, so no test can hang for good); False when the
        server was stopped meanwhile and the connection is to be dropped unanswered."""
        fake = self.fake
        if not fake._answering.is_set():
            fake._answering.wait(60)
        if fake._stopped:
            self.close_connection = True
            return False
        return True

    def do_HEAD(self) -> None:
        if not self._hang_while_asked():
            return
        if self.path in ("/", "/api/version", "/api/tags"):
            self._send_text(200, "", body=False)
        else:
            self._send_text(404, "404 page not found", body=False)

    def do_GET(self) -> None:
        self.fake._record("GET", self.path, {})
        if not self._hang_while_asked():
            return
        if self.path == "/":
            self._send_text(200, "Ollama is running")
        elif self.path == "/api/version":
            self._send_json(200, {"version": VERSION})
        elif self.path == "/api/tags":
            self._send_json(200, {"models": [_model_entry(m) for m in self.fake.models]})
        elif self.path == "/api/ps":
            with self.fake._lock:
                loaded = dict(self.fake.loaded)
            self._send_json(200, {"models": [
                {**_model_entry(m), "expires_at": until.isoformat().replace("+00:00", "Z"), "size_vram": 0,
                 "context_length": num_ctx}
                for m, (until, num_ctx) in loaded.items()
            ]})
        else:
            self._page_not_found()

    def do_POST(self) -> None:
        try:
            body = self._body()
        except json.JSONDecodeError as exc:
            self._send_json(400, {"error": f"invalid JSON: {exc}"})
            return
        self.fake._record("POST", self.path, body)
        if not self._hang_while_asked():
            return
        if self.path == "/api/chat":
            self._chat(body)
        elif self.path == "/api/show":
            model = str(body.get("model") or body.get("name") or "")
            if not model:
                self._send_json(400, {"error": "model is required"})
                return
            if not self.fake._known(model):
                self._send_json(404, {"error": f"model '{model}' not found"})
                return
            entry = _model_entry(_canonical(model))
            self._send_json(
                200,
                {
                    "modelfile": f"FROM {entry['name']}",
                    "parameters": 'stop "<|im_end|>"',
                    "template": "{{ .Prompt }}",
                    "details": entry["details"],
                    "model_info": {"general.architecture": "qwen2", "general.parameter_count": 7615616512},
                    "capabilities": ["completion", "tools"],
                    "modified_at": entry["modified_at"],
                },
            )
        else:
            self._page_not_found()

    def _chat(self, body: dict[str, Any]) -> None:
        model = str(body.get("model") or "")
        if not model:
            self._send_json(400, {"error": "model is required"})
            return
        if not self.fake._known(model):
            self._not_found(model)
            return
        if self.fake.chat_error is not None:
            status, error = self.fake.chat_error
            self._send_json(status, {"error": error})
            return
        options = body.get("options") or {}
        try:
            self.fake._keep_loaded(model, body.get("keep_alive"), int(options.get("num_ctx") or 4096))
        except ValueError as exc:
            self._send_json(400, {"error": str(exc)})
            return
        messages = body.get("messages") or []
        if not messages:  # no messages: Ollama only loads the model
            self._send_json(200, {"model": model, "created_at": _now(), "message": {"role": "assistant", "content": ""},
                                  "done": True, "done_reason": "load"})
            return
        tokens = _tokens(self.fake.reply(messages))
        limit = options.get("num_predict")
        done_reason = "stop"
        if isinstance(limit, int) and 0 <= limit < len(tokens):
            tokens, done_reason = tokens[:limit], "length"
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        final = {
            "done": True,
            "done_reason": done_reason,
            "total_duration": 1_000_000 * (len(tokens) + 1),
            "load_duration": 1_000_000,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": 1_000_000,
            "eval_count": len(tokens),
            "eval_duration": 1_000_000 * len(tokens),
        }
        if body.get("stream", True) is False:
            message = {"role": "assistant", "content": "".join(tokens)}
            self._send_json(200, {"model": model, "created_at": _now(), "message": message, **final})
            return

        if self.fake.chunk_delay_s:  # Ollama's headers go out with the first chunk
            time.sleep(self.fake.chunk_delay_s)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        drop_after = self.fake.drop_after
        try:
            for i, token in enumerate(tokens):
                if drop_after is not None and i >= drop_after:
                    self._cut()
                    return
                if self.fake.chunk_delay_s and i > 0:
                    time.sleep(self.fake.chunk_delay_s)
                message = {"role": "assistant", "content": token}
                self._chunk({"model": model, "created_at": _now(), "message": message, "done": False})
                if i == 0 and self.fake.stream_error:
                    self._chunk({"error": self.fake.stream_error})
                    self._end_body()
                    return
            empty = {"role": "assistant", "content": ""}
            self._chunk({"model": model, "created_at": _now(), "message": empty, **final})
            self._end_body()
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: fine
            return

    def _end_body(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _cut(self) -> None:
        """Close the connection in the middle of the body, as a server process that dies does."""
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)

    def _chunk(self, obj: dict[str, Any]) -> None:
        line = json.dumps(obj).encode() + b"\n"
        self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
        self.wfile.flush()


def _model_entry(name: str) -> dict[str, Any]:
    family = name.split(":")[0].split(".")[0]
    return {
        "name": name,
        "model": name,
        "modified_at": "2026-01-01T00:00:00Z",
        "size": 4_683_087_332,
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": "7.6B",
            "quantization_level": "Q4_K_M",
        },
    }
