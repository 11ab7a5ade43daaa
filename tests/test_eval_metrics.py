"""Retrieval metrics, numeric matching, answer scores and the summary, on cases with known answers."""

from __future__ import annotations

import pytest

from assistant.answering import REFUSAL_TEXT, Answer, Citation
from eval.answers import answer_scores, normalize, token_f1
from eval.metrics import (
    first_match_rank,
    hit_at_k,
    recall_at_k,
    reciprocal_rank,
    retrieval_scores,
)
from eval.numbers import find_numbers, numbers_found, same_number
from eval.questions import Evidence, Question
from eval.summary import build_summary
from eval.table import format_table

# ranks[r] = evidence indices matched by the chunk at rank r + 1
TWO_EVIDENCE = [[], [1], [], [0, 1], []]


def test_metrics_on_a_known_ranking() -> None:
    assert [hit_at_k(TWO_EVIDENCE, k) for k in (1, 2, 3, 4, 10)] == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert [recall_at_k(TWO_EVIDENCE, 2, k) for k in (1, 2, 3, 4)] == [0.0, 0.5, 0.5, 1.0]
    assert first_match_rank(TWO_EVIDENCE) == 2
    assert reciprocal_rank(TWO_EVIDENCE) == 0.5


def test_empty_retrieval_scores_zero() -> None:
    assert retrieval_scores([], 1, [1, 5]) == {"hit@1": 0.0, "hit@5": 0.0, "recall@1": 0.0, "recall@5": 0.0,
                                               "mrr": 0.0}
    assert first_match_rank([]) is None


def test_evidence_matched_by_several_chunks_counts_once() -> None:
    ranks = [[0], [0], [0]]
    assert recall_at_k(ranks, 2, 3) == 0.5
    assert reciprocal_rank(ranks) == 1.0


def test_mrr_looks_past_the_largest_k_but_hit_does_not() -> None:
    ranks = [[], [], [], [0]]
    scores = retrieval_scores(ranks, 1, [3, 1, 3])
    assert scores == {"hit@1": 0.0, "hit@3": 0.0, "recall@1": 0.0, "recall@3": 0.0, "mrr": 0.25}
    assert list(scores) == ["hit@1", "hit@3", "recall@1", "recall@3", "mrr"]


def test_ties_keep_the_retrievers_order() -> None:
    # Equal scores are not re-sorted: the matching chunk second in the list has rank 2.
    assert reciprocal_rank([[], [0], [0]]) == 0.5


def test_recall_needs_evidence() -> None:
    with pytest.raises(ValueError, match="at least one evidence"):
        recall_at_k([[0]], 0, 1)


@pytest.mark.parametrize(("reference", "answer"), [
    ("$1577.00", "The fee is $1,577."),
    ("81,797", "Net sales were 81,797."),
    ("3.2%", "Growth was 3.2 percent."),
    ("$81,797 million", "about 81.797 billion dollars"),
    ("$81,797 million", "$81.8 billion"),
    ("3.24%", "3.2%"),
    ("(265)", "a decrease of $265"),
    ("-1.5 million", "(1,500) thousand"),
    ("81,797", "$81,797 million"),
    ("81,797", "81,979"),  # 0.22 % off: inside the 0.5 % tolerance
])
def test_numbers_that_agree(reference: str, answer: str) -> None:
    assert numbers_found(reference, answer) == (1, 1)


@pytest.mark.parametrize(("reference", "answer"), [
    ("81,797", "82,979"),  # 1.4 % off
    ("$81,797 million", "$81,797 billion"),
    ("3.2%", "3.2 million"),
    ("3.4%", "3%"),  # one significant digit is no rounding tolerance
    ("$1,577.00", "$1,600"),
    ("0", "1"),
])
def test_numbers_that_disagree(reference: str, answer: str) -> None:
    assert numbers_found(reference, answer) == (0, 1)


def test_number_parsing_on_a_real_sec10q_reference() -> None:
    reference = (
        "- For the quarterly period ended July 1, 2023, the total net sales were $81,797 million. "
        "(SOURCE: 2023 Q3 AAPL.pdf)\nFrom these figures, net sales fell 3.2% in Q3 [2].\n\n"
        "SOURCE(S): 2022 Q3 AAPL.pdf, 2023 Q3 AAPL.pdf"
    )
    found = find_numbers(reference)
    assert [(n.value, n.scale, n.percent) for n in found] == [(81797.0, 1e6, False), (3.2, 1.0, True)]
    (paren,) = find_numbers("Other income was $(265) million.")
    assert paren.value == -265.0 and paren.scale == 1e6
    assert find_numbers("In 2022 the 10-Q for Q3 cited June 25, 2022 [1]") == []
    assert [n.text for n in find_numbers("Risks:\n1. Currency: 3.5% of sales\n2) Supply")] == ["3.5%"]
    assert same_number(find_numbers("$1577.00")[0], find_numbers("1,577")[0])


