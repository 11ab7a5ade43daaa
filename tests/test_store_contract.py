"""One contract for the `VectorStore` seam, run against every backend that runs here.

- `edge`: `EdgeStore.open(tmp dir)` (Qdrant Edge), what the assistant uses by default.
- `embedded-path`: `QdrantStore.embedded_at(tmp dir)` (qdrant-client local mode, QDRANT_ENGINE=local).
- `embedded-memory`: `QdrantStore(QdrantClient(":memory:"), embedded=True)`.
- `server`: `QdrantStore.server(url)`, qdrant-client's remote mode over real HTTP, against `FakeQdrant`
  (tests/fake_qdrant.py: Qdrant's REST API over a local-mode engine), or against a real Qdrant server when
  FINRAG_TEST_QDRANT_URL is set (for example the compose `qdrant` service, the same URL as QDRANT_URL); each
  test then works in its own collections and drops them afterwards.

Vectors are small hand-made ones so cosine scores are known exactly.
"""

from __future__ import annotations

import gc
import math
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_qdrant import FakeQdrant
from qdrant_client import QdrantClient

from assistant.chunks import Chunk
from assistant.edge_store import EdgeStore
from assistant.errors import ComponentUnavailable, IndexLocked, InvalidFilter, UnknownCollection
from assistant.sparse import SparseVector
from assistant.store import QdrantStore, VectorStore

REAL_SERVER_URL = os.environ.get("FINRAG_TEST_QDRANT_URL")
BACKENDS = ["edge", "embedded-path", "embedded-memory", "server"]
DIM = 4


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """A real Qdrant server's URL (FINRAG_TEST_QDRANT_URL), else a FakeQdrant's for this module."""
    if REAL_SERVER_URL:
        yield REAL_SERVER_URL
        return
    with FakeQdrant() as fake:
        yield fake.url


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    backend: VectorStore
    if request.param == "edge":
        backend = EdgeStore.open(tmp_path / "edge")
    elif request.param == "embedded-path":
        backend = QdrantStore.embedded_at(str(tmp_path / "qdrant"))
    elif request.param == "embedded-memory":
        backend = QdrantStore(QdrantClient(":memory:"), embedded=True)
    else:
        url = request.getfixturevalue("server_url")
        backend = QdrantStore.server(url, timeout_s=10)
    before = set(backend.collections())
    yield backend
    if isinstance(backend, QdrantStore) and not backend.embedded:  # a shared server: drop what this test made
        for name in set(backend.collections()) - before:
            backend.drop_collection(name)
    backend.close()


@pytest.fixture
def name() -> str:
    """A collection name of this test's own (matters on a shared server)."""
    return f"contract-{uuid.uuid4().hex[:10]}"


def chunk(doc: str, i: int, *, file_hash: str = "v1", **extra: object) -> Chunk:
    return Chunk(
        text=f"{doc} chunk {i}", source=f"{doc}.pdf", doc_id=doc, chunk_index=i, page_start=i + 1, page_end=i + 1,
        section=f"Item {i + 1}", title=f"{doc} title", doc_type="filing", file_hash=file_hash,
        content_hash=f"{doc}{i}", extra=dict(extra),
    )


def unit(*xs: float) -> list[float]:
    norm = math.sqrt(sum(x * x for x in xs))
    return [x / norm for x in xs]


def fill(store: VectorStore, name: str) -> dict[str, Chunk]:
    """Five chunks of three documents at known angles from the query (1, 0, 0, 0)."""
    chunks = {
        "same": chunk("aapl", 0, company="Apple Inc.", form="10-Q"),
        "close": chunk("aapl", 1, company="Apple Inc.", form="10-Q"),
        "apart": chunk("msft", 0, company="Microsoft", form="10-Q"),
        "orthogonal": chunk("msft", 1, company="Microsoft", form="10-K"),
        "opposite": chunk("nvda", 0, company="NVIDIA", form="10-Q"),
    }
    vectors = {
        "same": [2.0, 0.0, 0.0, 0.0],  # not unit length: cosine ignores the norm
        "close": unit(0.9, 0.1, 0.0, 0.0),
        "apart": unit(0.5, 0.5, 0.5, 0.0),
        "orthogonal": [0.0, 0.0, 0.0, 1.0],
        "opposite": [-1.0, 0.0, 0.0, 0.0],
    }
    store.ensure_collection(name, DIM)
    store.upsert(name, list(chunks.values()), [vectors[k] for k in chunks])
    return chunks


