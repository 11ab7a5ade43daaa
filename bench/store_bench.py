"""Search latency of the embedded vector stores: qdrant-client local mode vs Qdrant Edge.

    python bench/store_bench.py                    # 10k points, 384-d, 50 queries per mode, both backends
    python bench/store_bench.py --points 10000 100000 1000000 --backends edge --queries 200 \
        --out bench/results/store-scale

Points get random 384-d unit vectors (the embedder's size) and BM25 vectors of real text: windows of the ADGM
rulebooks in samples/adgm, encoded by the assistant's own `BM25Encoder` (20,000 distinct windows, reused beyond).
Queries are short windows of the same text with a random dense vector. Each mode runs `--queries` timed searches
after `--warmup` untimed ones, through the `VectorStore` methods the assistant calls. The Markdown table goes to
stdout (and to OUT.md, the figures to OUT.json, with `--out`). Points are generated and upserted in batches of
10,000 (1M points fit in memory); Edge is then optimised (HNSW built for large segments).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from assistant.chunks import Chunk
from assistant.edge_store import EdgeStore
from assistant.sparse import BM25Encoder, SparseVector
from assistant.store import QdrantStore, VectorStore

REPO = Path(__file__).resolve().parents[1]
COLLECTION = "bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, nargs="+", default=[10_000], help="collection sizes (default 10000)")
    p.add_argument("--dim", type=int, default=384, help="dense vector size (default 384)")
    p.add_argument("--queries", type=int, default=50, help="timed searches per mode (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed searches per mode first (default 5)")
    p.add_argument("--limit", type=int, default=10, help="hits per search (default 10)")
    p.add_argument("--candidates", type=int, default=40, help="hybrid: candidates from each retriever (default 40)")
    p.add_argument("--backends", nargs="+", choices=["client", "edge"], default=["client", "edge"])
    p.add_argument("--text", type=Path, nargs="+", default=sorted((REPO / "samples" / "adgm").glob("*.txt")),
                   help="text files the sparse vectors come from (default samples/adgm/*.txt)")
    p.add_argument("--workdir", type=Path, default=None, help="where the indexes go (default: a temp dir)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write OUT.md and OUT.json too")
    return p.parse_args(argv)


BATCH = 10_000
TEXTS = 20_000  # distinct text windows (BM25 encoding is the slow part); larger collections reuse them


def corpus_batches(args: argparse.Namespace, points: int) -> Iterator[tuple[list[Chunk], list[list[float]],
                                                                           list[SparseVector]]]:
    """`points` synthetic chunks in batches: random unit vectors, BM25 vectors of windows of real text."""
    rng = random.Random(args.seed)
    nrng = np.random.default_rng(args.seed)
    words = re.findall(r"\S+", " ".join(path.read_text(encoding="utf-8") for path in args.text))
    encoder = BM25Encoder()
    texts: list[tuple[str, SparseVector]] = []
    for _ in range(min(points, TEXTS)):
        start = rng.randrange(max(1, len(words) - 200))
        text = " ".join(words[start : start + rng.randint(40, 200)])
        texts.append((text, encoder.encode_document(text)))
    for first in range(0, points, BATCH):
        chunks, sparse = [], []
        for i in range(first, min(points, first + BATCH)):
            text, vector = texts[i % len(texts)]
            doc = i % 100
            chunks.append(Chunk(text=text, source=f"doc-{doc}.txt", doc_id=f"doc-{doc}", chunk_index=i // 100,
                                doc_type="regulation", file_hash="bench", extra={"family": f"F{doc % 7}"}))
            sparse.append(vector)
        dense = nrng.standard_normal((len(chunks), args.dim)).astype(np.float32)
        dense /= np.linalg.norm(dense, axis=1, keepdims=True)
        yield chunks, dense.tolist(), sparse


def make_queries(args: argparse.Namespace) -> list[tuple[list[float], SparseVector]]:
    rng = random.Random(args.seed + 1)
    words = re.findall(r"\S+", " ".join(path.read_text(encoding="utf-8") for path in args.text))
    encoder = BM25Encoder()
    vectors = np.random.default_rng(args.seed + 1).standard_normal((args.warmup + args.queries, args.dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = []
    for vector in vectors:
        start = rng.randrange(len(words) - 12)
        queries.append((vector.tolist(), encoder.encode_query(" ".join(words[start : start + rng.randint(4, 12)]))))
    return queries


def open_store(backend: str, root: Path) -> VectorStore:
    if backend == "client":
        return QdrantStore.embedded_at(str(root / "qdrant"))
    return EdgeStore.open(root / "edge")


def timed(search: Callable[[list[float], SparseVector], object], queries: list[tuple[list[float], SparseVector]],
          warmup: int) -> list[float]:
    for vector, sparse in queries[:warmup]:
        search(vector, sparse)
    times = []
    for vector, sparse in queries[warmup:]:
        started = time.perf_counter()
        search(vector, sparse)
        times.append((time.perf_counter() - started) * 1000)
    return times


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    queries = make_queries(args)
    limit, depth = args.limit, args.candidates
    modes: dict[str, Callable[[VectorStore], Callable[[list[float], SparseVector], object]]] = {
        "dense": lambda s: lambda v, q: s.search(COLLECTION, v, limit),
        "bm25": lambda s: lambda v, q: s.search(COLLECTION, None, limit, sparse=q),
        "hybrid": lambda s: lambda v, q: s.search(COLLECTION, v, limit, sparse=q, candidates=depth),
        "hybrid + filter": lambda s: lambda v, q: s.search(COLLECTION, v, limit, {"family": ["F1", "F2"]}, q, depth),
    }
    rows: list[dict[str, object]] = []
    for points in args.points:
        for backend in args.backends:
            with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
                root = args.workdir or Path(tmp)
                store = open_store(backend, root)
                try:
                    t0 = time.perf_counter()
                    store.ensure_collection(COLLECTION, args.dim)
                    for chunks, vectors, sparse in corpus_batches(args, points):
                        store.upsert(COLLECTION, chunks, vectors, sparse)
                    load_s = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    if isinstance(store, EdgeStore):
                        store.optimize(COLLECTION)
                    optimize_s = time.perf_counter() - t0
                    print(f"{backend} {points}: {store.count(COLLECTION)} points loaded in {load_s:.1f} s "
                          f"(text encoding included), optimised in {optimize_s:.1f} s", file=sys.stderr)
                    for mode, make in modes.items():
                        times = timed(make(store), queries, args.warmup)
                        row = {"points": points, "backend": backend, "mode": mode,
                               **{f"p{q}_ms": round(float(np.percentile(times, q)), 2) for q in (50, 95, 99)},
                               "load_s": round(load_s, 1), "optimize_s": round(optimize_s, 1)}
                        rows.append(row)
                        print(row, file=sys.stderr)
                finally:
                    store.close()
    names = {"client": "qdrant-client local", "edge": "Qdrant Edge"}
    lines = [f"limit {limit}, hybrid candidates {depth}, {args.queries} timed queries per mode after {args.warmup} "
             f"untimed; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
             f"load {os.getloadavg()[0]:.1f} at the end", "",
             "| points | backend | mode | p50 ms | p95 ms | p99 ms | load s | optimise s |",
             "|--:|---|---|--:|--:|--:|--:|--:|"]
    lines += [f"| {r['points']:,} | {names[str(r['backend'])]} | {r['mode']} | {r['p50_ms']} | {r['p95_ms']} | "
              f"{r['p99_ms']} | {r['load_s']} | {r['optimize_s']} |" for r in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(f"`python bench/store_bench.py {' '.join(argv or sys.argv[1:])}`, "
                                               f"{time.strftime('%Y-%m-%d')}\n\n{table}")
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
