"""Retrieval metrics of one question, computed from its match ranks (definitions in eval/README.md).

`ranks[r]` lists the evidence indices matched by the chunk at rank `r + 1` (see `matching.match_ranks`);
ranks are positions in the retriever's list, so chunks with equal scores keep the retriever's order.
Each metric is a pure function of the ranks (and, for page hits and token budgets, of the chunks);
`retrieval_scores` names them. Adding a metric is one function here and one line in `retrieval_scores`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

from assistant.chunks import Chunk
from assistant.numbers import find_numbers, same_number

from .matching import page_matches, source_matches
from .questions import Evidence

Ranks = Sequence[Sequence[int]]

BUDGETS = (500, 1000, 2000)  # token budgets of `recall@Ntok`

_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """Word and punctuation tokens: `"Net sales were $81,797."` has 8 (Net sales were $ 81 , 797 .).

    Model-independent, so runs with different chunkings or embedders compare fairly on one budget, and
    close to the subword counts of English prose (common words are one subword, punctuation one each).
    """
    return len(_TOKEN.findall(text))


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
    _require_evidence(n_evidence)
    return len(matched_within(ranks, k)) / n_evidence


def ndcg_at_k(ranks: Ranks, n_evidence: int, k: int) -> float:
    """Normalised DCG of the first `k` chunks with binary gains, in [0, 1].

    The chunk at rank r gains 1 when it matches an evidence item that no higher-ranked chunk matched
    (a duplicate of an already found passage gains nothing); DCG = sum of gain / log2(r + 1). The ideal
    DCG puts min(n_evidence, k) gains at ranks 1, 2, …. One chunk matching two items gains 1, not 2.
    """
    _require_evidence(n_evidence)
    credited: set[int] = set()
    dcg = 0.0
    for r, matched in enumerate(ranks[:k], start=1):
        if not credited.issuperset(matched):
            dcg += 1.0 / math.log2(r + 1)
        credited.update(matched)
    ideal = sum(1.0 / math.log2(r + 1) for r in range(1, min(n_evidence, k) + 1))
    return dcg / ideal


def first_match_rank(ranks: Ranks) -> int | None:
    """1-based rank of the first chunk matching any evidence item; None when no chunk does."""
    return next((r for r, matched in enumerate(ranks, start=1) if matched), None)


def reciprocal_rank(ranks: Ranks) -> float:
    """1 / rank of the first matching chunk over the whole retrieved list; 0.0 when none matches."""
    rank = first_match_rank(ranks)
    return 1.0 / rank if rank else 0.0


def has_paged_evidence(evidence: Sequence[Evidence]) -> bool:
    """True when at least one evidence item names a page: only then does `page_hit@k` apply."""
    return any(item.page is not None for item in evidence)


def on_evidence_page(evidence: Sequence[Evidence], chunk: Chunk) -> bool:
    """True when `chunk` has the source of a paged evidence item and its page range covers that page.

    Text and section are ignored: the chunk is from the right page even when it holds another passage.
    """
    return any(
        item.page is not None and source_matches(item, chunk) and page_matches(item, chunk) for item in evidence
    )


def page_hit_at_k(evidence: Sequence[Evidence], chunks: Sequence[Chunk], k: int) -> float:
    """1.0 when any of the first `k` chunks is on an evidence item's page (`on_evidence_page`), else 0.0."""
    if not has_paged_evidence(evidence):
        raise ValueError("page_hit needs at least one evidence item with a page")
    return 1.0 if any(on_evidence_page(evidence, chunk) for chunk in chunks[:k]) else 0.0


def chunks_within_budget(token_counts: Iterable[int], budget: int) -> int:
    """How many chunks, taken in rank order, fit in `budget` tokens together.

    The walk stops at the first chunk that would take the running total past the budget: no partial
    credit, and no skipping ahead to a smaller chunk.
    """
    used = n = 0
    for tokens in token_counts:
        used += tokens
        if used > budget:
            break
        n += 1
    return n


def recall_at_budget(ranks: Ranks, n_evidence: int, token_counts: Sequence[int], budget: int) -> float:
    """`recall@Ntok`: share of the evidence items matched by the chunks that fit in `budget` tokens."""
    return recall_at_k(ranks, n_evidence, chunks_within_budget(token_counts, budget))


def retrieval_scores(
    ranks: Ranks, evidence: Sequence[Evidence], chunks: Sequence[Chunk], ks: Iterable[int],
    budgets: Iterable[int] = BUDGETS,
) -> dict[str, float]:
    """Flat metric names to values, in this order: `hit@k`, `recall@k`, `ndcg@k`, `page_hit@k` (only when
    an evidence item has a page), `recall@Ntok` for every budget N, then `mrr`. Each group runs over the
    sorted distinct ks (budgets). `ranks` must be `matching.match_ranks(evidence, chunks)`.
    """
    _require_evidence(len(evidence))
    if len(ranks) != len(chunks):
        raise ValueError(f"{len(ranks)} match ranks for {len(chunks)} chunks: ranks must come from these chunks")
    ks, budgets = sorted(set(ks)), sorted(set(budgets))
    if any(n < 1 for n in (*ks, *budgets)):
        raise ValueError("every k and every token budget must be a positive integer")
    n = len(evidence)
    scores: dict[str, float] = {}
    scores.update({f"hit@{k}": hit_at_k(ranks, k) for k in ks})
    scores.update({f"recall@{k}": recall_at_k(ranks, n, k) for k in ks})
    scores.update({f"ndcg@{k}": ndcg_at_k(ranks, n, k) for k in ks})
    if has_paged_evidence(evidence):
        scores.update({f"page_hit@{k}": page_hit_at_k(evidence, chunks, k) for k in ks})
    token_counts = [count_tokens(chunk.text) for chunk in chunks]
    scores.update({f"recall@{b}tok": recall_at_budget(ranks, n, token_counts, b) for b in budgets})
    scores["mrr"] = reciprocal_rank(ranks)
    return scores


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _require_evidence(n_evidence: int) -> None:
    if n_evidence <= 0:
        raise ValueError("retrieval metrics need at least one evidence item")


MIN_FIGURE_DIGITS = 3  # a reference figure must have this many digits to count ("81,797", "3.25%", not "2")


def figure_hits(reference_answer: str | None, texts: Sequence[str], eligible: Sequence[bool],
                ks: Iterable[int]) -> dict[str, float]:
    """`figure_hit@k`: 1.0 when one of the first k chunks that hold the evidence (`eligible`) states a figure
    of the reference answer (assistant/numbers.py agreement, figures of at least `MIN_FIGURE_DIGITS` digits).

    For document-level evidence (sec-10q) this says whether the chunk with the table row or sentence that
    carries the answer was retrieved, not just the right filing. Empty when the reference has no figure.
    """
    wanted = [n for n in find_numbers(reference_answer or "")
              if sum(ch.isdigit() for ch in n.text) >= MIN_FIGURE_DIGITS]
    if not wanted:
        return {}
    first: int | None = None
    for rank, (text, ok) in enumerate(zip(texts, eligible, strict=True), 1):
        if ok and any(same_number(ref, got) for got in find_numbers(text) for ref in wanted):
            first = rank
            break
    return {f"figure_hit@{k}": float(first is not None and first <= k) for k in sorted(set(ks))}
