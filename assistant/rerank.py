"""Reranking: a cross-encoder reads the question and each candidate passage together and reorders them.

No cross-encoder reranker ships on PyPI, so ours is trained from the MiniLM backbone we already ship
(`python -m eval train-reranker`, see eval/rerank_train.py) and saved under `DATA_DIR/models/`. Retrieval
works without it: `RerankSettings.model` pointing at a missing folder logs once and leaves the fused order.

The passage the cross-encoder reads is `passage_text(chunk)` (title | heading | section, then the text),
the same context the embedder sees, so a rule number or a filing's company and period count.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .chunks import ScoredChunk, passage_text
from .errors import ComponentUnavailable

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


def rerank(reranker: Reranker, question: str, hits: Sequence[ScoredChunk], depth: int) -> Reranked:
    """Reorder the first `depth` hits by the reranker's score; the rest keep their order behind them.

    Reranked hits carry the cross-encoder's score (a logit), not the fusion score.
    """
    started = time.perf_counter()
    head, tail = list(hits[:depth]), list(hits[depth:])
    if len(head) < 2:
        return Reranked(list(hits), 0.0)
    scores = reranker.scores(question, [passage_text(h.chunk) for h in head])
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


class CrossEncoderReranker:
    """A sentence-transformers `CrossEncoder` with one relevance logit, on CPU."""

    def __init__(
        self, path: Path, *, max_length: int | None = None, batch_size: int = 32, threads: int | None = None,
        name: str | None = None, int8: bool = False,
    ) -> None:
        if not (path / "config.json").exists():
            raise ComponentUnavailable(
                f"no reranker model at {path}; build it with `make reranker` (python -m eval train-reranker) "
                "or set RERANK_ENABLED=false"
            )
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


def read_manifest(path: Path) -> dict[str, Any]:
    """The training manifest next to the weights: `finrag-reranker.json` (make reranker) or `manifest.json`
    (a learned version, assistant/learned.py)."""
    for name in (MANIFEST, "manifest.json"):
        file = path / name
        if file.exists():
            data = json.loads(file.read_text())
            return data if isinstance(data, dict) else {}
    return {}