QUERY = [1.0, 0.0, 0.0, 0.0]


# --- the contract -------------------------------------------------------------------------------------------


def test_search_orders_by_cosine_and_returns_the_chunk_whole(store: VectorStore, name: str) -> None:
    chunks = fill(store, name)
    hits = store.search(name, QUERY, limit=5)
    assert [h.chunk for h in hits] == [chunks[k] for k in ("same", "close", "apart", "orthogonal", "opposite")]
    expected = [1.0, 0.9 / math.hypot(0.9, 0.1), 0.5 / math.sqrt(0.75), 0.0, -1.0]
    assert [h.score for h in hits] == pytest.approx(expected, abs=1e-5)
    assert [h.point_id for h in hits] == [h.chunk.id for h in hits]
    assert hits[0].chunk.extra == {"company": "Apple Inc.", "form": "10-Q"}
    assert [h.chunk for h in store.search(name, QUERY, limit=2)] == [chunks["same"], chunks["close"]]


def test_a_question_vector_of_another_size_is_a_clear_error(store: VectorStore, name: str) -> None:
    """The embedder changed since the collection was indexed (EMBEDDING_BACKEND=static over a MiniLM index)."""
    fill(store, name)
    with pytest.raises(ComponentUnavailable, match=f"holds {DIM}-d vectors but the embedder makes 6-d ones"):
        store.search(name, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0], limit=3)


def test_ensure_collection_is_idempotent_and_refuses_another_dimension(store: VectorStore, name: str) -> None:
    fill(store, name)
    store.ensure_collection(name, DIM)
    assert store.count(name) == 5
    assert name in store.collections()
    with pytest.raises(ComponentUnavailable, match=r"holds 4-d vectors but the embedder makes 384-d ones"):
        store.ensure_collection(name, 384)
    assert store.count(name) == 5


def test_upsert_of_the_same_chunks_overwrites(store: VectorStore, name: str) -> None:
    chunks = fill(store, name)
    store.upsert(name, [chunks["opposite"]], [QUERY])  # same id, new vector
    assert store.count(name) == 5
    top = store.search(name, QUERY, limit=2)  # "same" and the overwritten "opposite" now tie at 1.0
    assert {h.chunk.chunk_index for h in top} == {chunks["same"].chunk_index, chunks["opposite"].chunk_index}
    assert [round(h.score, 5) for h in top] == [1.0, 1.0]
    assert chunks["opposite"] in [h.chunk for h in top]
    with pytest.raises(ValueError, match="one vector per chunk"):
        store.upsert(name, [chunks["same"], chunks["close"]], [QUERY])


@pytest.mark.parametrize(("filters", "expected"), [
    ({"source": "msft.pdf"}, ["apart", "orthogonal"]),
    ({"company": "Apple Inc."}, ["same", "close"]),
    ({"company": ["NVIDIA", "Microsoft"]}, ["apart", "orthogonal", "opposite"]),  # list → any of them
    ({"doc_id": "msft", "form": "10-K"}, ["orthogonal"]),  # all must hold
    ({"section": ["Item 2"], "doc_type": "filing"}, ["close", "orthogonal"]),
    ({"company": "Tesla"}, []),
])
def test_filters_restrict_results(store: VectorStore, name: str, filters: dict[str, str | list[str]],
                                  expected: list[str]) -> None:
    chunks = fill(store, name)
    hits = store.search(name, QUERY, limit=10, filters=filters)
    assert [h.chunk for h in hits] == [chunks[k] for k in expected]


