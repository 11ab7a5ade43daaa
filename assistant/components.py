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
from .embedding import Embedder, SentenceTransformerEmbedder, make_embedder
from .errors import BadRequest, ComponentUnavailable
from .learned import Registry, Served
from .llm import LLM, LlamaCppLLM, OllamaLLM
from .memory import FeedbackMemory
from .models import REGISTRY, require_model
from .query import Facets, Inference, collection_facets
from .records import AnswerLog
from .rerank import Reranker, ScoreCache, make_reranker
from .retrieval import QueryBatcher, QueryVectors, RetrievalMode, Retriever, Route
from .rewriting import Rewriter
from .settings import Settings
from .sparse import BM25Encoder
from .store import Distribution, Fusion, QdrantStore, VectorStore

log = logging.getLogger(__name__)


def learned_fusion(manifest: dict[str, Any], rrf_k: int) -> Fusion | None:
    """The fusion weights a learned embedder version was tuned with, if any."""
    f = manifest.get("fusion")
    if not isinstance(f, dict):
        return None
    return Fusion(k=int(f.get("k", rrf_k)), dense_weight=float(f["dense_weight"]),
                  sparse_weight=float(f["sparse_weight"]))


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
        self.rerank_cache = ScoreCache(settings.rerank.cache)
        self.query_vectors = QueryVectors(settings.retrieval.query_cache,
                                          QueryBatcher() if settings.retrieval.query_batching else None)
        self._llms: dict[str, LLM] = {}  # per-request / per-collection generators, by spec
        self._memory: FeedbackMemory | None = None
        self._served: Served | None = None
        self._learned_embedders: dict[str, Embedder] = {}
        self._fusions: dict[str, Fusion | None] = {}  # learned embedder version -> its tuned fusion
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
            lambda: make_embedder(e, self.settings.models_dir),
        )

    @property
    def store(self) -> VectorStore:
        def build() -> VectorStore:
            s = self.settings.store
            if s.url:
                layout = Distribution(s.shards, s.replication_factor, s.write_consistency, s.write_ordering)
                return QdrantStore.server(s.url, s.api_key, s.timeout_s, layout)
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
        s = self.settings
        return self._once("_engine", lambda: connect(s.db_url, connect_timeout_s=s.database_connect_timeout_s,
                                                     statement_timeout_s=s.database_statement_timeout_s))

    @property
    def sparse(self) -> BM25Encoder:
        return self._once("_sparse", BM25Encoder)

    @property
    def retriever(self) -> Retriever:
        return self.retriever_for(self.settings.retrieval.mode)

    def retriever_for(self, mode: RetrievalMode, rerank: bool | None = None, memory: bool | None = None) -> Retriever:
        """A retriever of the given mode over the shared embedder and store (eval baselines use this).

        `rerank`: None reranks with a promoted learned reranker, else follows RERANK_ENABLED (and reranks only
        when the model is built); True requires a reranker; False never reranks. `memory`: None follows
        MEMORY_ENABLED; False leaves feedback memory out (baselines); True requires it.
        """
        sparse = self.sparse if mode in ("hybrid", "bm25") else None
        reranker = self.reranker if (rerank if rerank is not None else self.reranks_by_default) else None
        if rerank and reranker is None:
            raise ComponentUnavailable(
                f"no reranker model at {self.settings.reranker_path}; build it with `make reranker`"
            )
        r = self.settings.retrieval
        fusion = Fusion(k=r.rrf_k, dense_weight=r.dense_weight, sparse_weight=r.sparse_weight)
        return Retriever(self.embedder, self.store, sparse, r.candidates, mode == "bm25",
                         reranker=reranker, rerank_depth=self.settings.rerank.candidates, fusion=fusion,
                         inference=Inference() if r.infer_filters else None, facets=self.facets,
                         memory=self.memory if memory is None or memory else None, route=self.route,
                         query_vectors=self.query_vectors, rerank_cache=self.rerank_cache)

    def embedder_for(self, collection: str) -> Embedder:
        """The embedder of a collection's vectors: a promoted learned embedder once the collection has been
        re-embedded by it, else the shipped one."""
        served = self.served
        if not served.embedder or collection not in (served.collections or {}):
            return self.embedder
        version = served.embedder
        with self._lock:
            cached = self._learned_embedders.get(version)
            if cached is None:
                e = self.settings.embedding
                cached = SentenceTransformerEmbedder(str(self.registry.path(version)), batch_size=e.batch_size,
                                                     threads=e.threads, name=version)
                self._learned_embedders[version] = cached
            return cached

    def route(self, collection: str) -> Route:
        """(embedder, physical collection, fusion) that serve a collection: a learned embedder's collections use
        the fusion weights tuned with it (None: RETRIEVAL_* weights)."""
        embedder = self.embedder_for(collection)
        if embedder is self.embedder or not self.served.embedder:
            return embedder, collection, None
        version = self.served.embedder
        with self._lock:
            if version not in self._fusions:
                self._fusions[version] = learned_fusion(self.registry.manifest(version), self.settings.retrieval.rrf_k)
            fusion = self._fusions[version]
        return embedder, self.served.physical(collection), fusion

    def facets(self, collection: str) -> Facets:
        """What a collection holds per document (companies, periods …), cached until its size changes."""
        collection = self.served.physical(collection)
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
    def registry(self) -> Registry:
        return Registry(self.settings.learned_dir)

    @property
    def served(self) -> Served:
        """The learned versions that serve (read once; `reload_models` reads again). Empty when
        LEARN_USE_PROMOTED is false."""
        with self._lock:
            if self._served is None:
                self._served = self.registry.served() if self.settings.learn.use_promoted else Served()
            return self._served

    def reload_models(self) -> Served:
        """Read the registry again and load what it promotes now (the reranker is rebuilt on next use)."""
        fresh = self.registry.served() if self.settings.learn.use_promoted else Served()
        with self._lock:
            if fresh != self._served:
                log.info("learned models: %s (was %s)", fresh, self._served)
                self._reranker, self._reranker_built = None, False
                self._facets.clear()
            self._served = fresh
        return fresh

    @property
    def memory(self) -> FeedbackMemory | None:
        """Feedback memory over the answer database (None when MEMORY_ENABLED is false)."""
        m = self.settings.memory
        if not m.enabled:
            return None
        return self._once("_memory", lambda: FeedbackMemory(
            self.engine, self.embedder, threshold=m.threshold, neighbours=m.neighbours, max_raised=m.max_raised,
        ))

    def versions_for(self, collection: str) -> dict[str, object]:
        """What serves a collection's answers: embedder, reranker (None: no reranking), physical index, memory."""
        served = self.served
        reranker = self.reranker if self.reranks_by_default else None
        return {
            "embedder": self.embedder_for(collection).name, "reranker": reranker.name if reranker is not None else None,
            "index": served.physical(collection), "memory": self.settings.memory.enabled,
        }

    @property
    def reranks_by_default(self) -> bool:
        """Whether serving reranks: a learned reranker is promoted, or RERANK_ENABLED."""
        return bool(self.served.reranker) or self.settings.rerank.enabled

    @property
    def reranker(self) -> Reranker | None:
        """The promoted learned reranker, else the trained cross-encoder of RERANK_MODEL, or None (logged once)
        when neither has been built."""
        def build() -> Reranker | None:
            r = self.settings.rerank
            if self.served.reranker:
                version = self.served.reranker
                return make_reranker(self.registry.path(version), r, self.settings.models_dir / "onnx", name=version)
            path = self.settings.reranker_path
            if not (path / "config.json").exists():
                log.warning("no reranker at %s: retrieval keeps the fused order (build it: make reranker)", path)
                return None
            return make_reranker(path, r, self.settings.models_dir / "onnx")

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
            llm_for=self.llm_for, history_turns=conv.history_turns, versions=self.versions_for,
        )

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._engine is not None:
            self._engine.dispose()
