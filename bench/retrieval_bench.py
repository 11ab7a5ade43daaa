"""Per-question latency of the product's retrieval: embed the question, hybrid search, rerank.

    QDRANT_PATH=data/eval/adgm/index python bench/retrieval_bench.py \\
        ../shared/corpora/adgm/obliqa_dev.jsonl --collection adgm --depths 0,10,20 --queries 200

Questions are a seeded sample of the held-out (`test`) split. For each rerank depth N (0 = no reranker) every
question is retrieved once untimed (warm-up of the first `--warmup`), then timed: stage times come from
`Retrieval.timings_ms` (embed, search, rerank) and the total from the wall clock around `Retriever.search`.
The question-vector and cross-encoder score caches are off, so that no timed search is a repeat.
Prints a Markdown table of p50/p95 per stage; commit it under bench/results/ with the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from assistant.components import Components
from assistant.settings import Settings
from eval.questions import load_questions, sample_in_order
from eval.rerank_train import split_of


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("questions", type=Path)
    p.add_argument("--collection", required=True)
    p.add_argument("--depths", default="0,10,20", help="rerank depths N to time, 0 = no reranker")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    settings = Settings.load()
    questions = [q for q in load_questions(args.questions) if split_of(q) == "test"]
    questions = sample_in_order(questions, args.queries, args.seed)
    components = Components(settings)
    base = components.retriever_for("hybrid", rerank=False)
    reranker = components.reranker
    rows = []
    try:
        for depth in (int(d) for d in args.depths.split(",")):
            if depth and reranker is None:
                print(f"(skipping N={depth}: no reranker at {settings.reranker_path})")
                continue
            # no remembered question vectors or cross-encoder scores: every timed search pays for them
            retriever = replace(base, reranker=reranker if depth else None, rerank_depth=depth or base.rerank_depth,
                                query_vectors=None, rerank_cache=None)
            for q in questions[: args.warmup]:
                retriever.search(q.question, args.collection, args.top_k)
            stages: dict[str, list[float]] = {"total": []}
            for q in questions:
                t = time.perf_counter()
                got = retriever.search(q.question, args.collection, args.top_k)
                stages["total"].append((time.perf_counter() - t) * 1000)
                for name, ms in got.timings_ms.items():
                    stages.setdefault(name, []).append(ms)
            rows.append((depth, stages))
    finally:
        components.close()
    engine = settings.store.engine if not settings.store.url else "server"
    print(f"{len(questions)} held-out questions of {args.questions.name}, collection {args.collection}, "
          f"engine {engine}, top_k {args.top_k}, reranker {reranker.name if reranker else '-'}, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch threads "
          f"{settings.rerank.threads}, embedder {components.embedder.name}, rerank backend "
          f"{settings.rerank.backend}\n")
    print("| rerank N | stage | p50 ms | p95 ms | p99 ms | mean ms |")
    print("|--:|---|--:|--:|--:|--:|")
    for depth, stages in rows:
        for name in ("embed", "search", "rerank", "total"):
            if name in stages:
                v = np.array(stages[name])
                p50, p95, p99 = np.percentile(v, 50), np.percentile(v, 95), np.percentile(v, 99)
                print(f"| {depth} | {name} | {p50:.1f} | {p95:.1f} | {p99:.1f} | {v.mean():.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
