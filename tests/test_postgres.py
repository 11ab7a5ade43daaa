"""The answer log, feedback, conversations and the feedback export on a real PostgreSQL server (tests/postgres.py:
a throwaway cluster for the session, a fresh database per test).

The SQLite suites' storage tests are collected again here with `engine` below, on PostgreSQL, in place of theirs:
the same functions, the same assertions (their fixtures `client`, `cited` and `voted` come along and use it).
Added here: the pooled psycopg engine; migrations from an older revision holding rows, down to nothing and up
again (PostgreSQL only: on SQLite a downgrade would need foreign keys off, as `db.migrate` does for upgrades),
and by replicas starting together. On both databases (`any_url`): many concurrent writers through the real
server (uvicorn), conversations listed, text PostgreSQL refuses (NUL, over-long collection names) handled alike,
and the export command.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from conftest import REPO, make_settings, serve
from fastapi.testclient import TestClient
from postgres import PostgresServer
from test_conversations import (  # noqa: F401  (pytest collects the imported tests and fixtures here again)
    answer,
    test_answer_log_records_the_conversation_fields,
    test_get_conversation_route,
    test_migration_builds_the_schema_on_a_fresh_database,
    test_start_history_and_get,
    test_unknown_conversation_is_404,
    upgrade_to,
)
from test_feedback import (  # noqa: F401
    ANONYMOUS,
    cite,
    cited,
    client,
    record,
    rows,
    test_a_rich_vote_is_stored_with_its_marks_resolved,
    test_a_users_second_vote_replaces_the_first,
    test_an_answer_without_citations_has_none_to_mark,
    test_marks_must_name_the_answers_citations_once,
    test_records_join_each_vote_with_its_answer,
    test_records_since_counts_changed_votes,
    test_simultaneous_votes_of_one_user_leave_one_row,
    test_stats_keep_the_top_sources,
    test_stats_of_a_collection_and_since,
    test_stats_over_all_votes,
    test_stats_without_votes,
    test_unknown_answer_is_404,
    test_votes_of_different_users_are_kept_apart,
    voted,
)
from test_feedback_export import _fill_log, _lines, _run

from assistant.app import create_app
from assistant.components import Components
from assistant.conversations import Conversations
from assistant.conversations_api import router as conversations_router
from assistant.db import (
    COLLECTION_CHARS,
    MIGRATIONS,
    POSTGRES_POOL,
    answers,
    connect,
    database_url,
    metadata,
)
from assistant.errors import InvalidCollectionName
from assistant.records import AnswerLog, FeedbackLog
from eval.feedback_export import MANIFEST_FILE, TRAIN_FILE

HEAD = "0005"


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh, empty database of the session's server."""
    url = postgres.create_database()
    yield url
    postgres.drop_database(url)


