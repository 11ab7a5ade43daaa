"""Retrieval metrics (eval/metrics.py) and the summary (eval/summary.py), on cases with known answers."""

from __future__ import annotations

import math

import pytest

from assistant.chunks import Chunk
from eval.matching import match_ranks
from eval.metrics import (
    chunks_within_budget,
    count_tokens,
    first_match_rank,
    hit_at_k,
    ndcg_at_k,
    on_evidence_page,
    page_hit_at_k,
    recall_at_budget,
    recall_at_k,
    reciprocal_rank,
    retrieval_scores,
)
from eval.questions import Evidence, Question
from eval.summary import build_summary, metric_names, percentile
from eval.table import format_table

# ranks[r] = evidence indices matched by the chunk at rank r + 1
TWO_EVIDENCE = [[], [1], [], [0, 1], []]
AAPL = "2023 Q3 AAPL.pdf"


def chunk(text: str = "some text", source: str = AAPL, page_start: int | None = None,
          page_end: int | None = None, index: int = 0) -> Chunk:
    return Chunk(text=text, source=source, doc_id=source, chunk_index=index, page_start=page_start,
                 page_end=page_end)


def words(n: int) -> str:
    """A text of exactly `n` tokens."""
    return " ".join(["word"] * n)


def scores_for(evidence: list[Evidence], chunks: list[Chunk], ks: list[int],
               budgets: tuple[int, ...] = (500,)) -> dict[str, float]:
    return retrieval_scores(match_ranks(evidence, chunks), evidence, chunks, ks, budgets)


def test_metrics_on_a_known_ranking() -> None:
    assert [hit_at_k(TWO_EVIDENCE, k) for k in (1, 2, 3, 4, 10)] == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert [recall_at_k(TWO_EVIDENCE, 2, k) for k in (1, 2, 3, 4)] == [0.0, 0.5, 0.5, 1.0]
    assert first_match_rank(TWO_EVIDENCE) == 2
    assert reciprocal_rank(TWO_EVIDENCE) == 0.5
    # rank 2 finds item 1, rank 4 finds item 0 (item 1 again, but item 0 is new): both gain.
    ideal = 1 + 1 / math.log2(3)
    assert ndcg_at_k(TWO_EVIDENCE, 2, 5) == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / ideal)


def test_empty_retrieval_scores_zero() -> None:
    evidence = [Evidence(source=AAPL, page=3)]
    scores = retrieval_scores([], evidence, [], [1, 5], (500,))
    assert scores == {"hit@1": 0.0, "hit@5": 0.0, "recall@1": 0.0, "recall@5": 0.0, "ndcg@1": 0.0,
                      "ndcg@5": 0.0, "page_hit@1": 0.0, "page_hit@5": 0.0, "recall@500tok": 0.0, "mrr": 0.0}
    assert first_match_rank([]) is None


def test_score_keys_come_in_the_documented_order() -> None:
    evidence = [Evidence(source=AAPL, page=2)]
    scores = retrieval_scores([[0]], evidence, [chunk(page_start=2)], [3, 1, 3])
    assert list(scores) == ["hit@1", "hit@3", "recall@1", "recall@3", "ndcg@1", "ndcg@3", "page_hit@1",
                            "page_hit@3", "recall@500tok", "recall@1000tok", "recall@2000tok", "mrr"]
    assert set(scores.values()) == {1.0}


def test_evidence_matched_by_several_chunks_counts_once() -> None:
    ranks = [[0], [0], [0]]
    assert recall_at_k(ranks, 2, 3) == 0.5
    assert reciprocal_rank(ranks) == 1.0


def test_mrr_looks_past_the_largest_k_but_hit_does_not() -> None:
    evidence = [Evidence(source=AAPL)]
    chunks = [chunk(source="other.pdf", index=i) for i in range(3)] + [chunk(index=3)]
    scores = scores_for(evidence, chunks, [3, 1, 3])
    assert scores == {"hit@1": 0.0, "hit@3": 0.0, "recall@1": 0.0, "recall@3": 0.0, "ndcg@1": 0.0,
                      "ndcg@3": 0.0, "recall@500tok": 1.0, "mrr": 0.25}


def test_ties_keep_the_retrievers_order() -> None:
    # Equal scores are not re-sorted: the matching chunk second in the list has rank 2.
    evidence = [Evidence(source=AAPL, page=4)]
    tied = [chunk(page_start=3, index=0), chunk(page_start=4, index=1), chunk(page_start=4, index=2)]
    scores = scores_for(evidence, tied, [1, 2])
    assert scores["hit@1"] == 0.0 and scores["hit@2"] == 1.0 and scores["mrr"] == 0.5
    assert scores["ndcg@2"] == pytest.approx(1 / math.log2(3))
    assert scores["page_hit@1"] == 0.0 and scores["page_hit@2"] == 1.0


