"""The one place where backends are picked from settings. Everything else receives components.

Each component is built on first use, so a retrieval-only command never loads the LLM.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

import sqlalchemy as sa

from .answering import Answerer
from .chat import ChatService
from .conversations import Conversations
from .db import connect
from .edge_store import EdgeStore
from .embedding import Embedder, SentenceTransformerEmbedder
from .errors import BadRequest, ComponentUnavailable
from .llm import LLM, LlamaCppLLM, OllamaLLM
from .models import REGISTRY, require_model
from .query import Facets, Inference, collection_facets
from .records import AnswerLog
from .rerank import CrossEncoderReranker, Reranker
from .retrieval import RetrievalMode, Retriever
from .rewriting import Rewriter
from .settings import Settings
from .sparse import BM25Encoder
from .store import Fusion, QdrantStore, VectorStore

log = logging.getLogger(__name__)

_OLLAMA_TAG = re.compile(r"ollama:[A-Za-z0-9][\w.\-/]*(?::[\w.\-]+)?")


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
        if model is not None:
            self.check_model_name(model)
        spec = model or self.settings.llm.collection_models.get(collection or "", None)
        if not spec or spec == self.default_llm_spec:
            return self.llm
        with self._lock:
            cached = self._llms.get(spec)
            if cached is None:
                cached = self._build_llm(spec)
                self._llms[spec] = cached
            return cached

    def check_model_name(self, model: str) -> None:
        """A request may name a registered embedded model, an Ollama tag or a model the settings configure;
        never a file path of its own (that would let clients load arbitrary files)."""
        configured = {self.default_llm_spec, *self.settings.llm.collection_models.values()}
        if model in REGISTRY or model in configured or _OLLAMA_TAG.fullmatch(model):
            return
        raise BadRequest(f"unknown model {model!r}; use one of {sorted(REGISTRY)} or ollama:TAG")

    @property
    def default_llm_spec(self) -> str:
        s = self.settings.llm
        return f"ollama:{self.settings.ollama.model}" if s.backend == "ollama" else s.model

    def _build_llm(self, spec: str) -> LLM:
        s, o = self.settings.llm, self.settings.ollama
        if spec.startswith("ollama:"):
            return OllamaLLM(o.host, spec.removeprefix("ollama:"), timeout_s=s.timeout_s,
                             connect_timeout_s=o.connect_timeout_s, keep_alive=o.keep_alive,
                             context_tokens=o.context_tokens)
        path = require_model(self.settings.models_dir, spec)
        return LlamaCppLLM(path, name=spec, threads=s.threads, context_tokens=s.context_tokens,
                           timeout_s=s.timeout_s, queue_timeout_s=s.queue_timeout_s)

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
            llm_settings=self.settings.llm, grounding=self.settings.grounding,
        )

    def chat_service(self) -> ChatService:
        """The chat service over these components: answers recorded, conversations kept, follow-ups rewritten."""
        s = self.settings
        conv = s.conversation
        rewriter = Rewriter(conv.rewrite, llm_factory=lambda: self.llm_for(conv.rewrite_model),
                            facets=self.facets, max_tokens=conv.rewrite_max_tokens)
        return ChatService(
            self.answerer, AnswerLog(self.engine, self.embedder.name), default_collection=s.collection,
            max_question_chars=s.max_question_chars, conversations=Conversations(self.engine), rewriter=rewriter,
            llm_for=self.llm_for, history_turns=conv.history_turns,
        )

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._engine is not None:
            self._engine.dispose()
