"""Reranking: a cross-encoder reads the question and each candidate passage together and reorders them.

No cross-encoder reranker ships on PyPI, so ours is trained from the MiniLM backbone we already ship
(`python -m eval train-reranker`, see eval/rerank_train.py) and saved under `DATA_DIR/models/`. Retrieval
works without it: `RerankSettings.model` pointing at a missing folder logs once and leaves the fused order.

The passage the cross-encoder reads is `passage_text(chunk)` (title | heading | section, then the text),
the same context the embedder sees, so a rule number or a filing's company and period count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .chunks import ScoredChunk, passage_text
from .errors import ComponentUnavailable
from .settings import RerankSettings

log = logging.getLogger(__name__)

MANIFEST = "finrag-reranker.json"  # written next to the weights by the training command


class Reranker(Protocol):
    name: str

    def scores(self, question: str, passages: Sequence[str]) -> list[float]:
        """Relevance of each passage to the question (higher is better; comparable within one call)."""
        ...


@dataclass
class Reranked:
    hits: list[ScoredChunk]
    ms: float


class ScoreCache:
    """Cross-encoder scores remembered per (reranker, question, passage): a repeated question, or one whose
    candidates overlap an earlier one's, skips the pairs already scored. LRU, bounded, safe across threads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._scores: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def scores(self, reranker: Reranker, question: str, passages: Sequence[str]) -> list[float]:
        q = " ".join(question.split())
        keys = [(reranker.name, q, hashlib.sha256(p.encode()).hexdigest()) for p in passages]
        with self._lock:
            known = [self._scores.get(k) for k in keys]
            for k, score in zip(keys, known, strict=True):
                if score is not None:
                    self._scores.move_to_end(k)
        missing = [i for i, score in enumerate(known) if score is None]
        fresh = reranker.scores(question, [passages[i] for i in missing]) if missing else []
        with self._lock:
            self.hits += len(passages) - len(missing)
            self.misses += len(missing)
            for i, score in zip(missing, fresh, strict=True):
                known[i] = score
                if self.size:
                    self._scores[keys[i]] = score
            while len(self._scores) > self.size:
                self._scores.popitem(last=False)
        return [float(score) for score in known if score is not None]


def rerank(reranker: Reranker, question: str, hits: Sequence[ScoredChunk], depth: int,
           cache: ScoreCache | None = None) -> Reranked:
    """Reorder the first `depth` hits by the reranker's score; the rest keep their order behind them.

    Reranked hits carry the cross-encoder's score (a logit), not the fusion score.
    """
    started = time.perf_counter()
    head, tail = list(hits[:depth]), list(hits[depth:])
    if len(head) < 2:
        return Reranked(list(hits), 0.0)
    passages = [passage_text(h.chunk) for h in head]
    scores = cache.scores(reranker, question, passages) if cache else reranker.scores(question, passages)
    blend = getattr(reranker, "blend", None)
    if blend is not None:  # a learned version: its logits blended with the fused order
        scores = blend_scores(scores, blend)
    order = sorted(range(len(head)), key=lambda i: -scores[i])
    ranked = [ScoredChunk(head[i].chunk, float(scores[i]), head[i].point_id) for i in order]
    return Reranked(ranked + tail, (time.perf_counter() - started) * 1000)


def _z(values: Sequence[float]) -> list[float]:
    mean = sum(values) / len(values)
    spread = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5 or 1.0
    return [(v - mean) / spread for v in values]


def blend_scores(logits: Sequence[float], weight: float, prior: Sequence[int | None] | None = None) -> list[float]:
    """Cross-encoder logits blended with the fused order: (1 - weight) z(1 / (2 + rank)) + weight z(logit).

    `prior`: each candidate's 1-based rank in the fused order (None: not retrieved, ranked last); default:
    the order given. Weight 0 keeps the fused order, 1 is the cross-encoder alone; learned versions choose
    it on their training cases (`python -m eval learn`)."""
    if not logits:
        return []
    ranks = [r if r is not None else len(logits) + 1 for r in prior] if prior is not None else \
        list(range(1, len(logits) + 1))
    fused = _z([1.0 / (2 + r) for r in ranks])
    learned = _z(list(logits))
    return [(1 - weight) * f + weight * x for f, x in zip(fused, learned, strict=True)]


def make_reranker(path: Path, settings: RerankSettings, onnx_cache: Path, *, name: str | None = None) -> Reranker:
    """The cross-encoder at `path`, run as RERANK_BACKEND says (ONNX exports cached under `onnx_cache`)."""
    s = settings
    if s.backend in ("onnx", "onnx-int8"):
        return OnnxCrossEncoder(path, cache_dir=onnx_cache, int8=s.backend == "onnx-int8", max_length=s.max_length,
                                threads=s.threads, name=name)
    return CrossEncoderReranker(path, max_length=s.max_length, threads=s.threads, name=name,
                                int8=s.backend == "torch-int8")


