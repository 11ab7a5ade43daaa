"""Retrieval: embed the question once, search the store, return scored chunks best first."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from .chunks import ScoredChunk
from .embedding import Embedder, embed_one
from .store import Filters, VectorStore

log = logging.getLogger(__name__)


@dataclass
class Retriever:
    embedder: Embedder
    store: VectorStore

    def retrieve(
        self, question: str, collection: str, top_k: int, filters: Filters | None = None
    ) -> list[ScoredChunk]:
        started = time.perf_counter()
        vector = embed_one(self.embedder, question)
        hits = self.store.search(collection, vector, top_k, filters)
        log.debug("retrieve %d chunks from %s in %.0f ms", len(hits), collection,
                  (time.perf_counter() - started) * 1000)
        return hits