@pytest.fixture
def engine(postgres_url: str) -> Iterator[sa.Engine]:
    """Replaces the SQLite `engine` of the tests imported above: a migrated PostgreSQL database."""
    engine = connect(postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each backend (the PostgreSQL server is started only for the PostgreSQL case)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'finrag.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.create_database()
    yield url
    server.drop_database(url)


def alembic(engine: sa.Engine, action: str, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, revision)


def revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one_or_none()


# --- the engine and the schema --------------------------------------------------------------------------------


def test_connect_pools_postgres_connections(engine: sa.Engine) -> None:
    assert engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
    pool = engine.pool
    assert isinstance(pool, sa.pool.QueuePool) and pool.size() == POSTGRES_POOL["pool_size"]
    assert pool._pre_ping
    assert database_url("postgresql://u:p@db:5432/finrag").drivername == "postgresql+psycopg"
    assert database_url("postgres://u@db/finrag").drivername == "postgresql+psycopg"
    assert database_url("postgresql+psycopg://u@db/finrag").drivername == "postgresql+psycopg"
    assert database_url("sqlite:///x.db").drivername == "sqlite"


def test_schema_uses_postgres_types_and_matches_the_tables(engine: sa.Engine) -> None:
    inspector = sa.inspect(engine)
    columns = {(t, c["name"]): c["type"] for t in ("answers", "feedback") for c in inspector.get_columns(t)}
    assert isinstance(columns[("answers", "refused")], sa.Boolean)
    assert isinstance(columns[("answers", "citations")], sa.JSON)
    assert getattr(columns[("feedback", "created_at")], "timezone", False)  # timestamptz: times keep their zone
    assert str(columns[("feedback", "user_id")]) == "VARCHAR(200)"
    for table in metadata.sorted_tables:  # every table and column the code uses is there
        assert {c.name for c in table.columns} == {c["name"] for c in inspector.get_columns(table.name)}, table.name
    [unique] = [i for i in inspector.get_indexes("feedback") if i["name"] == "uq_feedback_answer_user"]
    assert unique["unique"] and unique["column_names"] == ["answer_id", "user_id"]


def test_votes_given_before_users_were_recorded_survive_the_upgrade(postgres_url: str) -> None:
    old = sa.create_engine(postgres_url)
    upgrade_to(old, "0003")
    with old.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO answers (id, created_at, collection, question, answer, refused, model, prompt_version, "
            "embedder, retrieved, citations, latency_ms) VALUES ('a1', '2024-05-01 10:00:00+02', 'samples', 'Q?', "
            "'A.', false, 'm', 'p', 'e', '[]', '[]', 12)"))
        for rating in ("up", "down"):  # two anonymous votes on one answer
            conn.execute(sa.text("INSERT INTO feedback (answer_id, created_at, rating) VALUES ('a1', now(), :r)"),
                         {"r": rating})
    old.dispose()

    engine = connect(postgres_url)
    try:
        assert revision(engine) == HEAD
        assert [(r["user_id"], r["rating"]) for r in rows(engine)] == [("legacy-1", "up"), ("legacy-2", "down")]
        [row] = FeedbackLog(engine).records()[:1]
        assert row["answered_at"] == datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
        log = FeedbackLog(engine)
        assert log.add("a1", "up").updated is False
        assert log.add("a1", "down").updated is True  # the unique (answer, user) index holds
        assert [r["user_id"] for r in rows(engine)] == ["legacy-1", "legacy-2", ANONYMOUS]
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:  # references are enforced
            conn.execute(sa.update(answers).where(answers.c.id == "a1").values(conversation_id="nope"))
    finally:
        engine.dispose()


def test_downgrade_to_nothing_and_upgrade_again(engine: sa.Engine) -> None:
    FeedbackLog(engine).add(record(engine, cite(1, "c1")), "up")
    for step in ("0003", "0002", "0001"):
        alembic(engine, "downgrade", step)
        assert revision(engine) == step
    alembic(engine, "downgrade", "base")
    assert set(sa.inspect(engine).get_table_names()) == {"alembic_version"}
    alembic(engine, "upgrade", "head")
    assert revision(engine) == HEAD and rows(engine) == []
    assert FeedbackLog(engine).add(record(engine, cite(1, "c1")), "down", user_id="ann").updated is False


def test_replicas_starting_together_migrate_once(postgres_url: str) -> None:
    # processes, as replicas are: Alembic's migration context is global to a process
    start = f"from assistant.db import connect; connect({postgres_url!r}).dispose()"
    replicas = [subprocess.Popen([sys.executable, "-c", start], cwd=REPO, stderr=subprocess.PIPE, text=True)
                for _ in range(4)]
    results = [(p.communicate(timeout=120)[1], p.returncode) for p in replicas]
    assert [err for err, returncode in results if returncode] == []
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == [HEAD]
    engine.dispose()


# --- conversations listed --------------------------------------------------------------------------------------


