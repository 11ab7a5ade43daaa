"""finrag against a Qdrant server (QDRANT_URL): qdrant-client's remote mode over real HTTP to `FakeQdrant`.

No Qdrant server can run here; `FakeQdrant` (tests/fake_qdrant.py) speaks Qdrant's REST API over a local-mode
engine and records what it receives, so these tests check what reaches the server: the distributed-mode layout
of new collections (QDRANT_SHARDS, QDRANT_REPLICATION_FACTOR, QDRANT_WRITE_CONSISTENCY), how writes are sent
(QDRANT_WRITE_ORDERING, always waited for), the API key, and the whole assistant — ingest CLI and API — with
QDRANT_URL set. The `VectorStore` contract itself runs against it in test_store_contract.py.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_settings
from fake_qdrant import FakeQdrant, distribution
from fastapi.testclient import TestClient
from qdrant_client.http.exceptions import UnexpectedResponse

from assistant.app import create_app
from assistant.chunks import FILTERABLE_FIELDS, Chunk
from assistant.components import Components
from assistant.embedding import SentenceTransformerEmbedder
from assistant.errors import ComponentUnavailable
from assistant.keys import ApiKeys
from assistant.settings import Settings, StoreSettings
from assistant.sparse import SparseVector
from assistant.store import QdrantStore
from ingest.cli import main as ingest_main

POLICY = """# Treasury policy of Northwind Ltd

## Cash reserves

Northwind keeps a minimum cash reserve of 42 million euros at all times, held at no fewer than three banks.

## Hedging

Foreign exchange exposure above 5 million euros is hedged with forwards of at most twelve months.
"""


@pytest.fixture
def qdrant() -> Iterator[FakeQdrant]:
    with FakeQdrant() as fake:
        yield fake


def server_components(data_dir: Path, url: str, **store: Any) -> Components:
    settings = make_settings(data_dir, store=StoreSettings(url=url, _env_file=None, **store))  # type: ignore[call-arg]
    return Components(settings)


def chunks(doc: str, n: int, file_hash: str = "v1") -> list[Chunk]:
    return [Chunk(text=f"{doc} {i}", source=f"{doc}.md", doc_id=doc, chunk_index=i, page_start=1, page_end=1,
                  section="s", title=doc, doc_type="document", file_hash=file_hash, content_hash=f"{doc}{i}")
            for i in range(n)]


def vectors(n: int) -> list[list[float]]:
    return [[math.cos(i / 10), math.sin(i / 10), 0.0, 0.0] for i in range(n)]


# --- distributed mode: what reaches the server ------------------------------------------------------------------


def test_distribution_settings_reach_create_collection_and_the_collection(qdrant: FakeQdrant, tmp_path: Path) -> None:
    components = server_components(tmp_path, qdrant.url, shards=3, replication_factor=2, write_consistency=2)
    store = components.store
    assert isinstance(store, QdrantStore) and not store.embedded
    store.ensure_collection("dist", 4)

    assert distribution(qdrant.created["dist"]) == {
        "shard_number": 3, "replication_factor": 2, "write_consistency_factor": 2, "on_disk_payload": True,
    }
    params = store.client.get_collection("dist").config.params  # as the server reports it back
    assert (params.shard_number, params.replication_factor, params.write_consistency_factor) == (3, 2, 2)
    assert set(store.client.get_collection("dist").payload_schema) == set(FILTERABLE_FIELDS)

    indexes = len(qdrant.calls("PUT", "/collections/dist/index"))
    store.ensure_collection("dist", 4)  # exists: neither created again nor re-indexed
    assert len(qdrant.calls("PUT", "/collections/dist")) == 1
    assert len(qdrant.calls("PUT", "/collections/dist/index")) == indexes == len(FILTERABLE_FIELDS)
    components.close()


def test_server_defaults_leave_the_layout_to_the_server(qdrant: FakeQdrant, tmp_path: Path) -> None:
    components = server_components(tmp_path, qdrant.url)
    components.store.ensure_collection("plain", 4)
    assert distribution(qdrant.created["plain"]) == {"on_disk_payload": True}
    components.close()


@pytest.mark.parametrize("ordering", ["medium", "strong"])
def test_point_writes_wait_and_are_ordered(qdrant: FakeQdrant, tmp_path: Path, ordering: str) -> None:
    components = server_components(tmp_path, qdrant.url, replication_factor=3, write_ordering=ordering)
    store = components.store
    store.ensure_collection("w", 4)
    store.upsert("w", chunks("a", 300), vectors(300), [SparseVector([1], [1.0])] * 300)  # two batches of ≤ 256
    store.upsert("w", chunks("a", 2, file_hash="v2"), vectors(2))
    store.delete_document("w", "a", keep_file_hash="v2")

    writes = qdrant.writes()
    assert [(w.method, w.path.rsplit("/", 1)[-1]) for w in writes] == [
        ("PUT", "points"), ("PUT", "points"), ("PUT", "points"), ("POST", "delete")]
    assert [len(w.body["points"]) for w in writes[:3]] == [256, 44, 2]
    assert {(w.params.get("wait"), w.params.get("ordering")) for w in writes} == {("true", ordering)}
    assert store.count("w") == store.count("w", "a") == 2
    components.close()


def test_an_existing_collection_keeps_its_layout_and_says_so(qdrant: FakeQdrant, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    first = server_components(tmp_path, qdrant.url, shards=1)
    first.store.ensure_collection("kept", 4)
    first.close()
    again = server_components(tmp_path, qdrant.url, shards=4, replication_factor=2)
    with caplog.at_level(logging.WARNING, logger="assistant.store"):
        again.store.ensure_collection("kept", 4)
    assert "collection kept keeps the layout it was created with (shard_number 1, settings 4, replication_factor 1, " \
           "settings 2)" in caplog.text
    assert len(qdrant.calls("PUT", "/collections/kept")) == 1
    again.close()


def test_api_key_is_sent_and_required() -> None:
    with FakeQdrant(api_key="s3cret") as fake:
        with pytest.warns(UserWarning, match="insecure connection"):  # qdrant-client's, for http:// URLs
            store = QdrantStore.server(fake.url, api_key="s3cret")
        store.ensure_collection("keyed", 4)
        assert store.collections() == ["keyed"]
        store.close()

        anonymous = QdrantStore.server(fake.url)
        with pytest.raises(UnexpectedResponse) as exc:
            anonymous.collections()
        assert exc.value.status_code == 401
        anonymous.close()


# --- the assistant with QDRANT_URL --------------------------------------------------------------------------------


def test_ingest_cli_and_api_share_a_qdrant_server(qdrant: FakeQdrant, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str],
                                                  embedder: SentenceTransformerEmbedder) -> None:
    """The API serves while the ingest CLI, another client of the same server, indexes a file (embedded Qdrant
    refuses that: one process per index); the API then retrieves the new chunks."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    for var in ("QDRANT_PATH", "DATABASE_URL", "COLLECTION", "EMBEDDING_MODEL", "QDRANT_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QDRANT_URL", qdrant.url)
    monkeypatch.setenv("QDRANT_SHARDS", "2")
    monkeypatch.setenv("QDRANT_REPLICATION_FACTOR", "2")
    monkeypatch.setenv("QDRANT_WRITE_CONSISTENCY", "2")
    settings = Settings.load()
    assert (settings.store.url, settings.store.shards) == (qdrant.url, 2)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "treasury-policy.md").write_text(POLICY, encoding="utf-8")

    components = Components(settings, embedder=embedder)
    key = ApiKeys(components.engine).create("default", "test").key  # auth is on, as the environment leaves it
    with TestClient(create_app(settings, components, preload=False),
                    headers={"Authorization": f"Bearer {key}"}) as client:
        assert client.get("/v1/collections").json() == []
        assert ingest_main([str(docs), "--collection", "policies", "--quiet"]) == 0
        assert "files: 1 (1 indexed, 0 unchanged, 0 failed" in capsys.readouterr().out

        response = client.post("/v1/retrieve", json={
            "question": "What minimum cash reserve does Northwind keep?", "collection": "policies", "top_k": 3})
        assert response.status_code == 200, response.text
        hits = response.json()["hits"]
        assert hits and hits[0]["source"] == "treasury-policy.md"
        assert "42 million euros" in hits[0]["text"]

        listed = {c["name"]: c for c in client.get("/v1/collections").json()}
        assert listed["policies"]["documents"] == 1 and listed["policies"]["chunks"] >= 1
        assert "server qdrant" in client.get("/health").json()["components"]["store"]["detail"]
    components.close()

    assert distribution(qdrant.created["policies"]) == {
        "shard_number": 2, "replication_factor": 2, "write_consistency_factor": 2, "on_disk_payload": True,
    }
    assert qdrant.calls("POST", "/collections/policies/points/query")  # the API searched the server