def _require_model(path: Path) -> None:
    if not (path / "config.json").exists():
        raise ComponentUnavailable(
            f"no reranker model at {path}; build it with `make reranker` (python -m eval train-reranker) "
            "or set RERANK_ENABLED=false"
        )


class CrossEncoderReranker:
    """A sentence-transformers `CrossEncoder` with one relevance logit, on CPU."""

    def __init__(
        self, path: Path, *, max_length: int | None = None, batch_size: int = 32, threads: int | None = None,
        name: str | None = None, int8: bool = False,
    ) -> None:
        _require_model(path)
        import torch
        from sentence_transformers import CrossEncoder

        if threads:
            torch.set_num_threads(threads)
        self.path = path
        self.manifest = read_manifest(path)
        trained = self.manifest.get("config", {}).get("max_length")
        self.max_length = max_length or (int(trained) if trained else 256)
        self.model = CrossEncoder(str(path), num_labels=1, max_length=self.max_length, device="cpu",
                                  local_files_only=True)
        self.model.eval()
        if int8:  # its Linear layers quantised per channel, as the torch-int8 embedder's
            from .embedding import quantize_linear_layers

            quantize_linear_layers(self.model[0])
        self.batch_size = batch_size
        self.name = (name or str(self.manifest.get("name") or path.name)) + ("+int8" if int8 else "")
        blend = self.manifest.get("blend")  # learned versions: weight against the fused order
        self.blend: float | None = float(blend) if blend is not None else None

    def scores(self, question: str, passages: Sequence[str]) -> list[float]:
        import torch

        pairs = [(question, p) for p in passages]
        with torch.inference_mode():
            logits = self.model.predict(pairs, batch_size=self.batch_size, activation_fn=torch.nn.Identity(),
                                        show_progress_bar=False, convert_to_numpy=True)
        return [float(x) for x in logits.reshape(-1)]


class OnnxCrossEncoder:
    """The same cross-encoder exported to ONNX (`embedding.onnx_model(classifier=True)`) and run by onnxruntime;
    `int8=True` runs its int8-weight export. Pairs are tokenized as sentence-transformers' CrossEncoder does
    (question, passage; longest-first truncation to `max_length`) and batched longest first."""

    def __init__(
        self, path: Path, *, cache_dir: Path, int8: bool = False, max_length: int | None = None,
        batch_size: int = 32, threads: int = 2, name: str | None = None,
    ) -> None:
        _require_model(path)
        import threading

        from .embedding import load_tokenizer, onnx_model, onnx_session

        self.path = path
        self.manifest = read_manifest(path)
        trained = self.manifest.get("config", {}).get("max_length")
        self.max_length = max_length or (int(trained) if trained else 256)
        self._tokenizer = load_tokenizer(path)
        self._tokenizing = threading.Lock()  # a fast tokenizer's truncation is state: concurrent calls fail
        self._session = onnx_session(onnx_model(path, cache_dir, int8=int8, classifier=True), threads)
        self._inputs = [i.name for i in self._session.get_inputs()]
        self.batch_size = batch_size
        self.name = (name or str(self.manifest.get("name") or path.name)) + ("+onnx-int8" if int8 else "")
        blend = self.manifest.get("blend")
        self.blend: float | None = float(blend) if blend is not None else None

    def scores(self, question: str, passages: Sequence[str]) -> list[float]:
        import numpy as np

        if not passages:
            return []
        with self._tokenizing:
            encoded = self._tokenizer([question] * len(passages), list(passages), truncation=True,
                                      max_length=self.max_length)
        ids, types = encoded["input_ids"], encoded["token_type_ids"]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = np.empty(len(ids), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            width = max(len(ids[i]) for i in batch)
            feed = {name: np.zeros((len(batch), width), dtype=np.int64) for name in ("input_ids", "attention_mask",
                                                                                    "token_type_ids")}
            for row, i in enumerate(batch):
                n = len(ids[i])
                feed["input_ids"][row, :n] = ids[i]
                feed["attention_mask"][row, :n] = 1
                feed["token_type_ids"][row, :n] = types[i]
            logits = self._session.run(["logits"], {k: feed[k] for k in self._inputs})[0]
            out[batch] = logits.reshape(len(batch), -1)[:, 0]
        return [float(x) for x in out]


def read_manifest(path: Path) -> dict[str, Any]:
    """The training manifest next to the weights: `finrag-reranker.json` (make reranker) or `manifest.json`
    (a learned version, assistant/learned.py)."""
    for name in (MANIFEST, "manifest.json"):
        file = path / name
        if file.exists():
            data = json.loads(file.read_text())
            return data if isinstance(data, dict) else {}
    return {}