def test_token_f1_uses_squad_normalisation() -> None:
    assert normalize("The Fee, is: $1,577!") == "fee is 1577"
    assert token_f1("The fee is 1,577.", "fee is 1577") == 1.0
    assert token_f1("fee 1577", "the fee is 1577") == pytest.approx(2 * 1.0 * (2 / 3) / (1 + 2 / 3))
    assert token_f1("nothing alike", "fee is 1577") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "x") == 0.0


def answer(text: str, refused: bool = False) -> Answer:
    citation = Citation(n=1, point_id="p", source="FEES.txt", pages=[], section=None, snippet="s", score=0.9)
    return Answer(answer=text, citations=[] if refused else [citation], retrieved=[], refused=refused,
                  model="fake", prompt_version="answer_v1")


def question(reference: str | None = "The fee is $1,577.", answerable: bool = True) -> Question:
    return Question(id="q", question="What is the fee?", reference_answer=reference, answerable=answerable)


def test_answer_scores_on_fabricated_answers() -> None:
    assert answer_scores(question(), answer("The fee is $1,577 [1].")) == {
        "false_refusal": 0.0, "token_f1": 1.0, "numeric_recall": 1.0, "numeric_exact": 1.0}
    refused = answer_scores(question(), answer(REFUSAL_TEXT, refused=True))
    assert refused == {"false_refusal": 1.0, "token_f1": 0.0, "numeric_recall": 0.0, "numeric_exact": 0.0}
    assert answer_scores(question("No numbers here."), answer("No numbers here")) == {
        "false_refusal": 0.0, "token_f1": 1.0}
    assert answer_scores(question(None), answer("anything")) == {"false_refusal": 0.0}


def test_refusal_correctness_for_unanswerable_questions() -> None:
    unanswerable = question(None, answerable=False)
    assert answer_scores(unanswerable, answer(REFUSAL_TEXT, refused=True)) == {"refusal_correct": 1.0}
    assert answer_scores(unanswerable, answer("It is $5.")) == {"refusal_correct": 0.0}


def record(qid: str, tags: dict[str, str], retrieval: dict[str, float] | None,
           scores: dict[str, float] | None = None) -> dict[str, object]:
    q = Question(id=qid, question="q", tags=tags, evidence=[Evidence(source="x")] if retrieval else [])
    return {"id": qid, "segments": q.segments(), "retrieval": retrieval, "answer_scores": scores,
            "answer": {"text": "a"} if scores else None, "reference_answer": "r" if scores else None,
            "answerable": True}


def test_summary_means_overall_and_per_segment() -> None:
    records = [
        record("a", {"type": "table"}, {"hit@1": 1.0, "recall@1": 1.0, "mrr": 1.0}, {"token_f1": 0.5}),
        record("b", {"type": "text"}, {"hit@1": 0.0, "recall@1": 0.0, "mrr": 0.5}),
        record("c", {"type": "text"}, None),
    ]
    summary = build_summary(records, settings={"collection": "c", "k": [1]}, seconds=1.0,
                            timings_ms={"retrieve": [10, 20], "answer": []})
    assert summary["hit@1"] == 0.5 and summary["mrr"] == 0.75 and summary["token_f1"] == 0.5
    assert summary["metrics"] == ["hit@1", "recall@1", "mrr", "token_f1"]
    assert summary["counts"] == {"questions": 3, "retrieval_scored": 2, "no_evidence": 1, "with_reference": 1,
                                 "unanswerable": 0, "answered": 1, "errors": 0}
    text_segment = summary["segments"]["type=text"]
    assert text_segment["questions"] == 2 and text_segment["retrieval_scored"] == 1
    assert text_segment["hit@1"] == 0.0 and text_segment["mrr"] == 0.5 and text_segment["token_f1"] is None
    assert summary["timing"] == {"total_s": 1.0, "retrieve_ms_mean": 15.0}
    table = format_table(summary)
    assert "type=table" in table and "0.750" in table
