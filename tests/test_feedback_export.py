"""`python -m eval feedback-export`: votes → golden cases (the shared question format) and fine-tuning pairs.

The merging rules are checked on plain `Vote`s through the pure `build_cases`; the command itself runs end to end
on a real SQLite feedback log (`assistant.db.connect`) and a real embedded Qdrant index.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import make_settings

from assistant.chunks import Chunk
from assistant.components import Components
from assistant.db import answers, connect, feedback
from eval.cli import build_parser
from eval.feedback_export import (
    HELDOUT_FILE,
    MANIFEST_FILE,
    NOTHING_TO_LEARN,
    PREFERENCES_FILE,
    SFT_FILE,
    TRAIN_FILE,
    Vote,
    build_cases,
    normalize,
    preference_pairs,
    run_command,
    sft_examples,
    write_export,
)
from eval.questions import load_questions

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
_ids = itertools.count(1)


def cite(point_id: str, n: int = 1, source: str = "COBS.txt", pages: list[int] | None = None,
         section: str | None = "18.8.2") -> dict[str, Any]:
    return {"n": n, "point_id": point_id, "source": source, "pages": pages or [], "section": section, "score": 0.5}


def mark(point_id: str, useful: bool, n: int = 1) -> dict[str, Any]:
    return {"n": n, "point_id": point_id, "source": "COBS.txt", "section": "18.8.2", "pages": [], "useful": useful}


def vote(rating: str = "up", question: str = "What is a client?", minutes: int = 0, **kw: Any) -> Vote:
    i = next(_ids)
    fields: dict[str, Any] = {"feedback_id": i, "answer_id": f"a{i}", "at": T0 + timedelta(minutes=minutes),
                              "collection": "adgm", "question": question, "answer": f"answer {i}", "rating": rating,
                              "model": "qwen", "prompt_version": "answer_v3"}
    return Vote(**{**fields, **kw})


def only_case(votes: list[Vote], heldout_percent: float = 20) -> Any:
    built = build_cases(votes, heldout_percent)
    assert len(built.cases) == 1, built
    return built.cases[0]


def keys(refs: list[Any]) -> list[str]:
    return [r.point_id for r in refs]


def test_normalize_is_the_dedup_key() -> None:
    assert normalize("  What IS a\tclient?! ") == normalize("what is a client") == "what is a client"
    assert normalize("«What is a client?»") == "what is a client"
    assert normalize("What is a client's role?") == "what is a client's role"


def test_paraphrases_in_form_merge_into_one_case() -> None:
    votes = [
        vote("up", "What is a client?", 0, citations=[cite("p1")], segment="legal"),
        vote("up", "  what is a   CLIENT ", 5, citations=[cite("p2", n=1)], segment="risk"),
        vote("down", "What is a client?", 10, reason="incomplete"),
        vote("up", "What is a client?", 1, collection="other", citations=[cite("p9")]),
    ]
    built = build_cases(votes)
    assert len(built.cases) == 2
    case = next(c for c in built.cases if c.collection == "adgm")
    assert keys(case.evidence) == ["p1", "p2"]
    assert case.votes == {"up": 2, "down": 1}
    assert case.answer_ids == [votes[0].answer_id, votes[1].answer_id, votes[2].answer_id]
    assert case.verdict == "mixed"
    assert case.segment == "none"  # the latest vote gave none
    assert case.reference_answer == votes[1].answer  # the most recent up-voted answer
    assert case.id.startswith("fb-") and case.id != next(c for c in built.cases if c.collection == "other").id


def test_standalone_question_is_what_the_case_asks() -> None:
    row = {"feedback_id": 1, "answer_id": "a", "created_at": datetime(2024, 5, 1), "updated_at": None,
           "collection": "adgm", "question": "and its fee?", "standalone_question": "What is the COBS fee?",
           "answer": "x", "rating": "up", "refused": False, "model": "m", "prompt_version": "v",
           "citations": None, "citation_marks": None, "reason": None, "correction": "  ", "segment": None}
    v = Vote.from_row(row)
    assert v.question == "What is the COBS fee?" and v.correction is None and v.at.tzinfo is UTC


def test_the_latest_mark_wins_and_marks_beat_citations() -> None:
    first = vote("down", minutes=0, reason="other", marks=[mark("p1", False)])
    later = vote("up", minutes=5, citations=[cite("p1"), cite("p2", n=2)], marks=[mark("p1", True)])
    case = only_case([later, first])  # input order does not matter: time does
    assert keys(case.evidence) == ["p1", "p2"] and case.negatives == []

    old_yes = vote("up", minutes=0, citations=[cite("p1")], marks=[mark("p1", True)])
    new_no = vote("down", minutes=5, reason="other", marks=[mark("p1", False)])
    assert keys(only_case([old_yes, new_no]).negatives) == ["p1"]

    # an up vote's citation does not overrule an explicit "not useful" given earlier
    marked = vote("down", minutes=0, reason="other", marks=[mark("p1", False)])
    cited = vote("up", minutes=5, citations=[cite("p1"), cite("p2", n=2)])
    case = only_case([marked, cited])
    assert keys(case.evidence) == ["p2"] and keys(case.negatives) == ["p1"]


def test_a_mark_without_point_id_borrows_its_citation() -> None:
    v = vote("down", reason="other", citations=[cite("p1", n=1), cite("p2", n=2, pages=[4, 5])],
             marks=[{"n": 2, "useful": True}])
    case = only_case([v])
    assert keys(case.evidence) == ["p2"]
    assert case.record()["evidence"] == [{"source": "COBS.txt", "page": 4, "section": "18.8.2", "point_id": "p2"}]


def test_a_correction_is_the_reference_and_a_preference_pair() -> None:
    votes = [
        vote("down", minutes=0, reason="wrong_answer", correction="A client is a person served.", answer="No idea."),
        vote("up", minutes=5, answer="A client is anyone.", citations=[cite("p1")]),
        vote("down", minutes=9, reason="outdated", correction="A client is a person or body served.",
             answer="A client is anyone."),
    ]
    built = build_cases(votes)
    case = built.cases[0]
    assert case.reference_answer == "A client is a person or body served."
    assert case.verdict == "corrected" and case.reference_source == "correction"
    pairs = preference_pairs(votes, built.cases)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [
        ("A client is a person served.", "No idea."),
        ("A client is a person or body served.", "A client is anyone."),
    ]
    assert pairs[0]["answer_id"] == votes[0].answer_id and pairs[0]["model"] == "qwen"
    assert pairs[0]["prompt_version"] == "answer_v3" and pairs[0]["prompt"] == "What is a client?"
    sft = sft_examples(built.cases)
    assert sft == [{"messages": [{"role": "user", "content": "What is a client?"},
                                 {"role": "assistant", "content": "A client is a person or body served."}],
                    "source": "correction", "answer_ids": case.answer_ids, "case_id": case.id, "split": case.split}]


def test_wrong_evidence_makes_negatives_and_other_downvotes_teach_nothing() -> None:
    wrong = vote("down", "Which rule covers fees?", reason="wrong_evidence", citations=[cite("p1"), cite("p2", n=2)])
    case = only_case([wrong])
    assert case.reference_answer is None and case.evidence == []
    assert keys(case.negatives) == ["p1", "p2"] and case.verdict == "down"

    # a useful mark singles out the good chunk: the rest of the citations are not condemned
    picked = vote("down", "Which rule covers fees?", reason="wrong_evidence",
                  citations=[cite("p1"), cite("p2", n=2)], marks=[mark("p2", True, n=2)])
    case = only_case([picked])
    assert keys(case.evidence) == ["p2"] and case.negatives == []

    built = build_cases([vote("down", "Is AML in scope?", reason="wrong_answer", citations=[cite("p1")])])
    assert built.cases == [] and built.skipped == {NOTHING_TO_LEARN: 1}


def test_an_upvoted_refusal_is_unanswerable(tmp_path: Path) -> None:
    refusal = vote("up", "What is the CEO's shoe size?", refused=True, answer="The documents do not say.")
    case = only_case([refusal])
    assert not case.answerable and case.reference_answer is None and sft_examples([case]) == []
    write_export(tmp_path, [refusal], build_cases([refusal], 0), None, {})
    (question,) = load_questions(tmp_path / TRAIN_FILE)
    assert question.answerable is False and question.tags["verdict"] == "up"

    # a down-voted refusal with nothing else is skipped, and a refusal's text is never a reference
    assert build_cases([vote("down", "Q?", refused=True, reason="incomplete")]).cases == []
    upheld_then_answered = [refusal, vote("up", "What is the CEO's shoe size?", 3, citations=[cite("p7")])]
    case = only_case(upheld_then_answered)
    assert case.answerable and case.reference_answer == upheld_then_answered[1].answer


def test_split_is_deterministic_and_follows_the_evidence() -> None:
    same_chunk = [vote("up", f"Paraphrase number {i}?", i, citations=[cite("p-shared")]) for i in range(30)]
    built = build_cases(same_chunk, 50)
    assert len(built.cases) == 30 and len({c.split for c in built.cases}) == 1
    spread = [vote("up", f"Question {i}?", i, citations=[cite(f"p{i}")]) for i in range(60)]
    first = [c.split for c in build_cases(spread, 50).cases]
    assert first == [c.split for c in build_cases(list(reversed(spread)), 50).cases]
    assert 10 < first.count("heldout") < 50
    assert {c.split for c in build_cases(spread, 0).cases} == {"train"}
    assert {c.split for c in build_cases(spread, 100).cases} == {"heldout"}
    # the smallest evidence id decides: adding a larger one keeps the side
    widened = [vote("up", f"Question {i}?", i, citations=[cite(f"p{i}"), cite("zz", n=2)]) for i in range(60)]
    assert [c.split for c in build_cases(widened, 50).cases] == first


def test_exported_files_load_as_questions(tmp_path: Path) -> None:
    votes = [vote("up", f"Question {i}?", i, citations=[cite(f"p{i}", pages=[i + 1])]) for i in range(20)]
    votes.append(vote("down", "Which rule?", 30, reason="wrong_evidence", citations=[cite("p0")]))
    built = build_cases(votes, 50)
    texts = {"adgm": {"p1": "Chunk one text."}}
    manifest = write_export(tmp_path, votes, built, texts, {"heldout_percent": 50})
    loaded = load_questions(tmp_path / TRAIN_FILE) + load_questions(tmp_path / HELDOUT_FILE)
    assert sorted(q.id for q in loaded) == sorted(c.id for c in built.cases)
    by_question = {q.question: q for q in loaded}
    assert by_question["Question 1?"].evidence[0].text == "Chunk one text."
    assert by_question["Question 3?"].evidence[0].page == 4 and by_question["Question 3?"].evidence[0].text is None
    assert by_question["Which rule?"].reference_answer is None and by_question["Which rule?"].evidence == []
    assert manifest["counts"]["train"] + manifest["counts"]["heldout"] == 21
    assert manifest["counts"]["evidence_without_text"] == manifest["counts"]["evidence_items"] - 1


# --- the command, end to end on a real SQLite log (and a real embedded Qdrant index) ---------------------------

def _chunk(i: int, text: str) -> Chunk:
    return Chunk(text=text, source="COBS.txt", doc_id="cobs", chunk_index=i, section=f"18.8.{i}",
                 page_start=i + 1, page_end=i + 2)


CHUNKS = [_chunk(0, "A client means any person to whom an authorised person provides a service."),
          _chunk(1, "Fees must be disclosed before the service is provided."),
          _chunk(2, "Unrelated text about market conduct.")]


def _fill_log(db_url: str) -> dict[str, str]:
    engine = connect(db_url)
    p0, p1, p2 = (c.id for c in CHUNKS)
    now = datetime.now(UTC)

    def answer(aid: str, question: str, text: str, cited: list[Chunk], refused: bool = False,
               standalone: str | None = None, collection: str = "adgm") -> dict[str, Any]:
        citations = [{"n": n, "point_id": c.id, "source": c.source, "pages": [c.page_start, c.page_end],
                      "section": c.section, "score": 0.5} for n, c in enumerate(cited, start=1)]
        return {"id": aid, "created_at": now, "collection": collection, "question": question, "answer": text,
                "refused": refused, "model": "qwen", "prompt_version": "answer_v3", "embedder": "minilm",
                "retrieved": citations, "citations": citations, "latency_ms": 10, "standalone_question": standalone}

    rows = [
        answer("a1", "What is a client?", "Anyone [1].", [CHUNKS[0]]),
        answer("a2", "what is a client", "A person served [1].", [CHUNKS[0], CHUNKS[2]]),
        answer("a3", "and the fees?", "Fees are secret [1][2].", [CHUNKS[1], CHUNKS[2]],
               standalone="When must fees be disclosed?"),
        answer("a4", "Shoe size of the CEO?", "The documents do not say.", [], refused=True),
        answer("a5", "Is it good?", "Yes.", [CHUNKS[1]]),
        answer("a6", "What is a client?", "Anyone.", [CHUNKS[0]], collection="sec"),
    ]
    old = now - timedelta(days=30)
    votes = [
        {"answer_id": "a1", "created_at": now - timedelta(minutes=9), "rating": "up", "user_id": "u1"},
        {"answer_id": "a2", "created_at": now - timedelta(minutes=8), "rating": "down", "user_id": "u2",
         "reason": "incomplete", "correction": "A person to whom an authorised person provides a service.",
         "segment": "legal",
         "citation_marks": [{"n": 2, "point_id": p2, "source": "COBS.txt", "section": "18.8.2", "pages": [3, 4],
                             "useful": False}]},
        {"answer_id": "a3", "created_at": now - timedelta(minutes=7), "rating": "down", "user_id": "u1",
         "reason": "wrong_evidence"},
        {"answer_id": "a3", "created_at": old, "updated_at": now - timedelta(minutes=6), "rating": "up",
         "user_id": "u3", "citation_marks": [{"n": 2, "point_id": p2, "source": "COBS.txt", "useful": False}]},
        {"answer_id": "a4", "created_at": old, "rating": "up", "user_id": "u1"},
        {"answer_id": "a5", "created_at": now - timedelta(minutes=5), "rating": "down", "user_id": "u1",
         "reason": "other"},
        {"answer_id": "a6", "created_at": now - timedelta(minutes=4), "rating": "up", "user_id": "u1"},
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(answers), rows)
        for v in votes:
            conn.execute(sa.insert(feedback).values(**v))
    engine.dispose()
    return {"p0": p0, "p1": p1, "p2": p2}


def _run(argv: list[str], settings: Any) -> int:
    args = build_parser().parse_args(["feedback-export", *argv])
    return run_command(args, settings)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_command_exports_a_real_feedback_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(tmp_path / "data")
    ids = _fill_log(settings.db_url)
    out = tmp_path / "export"
    assert _run(["--out", str(out), "--collection", "adgm", "--no-text", "--heldout-percent", "0"], settings) == 0
    assert "read 6 votes on 5 answers" in capsys.readouterr().out
    cases = {q.question: q for q in load_questions(out / TRAIN_FILE)}
    assert _lines(out / HELDOUT_FILE) == []
    assert set(cases) == {"what is a client", "When must fees be disclosed?", "Shoe size of the CEO?"}
    client = cases["what is a client"]
    assert client.reference_answer == "A person to whom an authorised person provides a service."
    assert [e.section for e in client.evidence] == ["18.8.0"] and client.evidence[0].page == 1
    assert client.evidence[0].text is None and client.tags["verdict"] == "corrected"
    assert client.tags["segment"] == "legal" and client.tags["collection"] == "adgm"
    fees = {line["question"]: line for line in _lines(out / TRAIN_FILE)}["When must fees be disclosed?"]
    # the wrong_evidence vote condemned both citations; the later up vote keeps p1 and confirms p2 is not useful
    assert [e["point_id"] for e in fees["evidence"]] == [ids["p1"]]
    assert [e["point_id"] for e in fees["negative_evidence"]] == [ids["p2"]]
    assert fees["reference_answer"] == "Fees are secret [1][2]." and fees["tags"]["verdict"] == "mixed"
    assert fees["votes"] == {"up": 1, "down": 1} and fees["answer_ids"] == ["a3"]
    assert cases["Shoe size of the CEO?"].answerable is False
    (pair,) = _lines(out / PREFERENCES_FILE)
    assert pair["rejected"] == "A person served [1]." and pair["answer_id"] == "a2"
    assert [s["source"] for s in _lines(out / SFT_FILE)] == ["correction", "upvoted"]
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["counts"] | {"skipped": None} == {
        "feedback_rows": 6, "answers": 5, "cases": 3, "train": 3, "heldout": 0, "unanswerable": 1,
        "skipped": None, "sft": 2, "preferences": 1, "evidence_items": 4, "evidence_without_text": 4}
    assert manifest["counts"]["skipped"] == {NOTHING_TO_LEARN: 1}
    assert manifest["options"] == {"collection": "adgm", "tenant": None, "since": None, "heldout_percent": 0,
                                   "text": False}
    assert manifest["sha256"][TRAIN_FILE] == hashlib.sha256((out / TRAIN_FILE).read_bytes()).hexdigest()

    # --tenant keeps one tenant's votes: these are all the default tenant's
    assert _run(["--out", str(out / "other"), "--tenant", "globex", "--no-text"], settings) == 0
    assert json.loads((out / "other" / MANIFEST_FILE).read_text())["counts"]["feedback_rows"] == 0
    assert _run(["--out", str(out / "default"), "--tenant", "default", "--collection", "adgm", "--no-text"],
                settings) == 0
    assert json.loads((out / "default" / MANIFEST_FILE).read_text())["counts"]["feedback_rows"] == 6

    # --since keeps only votes set since then (the refusal's vote is a month old; a3's up vote was updated)
    since = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    assert _run(["--out", str(out), "--since", since, "--no-text"], settings) == 0
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["counts"]["feedback_rows"] == 6 and manifest["counts"]["unanswerable"] == 0


def test_command_reads_chunk_text_from_the_index(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(tmp_path / "data")
    ids = _fill_log(settings.db_url)
    components = Components(settings)
    try:
        components.store.ensure_collection("adgm", 3)
        components.store.upsert("adgm", CHUNKS, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    finally:
        components.close()
    out = tmp_path / "export"
    assert _run(["--out", str(out), "--heldout-percent", "100"], settings) == 0
    assert "with chunk text" in capsys.readouterr().out
    lines = {line["question"]: line for line in _lines(out / HELDOUT_FILE)}
    assert lines["what is a client"]["evidence"][0]["text"] == CHUNKS[0].text
    assert lines["When must fees be disclosed?"]["negative_evidence"][0]["text"] == CHUNKS[2].text
    assert ids["p1"] in {e["point_id"] for e in lines["When must fees be disclosed?"]["evidence"]}
    # the "sec" collection is not in the index: its evidence comes without text, the export still succeeds
    assert "text" not in lines["What is a client?"]["evidence"][0]
    assert json.loads((out / MANIFEST_FILE).read_text())["counts"]["evidence_without_text"] == 1


def test_an_empty_log_exports_empty_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(tmp_path / "data")
    db_file = Path(settings.db_url.removeprefix("sqlite:///"))
    out = tmp_path / "export"
    assert _run(["--out", str(out)], settings) == 0  # no database at all: none is created
    assert not db_file.exists()
    connect(settings.db_url).dispose()  # a database with the schema and no rows
    assert _run(["--out", str(out), "--since", "2024-01-01T00:00:00+04:00"], settings) == 0
    assert capsys.readouterr().out.count("no feedback in the database") == 2
    for name in (TRAIN_FILE, HELDOUT_FILE, SFT_FILE, PREFERENCES_FILE):
        assert (out / name).read_text() == ""
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["counts"]["cases"] == 0 and manifest["options"]["since"] == "2024-01-01T00:00:00+04:00"


@pytest.mark.parametrize(("argv", "message"), [
    (["--out", "x", "--since", "last tuesday"], "--since wants an ISO date"),
    (["--out", "x", "--heldout-percent", "120"], "--heldout-percent wants a whole number from 0 to 100"),
    (["--out", "x", "--heldout-percent", "-1"], "--heldout-percent wants a whole number from 0 to 100"),
    ([], "--out"),
])
def test_bad_arguments_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["feedback-export", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
