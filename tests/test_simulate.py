"""The feedback simulation: users rate through the real API, memory is measured, learning runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from conftest import make_settings
from test_learn import PHRASINGS, TOPICS, chunk

from assistant.components import Components
from assistant.embedding import SentenceTransformerEmbedder
from eval import simulate
from eval.questions import Evidence, Question, load_questions

COLLECTION = "regs"


def questions() -> list[Question]:
    return [
        Question(id=f"q{i}-{n}", question=phrasing.format(topic),
                 evidence=[Evidence(source="RULES.txt", section=f"{i + 1}.1.1", text=text)], tags={"topic": topic})
        for i, (topic, text) in enumerate(TOPICS) for n, phrasing in enumerate(PHRASINGS)
    ]


def test_plan_asks_one_question_per_gold_passage_and_keeps_the_rest_as_paraphrases() -> None:
    qs = questions()
    sets = simulate.plan(qs, n_learn=100, n_repeat=3, n_unseen=100, seed=0)
    asked = {simulate.gold_key(q) for q in sets["learn"]}
    assert len(asked) == len(sets["learn"])  # one question per gold passage
    assert all(simulate.gold_key(q) in asked for q in sets["same-rule"])
    assert not {q.id for q in sets["same-rule"]} & {q.id for q in sets["learn"]}
    assert len(sets["repeat"]) == 3 and {q.id for q in sets["repeat"]} <= {q.id for q in sets["learn"]}
    assert not {simulate.gold_key(q) for q in sets["unseen"]} & asked  # unseen: the other split
    assert simulate.plan(qs, 100, 3, 100, 0) == sets


@pytest.mark.slow
def test_simulation_rates_through_the_api_and_measures_memory(tmp_path: Path,
                                                              embedder: SentenceTransformerEmbedder) -> None:
    settings = make_settings(tmp_path / "index")
    components = Components(settings, embedder=embedder)
    chunks = [chunk(i) for i in range(len(TOPICS))]
    components.store.ensure_collection(COLLECTION, embedder.dim)
    components.store.upsert(COLLECTION, chunks, embedder.embed_batch([c.text for c in chunks]),
                            [components.sparse.encode_document(c.text) for c in chunks])
    components.close()
    qfile = tmp_path / "questions.jsonl"
    qfile.write_text("".join(q.model_dump_json() + "\n" for q in questions()))
    para = tmp_path / "paraphrases.jsonl"
    para.write_text("".join(
        json.dumps({**q.model_dump(), "id": q.id + "-p", "question": q.question.replace("rules on", "regulations on"),
                    "paraphrase_of": q.id}) + "\n" for q in questions()))
    out = tmp_path / "sim"
    args = argparse.Namespace(
        questions=qfile, collection=COLLECTION, out=out, learn=100, repeat=100, unseen=100, cited=3, p_mark=1.0,
        p_correct=0.0, p_noise=0.0, train="", dev=[], epochs=1, threads=2, seed=0, skip_asking=False,
        no_progress=True, paraphrases=para, thresholds="0.8",
    )
    assert simulate.run_command(args, settings) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["feedback"]["up"] + report["feedback"]["down"] == report["sizes"]["learn"]
    assert report["feedback"]["marked"] == report["sizes"]["learn"]
    repeat = report["memory"]["0.8"]["repeat"]
    assert repeat["with"]["recall@5"] >= repeat["without"]["recall@5"]
    assert "## Feedback memory" in (out / "report.md").read_text()
    assert load_questions(qfile)
