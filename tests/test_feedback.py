"""Feedback on answers: the rich vote of POST /v1/feedback (reason, correction, citation marks, user and segment),
one vote per user and answer, the joined records the learning code reads, GET /v1/feedback/stats, and migration
0004 over a database holding votes given before users were recorded.

Real SQLite and the real app throughout; answers are recorded with the real AnswerLog (no model is needed to
vote on an answer, so none is loaded).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from conftest import make_settings
from fastapi.testclient import TestClient

from assistant.answering import Answer
from assistant.app import create_app
from assistant.components import Components
from assistant.db import MIGRATIONS, _sqlite_pragmas, connect, feedback
from assistant.errors import BadRequest
from assistant.feedback_stats import feedback_stats
from assistant.records import ANONYMOUS, AnswerLog, FeedbackLog
from assistant.sources import Citation

EMB: dict[str, Any] = {"embedder": "emb-1", "reranker": "rr-1", "index": "samples", "memory": False}


def cite(n: int, point_id: str, source: str = "2023 Q3 AAPL.pdf", section: str | None = "Net sales",
         pages: list[int] | None = None) -> Citation:
    return Citation(n=n, point_id=point_id, source=source, pages=pages if pages is not None else [4], section=section,
                    snippet="Total net sales 81,797", score=0.9)


def record(engine: sa.Engine, *citations: Citation, collection: str = "samples", model: str = "m-a",
           prompt_version: str = "p1", versions: dict[str, Any] | None = None) -> str:
    answer = Answer(answer="Net sales were $81,797 million [1].", citations=list(citations), retrieved=[],
                    refused=False, model=model, prompt_version=prompt_version)
    return AnswerLog(engine, "emb-1").record(answer, question="What were net sales?", collection=collection,
                                             filters=None, latency_ms=5, versions=versions)


def rows(engine: sa.Engine, answer_id: str | None = None) -> list[dict[str, Any]]:
    query = sa.select(feedback).order_by(feedback.c.id)
    if answer_id is not None:
        query = query.where(feedback.c.answer_id == answer_id)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = connect(f"sqlite:///{tmp_path / 'finrag.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def client(tmp_path: Path, engine: sa.Engine) -> Iterator[TestClient]:
    settings = make_settings(tmp_path / "data")
    components = Components(settings, engine=engine)
    yield TestClient(create_app(settings, components, preload=False))
    components.close()


@pytest.fixture
def cited(engine: sa.Engine) -> str:
    """An answer with two citations: [1] chunk c1, [2] chunk c2."""
    return record(engine, cite(1, "c1", section="1.1", pages=[3]), cite(2, "c2", source="FEES.txt", section=None,
                                                                         pages=[]))


def vote(client: TestClient, answer_id: str, rating: str = "up", **extra: Any) -> Any:
    return client.post("/v1/feedback", json={"answer_id": answer_id, "rating": rating, **extra})


# --- validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "field", "says"), [
    ({"rating": "meh"}, "rating", "'up' or 'down'"),
    ({"reason": "boring"}, "reason", "'wrong_answer'"),
    ({"correction": "  \n "}, "correction", "blank"),
    ({"correction": "x" * 20001}, "correction", "20000"),
    ({"comment": "x" * 5001}, "comment", "5000"),
    ({"citations": [{"n": 0, "useful": True}]}, "citations.0.n", "greater than or equal to 1"),
    ({"citations": [{"n": 1, "useful": "maybe"}]}, "citations.0.useful", "boolean"),
    ({"citations": [{"n": 1}]}, "citations.0.useful", "required"),
    ({"user_id": "ann smith"}, "user_id", "letters, digits"),
    ({"user_id": "ann/../x"}, "user_id", "letters, digits"),
    ({"user_id": ""}, "user_id", "at least 1"),
    ({"user_id": "u" * 201}, "user_id", "200"),
    ({"segment": ""}, "segment", "at least 1"),
    ({"segment": "s" * 101}, "segment", "100"),
])
def test_malformed_feedback_is_422(client: TestClient, engine: sa.Engine, cited: str, extra: dict[str, Any],
                                   field: str, says: str) -> None:
    response = client.post("/v1/feedback", json={"answer_id": cited, "rating": "down", **extra})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_request"
    assert body["detail"].startswith(f"{field}:") and says in body["detail"], body
    assert rows(engine) == []


@pytest.mark.parametrize(("marks", "says"), [
    ([{"n": 3, "useful": False}], "the answer has no citation [3]; its citations are [1], [2]"),
    ([{"n": 1, "useful": False}, {"n": 1, "useful": True}],
     "citation [1] is marked twice; mark each at most once (its citations are [1], [2])"),
])
def test_marks_must_name_the_answers_citations_once(client: TestClient, engine: sa.Engine, cited: str,
                                                    marks: list[dict[str, Any]], says: str) -> None:
    response = vote(client, cited, "down", citations=marks)
    assert response.status_code == 422, response.text
    assert response.json() == {"error": "bad_request", "detail": f"citations: {says}"}
    assert rows(engine) == []


def test_an_answer_without_citations_has_none_to_mark(engine: sa.Engine) -> None:
    answer_id = record(engine)
    with pytest.raises(BadRequest, match=r"no citation \[1\]; it cites no source"):
        FeedbackLog(engine).add(answer_id, "down", citations=[(1, False)])
    assert FeedbackLog(engine).add(answer_id, "down", citations=[]).updated is False  # no marks is fine


def test_unknown_answer_is_404(client: TestClient, engine: sa.Engine) -> None:
    response = vote(client, "no-such-answer", citations=[{"n": 1, "useful": True}])
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_answer" and "'no-such-answer'" in response.json()["detail"]
    assert rows(engine) == []


# --- storage ----------------------------------------------------------------------------------------------


def test_a_rich_vote_is_stored_with_its_marks_resolved(client: TestClient, engine: sa.Engine, cited: str) -> None:
    response = vote(client, cited, "down", reason="wrong_evidence", comment="the second source is off",
                    correction="Net sales were $81,797 million.", user_id="ann@bank.example:desk-1", segment="equity",
                    citations=[{"n": 2, "useful": False}, {"n": 1, "useful": True}])
    assert response.status_code == 201, response.text
    body = response.json()
    assert body == {"feedback_id": body["feedback_id"], "answer_id": cited, "rating": "down", "updated": False}
    [row] = rows(engine)
    assert row["id"] == body["feedback_id"]
    assert (row["user_id"], row["segment"], row["rating"], row["reason"]) == (
        "ann@bank.example:desk-1", "equity", "down", "wrong_evidence")
    assert (row["comment"], row["correction"]) == ("the second source is off", "Net sales were $81,797 million.")
    assert row["citation_marks"] == [
        {"n": 2, "point_id": "c2", "source": "FEES.txt", "section": None, "pages": [], "useful": False},
        {"n": 1, "point_id": "c1", "source": "2023 Q3 AAPL.pdf", "section": "1.1", "pages": [3], "useful": True},
    ]
    assert row["created_at"] is not None and row["updated_at"] is None
    assert FeedbackLog(engine).for_answer(cited) == [row]


def test_a_users_second_vote_replaces_the_first(client: TestClient, engine: sa.Engine, cited: str) -> None:
    first = vote(client, cited, "up", comment="good", segment="equity", user_id="ann",
                 citations=[{"n": 1, "useful": True}])
    assert first.status_code == 201
    [before] = rows(engine)
    second = vote(client, cited, "down", reason="outdated", correction="It is $82bn now.", user_id="ann",
                  segment="credit", citations=[{"n": 2, "useful": False}])
    assert second.status_code == 200, second.text
    assert second.json() == {"feedback_id": first.json()["feedback_id"], "answer_id": cited, "rating": "down",
                             "updated": True}
    [after] = rows(engine)
    assert after["id"] == before["id"] and after["created_at"] == before["created_at"]
    assert (after["rating"], after["reason"], after["comment"], after["correction"], after["segment"]) == (
        "down", "outdated", None, "It is $82bn now.", "credit")  # the whole vote is the new one's
    assert [(m["n"], m["point_id"], m["useful"]) for m in after["citation_marks"]] == [(2, "c2", False)]
    assert after["updated_at"] is not None and after["updated_at"] >= after["created_at"]


def test_votes_of_different_users_are_kept_apart(client: TestClient, engine: sa.Engine, cited: str) -> None:
    assert vote(client, cited, "up", user_id="ann").status_code == 201
    assert vote(client, cited, "down", user_id="bob").status_code == 201
    assert vote(client, cited, "down").status_code == 201
    again = vote(client, cited, "up")
    assert again.status_code == 200 and again.json()["updated"] is True  # anonymous votes once too
    assert [(r["user_id"], r["rating"]) for r in rows(engine)] == [("ann", "up"), ("bob", "down"), (ANONYMOUS, "up")]
    other = record(engine, cite(1, "c9"))
    assert vote(client, other, "up", user_id="ann").status_code == 201  # one vote per user *and answer*
    assert len(rows(engine)) == 4


def test_simultaneous_votes_of_one_user_leave_one_row(engine: sa.Engine, cited: str) -> None:
    log = FeedbackLog(engine)
    ready = threading.Barrier(6)

    def cast(i: int) -> tuple[int, bool]:
        ready.wait()
        v = log.add(cited, "up" if i % 2 else "down", comment=f"vote {i}", user_id="ann")
        return v.feedback_id, v.updated

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(cast, range(6)))
    [row] = rows(engine)
    assert {feedback_id for feedback_id, _ in results} == {row["id"]}
    assert sorted(updated for _, updated in results) == [False] + [True] * 5


# --- records for the learning code --------------------------------------------------------------------------


def test_records_join_each_vote_with_its_answer(engine: sa.Engine, cited: str) -> None:
    log = FeedbackLog(engine)
    first = log.add(cited, "down", reason="incomplete", citations=[(1, False)], user_id="ann", segment="ops")
    elsewhere = record(engine, cite(1, "c9"), collection="other", model="m-b", versions=EMB)
    log.add(elsewhere, "up")
    [mine, theirs] = log.records()
    assert set(mine) == {
        "feedback_id", "answer_id", "user_id", "segment", "rating", "reason", "comment", "correction",
        "citation_marks", "created_at", "updated_at", "collection", "question", "standalone_question", "answer",
        "refused", "model", "prompt_version", "versions", "citations", "retrieved", "answered_at"}
    assert (mine["feedback_id"], mine["answer_id"], mine["user_id"], mine["segment"]) == (
        first.feedback_id, cited, "ann", "ops")
    assert (mine["rating"], mine["reason"], mine["citation_marks"][0]["point_id"]) == ("down", "incomplete", "c1")
    assert (mine["collection"], mine["question"], mine["answer"], mine["refused"], mine["model"]) == (
        "samples", "What were net sales?", "Net sales were $81,797 million [1].", False, "m-a")
    assert mine["versions"] is None and theirs["versions"] == EMB
    assert [c["point_id"] for c in mine["citations"]] == ["c1", "c2"] and mine["retrieved"] == []
    assert mine["answered_at"] <= mine["created_at"] and mine["updated_at"] is None
    assert [r["answer_id"] for r in log.records(collection="other")] == [elsewhere]
    assert log.records(collection="none") == []


def test_records_since_counts_changed_votes(engine: sa.Engine, cited: str) -> None:
    log = FeedbackLog(engine)
    old, changed = log.add(cited, "up", user_id="old"), log.add(cited, "up", user_id="changed")
    with engine.begin() as conn:
        conn.execute(sa.update(feedback).values(created_at=datetime(2024, 1, 1, tzinfo=UTC)))
    log.add(cited, "down", user_id="changed")  # changed now
    new = log.add(cited, "up", user_id="new")
    cut = datetime(2025, 1, 1, tzinfo=UTC)
    assert [r["feedback_id"] for r in log.records(since=cut)] == [changed.feedback_id, new.feedback_id]
    assert [r["feedback_id"] for r in log.records(since=cut.replace(tzinfo=None))] == [
        changed.feedback_id, new.feedback_id]  # naive: UTC
    assert len(log.records(since=datetime(2023, 12, 31, 23, 0, tzinfo=UTC))) == 3
    assert old.feedback_id not in {r["feedback_id"] for r in log.records(since=cut)}


# --- stats ------------------------------------------------------------------------------------------------


def tally(total: int, up: int, down: int, up_rate: float | None, **key: Any) -> dict[str, Any]:
    return {**key, "total": total, "up": up, "down": down, "up_rate": up_rate}


@pytest.fixture
def voted(engine: sa.Engine, client: TestClient) -> dict[str, str]:
    """Four answers and seven votes, counted by hand in the stats tests."""
    c1, c2, c3, c4 = (cite(1, "c1", "S1", "1.1", [3]), cite(2, "c2", "S2", None, [4, 5]), cite(2, "c3", "S3", "7", []),
                      cite(1, "c4", "S4", None, []))
    a1 = record(engine, c1, c2, versions=EMB)
    a2 = record(engine, c1, c3, prompt_version="p2", versions={**EMB, "reranker": None})
    a3 = record(engine, cite(1, "c3", "S3", "7", []), model="m-b")
    a4 = record(engine, c4, collection="other", model="m-b")
    votes: list[tuple[str, str, dict[str, Any]]] = [
        (a1, "down", {"user_id": "u1", "segment": "ops", "reason": "wrong_evidence",
                      "citations": [{"n": 1, "useful": False}, {"n": 2, "useful": True}]}),
        (a1, "up", {"user_id": "u2", "segment": "ops"}),
        (a1, "down", {"correction": "X"}),
        (a2, "down", {"user_id": "u1", "segment": "ops", "reason": "wrong_answer", "correction": "Y"}),
        (a2, "up", {"user_id": "u3", "segment": "legal", "citations": [{"n": 2, "useful": True}]}),
        (a3, "down", {"user_id": "u2", "segment": "ops", "reason": "wrong_evidence"}),
        (a4, "up", {"user_id": "u1", "segment": "ops"}),
    ]
    for answer_id, rating, extra in votes:
        assert vote(client, answer_id, rating, **extra).status_code == 201
    return {"a1": a1, "a2": a2, "a3": a3, "a4": a4}


def test_stats_over_all_votes(client: TestClient, voted: dict[str, str]) -> None:
    response = client.get("/v1/feedback/stats")
    assert response.status_code == 200, response.text
    assert response.json() == {
        **tally(7, 3, 4, 0.4286),
        "by_segment": [tally(5, 2, 3, 0.4, segment="ops"), tally(1, 1, 0, 1.0, segment="legal"),
                       tally(1, 0, 1, 0.0, segment=None)],
        "by_model": [tally(5, 2, 3, 0.4, model="m-a"), tally(2, 1, 1, 0.5, model="m-b")],
        "by_version": {
            "embedder": [tally(5, 2, 3, 0.4, version="emb-1"), tally(2, 1, 1, 0.5, version="unversioned")],
            "reranker": [tally(3, 1, 2, 0.3333, version="rr-1"), tally(2, 1, 1, 0.5, version="none"),
                         tally(2, 1, 1, 0.5, version="unversioned")],
            "prompt_version": [tally(5, 2, 3, 0.4, version="p1"), tally(2, 1, 1, 0.5, version="p2")],
        },
        "by_reason": [{"reason": "wrong_evidence", "count": 2}, {"reason": "unspecified", "count": 1},
                      {"reason": "wrong_answer", "count": 1}],
        # c1: marked not useful on a1, a1's anonymous down, a2's down; c3: a2's down, a3's down, marked useful
        # on a2's up; c2: a1's anonymous down, marked useful by the down vote that marked it
        "most_downvoted_sources": [
            {"point_id": "c1", "source": "S1", "section": "1.1", "pages": [3], "down": 3, "up": 0},
            {"point_id": "c3", "source": "S3", "section": "7", "pages": [], "down": 2, "up": 1},
            {"point_id": "c2", "source": "S2", "section": None, "pages": [4, 5], "down": 1, "up": 1},
        ],
        "corrections": 2,
    }


def test_stats_of_a_collection_and_since(client: TestClient, engine: sa.Engine, voted: dict[str, str]) -> None:
    samples = client.get("/v1/feedback/stats", params={"collection": "samples"}).json()
    assert (samples["total"], samples["up"], samples["down"], samples["up_rate"]) == (6, 2, 4, 0.3333)
    assert samples["by_model"][1] == tally(1, 0, 1, 0.0, model="m-b")
    assert samples["most_downvoted_sources"][0]["point_id"] == "c1"

    with engine.begin() as conn:  # a1's votes were given long ago; u2 has changed theirs since
        conn.execute(sa.update(feedback).where(feedback.c.answer_id == voted["a1"])
                     .values(created_at=datetime(2024, 1, 1, tzinfo=UTC)))
    assert vote(client, voted["a1"], "up", user_id="u2", segment="ops", comment="still right").status_code == 200
    recent = client.get("/v1/feedback/stats", params={"since": "2025-01-01T02:00:00+02:00"}).json()
    assert (recent["total"], recent["up"], recent["down"], recent["corrections"]) == (5, 3, 2, 1)
    assert recent["by_reason"] == [{"reason": "wrong_answer", "count": 1}, {"reason": "wrong_evidence", "count": 1}]

    bad = client.get("/v1/feedback/stats", params={"since": "last tuesday"})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("query.since:")


def test_stats_without_votes(client: TestClient, engine: sa.Engine) -> None:
    record(engine, cite(1, "c1"))
    assert client.get("/v1/feedback/stats").json() == {
        **tally(0, 0, 0, None), "by_segment": [], "by_model": [],
        "by_version": {"embedder": [], "reranker": [], "prompt_version": []},
        "by_reason": [], "most_downvoted_sources": [], "corrections": 0,
    }
    assert feedback_stats([]).overall.up_rate is None


def test_stats_keep_the_top_sources(engine: sa.Engine) -> None:
    log = FeedbackLog(engine)
    for i in range(12):
        log.add(record(engine, *[cite(n, f"c{n}") for n in range(1, i + 2)]), "down")  # c1 cited 12 times, c12 once
    top = feedback_stats(log.records()).most_downvoted_sources
    assert [(s.point_id, s.down) for s in top] == [(f"c{n}", 13 - n) for n in range(1, 11)]


def test_openapi_documents_feedback(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    stats = spec["paths"]["/v1/feedback/stats"]["get"]
    assert stats["tags"] == ["feedback"]
    assert {p["name"] for p in stats["parameters"]} == {"collection", "since"}
    assert stats["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "FeedbackStatsResponse")
    post = spec["paths"]["/v1/feedback"]["post"]
    assert {"200", "201", "422"} <= set(post["responses"])
    request = spec["components"]["schemas"]["FeedbackRequest"]["properties"]
    assert {"reason", "correction", "citations", "user_id", "segment"} <= set(request)


# --- migration 0004 ---------------------------------------------------------------------------------------


def test_migration_keeps_legacy_votes_as_their_own_voters(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sa.create_engine(f"sqlite:///{path}")
    sa.event.listen(old, "connect", _sqlite_pragmas)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with old.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
        conn.execute(sa.text(
            "INSERT INTO answers (id, created_at, collection, question, answer, refused, model, prompt_version, "
            "embedder, retrieved, citations, latency_ms) VALUES ('a1', '2024-05-01 10:00:00', 'samples', 'Q?', "
            "'A.', 0, 'm', 'p', 'e', '[]', '[]', 12)"))
        for rating, comment in [("up", "fine"), ("down", None)]:  # two anonymous votes on one answer
            conn.execute(sa.text("INSERT INTO feedback (answer_id, created_at, rating, comment) "
                                 "VALUES ('a1', '2024-05-01', :rating, :comment)"),
                         {"rating": rating, "comment": comment})
    old.dispose()

    engine = connect(f"sqlite:///{path}")
    try:
        legacy = rows(engine)
        assert [(r["id"], r["user_id"], r["rating"], r["comment"]) for r in legacy] == [
            (1, "legacy-1", "up", "fine"), (2, "legacy-2", "down", None)]
        assert all(r[c] is None for r in legacy
                   for c in ("segment", "reason", "correction", "citation_marks", "updated_at"))
        indexes = {i["name"]: i for i in sa.inspect(engine).get_indexes("feedback")}
        assert indexes["uq_feedback_answer_user"]["unique"]
        assert indexes["uq_feedback_answer_user"]["column_names"] == ["answer_id", "user_id"]
        log = FeedbackLog(engine)
        assert log.add("a1", "up").updated is False  # a new anonymous vote leaves the legacy ones be
        assert log.add("a1", "down").updated is True
        assert [(r["user_id"], r["rating"]) for r in rows(engine)] == [
            ("legacy-1", "up"), ("legacy-2", "down"), (ANONYMOUS, "down")]
        assert [r["versions"] for r in log.records()] == [None, None, None]
    finally:
        engine.dispose()
