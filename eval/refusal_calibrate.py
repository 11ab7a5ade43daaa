"""Calibrate the refusal checks: how often each would refuse answerable and unanswerable questions.

    python -m eval calibrate-refusal ANSWERABLE.jsonl UNANSWERABLE.jsonl --collection adgm [--sample 300] [--rerank]

No LLM is run. For every question the product's retrieval runs once and three signals are read:
- `evidence`: the best dense cosine of the question to any chunk (the RETRIEVAL_MIN_SCORE gate);
- `missing`: the names the question depends on that no retrieved chunk mentions (`assistant.coverage`);
- `rerank` (with --rerank): the trained cross-encoder's best score over the first RERANK_CANDIDATES hits.
Prints, as Markdown, the share of each set refused at a grid of thresholds: pick the threshold that refuses
most unanswerable questions while refusing at most ~5 % of answerable ones. Answerable questions are taken
from the `train` split only (eval/rerank_train.py `split_of`), so held-out runs stay untouched.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from assistant.coverage import missing_terms
from assistant.settings import Settings

from .questions import Question, load_questions, sample_in_order
from .rerank_train import split_of

EVIDENCE_GRID = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
RERANK_GRID = (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("answerable", type=Path, help="questions the collection answers (JSONL); train split used")
    parser.add_argument("unanswerable", type=Path, nargs="+", help="questions it cannot answer (JSONL)")
    parser.add_argument("--collection", help="collection to search (default: COLLECTION)")
    parser.add_argument("--sample", type=int, default=300, help="seeded sample of answerable questions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rerank", action="store_true", help="also score with the trained cross-encoder")
    parser.add_argument("--out", type=Path, help="write per-question signals here (JSONL)")


def signals(components: Any, questions: Sequence[Question], collection: str, rerank: bool) -> list[dict[str, Any]]:
    retriever = components.retriever_for(components.settings.retrieval.mode, rerank=False, memory=False)
    top_k = components.settings.retrieval.top_k
    facets = components.facets(collection)
    out = []
    for q in tqdm(questions, desc="questions", unit="q"):
        found = retriever.search(q.question, collection, top_k)
        row: dict[str, Any] = {"id": q.id, "answerable": q.answerable, "evidence": round(found.evidence, 4),
                               "missing": missing_terms(q.question, found.hits, facets)}
        if rerank and found.hits:
            depth = components.settings.rerank.candidates
            scores = components.reranker.scores(q.question, [h.chunk.text for h in found.hits[:depth]])
            row["rerank"] = round(max(scores), 4)
        out.append(row)
    return out


def table(rows: Sequence[dict[str, Any]]) -> str:
    sets = {"answerable": [r for r in rows if r["answerable"]],
            "unanswerable": [r for r in rows if not r["answerable"]]}

    def share(group: list[dict[str, Any]], refused: Any) -> str:
        return f"{sum(1 for r in group if refused(r)) / len(group):.3f}" if group else "–"

    lines = [f"answerable n={len(sets['answerable'])}, unanswerable n={len(sets['unanswerable'])}", "",
             "| check | refuses answerable | refuses unanswerable |", "|---|--:|--:|"]
    checks: list[tuple[str, Any]] = [("coverage (a named term missing)", lambda r: bool(r["missing"]))]
    checks += [(f"evidence < {t}", lambda r, t=t: r["evidence"] < t) for t in EVIDENCE_GRID]
    checks += [(f"coverage or evidence < {t}", lambda r, t=t: bool(r["missing"]) or r["evidence"] < t)
               for t in EVIDENCE_GRID]
    if any("rerank" in r for r in rows):
        checks += [(f"rerank < {t}", lambda r, t=t: r.get("rerank", -99) < t) for t in RERANK_GRID]
    for name, refused in checks:
        lines.append(f"| {name} | {share(sets['answerable'], refused)} | {share(sets['unanswerable'], refused)} |")
    return "\n".join(lines)


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    from assistant.components import Components

    collection = args.collection or settings.collection
    answerable = [q for q in load_questions(args.answerable) if q.answerable and split_of(q) == "train"]
    answerable = sample_in_order(answerable, args.sample, args.seed)
    unanswerable = [q for path in args.unanswerable for q in load_questions(path) if not q.answerable]
    components = Components(settings)
    try:
        rows = signals(components, [*answerable, *unanswerable], collection, args.rerank)
    finally:
        components.close()
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(table(rows))
    return 0
