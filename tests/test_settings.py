"""Settings: one typed tree, documented in .env.example, with readable errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from assistant.settings import _SECTIONS, Settings

REPO = Path(__file__).resolve().parents[1]
NESTED = {"store", "embedding", "llm", "ollama", "retrieval", "chunking", "rerank", "conversation", "grounding",
          "memory", "learn", "upload", "ingest", "auth"}


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


def test_distributed_mode_settings_reach_the_store_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QDRANT_URL", "http://qdrant-0:6333")
    monkeypatch.setenv("QDRANT_SHARDS", "6")
    monkeypatch.setenv("QDRANT_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("QDRANT_WRITE_CONSISTENCY", "2")
    monkeypatch.setenv("QDRANT_WRITE_ORDERING", "strong")
    s = Settings.load().store
    assert (s.shards, s.replication_factor, s.write_consistency, s.write_ordering) == (6, 3, 2, "strong")


def test_distributed_mode_defaults_leave_the_layout_to_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("QDRANT_URL", "QDRANT_SHARDS", "QDRANT_REPLICATION_FACTOR", "QDRANT_WRITE_CONSISTENCY",
                "QDRANT_WRITE_ORDERING"):
        monkeypatch.delenv(var, raising=False)
    s = Settings(_env_file=None).store  # type: ignore[call-arg]
    assert (s.shards, s.replication_factor, s.write_consistency, s.write_ordering) == (None, None, None, "medium")


@pytest.mark.parametrize(("env", "message"), [
    ({"QDRANT_SHARDS": "0"}, r"QDRANT_SHARDS: Input should be greater than or equal to 1"),
    ({"QDRANT_REPLICATION_FACTOR": "0"}, r"QDRANT_REPLICATION_FACTOR: Input should be greater than or equal to 1"),
    ({"QDRANT_WRITE_CONSISTENCY": "0"}, r"QDRANT_WRITE_CONSISTENCY: Input should be greater than or equal to 1"),
    ({"QDRANT_REPLICATION_FACTOR": "2", "QDRANT_WRITE_CONSISTENCY": "3"},
     r"QDRANT_WRITE_CONSISTENCY=3 needs at least as many replicas: set QDRANT_REPLICATION_FACTOR to 3 or more "
     r"\(now 2\)"),
    ({"QDRANT_WRITE_CONSISTENCY": "2"}, r"set QDRANT_REPLICATION_FACTOR to 2 or more \(now unset, i.e. 1\)"),
    ({"QDRANT_WRITE_ORDERING": "fast"}, r"QDRANT_WRITE_ORDERING: Input should be 'weak', 'medium' or 'strong'"),
    ({"QDRANT_TIMEOUT_S": "0"}, r"QDRANT_TIMEOUT_S: Input should be greater than 0"),
])
def test_distributed_mode_settings_are_checked(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                               message: str) -> None:
    monkeypatch.setenv("QDRANT_URL", "http://qdrant-0:6333")
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(SystemExit, match=message):
        Settings.load()


def test_distributed_mode_settings_need_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.setenv("QDRANT_SHARDS", "2")
    monkeypatch.setenv("QDRANT_REPLICATION_FACTOR", "2")
    with pytest.raises(SystemExit, match=r"QDRANT_SHARDS, QDRANT_REPLICATION_FACTOR: only a Qdrant server lays out "
                                         r"collections .* set QDRANT_URL, or unset them"):
        Settings.load()
    monkeypatch.delenv("QDRANT_SHARDS")
    monkeypatch.delenv("QDRANT_REPLICATION_FACTOR")
    monkeypatch.setenv("QDRANT_WRITE_ORDERING", "strong")  # no layout: harmless without a server
    assert Settings.load().store.write_ordering == "strong"
