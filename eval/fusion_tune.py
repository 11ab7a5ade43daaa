"""Tune hybrid fusion (RRF constant k, dense and BM25 weights) on the reranker's training split.

    python -m eval tune-fusion ../shared/corpora/adgm/obliqa_dev.jsonl --collection adgm [--sample 500]

Each question's dense and BM25 rankings (`--candidates` each) are fetched once; every grid point is then
fused offline with Qdrant's weighted RRF formula (score = Σ 1 / (rank / weight + k - 1), rank 1-based,
`assistant.store.Fusion`), so the grid costs no further searches. Only `train`-split questions are used:
the chosen setting is then reported on the held-out split by `eval run --split test`. Prints a Markdown
table, best by MRR first; set RETRIEVAL_RRF_K / RETRIEVAL_DENSE_WEIGHT / RETRIEVAL_SPARSE_WEIGHT from it.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from assistant.chunks import ScoredChunk
from assistant.embedding import embed_one
from assistant.settings import Settings

from .matching import match_ranks
from .metrics import mean, retrieval_scores
from .questions import Question, load_questions, sample_in_order
from .rerank_train import split_of
from .runner import BUDGET_DEPTH

KS = (2, 10, 60)
WEIGHTS = ((1.0, 1.0), (0.5, 1.0), (0.3, 1.0), (1.0, 0.5), (0.7, 1.0))
REPORTED = ("mrr", "hit@1", "recall@10", "recall@1000tok")


def fuse(dense: Sequence[ScoredChunk], sparse: Sequence[ScoredChunk], k: int, w_dense: float,
         w_sparse: float) -> list[ScoredChunk]:
    """Weighted RRF exactly as Qdrant computes it (ties keep first-seen order)."""
    scores: dict[str, float] = {}
    first: dict[str, ScoredChunk] = {}
    for ranking, weight in ((dense, w_dense), (sparse, w_sparse)):
        for pos, hit in enumerate(ranking):
            key = hit.point_id
            first.setdefault(key, hit)
            scores[key] = scores.get(key, 0.0) + (1 / ((pos + 1.0) / weight + k - 1.0) if weight > 0 else 0.0)
    order = sorted(scores, key=lambda key: -scores[key])
    return [ScoredChunk(first[key].chunk, scores[key], key) for key in order]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("questions", type=Path, help="question file (JSONL); its train split is used")
    parser.add_argument("--collection", help="collection to search (default: COLLECTION)")
    parser.add_argument("--sample", type=int, default=500, help="seeded sample of training questions (default 500)")
    parser.add_argument("--candidates", type=int, help="candidates per retriever (default: RETRIEVAL_CANDIDATES)")
    parser.add_argument("--seed", type=int, default=0)


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    from assistant.components import Components

    collection = args.collection or settings.collection
    depth = args.candidates or settings.retrieval.candidates
    questions: list[Question] = [q for q in load_questions(args.questions) if split_of(q) == "train" and q.evidence]
    questions = sample_in_order(questions, args.sample, args.seed)
    components = Components(settings)
    rankings = []
    try:
        store, sparse = components.store, components.sparse
        for q in tqdm(questions, desc="rankings", unit="q"):
            vector = embed_one(components.embedder, q.question)
            dense = store.search(collection, vector, depth)
            bm25 = store.search(collection, None, depth, sparse=sparse.encode_query(q.question))
            rankings.append((q, dense, bm25))
    finally:
        components.close()
    rows = []
    for k, (w_dense, w_sparse) in itertools.product(KS, WEIGHTS):
        per_question = []
        for q, dense, bm25 in rankings:
            fused = fuse(dense, bm25, k, w_dense, w_sparse)[:BUDGET_DEPTH]  # as deep as `eval run` looks
            chunks = [h.chunk for h in fused]
            per_question.append(retrieval_scores(match_ranks(q.evidence, chunks), q.evidence, chunks, (1, 10)))
        rows.append((k, w_dense, w_sparse, {m: mean([s[m] for s in per_question]) or 0.0 for m in REPORTED}))
    rows.sort(key=lambda r: -r[3]["mrr"])
    print(f"{len(rankings)} training questions of {args.questions}, collection {collection}, {depth} candidates each\n")
    print("| k | dense weight | BM25 weight | " + " | ".join(REPORTED) + " |")
    print("|--:|--:|--:|" + "--:|" * len(REPORTED))
    for k, w_dense, w_sparse, scores in rows:
        print(f"| {k} | {w_dense} | {w_sparse} | " + " | ".join(f"{scores[m]:.3f}" for m in REPORTED) + " |")
    return 0