@pytest.mark.parametrize(("filters", "message"), [
    ({"text": "net sales"}, r"cannot filter on 'text'; filterable fields are: source, doc_id"),
    ({"company": []}, r"needs a non-empty list"),
    ({"company": [1.5]}, r"needs a non-empty list of strings or integers"),
    ({"form": True}, r"must be a string, an integer or a list of them"),
    ({"form": None}, r"must be a string, an integer or a list of them"),
])
def test_invalid_filter_is_refused(store: VectorStore, name: str, filters: dict[str, object], message: str) -> None:
    fill(store, name)
    with pytest.raises(InvalidFilter, match=message) as exc:
        store.search(name, QUERY, limit=3, filters=filters)  # type: ignore[arg-type]
    assert exc.value.status_code == 422


def test_delete_document_keeps_only_the_kept_version(store: VectorStore, name: str) -> None:
    chunks = fill(store, name)
    new = [chunk("aapl", i, file_hash="v2", company="Apple Inc.") for i in range(3)]
    store.upsert(name, new, [unit(1.0, 0.0, 0.0, 0.1 * i + 0.1) for i in range(3)])
    assert store.count(name, "aapl") == 5

    store.delete_document(name, "aapl", keep_file_hash="v2")
    assert store.count(name, "aapl") == 3
    hits = store.search(name, QUERY, limit=10, filters={"doc_id": "aapl"})
    assert sorted(h.chunk.chunk_index for h in hits) == [0, 1, 2]
    assert {h.chunk.file_hash for h in hits} == {"v2"}
    assert (store.count(name, "msft"), store.count(name, "nvda")) == (2, 1)  # other documents untouched

    store.delete_document(name, "aapl")
    assert store.count(name, "aapl") == 0
    assert store.count(name) == 3
    assert [h.chunk for h in store.search(name, QUERY, limit=1)] == [chunks["apart"]]


def test_delete_document_drops_the_kept_versions_chunks_past_the_last(store: VectorStore, name: str) -> None:
    """A file re-chunked into fewer chunks (same file, new chunk settings): its point ids 0..n-1 are overwritten,
    the ones from n on are stale and go with `keep_chunks`."""
    fill(store, name)
    store.upsert(name, [chunk("aapl", i, file_hash="v2") for i in range(4)],
                 [unit(1.0, 0.0, 0.0, 0.1 * i + 0.1) for i in range(4)])
    store.upsert(name, [chunk("aapl", i, file_hash="v2", company="Apple Inc.") for i in range(2)],
                 [unit(1.0, 0.0, 0.0, 0.1) for _ in range(2)])  # the new chunking: two chunks
    store.delete_document(name, "aapl", keep_file_hash="v2", keep_chunks=2)
    kept = sorted((c.file_hash, c.chunk_index, c.extra.get("company"))
                  for _, c in store.scroll_chunks(name, doc_id="aapl"))
    assert kept == [("v2", 0, "Apple Inc."), ("v2", 1, "Apple Inc.")]
    assert (store.count(name, "aapl"), store.count(name, "msft"), store.count(name, "nvda")) == (2, 2, 1)


def test_count_per_document(store: VectorStore, name: str) -> None:
    fill(store, name)
    assert (store.count(name), store.count(name, "aapl"), store.count(name, "msft")) == (5, 2, 2)
    assert store.count(name, "unknown-doc") == 0
    assert store.count(f"{name}-absent") == 0


def test_scroll_every_chunk_or_one_documents(store: VectorStore, name: str) -> None:
    chunks = fill(store, name)
    every = dict(store.scroll_chunks(name, batch=2))  # several pages
    assert sorted(every) == sorted(c.id for c in chunks.values())
    assert every[chunks["apart"].id] == chunks["apart"]
    msft = dict(store.scroll_chunks(name, batch=1, doc_id="msft"))
    assert msft == {chunks["apart"].id: chunks["apart"], chunks["orthogonal"].id: chunks["orthogonal"]}
    assert list(store.scroll_chunks(name, doc_id="unknown-doc")) == []


def test_unknown_collection(store: VectorStore, name: str) -> None:
    unknown = rf"collection '{name}' does not exist; ingest .* --collection {name}"
    with pytest.raises(UnknownCollection, match=unknown):
        store.search(name, QUERY, limit=3)
    with pytest.raises(UnknownCollection, match=unknown):
        store.search(name, None, limit=3, sparse=SparseVector([7], [1.0]))
    with pytest.raises(UnknownCollection, match=unknown):
        list(store.scroll_chunks(name))
    with pytest.raises(UnknownCollection, match=unknown):
        store.get_chunks(name, [str(uuid.uuid4())])
    store.delete_document(name, "aapl")  # nothing to delete is not an error
    assert name not in store.collections()


