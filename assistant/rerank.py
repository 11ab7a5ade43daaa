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
    order = sorted(range(len(head)), key=lambda i: -scores[i])
    ranked = [ScoredChunk(head[i].chunk, float(scores[i]), head[i].point_id) for i in order]
    return Reranked(ranked + tail, (time.perf_counter() - started) * 1000)


class CrossEncoderReranker:
    """A sentence-transformers `CrossEncoder` with one relevance logit, on CPU."""

    def __init__(
        self, path: Path, *, max_length: int | None = None, batch_size: int = 32, threads: int | None = None
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
        self.batch_size = batch_size
        self.name = str(self.manifest.get("name") or path.name)

    def scores(self, question: str, passages: Sequence[str]) -> list[float]:
        import torch

        pairs = [(question, p) for p in passages]
        with torch.inference_mode():
            logits = self.model.predict(pairs, batch_size=self.batch_size, activation_fn=torch.nn.Identity(),
                                        show_progress_bar=False, convert_to_numpy=True)
        return [float(x) for x in logits.reshape(-1)]


def read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.exists():
        return {}
    data = json.loads(file.read_text())
    return data if isinstance(data, dict) else {}
