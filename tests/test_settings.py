"""Settings: one typed tree, documented in .env.example, with readable errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from assistant.settings import _SECTIONS, Settings

REPO = Path(__file__).resolve().parents[1]
NESTED = {"store", "embedding", "llm", "ollama", "retrieval", "chunking", "rerank", "conversation", "grounding",
          "memory", "learn", "upload", "ingest"}


def all_variables() -> set[str]:
    names = set()
    for model in _SECTIONS:
        prefix = model.model_config.get("env_prefix", "")
        names |= {f"{prefix}{name}".upper() for name in model.model_fields if name not in NESTED}
    return names


def test_every_setting_is_documented_in_env_example() -> None:
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", (REPO / ".env.example").read_text(), re.M))
    assert all_variables() - documented == set(), "add the missing variables to .env.example"
    assert documented - all_variables() == set(), ".env.example names variables that do not exist"


def test_every_setting_has_a_description() -> None:
    for model in _SECTIONS:
        for name, field in model.model_fields.items():
            assert field.description or name in NESTED, f"{model.__name__}.{name} has no description"


def test_environment_reaches_nested_sections(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("LLM_BACKEND", "ollama")
    monkeypatch.setenv("RETRIEVAL_TOP_K", "7")
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    s = Settings.load()
    assert (s.store.url, s.llm.backend, s.retrieval.top_k, s.data_dir) == ("http://qdrant:6333", "ollama", 7, tmp_path)
    assert s.qdrant_path == tmp_path / "qdrant-edge"  # the default embedded engine's directory
    assert s.db_url.startswith("sqlite:///") and s.db_url.endswith("finrag.db")


def test_bad_variable_exits_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_THREADS", "many")
    with pytest.raises(SystemExit) as exc:
        Settings.load()
    assert "LLM_THREADS" in str(exc.value) and "integer" in str(exc.value)


def test_chunk_overlap_must_be_smaller_than_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHUNK_SIZE_TOKENS", "100")
    monkeypatch.setenv("CHUNK_OVERLAP_TOKENS", "100")
    with pytest.raises(SystemExit, match="smaller"):
        Settings.load()


def test_production_refuses_sqlite_beyond_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENV", "production")
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(SystemExit, match="DATABASE_URL"):
        Settings.load()
