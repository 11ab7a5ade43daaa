"""Search latency of the embedded vector stores: qdrant-client local mode vs Qdrant Edge.

    python bench/store_bench.py                    # 10k points, 384-d, 50 queries per mode, both backends
    python bench/store_bench.py --points 2000 --backends edge

Points get random 384-d unit vectors (the embedder's size) and BM25 vectors of real text: windows of the ADGM
rulebooks in samples/adgm, encoded by the assistant's own `BM25Encoder`. Queries are short windows of the same
text with a random dense vector. Each mode runs `--queries` timed searches after `--warmup` untimed ones,
through the `VectorStore` methods the assistant calls; the Markdown table goes to stdout.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable
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
    p.add_argument("--points", type=int, default=10_000, help="points in the collection (default 10000)")
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
    return p.parse_args(argv)


def make_corpus(args: argparse.Namespace) -> tuple[list[Chunk], np.ndarray, list[SparseVector]]:
    rng = random.Random(args.seed)
    words = re.findall(r"\S+", " ".join(path.read_text(encoding="utf-8") for path in args.text))
    encoder = BM25Encoder()
    chunks, sparse = [], []
    for i in range(args.points):
        start = rng.randrange(max(1, len(words) - 200))
        text = " ".join(words[start : start + rng.randint(40, 200)])
        doc = i % 100
        chunks.append(Chunk(text=text, source=f"doc-{doc}.txt", doc_id=f"doc-{doc}", chunk_index=i // 100,
                            doc_type="regulation", file_hash="bench", extra={"family": f"F{doc % 7}"}))
        sparse.append(encoder.encode_document(text))
    dense = np.random.default_rng(args.seed).standard_normal((args.points, args.dim)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    return chunks, dense, sparse


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
    started = time.perf_counter()
    chunks, dense, sparse = make_corpus(args)
    queries = make_queries(args)
    print(f"corpus: {args.points} points, {args.dim}-d, BM25 of {len(args.text)} text files "
          f"({time.perf_counter() - started:.1f} s to encode)", file=sys.stderr)

    vectors = dense.tolist()
    limit, depth = args.limit, args.candidates
    modes: dict[str, Callable[[VectorStore], Callable[[list[float], SparseVector], object]]] = {
        "dense": lambda s: lambda v, q: s.search(COLLECTION, v, limit),
        "bm25": lambda s: lambda v, q: s.search(COLLECTION, None, limit, sparse=q),
        "hybrid": lambda s: lambda v, q: s.search(COLLECTION, v, limit, sparse=q, candidates=depth),
        "hybrid + filter": lambda s: lambda v, q: s.search(COLLECTION, v, limit, {"family": ["F1", "F2"]}, q, depth),
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        root = args.workdir or Path(tmp)
        for backend in args.backends:
            store = open_store(backend, root)
            try:
                t0 = time.perf_counter()
                store.ensure_collection(COLLECTION, args.dim)
                store.upsert(COLLECTION, chunks, vectors, sparse)
                upsert_s = time.perf_counter() - t0
                print(f"{backend}: upserted {store.count(COLLECTION)} points in {upsert_s:.1f} s", file=sys.stderr)
                for mode, make in modes.items():
                    times = timed(make(store), queries, args.warmup)
                    rows.append((backend, mode, float(np.percentile(times, 50)), float(np.percentile(times, 95))))
                    print(f"{backend} {mode}: p50 {rows[-1][2]:.2f} ms", file=sys.stderr)
            finally:
                store.close()
            t0 = time.perf_counter()
            again = open_store(backend, root)
            count = again.count(COLLECTION)  # Edge loads a shard on first use
            again.close()
            print(f"{backend}: reopened, {count} points, in {time.perf_counter() - t0:.2f} s", file=sys.stderr)

    print(f"{args.points} points, {args.dim}-d, limit {limit}, hybrid candidates {depth}, {args.queries} queries "
          f"per mode; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n")
    print("| backend | mode | p50 ms | p95 ms |")
    print("|---|---|---:|---:|")
    names = {"client": "qdrant-client local", "edge": "Qdrant Edge"}
    for backend, mode, p50, p95 in rows:
        print(f"| {names[backend]} | {mode} | {p50:.2f} | {p95:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
