"""Retrieval metrics of one question, computed from its match ranks.

`ranks[r]` lists the evidence indices matched by the chunk at rank `r + 1` (see `matching.match_ranks`);
ranks are positions in the retriever's list, so chunks with equal scores keep the retriever's order.
Each metric is a plain function of (ranks, number of evidence items[, k]); `retrieval_scores` names them.
Adding a metric (nDCG, budgeted recall) is one function here and one line in `retrieval_scores`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Ranks = Sequence[Sequence[int]]


def matched_within(ranks: Ranks, k: int | None = None) -> set[int]:
    """Evidence indices matched by any of the first `k` chunks (all chunks when `k` is None)."""
    found: set[int] = set()
    for matched in ranks[:k] if k is not None else ranks:
        found.update(matched)
    return found


def hit_at_k(ranks: Ranks, k: int) -> float:
    """1.0 when any of the first `k` chunks matches any evidence item, else 0.0."""
    return 1.0 if any(ranks[:k]) else 0.0


def recall_at_k(ranks: Ranks, n_evidence: int, k: int) -> float:
    """Share of the evidence items matched by at least one of the first `k` chunks."""
    if n_evidence <= 0:
        raise ValueError("recall needs at least one evidence item")
    return len(matched_within(ranks, k)) / n_evidence


def first_match_rank(ranks: Ranks) -> int | None:
    """1-based rank of the first chunk matching any evidence item; None when no chunk does."""
    return next((r for r, matched in enumerate(ranks, start=1) if matched), None)


def reciprocal_rank(ranks: Ranks) -> float:
    """1 / rank of the first matching chunk over the whole retrieved list; 0.0 when none matches."""
    rank = first_match_rank(ranks)
    return 1.0 / rank if rank else 0.0


def retrieval_scores(ranks: Ranks, n_evidence: int, ks: Iterable[int]) -> dict[str, float]:
    """Flat metric names to values: `hit@k`, `recall@k` for every k, then `mrr`."""
    scores: dict[str, float] = {}
    ks = sorted(set(ks))
    for k in ks:
        scores[f"hit@{k}"] = hit_at_k(ranks, k)
    for k in ks:
        scores[f"recall@{k}"] = recall_at_k(ranks, n_evidence, k)
    scores["mrr"] = reciprocal_rank(ranks)
    return scores


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
