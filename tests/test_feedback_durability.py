"""Answers and votes are committed before the response that acknowledges them returns, and concurrent voters lose
nothing.

- 2,000 votes from 50 concurrent HTTP clients against the real app served by uvicorn, on SQLite (WAL, busy timeout)
  and on a real PostgreSQL: 0 errors, 0 lost, each stored as sent; every 25th acknowledged vote is read back at once
  through another connection (bench/feedback_load.py's clients and checks, imported; the bench runs 10,000 from
  50 clients against `python -m assistant` and kills it right after the last response).
- Chat, whole and streamed (`done`), and the OpenAI-compatible stream's last chunk: the answer's row is readable
  from another connection when the client receives its id, even with the recording slowed down (so a `done` sent
  before the commit would be caught). The generator is Ollama's protocol (tests/fake_ollama.py) over a real index.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from conftest import REPO, SAMPLE_COLLECTION, SAMPLES, make_settings, serve
from fake_ollama import DEFAULT_MODEL, FakeOllama
from postgres import PostgresServer

from assistant.app import create_app
from assistant.components import Components
from assistant.db import answers, connect
from assistant.embedding import SentenceTransformerEmbedder
from assistant.records import AnswerLog
from assistant.settings import LLMSettings, OllamaSettings
from ingest.pipeline import Ingestor


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("feedback_load", REPO / "bench" / "feedback_load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


load = _bench()
WRITES, REVOTES, CLIENTS, ANSWERS = 2000, 100, 50, 40


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'finrag.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.create_database()
    yield url
    server.drop_database(url)


def test_concurrent_voters_over_http_lose_nothing(database_url: str, tmp_path: Path) -> None:
    engine = connect(database_url)
    settings = make_settings(tmp_path / "data", database_url=database_url)
    components = Components(settings, engine=engine)
    reader = sa.create_engine(database_url)  # another connection pool than the server's
    read_back: list[bool] = []

    def acknowledged(vote: dict[str, Any], _response: httpx.Response) -> None:
        if len(read_back) % 25 == 0 or vote["comment"].startswith("re-vote"):
            row = load.stored_vote(reader, vote["answer_id"], vote["user_id"])
            read_back.append(row is not None and row["comment"] == vote["comment"])
        else:
            read_back.append(True)

    try:
        first, again = load.plan_votes(load.seed_answers(engine, ANSWERS), WRITES, REVOTES)
        with serve(create_app(settings, components, preload=False)) as url:
            phase1 = asyncio.run(load.send_all(url, first, CLIENTS, after=acknowledged))
            phase2 = asyncio.run(load.send_all(url, again, CLIENTS, after=acknowledged))
        result = load.check(first + again, load.stored_votes(reader))
    finally:
        reader.dispose()
        components.close()
        engine.dispose()
    assert phase1.errors == [] and phase2.errors == []
    assert phase1.statuses == {201: WRITES} and phase2.statuses == {200: REVOTES}
    assert (result["lost"], result["wrong"], result["extra"], result["stored"]) == (0, 0, 0, WRITES), result
    assert len(read_back) == WRITES + REVOTES and all(read_back)
    print(f"{database_url.split(':')[0]}: {WRITES} votes from {CLIENTS} clients in {phase1.seconds:.1f} s "
          f"({WRITES / phase1.seconds:.0f}/s), {REVOTES} re-votes; 0 lost, 0 errors")


# --- answers ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder) -> Iterator[tuple[str, str]]:
    """The app over a real index of one rulebook, answering through Ollama's protocol, served by uvicorn:
    (its URL, its database's URL)."""
    data = tmp_path_factory.mktemp("chat")
    path = data / "CONF.txt"
    shutil.copy(SAMPLES / "adgm" / "CONF_VER03.18042019.txt", path)
    settings = make_settings(data / "data").model_copy(update={
        "llm": LLMSettings(_env_file=None, backend="ollama", timeout_s=20),  # type: ignore[call-arg]
    })
    with FakeOllama() as fake:
        settings = settings.model_copy(update={
            "ollama": OllamaSettings(_env_file=None, host=fake.url, model=DEFAULT_MODEL),  # type: ignore[call-arg]
        })
        components = Components(settings, embedder=embedder)
        try:
            assert Ingestor(components).ingest([path], SAMPLE_COLLECTION, progress=False).indexed == 1
            with serve(create_app(settings, components, preload=False)) as url:
                yield url, settings.db_url
        finally:
            components.close()


@pytest.fixture
def slow_recording(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recording an answer takes 0.5 s longer: a response sent before the commit would be read before it."""
    record = AnswerLog.record

    def slowly(self: AnswerLog, *args: Any, **kwargs: Any) -> str:
        time.sleep(0.5)
        return record(self, *args, **kwargs)

    monkeypatch.setattr(AnswerLog, "record", slowly)


def committed(url: str, answer_id: str) -> bool:
    """Whether the answer's row is readable now, through a connection of this test's own."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.select(answers.c.id).where(answers.c.id == answer_id)).first() is not None
    finally:
        engine.dispose()


QUESTION = "When may the Regulator disclose Confidential Information?"


def test_an_answer_is_committed_before_its_response(chat: tuple[str, str], slow_recording: None) -> None:
    chat_url, db = chat
    response = httpx.post(f"{chat_url}/v1/chat", json={"question": QUESTION}, timeout=60)
    assert response.status_code == 200, response.text
    assert committed(db, response.json()["answer_id"])


def test_a_streamed_answer_is_committed_before_done(chat: tuple[str, str], slow_recording: None) -> None:
    chat_url, db = chat
    seen: list[str] = []
    with httpx.stream("POST", f"{chat_url}/v1/chat", json={"question": QUESTION, "stream": True}, timeout=60) as r:
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "done":
                answer_id = json.loads(line.removeprefix("data: "))["answer_id"]
                assert committed(db, answer_id), "`done` was sent before the answer was committed"
                seen.append(answer_id)
            elif line.startswith("data: ") and event == "token":
                seen.append("token")
    assert seen.count("token") > 0 and len(seen) - seen.count("token") == 1


def test_an_openai_stream_ends_after_the_commit(chat: tuple[str, str], slow_recording: None) -> None:
    chat_url, db = chat
    body = {"model": SAMPLE_COLLECTION, "stream": True, "messages": [{"role": "user", "content": QUESTION}]}
    ids = []
    with httpx.stream("POST", f"{chat_url}/v1/chat/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and '"answer_id"' in line:
                answer_id = json.loads(line.removeprefix("data: "))["answer_id"]
                assert committed(db, answer_id), "the last chunk was sent before the answer was committed"
                ids.append(answer_id)
    assert len(ids) == 1
