"""Retrieval: embed the question once, search the store, return scored chunks best first.

`hybrid` (default) fuses dense (MiniLM) and BM25 candidates by reciprocal rank in Qdrant's Query API;
`dense` uses the embedder alone; `bm25` the sparse BM25 vectors alone (a baseline, and for exact-term
lookups). All work unchanged on embedded Qdrant and a Qdrant server.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

from .chunks import ScoredChunk
from .embedding import Embedder, embed_one
from .sparse import BM25Encoder
from .store import Filters, VectorStore

log = logging.getLogger(__name__)

RetrievalMode = Literal["hybrid", "dense", "bm25"]
RETRIEVAL_MODES: tuple[RetrievalMode, ...] = ("hybrid", "dense", "bm25")


@dataclass
class Retrieval:
    hits: list[ScoredChunk]
    evidence: float  # best dense cosine similarity: how close the closest chunk really is


@dataclass
class Retriever:
    embedder: Embedder
    store: VectorStore
    sparse: BM25Encoder | None = None  # None: dense only
    candidates: int = 40
    bm25_only: bool = False  # sparse vectors alone, no dense ranking (needs `sparse`)

    def __post_init__(self) -> None:
        if self.bm25_only and self.sparse is None:
            raise ValueError("bm25-only retrieval needs a BM25 encoder")

    @property
    def mode(self) -> RetrievalMode:
        return "bm25" if self.bm25_only else "hybrid" if self.sparse is not None else "dense"

    def retrieve(
        self, question: str, collection: str, top_k: int, filters: Filters | None = None
    ) -> list[ScoredChunk]:
        return self.search(question, collection, top_k, filters).hits

    def search(self, question: str, collection: str, top_k: int, filters: Filters | None = None) -> Retrieval:
        started = time.perf_counter()
        vector = embed_one(self.embedder, question)
        if self.sparse is None:
            hits = self.store.search(collection, vector, top_k, filters)
            evidence = hits[0].score if hits else 0.0
        else:  # BM25 alone (no dense vector) or fused with the dense ranking
            hits = self.store.search(collection, None if self.bm25_only else vector, top_k, filters,
                                     sparse=self.sparse.encode_query(question), candidates=self.candidates)
            nearest = self.store.search(collection, vector, 1, filters)
            evidence = nearest[0].score if nearest else 0.0
        log.debug("retrieved %d chunks from %s in %.0f ms", len(hits), collection,
                  (time.perf_counter() - started) * 1000)
        return Retrieval(hits, evidence)