def test_conversations_are_listed_newest_first(any_url: str, tmp_path: Path) -> None:
    engine = connect(any_url)
    settings = make_settings(tmp_path / "data")
    components = Components(settings, engine=engine)
    try:
        app = create_app(settings, components, preload=False)
        app.include_router(conversations_router)
        client = TestClient(app)
        store, log = Conversations(engine), AnswerLog(engine, "e")
        older, newer, empty = store.start("samples"), store.start("samples"), store.start("samples")
        elsewhere = store.start("other")
        for cid, question in ((older, "first question"), (newer, "second question"), (elsewhere, "third")):
            log.record(answer(), question=question, collection=store.get(cid).collection, filters=None,
                       latency_ms=1, conversation_id=cid)
        assert [c.id for c in store.recent()] == [elsewhere, newer, older]  # `empty` has no answer
        listed = client.get("/v1/conversations", params={"collection": "samples"}).json()
        assert [(c["id"], c["title"]) for c in listed] == [(newer, "second question"), (older, "first question")]
        assert all(datetime.fromisoformat(c["updated_at"]).utcoffset() == timedelta(0) for c in listed)
        assert [c["id"] for c in client.get("/v1/conversations", params={"limit": 1}).json()] == [elsewhere]
        assert empty not in {c["id"] for c in client.get("/v1/conversations").json()}
    finally:
        components.close()


# --- what PostgreSQL refuses where SQLite keeps it ----------------------------------------------------------------


def test_nul_characters_and_long_collection_names_behave_alike(any_url: str) -> None:
    engine = connect(any_url)
    try:
        store, log = Conversations(engine), AnswerLog(engine, "e")
        text, kept = "net\x00sales?", "net\ufffdsales?"  # NUL is refused in PostgreSQL text: stored as U+FFFD
        cid = store.start("samples")
        answer_id = log.record(answer("Sales\x00 [1]."), question=text, collection="samples", filters=None,
                               latency_ms=1, conversation_id=cid, standalone_question=text)
        row = log.get(answer_id)
        assert (row["question"], row["standalone_question"], row["answer"]) == (kept, kept, "Sales\ufffd [1].")
        assert store.get(cid).title == kept
        assert FeedbackLog(engine).add(answer_id, "down", comment=text, correction=text).updated is False
        [vote] = rows(engine)
        assert (vote["comment"], vote["correction"]) == (kept, kept)

        longest = "c" * COLLECTION_CHARS
        assert store.get(store.start(longest)).collection == longest
        with pytest.raises(InvalidCollectionName, match=f"{COLLECTION_CHARS + 1} characters") as raised:
            store.start(longest + "c")
        assert raised.value.status_code == 422
        with pytest.raises(InvalidCollectionName):
            log.record(answer(), question="Q?", collection=longest + "c", filters=None, latency_ms=1)
    finally:
        engine.dispose()


# --- many writers at once ---------------------------------------------------------------------------------------


def cast_concurrently(url: str, data_dir: Path, writers: int, votes: int) -> dict[str, Any]:
    """`writers` threads, each an HTTP client of the real server (uvicorn), each voting `votes` times on the
    answers as its own user: a new vote per answer, and every fifth a change of mind on an answer it voted on.
    Checks that every vote is stored as its last rating; returns the figures."""
    engine = connect(url)
    settings = make_settings(data_dir)
    components = Components(settings, engine=engine)
    try:
        answer_ids = [record(engine, cite(1, "c1"), cite(2, "c2")) for _ in range(votes)]
        ready = threading.Barrier(writers)
        expected: dict[tuple[str, str], str] = {}
        statuses: Counter[int] = Counter()
        errors: list[str] = []
        lock = threading.Lock()

        def writer(w: int, base: str) -> None:
            user, mine = f"writer-{w}", {}
            plan = [(answer_ids[i], "up" if (w + i) % 3 else "down") for i in range(votes)]
            plan += [(answer_ids[i], "down" if rating == "up" else "up")
                     for i, (_, rating) in enumerate(plan) if i % 5 == 4]  # changes of mind
            with httpx.Client(base_url=base, timeout=60) as http:
                ready.wait()
                for answer_id, rating in plan:
                    try:
                        response = http.post("/v1/feedback", json={"answer_id": answer_id, "rating": rating,
                                                                   "user_id": user, "segment": f"team-{w % 4}"})
                    except httpx.HTTPError as exc:
                        with lock:
                            errors.append(f"{user}: {exc!r}")
                        continue
                    with lock:
                        statuses[response.status_code] += 1
                        if response.status_code not in (200, 201):
                            errors.append(f"{user}: {response.status_code} {response.text[:200]}")
                    mine[(answer_id, user)] = rating
            with lock:
                expected.update(mine)

        with serve(create_app(settings, components, preload=False)) as base:
            started = time.perf_counter()
            with ThreadPoolExecutor(writers) as pool:
                list(pool.map(writer, range(writers), [base] * writers))
            seconds = time.perf_counter() - started
        stored = {(r["answer_id"], r["user_id"]): r["rating"] for r in rows(engine)}
        lost = [k for k in expected if k not in stored]
        wrong = [k for k, rating in expected.items() if stored.get(k) not in (None, rating)]
        return {"errors": errors, "statuses": statuses, "expected": expected, "stored": stored, "lost": lost,
                "wrong": wrong, "seconds": seconds}
    finally:
        components.close()


