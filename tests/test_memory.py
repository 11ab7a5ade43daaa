"""Feedback memory: votes on a past question move chunks for close questions, and only for them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from assistant.chunks import Chunk
from assistant.components import Components
from assistant.db import answers, feedback
from assistant.embedding import SentenceTransformerEmbedder, embed_one
from assistant.memory import FeedbackMemory, lessons_of, matches_filters

COLLECTION = "memo"

RULES = [
    ("3.1.1", "COBS", "A firm must provide a key information document to a Retail Client before a transaction."),
    ("3.1.2", "COBS", "A firm must keep records of client classification for at least six years."),
    ("4.2.1", "AML", "A Relevant Person must verify the identity of a customer before establishing a relationship."),
    ("4.2.2", "AML", "Enhanced due diligence applies to politically exposed persons and high risk countries."),
    ("5.1.1", "PRU", "An Authorised Person must hold capital resources above its capital requirement at all times."),
    ("5.1.2", "PRU", "The capital requirement is the higher of the base capital and the risk capital requirement."),
]


def _chunk(i: int, section: str, family: str, text: str) -> Chunk:
    return Chunk(text=text, source=f"{family}.txt", doc_id=f"doc-{family}", chunk_index=i, section=section,
                 doc_type="regulation", file_hash="h", extra={"family": family})


@pytest.fixture
def memo(fresh_components: Components, embedder: SentenceTransformerEmbedder) -> Components:
    chunks = [_chunk(i, *rule) for i, rule in enumerate(RULES)]
    store = fresh_components.store
    store.ensure_collection(COLLECTION, embedder.dim)
    store.upsert(COLLECTION, chunks, embedder.embed_batch([c.text for c in chunks]),
                 [fresh_components.sparse.encode_document(c.text) for c in chunks])
    return fresh_components


def point(section: str) -> str:
    i = next(n for n, r in enumerate(RULES) if r[0] == section)
    return _chunk(i, *RULES[i]).id


def vote(engine: sa.Engine, question: str, cited: list[str], rating: str, *, reason: str | None = None,
         marks: dict[str, bool] | None = None, collection: str = COLLECTION) -> int:
    answer_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    citations = [{"n": n + 1, "point_id": p, "source": "x", "pages": [], "section": None, "score": 0.5}
                 for n, p in enumerate(cited)]
    marks_json = [{"n": n + 1, "point_id": p, "useful": marks[p]} for n, p in enumerate(cited)
                  if marks and p in marks]
    with engine.begin() as conn:
        conn.execute(sa.insert(answers).values(
            id=answer_id, created_at=now, collection=collection, question=question, answer="…", refused=False,
            model="m", prompt_version="p", embedder="e", retrieved=[], citations=citations, latency_ms=1,
        ))
        result = conn.execute(sa.insert(feedback).values(
            answer_id=answer_id, created_at=now, rating=rating, reason=reason, citation_marks=marks_json or None,
            user_id=f"u-{answer_id[:8]}",
        ))
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def order(components: Components, question: str, **kw: Any) -> tuple[list[str], list[dict[str, Any]]]:
    retriever = components.retriever_for("hybrid", rerank=False, memory=True)
    found = retriever.search(question, COLLECTION, 6, **kw)
    return [h.point_id for h in found.hits], [e.as_record() for e in found.memory]


def test_lessons_follow_the_vote() -> None:
    base = {"id": 1, "collection": "c", "question": "q", "standalone_question": None,
            "citations": [{"point_id": "a"}, {"point_id": "b"}], "citation_marks": None, "reason": None}
    assert lessons_of({**base, "rating": "up"}).useful == ("a", "b")  # type: ignore[union-attr]
    assert lessons_of({**base, "rating": "down"}) is None  # a wrong answer says nothing about its sources
    wrong = lessons_of({**base, "rating": "down", "reason": "wrong_evidence"})
    assert wrong is not None and wrong.wrong == ("a", "b") and wrong.useful == ()
    marked = lessons_of({**base, "rating": "up", "citation_marks": [{"point_id": "b", "useful": False}]})
    assert marked is not None and marked.useful == ("a",) and marked.wrong == ("b",)
    rewritten = lessons_of({**base, "rating": "up", "standalone_question": "full question"})
    assert rewritten is not None and rewritten.question == "full question"


def test_matches_filters() -> None:
    chunk = _chunk(0, *RULES[0])
    assert matches_filters(chunk, None) and matches_filters(chunk, {"family": "COBS"})
    assert matches_filters(chunk, {"family": ["AML", "COBS"]}) and not matches_filters(chunk, {"family": "AML"})


def test_memory_raises_useful_and_lowers_wrong_for_paraphrases_only(memo: Components) -> None:
    engine = memo.engine
    question = "How long must a firm keep client classification records?"
    before, effects = order(memo, question)
    assert effects == []
    assert before[0] == point("3.1.2")
    # a user said the capital rule answered it (their truth for this team) and the records rule misled them
    useful_id = vote(engine, question, [point("5.1.1"), point("3.1.2")], "up", marks={point("3.1.2"): False})
    paraphrase = "For how many years does a firm have to retain records of client classification?"
    after, effects = order(memo, paraphrase)
    assert after[0] == point("5.1.1")
    assert after[-1] == point("3.1.2")
    moved = {e["point_id"]: e for e in effects}
    assert moved[point("5.1.1")]["effect"] == "raised" and moved[point("3.1.2")]["effect"] == "lowered"
    assert moved[point("5.1.1")]["feedback_ids"] == [useful_id]
    assert moved[point("5.1.1")]["similarity"] >= memo.settings.memory.threshold
    # an unrelated question is left alone
    other_before = "What must a Relevant Person verify before establishing a customer relationship?"
    ranked, effects = order(memo, other_before)
    assert effects == [] and ranked[0] == point("4.2.1")
    # other collections are left alone
    assert memo.memory is not None
    assert memo.memory.neighbours_of(embed_one(memo.embedder, question), "other") == []


def test_memory_adds_a_useful_chunk_retrieval_missed_unless_filtered_out(memo: Components) -> None:
    question = "What do PEPs need?"
    retriever = memo.retriever_for("hybrid", rerank=False, memory=False)
    top2 = [h.point_id for h in retriever.search(question, COLLECTION, 2).hits]
    target = next(point(r[0]) for r in RULES if point(r[0]) not in top2 and r[1] == "AML")
    vote(memo.engine, question, [target], "up")
    found = memo.retriever_for("hybrid", rerank=False, memory=True).search(question, COLLECTION, 2)
    assert found.hits[0].point_id == target
    assert found.memory[0].effect in ("added", "raised")
    filtered = memo.retriever_for("hybrid", rerank=False, memory=True).search(
        question, COLLECTION, 2, filters={"family": "PRU"}
    )
    assert target not in [h.point_id for h in filtered.hits]


def test_memory_sees_new_feedback_without_restart(memo: Components, embedder: SentenceTransformerEmbedder) -> None:
    memory = FeedbackMemory(memo.engine, embedder, threshold=0.99)
    question = "Which capital requirement applies?"
    assert memory.neighbours_of(embed_one(embedder, question), COLLECTION) == []
    vote(memo.engine, question, [point("5.1.2")], "up")
    near = memory.neighbours_of(embed_one(embedder, question), COLLECTION)
    assert [round(sim, 3) for _, sim in near] == [1.0]
    assert memory.size == 1


def test_a_correction_quoting_a_rule_becomes_its_evidence(memo: Components) -> None:
    from fastapi.testclient import TestClient

    from assistant.app import create_app

    question = "Which documents does a retail client get?"
    answer_id = str(uuid.uuid4())
    with memo.engine.begin() as conn:
        conn.execute(sa.insert(answers).values(
            id=answer_id, created_at=datetime.now(UTC), collection=COLLECTION, question=question, answer="…",
            refused=False, model="m", prompt_version="p", embedder="e", retrieved=[], latency_ms=1,
            citations=[{"n": 1, "point_id": point("5.1.1"), "source": "PRU.txt", "pages": [], "section": "5.1.1",
                        "score": 0.2}],
        ))
    with TestClient(create_app(memo.settings, memo, preload=False)) as client:
        rule = RULES[0][2]
        reply = client.post("/v1/feedback", json={"answer_id": answer_id, "rating": "down", "reason": "wrong_answer",
                                                   "correction": f"{rule}"})
        assert reply.status_code == 201, reply.text
        both = client.post("/v1/feedback", json={"answer_id": answer_id, "rating": "down", "user_id": "c",
                                                  "correction": f"{RULES[2][2]}\n\n{RULES[3][2]}"})
        assert both.status_code == 201
        own_words = client.post("/v1/feedback", json={"answer_id": answer_id, "rating": "down", "user_id": "b",
                                                       "correction": "No idea, but not this."})
        assert own_words.status_code == 201
    with memo.engine.connect() as conn:
        marks = dict(conn.execute(sa.select(feedback.c.user_id, feedback.c.citation_marks)
                                  .where(feedback.c.answer_id == answer_id)).all())
    assert [(m["n"], m["point_id"], m["useful"], m["from"]) for m in marks["anonymous"]] == [
        (None, point("3.1.1"), True, "correction")]
    assert marks["b"] is None  # a correction in the user's own words matches no chunk closely
    assert [m["point_id"] for m in marks["c"]] == [point("4.2.1"), point("4.2.2")]  # one chunk per quoted rule
    found = memo.retriever_for("hybrid", rerank=False, memory=True).search(question, COLLECTION, 3)
    assert found.hits[0].point_id == point("3.1.1")
