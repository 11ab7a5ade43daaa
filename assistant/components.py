"""The one place where backends are picked from settings. Everything else receives components.

Each component is built on first use, so a retrieval-only command never loads the LLM.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import sqlalchemy as sa

from .answering import Answerer
from .db import connect
from .edge_store import EdgeStore
from .embedding import Embedder, SentenceTransformerEmbedder
from .errors import ComponentUnavailable
from .llm import LLM, LlamaCppLLM, OllamaLLM
from .models import require_model
from .query import Facets, Inference, collection_facets
from .rerank import CrossEncoderReranker, Reranker
from .retrieval import RetrievalMode, Retriever
from .settings import Settings
from .sparse import BM25Encoder
from .store import Fusion, QdrantStore, VectorStore

log = logging.getLogger(__name__)


class Components:
    """Lazily built, shared components. Pass ready-made ones to override (tests, tools)."""

    def __init__(
        self,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        store: VectorStore | None = None,
        llm: LLM | None = None,
        engine: sa.Engine | None = None,
    ) -> None:
        self.settings = settings
        self._embedder = embedder
        self._store = store
        self._llm = llm
        self._engine = engine
        self._sparse: BM25Encoder | None = None
        self._reranker: Reranker | None = None
        self._reranker_built = False
        self._facets: dict[str, tuple[int, Facets]] = {}
        self._llms: dict[str, LLM] = {}  # per-request / per-collection generators, by spec
        self._lock = threading.RLock()

    def _once(self, attr: str, build: Any) -> Any:
        with self._lock:
            if getattr(self, attr) is None:
                setattr(self, attr, build())
            return getattr(self, attr)

    @property
    def embedder(self) -> Embedder:
        e = self.settings.embedding
        return self._once(
            "_embedder",
            lambda: SentenceTransformerEmbedder(e.model, batch_size=e.batch_size, threads=e.threads),
        )

    @property
    def store(self) -> VectorStore:
        def build() -> VectorStore:
            s = self.settings.store
            if s.url:
                return QdrantStore.server(s.url, s.api_key, s.timeout_s)
            self.settings.qdrant_path.mkdir(parents=True, exist_ok=True)
            if s.engine == "edge":
                return EdgeStore.open(self.settings.qdrant_path)
            return QdrantStore.embedded_at(str(self.settings.qdrant_path))

        return self._once("_store", build)

    @property
    def llm(self) -> LLM:
        def build() -> LLM:
            return self._build_llm(self.default_llm_spec)

        return self._once("_llm", build)

    def llm_for(self, model: str | None, collection: str | None = None) -> LLM:
        """The generator for a request: `model` if given, else the collection's (LLM_COLLECTION_MODELS), else
        the default. A model is a registry name or .gguf path (embedded), or `ollama:TAG` (the Ollama
        server at OLLAMA_HOST). Each is loaded once and shared."""
        spec = model or self.settings.llm.collection_models.get(collection or "", None)
        if not spec or spec == self.default_llm_spec:
            return self.llm
        with self._lock:
            cached = self._llms.get(spec)
            if cached is None:
                cached = self._build_llm(spec)
                self._llms[spec] = cached
            return cached

    @property
    def default_llm_spec(self) -> str:
        s = self.settings.llm
        return f"ollama:{self.settings.ollama.model}" if s.backend == "ollama" else s.model

    def _build_llm(self, spec: str) -> LLM:
        s = self.settings.llm
        if spec.startswith("ollama:"):
            return OllamaLLM(self.settings.ollama.host, spec.removeprefix("ollama:"), timeout_s=s.timeout_s)
        path = require_model(self.settings.models_dir, spec)
        return LlamaCppLLM(path, name=spec, threads=s.threads, context_tokens=s.context_tokens,
                           timeout_s=s.timeout_s)

    @property
    def llm_loaded(self) -> bool:
        return self._llm is not None

    @property
    def engine(self) -> sa.Engine:
        return self._once("_engine", lambda: connect(self.settings.db_url))

    @property
    def sparse(self) -> BM25Encoder:
        return self._once("_sparse", BM25Encoder)

    @property
    def retriever(self) -> Retriever:
        return self.retriever_for(self.settings.retrieval.mode)

    def retriever_for(self, mode: RetrievalMode, rerank: bool | None = None) -> Retriever:
        """A retriever of the given mode over the shared embedder and store (eval baselines use this).

        `rerank`: None follows RERANK_ENABLED (and reranks only when the model is built); True requires it.
        """
        sparse = self.sparse if mode in ("hybrid", "bm25") else None
        reranker = self.reranker if rerank or (rerank is None and self.settings.rerank.enabled) else None
        if rerank and reranker is None:
            raise ComponentUnavailable(
                f"no reranker model at {self.settings.reranker_path}; build it with `make reranker`"
            )
        r = self.settings.retrieval
        fusion = Fusion(k=r.rrf_k, dense_weight=r.dense_weight, sparse_weight=r.sparse_weight)
        return Retriever(self.embedder, self.store, sparse, r.candidates, mode == "bm25",
                         reranker=reranker, rerank_depth=self.settings.rerank.candidates, fusion=fusion,
                         inference=Inference() if r.infer_filters else None, facets=self.facets)

    def facets(self, collection: str) -> Facets:
        """What a collection holds per document (companies, periods …), cached until its size changes."""
        size = self.store.count(collection)
        with self._lock:
            cached = self._facets.get(collection)
            if cached is not None and cached[0] == size:
                return cached[1]
        facets = collection_facets(c for _, c in self.store.scroll_chunks(collection))
        with self._lock:
            self._facets[collection] = (size, facets)
        return facets

    @property
    def reranker(self) -> Reranker | None:
        """The trained cross-encoder, or None (logged once) when it has not been built."""
        def build() -> Reranker | None:
            r = self.settings.rerank
            path = self.settings.reranker_path
            if not (path / "config.json").exists():
                log.warning("no reranker at %s: retrieval keeps the fused order (build it: make reranker)", path)
                return None
            return CrossEncoderReranker(path, max_length=r.max_length, threads=r.threads)

        with self._lock:
            if not self._reranker_built:
                self._reranker = build()
                self._reranker_built = True
            return self._reranker

    @property
    def answerer(self) -> Answerer:
        return Answerer(
            retriever=self.retriever, llm_factory=lambda: self.llm, retrieval=self.settings.retrieval,
            llm_settings=self.settings.llm,
        )

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._engine is not None:
            self._engine.dispose()
