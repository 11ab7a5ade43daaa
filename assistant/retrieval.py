"""Retrieval: embed the question once, search the store, return scored chunks best first.

`hybrid` (default) fuses dense (MiniLM) and BM25 candidates by reciprocal rank in Qdrant's Query API;
`dense` uses the embedder alone; `bm25` the sparse BM25 vectors alone (a baseline, and for exact-term
lookups). All work unchanged on embedded Qdrant and a Qdrant server. With a reranker, the first
`rerank_depth` candidates of any mode are re-scored by the cross-encoder (assistant/rerank.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

from .chunks import ScoredChunk
from .embedding import Embedder, embed_one
from .memory import FeedbackMemory, MemoryEffect
from .query import Facets, Inference, combine, infer_filters
from .rerank import Reranker, ScoreCache, rerank
from .sparse import BM25Encoder
from .store import Filters, Fusion, VectorStore

log = logging.getLogger(__name__)

RetrievalMode = Literal["hybrid", "dense", "bm25"]
Route = tuple[Embedder, str, Fusion | None]  # what serves a collection: embedder, physical collection, fusion
RETRIEVAL_MODES: tuple[RetrievalMode, ...] = ("hybrid", "dense", "bm25")


@dataclass
class Retrieval:
    hits: list[ScoredChunk]
    evidence: float  # best dense cosine similarity: how close the closest chunk really is
    timings_ms: dict[str, float] = field(default_factory=dict)  # embed, search, rerank
    inferred_filters: dict[str, Any] | None = None  # what the question named (company, period …), applied
    memory: list[MemoryEffect] = field(default_factory=list)  # chunks past feedback raised, added or lowered


class QueryBatcher:
    """Questions asked at the same time are embedded together: one forward pass for a batch costs far less than
    one per question on a CPU. A worker thread takes whatever is waiting (up to `max_batch`) as soon as it is free,
    so a lone question waits for nothing and a busy server batches by itself."""

    def __init__(self, max_batch: int = 32) -> None:
        self.max_batch = max_batch
        self._pending: deque[tuple[Embedder, str, Future[list[float]]]] = deque()
        self._ready = threading.Condition()
        self._worker: threading.Thread | None = None
        self.batches = self.questions = 0

    def vector(self, embedder: Embedder, question: str) -> list[float]:
        done: Future[list[float]] = Future()
        with self._ready:
            self._pending.append((embedder, question, done))
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="query-batcher", daemon=True)
                self._worker.start()
            self._ready.notify()
        return done.result()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._pending:
                    self._ready.wait()
                batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            groups: dict[int, list[tuple[Embedder, str, Future[list[float]]]]] = {}
            for item in batch:
                groups.setdefault(id(item[0]), []).append(item)
            for items in groups.values():
                try:
                    vectors = items[0][0].embed_batch([question for _, question, _ in items])
                except Exception as exc:  # handed to the callers, who raise it
                    for _, _, done in items:
                        done.set_exception(exc)
                    continue
                for (_, _, done), vector in zip(items, vectors, strict=True):
                    done.set_result(vector)
            self.batches += 1
            self.questions += len(batch)


class QueryVectors:
    """Question embeddings remembered per (embedder, question): a repeated question skips the embedder, which is
    most of retrieval's time on a CPU. LRU, bounded, shared by a process's retrievers, safe across threads. With a
    `batcher`, questions missing from it are embedded together with others asked at the same time."""

    def __init__(self, size: int, batcher: QueryBatcher | None = None) -> None:
        self.size = size
        self.batcher = batcher
        self._vectors: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def vector(self, embedder: Embedder, question: str) -> list[float]:
        key = (embedder.name, " ".join(question.split()))
        with self._lock:
            found = self._vectors.get(key)
            if found is not None:
                self._vectors.move_to_end(key)
                self.hits += 1
                return found
            self.misses += 1
        vector = self.batcher.vector(embedder, question) if self.batcher else embed_one(embedder, question)
        if self.size:
            with self._lock:
                self._vectors[key] = vector
                while len(self._vectors) > self.size:
                    self._vectors.popitem(last=False)
        return vector


@dataclass
class Retriever:
    embedder: Embedder
    store: VectorStore
    sparse: BM25Encoder | None = None  # None: dense only
    candidates: int = 40
    bm25_only: bool = False  # sparse vectors alone, no dense ranking (needs `sparse`)
    reranker: Reranker | None = None
    rerank_depth: int = 20  # candidates the reranker re-scores
    fusion: Fusion | None = None  # hybrid: RRF constant and weights (None: plain RRF)
    inference: Inference | None = None  # infer filters from the question (None: never)
    facets: Callable[[str], Facets] | None = None  # what a collection holds, for `inference`
    memory: FeedbackMemory | None = None  # feedback on similar past questions moves chunks (None: off)
    # collection -> (embedder, physical collection, fusion or None) for collections re-embedded by a learned
    # embedder (its fusion weights were tuned with it)
    route: Callable[[str], Route] | None = None
    query_vectors: QueryVectors | None = None  # remembered question embeddings (None: embed every time)
    rerank_cache: ScoreCache | None = None  # remembered cross-encoder scores (None: score every time)

    def __post_init__(self) -> None:
        if self.bm25_only and self.sparse is None:
            raise ValueError("bm25-only retrieval needs a BM25 encoder")

    def embed(self, embedder: Embedder, question: str) -> list[float]:
        return self.query_vectors.vector(embedder, question) if self.query_vectors else embed_one(embedder, question)

    @property
    def mode(self) -> RetrievalMode:
        return "bm25" if self.bm25_only else "hybrid" if self.sparse is not None else "dense"

    def retrieve(
        self, question: str, collection: str, top_k: int, filters: Filters | None = None
    ) -> list[ScoredChunk]:
        return self.search(question, collection, top_k, filters).hits

    def search(self, question: str, collection: str, top_k: int, filters: Filters | None = None) -> Retrieval:
        started = time.perf_counter()
        inferred = None
        if self.inference is not None and self.facets is not None:
            facets = self.facets(collection)
            filters, inferred = combine(infer_filters(question, facets, self.inference), filters, facets)
        embedder, physical, fusion = self.route(collection) if self.route is not None else \
            (self.embedder, collection, None)
        vector = self.embed(embedder, question)
        embedded = time.perf_counter()
        depth = max(top_k, self.rerank_depth) if self.reranker is not None else top_k
        if self.sparse is None:
            hits = self.store.search(physical, vector, depth, filters)
            evidence = hits[0].score if hits else 0.0
        else:  # BM25 alone (no dense vector) or fused with the dense ranking
            hits = self.store.search(physical, None if self.bm25_only else vector, depth, filters,
                                     sparse=self.sparse.encode_query(question), candidates=self.candidates,
                                     fusion=fusion or self.fusion)
            nearest = self.store.search(physical, vector, 1, filters)
            evidence = nearest[0].score if nearest else 0.0
        searched = time.perf_counter()
        timings = {"embed": (embedded - started) * 1000, "search": (searched - embedded) * 1000}
        if self.reranker is not None:
            reranked = rerank(self.reranker, question, hits, self.rerank_depth, self.rerank_cache)
            hits, timings["rerank"] = reranked.hits, reranked.ms
        effects: list[MemoryEffect] = []
        if self.memory is not None:
            t = time.perf_counter()
            # lessons are keyed by the shipped embedder's view of questions, whatever embeds this collection
            key = vector if embedder is self.embedder else self.embed(self.embedder, question)
            hits, effects = self.memory.apply(
                key, collection, hits, lambda ids: self.store.get_chunks(physical, ids), filters
            )
            timings["memory"] = (time.perf_counter() - t) * 1000
        log.debug("retrieved %d chunks from %s in %.0f ms", len(hits), collection,
                  (time.perf_counter() - started) * 1000)
        return Retrieval(hits[:top_k], evidence, timings, inferred, effects)