def check_votes(result: dict[str, Any], writers: int, votes: int) -> None:
    changes = votes // 5
    assert result["errors"] == [] and result["lost"] == [] and result["wrong"] == []
    assert result["statuses"] == {201: writers * votes, 200: writers * changes}
    assert len(result["stored"]) == len(result["expected"]) == writers * votes


def test_concurrent_writers_lose_no_vote(any_url: str, tmp_path: Path) -> None:
    writers, votes = 20, 25
    result = cast_concurrently(any_url, tmp_path / "data", writers, votes)
    check_votes(result, writers, votes)
    print(f"{any_url.split(':')[0]}: {writers} writers x {votes} votes (+{votes // 5} changes each) in "
          f"{result['seconds']:.2f} s, {len(result['lost'])} lost, {len(result['errors'])} errors")


@pytest.mark.slow
def test_hundreds_of_concurrent_writers_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    writers, votes = 200, 5
    result = cast_concurrently(postgres_url, tmp_path / "data", writers, votes)
    check_votes(result, writers, votes)
    print(f"postgresql: {writers} writers x {votes} votes (+{votes // 5} change each) in {result['seconds']:.2f} s")


# --- the feedback export ----------------------------------------------------------------------------------------


def test_export_reads_the_feedback_log(any_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(tmp_path / "data", database_url=any_url)
    ids = _fill_log(any_url)
    out = tmp_path / "export"
    assert _run(["--out", str(out), "--collection", "adgm", "--no-text", "--heldout-percent", "0"], settings) == 0
    assert "read 6 votes on 5 answers" in capsys.readouterr().out
    lines = {line["question"]: line for line in _lines(out / TRAIN_FILE)}
    assert set(lines) == {"what is a client", "When must fees be disclosed?", "Shoe size of the CEO?"}
    fees = lines["When must fees be disclosed?"]
    assert [e["point_id"] for e in fees["evidence"]] == [ids["p1"]]
    assert [e["point_id"] for e in fees["negative_evidence"]] == [ids["p2"]]
    assert lines["what is a client"]["reference_answer"] == "A person to whom an authorised person provides a service."
    counts = json.loads((out / MANIFEST_FILE).read_text())["counts"]
    assert (counts["feedback_rows"], counts["cases"], counts["unanswerable"], counts["preferences"]) == (6, 3, 1, 1)

    # --since in another zone: votes set 7, 6 (an update of a month-old vote), 5 and 4 minutes ago are kept
    since = (datetime.now(UTC) - timedelta(minutes=7, seconds=30)).astimezone(timezone(timedelta(hours=5)))
    assert _run(["--out", str(out), "--since", since.isoformat(), "--no-text"], settings) == 0
    counts = json.loads((out / MANIFEST_FILE).read_text())["counts"]
    assert (counts["feedback_rows"], counts["answers"], counts["unanswerable"]) == (4, 3, 0)