def test_chunk_without_pages_never_holds_paged_evidence() -> None:
    evidence = [Evidence(source=AAPL, page=4)]
    unpaged = [chunk(page_start=None, index=0), chunk(page_start=2, page_end=3, index=1)]
    scores = scores_for(evidence, unpaged, [2])
    assert scores == {"hit@2": 0.0, "recall@2": 0.0, "ndcg@2": 0.0, "page_hit@2": 0.0, "recall@500tok": 0.0,
                      "mrr": 0.0}
    # A page range covers its inner pages; a missing page_end means one page.
    assert on_evidence_page(evidence, chunk(page_start=3, page_end=5))
    assert not on_evidence_page(evidence, chunk(page_start=3))


def test_globbed_sources_are_case_sensitive() -> None:
    evidence = [Evidence(source="*AAPL*.pdf", page=5)]
    chunks = [chunk(source="2023 Q3 aapl.pdf", page_start=5, index=0),
              chunk(source="2023 Q3 AAPL.pdf", page_start=5, index=1),
              chunk(source="2023 Q3 AAPL.txt", page_start=5, index=2)]
    assert match_ranks(evidence, chunks) == [[], [0], []]
    scores = scores_for(evidence, chunks, [1, 3])
    assert scores["page_hit@1"] == 0.0 and scores["page_hit@3"] == 1.0 and scores["mrr"] == 0.5


def test_page_hit_ignores_text_and_only_applies_with_paged_evidence() -> None:
    paged = [Evidence(source="*AAPL*.pdf", page=5, text="total net sales were 81,797 million dollars")]
    other_passage = chunk("Risk factors include currency movements and supply.", page_start=4, page_end=6)
    assert scores_for(paged, [other_passage], [1]) == {
        "hit@1": 0.0, "recall@1": 0.0, "ndcg@1": 0.0, "page_hit@1": 1.0, "recall@500tok": 0.0, "mrr": 0.0}
    unpaged = [Evidence(source=AAPL, text="risk factors include currency movements")]
    scores = scores_for(unpaged, [other_passage], [1, 5])
    assert not any(name.startswith("page_hit") for name in scores) and scores["hit@1"] == 1.0
    with pytest.raises(ValueError, match="with a page"):
        page_hit_at_k(unpaged, [other_passage], 1)
    # One paged item is enough; an unpaged item never makes a page hit.
    mixed = [Evidence(source=AAPL), Evidence(source=AAPL, page=9)]
    assert page_hit_at_k(mixed, [other_passage], 1) == 0.0


def test_ndcg_gives_duplicates_no_gain() -> None:
    perfect = 1 + 1 / math.log2(3)
    assert ndcg_at_k([[0], [0], [1]], 2, 3) == pytest.approx((1 + 1 / math.log2(4)) / perfect)
    assert ndcg_at_k([[0], [0], [1]], 2, 3) < ndcg_at_k([[0], [1], [0]], 2, 3) == 1.0
    # One chunk holding both items gains once: the ideal still has two gains.
    assert ndcg_at_k([[0, 1], [1]], 2, 2) == pytest.approx(1 / perfect)
    assert ndcg_at_k([[], [], []], 2, 3) == 0.0


def test_ndcg_of_a_perfect_ranking_is_one() -> None:
    assert ndcg_at_k([[0]], 1, 10) == 1.0
    assert ndcg_at_k([[1], [0], [2]], 3, 3) == pytest.approx(1.0)
    # With more evidence than k, the ideal has only k gains.
    assert ndcg_at_k([[0], [1], []], 3, 2) == pytest.approx(1.0)
    assert ndcg_at_k([[0], [1]], 3, 2) == pytest.approx(1.0)


def test_count_tokens_counts_words_and_punctuation() -> None:
    assert count_tokens("Net sales were $81,797.") == 8
    assert count_tokens("") == 0 and count_tokens("  \n") == 0
    assert count_tokens(words(500)) == 500