def test_get_chunks_leaves_out_missing_ids_and_refuses_what_is_no_point_id(store: VectorStore, name: str) -> None:
    chunks = fill(store, name)
    wanted = [chunks["close"].id, str(uuid.uuid4()), chunks["opposite"].id]
    assert store.get_chunks(name, wanted) == {chunks["close"].id: chunks["close"],
                                              chunks["opposite"].id: chunks["opposite"]}
    assert store.get_chunks(name, []) == {}
    with pytest.raises(ValueError, match="not-a-uuid"):
        store.get_chunks(name, ["not-a-uuid"])


def test_no_results_asked_for_is_none_found(store: VectorStore, name: str) -> None:
    fill(store, name)
    assert store.search(name, QUERY, limit=0) == []
    assert store.search(name, QUERY, limit=0, sparse=SparseVector([7], [1.0])) == []


# --- embedded only: one process owns an index directory -------------------------------------------------------


def test_second_embedded_open_of_a_directory_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "qdrant")
    first = QdrantStore.embedded_at(path)
    fill(first, "kept")
    with warnings.catch_warnings():  # qdrant-client's leaked lock file: see the next test
        warnings.filterwarnings("ignore", r"unclosed file .*/\.lock'", ResourceWarning)
        with pytest.raises(IndexLocked, match=r"open in another process .* QDRANT_URL") as exc:
            QdrantStore.embedded_at(path)
        assert exc.value.status_code == 409
        del exc
        gc.collect()
    first.close()
    again = QdrantStore.embedded_at(path)  # released on close; the data is still there
    try:
        assert again.count("kept") == 5
    finally:
        again.close()


def test_refused_open_leaks_no_file_handle(tmp_path: Path) -> None:
    path = str(tmp_path / "qdrant")
    first = QdrantStore.embedded_at(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(IndexLocked):
                QdrantStore.embedded_at(path)
            gc.collect()
    finally:
        first.close()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


def test_payload_round_trips_through_every_field(store: VectorStore, name: str) -> None:
    original = Chunk(
        text="Total net sales: 81,797 (three months ended July 1, 2023)", source="2023 Q3 AAPL.pdf",
        doc_id="d1", chunk_index=7, page_start=4, page_end=4, section="Part I — Item 1. Financial Statements",
        title="Apple Inc. Form 10-Q", doc_type="filing", file_hash="f" * 64, content_hash="c" * 16,
        extra={"company": "Apple Inc.", "sections": ["Item 1.", "Item 2."], "heading": None},
    )
    store.ensure_collection(name, DIM)
    store.upsert(name, [original], [QUERY])
    (hit,) = store.search(name, QUERY, limit=5)
    assert hit.chunk == original
    assert hit.chunk.pages_label() == "p. 4"



def test_bm25_alone_ranks_by_sparse_score_and_honours_filters(store: VectorStore, name: str) -> None:
    chunks = fill(store, name)
    keys = list(chunks)
    # term 7 only in "apart" (twice as strong) and "opposite"; term 9 in "close": dense order plays no part
    sparse = {k: SparseVector([], []) for k in keys}
    sparse["apart"] = SparseVector([7], [2.0])
    sparse["opposite"] = SparseVector([7], [1.0])
    sparse["close"] = SparseVector([9], [1.0])
    store.upsert(name, list(chunks.values()), [unit(1, 0, 0, 0)] * len(keys), [sparse[k] for k in keys])
    hits = store.search(name, None, limit=5, sparse=SparseVector([7], [1.0]))
    assert [h.chunk for h in hits] == [chunks["apart"], chunks["opposite"]]
    only_nvda = store.search(name, None, limit=5, filters={"source": "nvda.pdf"}, sparse=SparseVector([7], [1.0]))
    assert [h.chunk for h in only_nvda] == [chunks["opposite"]]
    assert store.search(name, None, limit=5, sparse=SparseVector([], [])) == []  # a query of stop words only