# --- outages, as later robustness tests will provoke them --------------------------------------------------------


def test_the_fake_goes_down_and_comes_back_with_its_data(qdrant: FakeQdrant) -> None:
    store = QdrantStore.server(qdrant.url, timeout_s=2)
    store.ensure_collection("kept", 4)
    store.upsert("kept", chunks("a", 3), vectors(3))

    qdrant.fail_with((503, "Service Unavailable: the node is restarting"))
    with pytest.raises(ComponentUnavailable, match=r"answered 503: .*the node is restarting"):
        store.count("kept")
    qdrant.fail_with(None)

    url = qdrant.url
    qdrant.stop()
    with pytest.raises(ComponentUnavailable, match=f"Qdrant server at {url} cannot be reached: .*Connection refused"):
        store.count("kept")
    qdrant.start()
    assert qdrant.url == url and store.count("kept") == 3
    store.close()


def test_the_api_answers_503_with_the_reason_while_qdrant_is_down_and_recovers(qdrant: FakeQdrant, tmp_path: Path,
                                                                                embedder: SentenceTransformerEmbedder
                                                                                ) -> None:
    components = Components(make_settings(tmp_path / "data", store=StoreSettings(url=qdrant.url, timeout_s=2,
                                                                                 _env_file=None)),  # type: ignore[call-arg]
                            embedder=embedder)
    components.store.ensure_collection("kept", embedder.dim)
    chunk = chunks("a", 1)[0]
    components.store.upsert("kept", [chunk], [embedder.embed_batch([chunk.text])[0]])
    body = {"question": "What does the rule say?", "collection": "kept"}
    with TestClient(create_app(components.settings, components, preload=False)) as client:
        assert client.post("/v1/retrieve", json=body).status_code == 200
        qdrant.fail_with((503, "Service Unavailable: no leader"))
        down = client.post("/v1/retrieve", json=body)
        assert down.status_code == 503, down.text
        assert down.json()["error"] == "unavailable" and "no leader" in down.json()["detail"]
        qdrant.fail_with(None)
        qdrant.stop()
        refused = client.post("/v1/retrieve", json=body)
        assert refused.status_code == 503 and "cannot be reached" in refused.json()["detail"]
        qdrant.start()
        assert client.post("/v1/retrieve", json=body).status_code == 200  # back by itself
    components.close()