def test_budgeted_recall_stops_at_the_chunk_that_overflows() -> None:
    evidence = [Evidence(source=AAPL, page=p) for p in (1, 2, 3)]
    chunks = [chunk(words(300), page_start=1, index=0), chunk(words(900), page_start=2, index=1),
              chunk(words(100), page_start=3, index=2)]
    scores = scores_for(evidence, chunks, [3], (500, 1000, 2000))
    # 300 fits every budget; 300 + 900 overflows 500 and 1000, and the walk stops there even though the
    # third chunk (100) would fit after the first.
    assert scores["recall@500tok"] == pytest.approx(1 / 3)
    assert scores["recall@1000tok"] == pytest.approx(1 / 3)
    assert scores["recall@2000tok"] == 1.0 and scores["recall@3"] == 1.0
    assert chunks_within_budget([300, 900, 100], 500) == 1
    assert chunks_within_budget([500, 1], 500) == 1  # a total equal to the budget fits
    assert chunks_within_budget([501], 500) == 0
    assert recall_at_budget([[0]], 1, [600], 500) == 0.0  # a first chunk over the budget counts for nothing


def test_retrieval_scores_need_evidence_and_matching_lengths() -> None:
    with pytest.raises(ValueError, match="at least one evidence"):
        recall_at_k([[0]], 0, 1)
    with pytest.raises(ValueError, match="at least one evidence"):
        retrieval_scores([[]], [], [chunk()], [1])
    with pytest.raises(ValueError, match="ranks must come from these chunks"):
        retrieval_scores([[0]], [Evidence(source=AAPL)], [], [1])
    with pytest.raises(ValueError, match="positive"):
        retrieval_scores([[0]], [Evidence(source=AAPL)], [chunk()], [1], (0,))


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
    assert summary["timing"] == {"total_s": 1.0, "retrieve_ms_mean": 15.0, "retrieve_ms_p50": 15.0,
                                 "retrieve_ms_p95": 19.5}
    table = format_table(summary)
    assert "type=table" in table and "0.750" in table


def test_summary_orders_metrics_that_only_some_questions_have() -> None:
    unpaged = {"hit@1": 1.0, "ndcg@1": 1.0, "recall@500tok": 1.0, "mrr": 1.0}
    paged = {"hit@1": 0.0, "ndcg@1": 0.0, "page_hit@1": 1.0, "recall@500tok": 0.0, "mrr": 0.5}
    records = [
        record("a", {}, unpaged, {"over_refusal": 0.0, "judge_correct": 1.0}),
        record("b", {}, paged, {"over_refusal": 1.0, "numeric_match": 0.0, "judge_correct": 0.0}),
    ]
    assert metric_names(records) == ["hit@1", "ndcg@1", "page_hit@1", "recall@500tok", "mrr",
                                     "numeric_match", "over_refusal", "judge_correct"]
    summary = build_summary(records, settings={}, seconds=0.5, timings_ms={})
    assert summary["page_hit@1"] == 1.0 and summary["mrr"] == 0.75  # page_hit@1 over the one paged question
    assert summary["over_refusal"] == 0.5 and summary["judge_correct"] == 0.5 and summary["numeric_match"] == 0.0


def test_percentiles_interpolate_like_numpy() -> None:
    values = list(range(1, 101))  # 1 … 100
    assert percentile(values, 50) == pytest.approx(50.5) and percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 0) == 1 and percentile(values, 100) == 100
    assert percentile([7], 95) == 7 and percentile([30, 10, 20], 50) == 20
    assert percentile([10, 20], 95) == pytest.approx(19.5)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_printed_table_keeps_headline_metrics_only() -> None:
    from eval.table import headline_metrics

    names = ["hit@1", "hit@3", "hit@5", "hit@10", "recall@1", "recall@10", "ndcg@1", "ndcg@10", "page_hit@5",
             "recall@500tok", "recall@1000tok", "mrr", "numeric_match", "token_f1"]
    assert headline_metrics(names) == ["hit@1", "hit@5", "recall@10", "ndcg@10", "recall@1000tok", "mrr",
                                       "numeric_match", "token_f1"]
    assert headline_metrics(["hit@2", "hit@4", "recall@4", "mrr"]) == ["hit@2", "hit@4", "recall@4", "mrr"]


def test_figure_hit_needs_a_reference_figure_in_an_evidence_chunk() -> None:
    from eval.metrics import figure_hits

    texts = ["Total net sales: 94,836 (three months ended April 1, 2023)", "Products: 60,584",
             "Total net sales: 81,797 (three months ended July 1, 2023)"]
    ref = "Apple's total net sales were $81,797 million in the quarter."
    assert figure_hits(ref, texts, [True, True, True], (1, 3)) == {"figure_hit@1": 0.0, "figure_hit@3": 1.0}
    assert figure_hits(ref, texts, [True, True, False], (3,)) == {"figure_hit@3": 0.0}  # wrong filing
    assert figure_hits("It rose by 2 points in 2023.", texts, [True] * 3, (3,)) == {}  # no figure to look for
    assert figure_hits(None, texts, [True] * 3, (3,)) == {}
