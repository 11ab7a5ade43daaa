"""Qdrant Edge (`EdgeStore`) and embedded qdrant-client (`QdrantStore`) rank alike: the same checks on both.

The corpus is real text: the 50 numbered rules of the ADGM Confidentiality Policy in samples/adgm, one chunk
each (four documents, one per chapter). Sparse vectors come from the real `BM25Encoder`; dense vectors are a
hashed bag of those BM25 tokens in 32 dimensions, so no model loads and every score can be recomputed here.

Each ranking is checked twice:
- against a reference computed in this file from the definitions (cosine; BM25 with Qdrant's IDF
  ln((N - df + 0.5) / (df + 0.5) + 1) over the live points that carry a sparse vector; RRF with k = 2,
  1 / (k + rank - 1) summed over the dense and BM25 lists), on both backends;
- against each other: for every query, mode and filter, Edge returns what qdrant-client returns.
Equal scores may come in either order (tie order is an engine detail), so rankings are compared by score,
and by id wherever the score is unique.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from assistant.chunks import FILTERABLE_FIELDS, INTEGER_FIELDS, Chunk, ScoredChunk
from assistant.edge_store import EdgeStore
from assistant.errors import BadRequest, IndexLocked, UnknownCollection
from assistant.sparse import BM25Encoder, SparseVector
from assistant.store import Filters, Fusion, QdrantStore, VectorStore

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "samples" / "adgm" / "CONF_VER03.18042019.txt"
BACKENDS = ["client", "edge"]
DIM = 32
NAME = "policy"
ENCODER = BM25Encoder()

QUESTIONS = [
    "international standards of IOSCO, FATF and the Basel Committee",
    "disclosure of confidential information to a criminal law enforcement agency",
    "memorandum of understanding with a Non-ADGM Regulator on sharing information",
    "Data Protection Regulations 2015 obligations",
    "public interest immunity claim in court",
    "foreign banking secrecy laws",
]


def open_store(kind: str, root: Path) -> VectorStore:
    if kind == "client":
        return QdrantStore.embedded_at(str(root / "qdrant"))
    return EdgeStore.open(root / "edge")


def embed(text: str) -> list[float]:
    """A deterministic stand-in for an embedding: stemmed tokens hashed into 32 buckets, each token with a
    weight of its own in [-2, -1) or [1, 2) (whole-number weights would make equal cosines common), unit length."""
    vector = [0.0] * DIM
    for token in ENCODER.tokens(text):
        h = zlib.crc32(token.encode("utf-8"))
        weight = 1.0 + (h >> 9) % 1024 / 1024
        vector[h % DIM] += weight if h & 0x100 else -weight
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


@dataclass(frozen=True)
class Corpus:
    chunks: list[Chunk]
    dense: list[list[float]]
    sparse: list[SparseVector]

    def by_id(self) -> dict[str, int]:
        return {c.id: i for i, c in enumerate(self.chunks)}


def load_corpus() -> Corpus:
    text = POLICY.read_text(encoding="utf-8")
    rules = re.split(r"(?m)^(?=\d+\.\d+\.\d+\s)", text)[1:]
    chunks = []
    for i, rule in enumerate(rules):
        number = rule.split(maxsplit=1)[0]
        chapter = int(number.split(".")[0])
        chunks.append(Chunk(
            text=rule.strip(), source=POLICY.name, doc_id=f"conf-{chapter}", chunk_index=i, section=number,
            title="Confidentiality Policy", doc_type="regulation", file_hash="v1", content_hash=f"c{i}",
            extra={"family": "CONF", "fiscal_year": 2019 if chapter <= 2 else 2020},  # an integer field
        ))
    return Corpus(chunks, [embed(c.text) for c in chunks], [ENCODER.encode_document(c.text) for c in chunks])


def fill(store: VectorStore, corpus: Corpus, name: str = NAME) -> None:
    store.ensure_collection(name, DIM)
    store.upsert(name, corpus.chunks, corpus.dense, corpus.sparse)


# --- the reference: rankings recomputed from their definitions -----------------------------------------------

Keep = Callable[[Chunk], bool]
Ranking = list[tuple[str, float]]


def dense_reference(corpus: Corpus, question: str, keep: Keep) -> Ranking:
    q = embed(question)
    scored = [(c.id, sum(a * b for a, b in zip(q, v, strict=True)))
              for c, v in zip(corpus.chunks, corpus.dense, strict=True) if keep(c)]
    return sorted(scored, key=lambda s: -s[1])


def bm25_reference(corpus: Corpus, question: str, keep: Keep, live: set[str] | None = None) -> Ranking:
    """IDF over every live point with a sparse vector (filters narrow the results, not the statistics)."""
    query = ENCODER.encode_query(question)
    alive = [(c, s) for c, s in zip(corpus.chunks, corpus.sparse, strict=True) if live is None or c.id in live]
    n = len(alive)
    df = {t: sum(t in s.indices for _, s in alive) for t in query.indices}
    idf = {t: math.log((n - df[t] + 0.5) / (df[t] + 0.5) + 1) for t in query.indices}
    scored = []
    for chunk, sparse in alive:
        weights = dict(zip(sparse.indices, sparse.values, strict=True))
        matched = [t for t in query.indices if t in weights]
        if matched and keep(chunk):
            scored.append((chunk.id, sum(idf[t] * weights[t] for t in matched)))
    return sorted(scored, key=lambda s: -s[1])


def rrf_reference(dense: Ranking, bm25: Ranking, depth: int, fusion: Fusion | None = None) -> Ranking:
    """Weighted RRF, Qdrant's formula: the sum of 1 / (rank / weight + k - 1), rank from 1."""
    f = fusion or Fusion()
    fused: dict[str, float] = {}
    for ranking, weight in ((dense, f.dense_weight), (bm25, f.sparse_weight)):
        head = [s for _, s in ranking[:depth]]
        assert len(set(head)) == len(head), "the test data must not tie inside the fused depth"
        for rank, (point_id, _) in enumerate(ranking[:depth], start=1):
            fused[point_id] = fused.get(point_id, 0.0) + 1.0 / (rank / weight + f.k - 1)
    return sorted(fused.items(), key=lambda s: -s[1])


def tie(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)


def assert_ranking(hits: Sequence[ScoredChunk], expected: Ranking, limit: int, *, cut: bool = False) -> None:
    """`hits` are the first `limit` of `expected`: scores equal rank by rank; ids equal up to ties. With `cut`,
    `expected` was cut at `limit` as well, so which of the points tied at the cut made it is not known."""
    assert len(hits) == min(limit, len(expected))
    assert [h.score for h in hits] == pytest.approx([s for _, s in expected[: len(hits)]], rel=1e-5, abs=1e-6)
    for hit in hits:
        if cut and len(hits) == limit and tie(hit.score, hits[-1].score):
            continue
        assert hit.point_id in {pid for pid, s in expected if tie(s, hit.score)}
        assert hit.point_id == hit.chunk.id
    assert len({h.point_id for h in hits}) == len(hits)


def everything(_: Chunk) -> bool:
    return True


# --- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return load_corpus()


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory, corpus: Corpus) -> Iterator[dict[str, VectorStore]]:
    """Both backends holding the corpus; read-only (tests that write fill stores of their own)."""
    stores = {kind: open_store(kind, tmp_path_factory.mktemp(kind)) for kind in BACKENDS}
    for store in stores.values():
        fill(store, corpus)
    yield stores
    for store in stores.values():
        store.close()


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, filled: dict[str, VectorStore]) -> VectorStore:
    return filled[request.param]


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_the_corpus_is_what_the_checks_assume(corpus: Corpus) -> None:
    assert len(corpus.chunks) == 50
    assert {c.doc_id for c in corpus.chunks} == {"conf-1", "conf-2", "conf-3", "conf-4"}
    assert all(s.indices for s in corpus.sparse)


# --- the same checks on both backends ------------------------------------------------------------------------


@pytest.mark.parametrize("question", QUESTIONS)
def test_dense_ranks_by_cosine(store: VectorStore, corpus: Corpus, question: str) -> None:
    hits = store.search(NAME, embed(question), limit=8)
    assert_ranking(hits, dense_reference(corpus, question, everything), 8)


def test_a_chunk_is_its_own_nearest_neighbour(store: VectorStore, corpus: Corpus) -> None:
    for chunk in corpus.chunks[::7]:
        (hit,) = store.search(NAME, embed(chunk.text), limit=1)
        assert hit.chunk == chunk and hit.score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("question", QUESTIONS)
def test_bm25_alone_ranks_by_idf_weighted_term_scores(store: VectorStore, corpus: Corpus, question: str) -> None:
    hits = store.search(NAME, None, limit=8, sparse=ENCODER.encode_query(question))
    assert_ranking(hits, bm25_reference(corpus, question, everything), 8)


FUSIONS = [None, Fusion(k=60), Fusion(k=2, dense_weight=3.0), Fusion(k=5, dense_weight=0.5, sparse_weight=2.0)]


@pytest.mark.parametrize("fusion", FUSIONS, ids=["default", "k60", "dense3x", "k5-sparse4x"])
@pytest.mark.parametrize("question", QUESTIONS)
def test_hybrid_fuses_dense_and_bm25_by_reciprocal_rank(store: VectorStore, corpus: Corpus, question: str,
                                                        fusion: Fusion | None) -> None:
    hits = store.search(NAME, embed(question), 6, None, ENCODER.encode_query(question), 12, fusion)
    dense, bm25 = dense_reference(corpus, question, everything), bm25_reference(corpus, question, everything)
    assert_ranking(hits, rrf_reference(dense, bm25, 12, fusion), 6)


FILTER_CASES: list[tuple[dict[str, str | int | list[str] | list[int]], Keep]] = [
    ({"doc_id": "conf-3"}, lambda c: c.doc_id == "conf-3"),  # keyword
    ({"doc_id": ["conf-1", "conf-4"]}, lambda c: c.doc_id in ("conf-1", "conf-4")),  # list: any of them
    ({"fiscal_year": 2019}, lambda c: c.extra["fiscal_year"] == 2019),  # integer
    ({"fiscal_year": [2020, 2021]}, lambda c: c.extra["fiscal_year"] == 2020),  # list of integers
    ({"fiscal_year": "2019"}, lambda c: c.extra["fiscal_year"] == 2019),  # digits, as a command line passes them
    ({"doc_id": "conf-4", "section": ["4.2.4", "4.4.1", "3.2.1"]}, lambda c: c.section in ("4.2.4", "4.4.1")),
    ({"family": "FEES"}, lambda c: False),
]


@pytest.mark.parametrize(("filters", "keep"), FILTER_CASES)
def test_filters_restrict_every_mode(store: VectorStore, corpus: Corpus,
                                     filters: dict[str, str | int | list[str] | list[int]], keep: Keep) -> None:
    question = QUESTIONS[1]
    dense = dense_reference(corpus, question, keep)
    bm25 = bm25_reference(corpus, question, keep)
    assert_ranking(store.search(NAME, embed(question), limit=5, filters=filters), dense, 5)
    assert_ranking(store.search(NAME, None, 5, filters, ENCODER.encode_query(question)), bm25, 5)
    fused = store.search(NAME, embed(question), 5, filters, ENCODER.encode_query(question), candidates=8)
    assert_ranking(fused, rrf_reference(dense, bm25, 8), 5)
    assert all(keep(h.chunk) for h in fused)


def test_count_per_document(store: VectorStore) -> None:
    counts = {doc: store.count(NAME, doc) for doc in ("conf-1", "conf-2", "conf-3", "conf-4", "absent")}
    assert counts == {"conf-1": 4, "conf-2": 8, "conf-3": 17, "conf-4": 21, "absent": 0}
    assert store.count(NAME) == 50
    assert store.count("no-such-collection") == 0


def test_unknown_collection_is_refused(store: VectorStore) -> None:
    with pytest.raises(UnknownCollection, match=r"collection 'nope' does not exist"):
        store.search("nope", embed("x"), limit=3)


def test_delete_document_leaves_the_rest_and_idf_follows_the_live_points(kind: str, tmp_path: Path,
                                                                          corpus: Corpus) -> None:
    stop_words = Chunk(text="The and of it", source="x.txt", doc_id="x", chunk_index=0, file_hash="v1")
    v2 = [Chunk(text=c.text, source=c.source, doc_id=c.doc_id, chunk_index=c.chunk_index, file_hash="v2")
          for c in corpus.chunks if c.doc_id == "conf-2"][:3]
    added = [stop_words, *v2]
    upserted = Corpus([*corpus.chunks, *added], [*corpus.dense, *(embed(c.text) for c in added)],
                      [*corpus.sparse, *(ENCODER.encode_document(c.text) for c in added)])
    assert not upserted.sparse[50].indices  # stop words only: an empty sparse vector
    store = open_store(kind, tmp_path)
    try:
        fill(store, corpus)
        store.upsert(NAME, added, upserted.dense[50:], upserted.sparse[50:])
        assert (store.count(NAME), store.count(NAME, "conf-2")) == (54, 11)

        store.delete_document(NAME, "conf-2", keep_file_hash="v2")
        assert (store.count(NAME, "conf-2"), store.count(NAME)) == (3, 46)
        assert {h.chunk.file_hash for h in store.search(NAME, embed("x"), 10, {"doc_id": "conf-2"})} == {"v2"}
        store.delete_document(NAME, "conf-3")
        store.delete_document(NAME, "never-ingested")
        assert (store.count(NAME, "conf-3"), store.count(NAME)) == (0, 29)

        # IDF's N: the live points with a sparse vector, the empty one of `stop_words` included
        live = {c.id for c in upserted.chunks if c.doc_id in ("conf-1", "conf-4", "x") or c.file_hash == "v2"}
        assert len(live) == 29
        for question in QUESTIONS:
            expected = bm25_reference(upserted, question, everything, live)
            assert_ranking(store.search(NAME, None, 8, sparse=ENCODER.encode_query(question)), expected, 8)
            hits = store.search(NAME, embed(question), 5, sparse=ENCODER.encode_query(question), candidates=10)
            dense = [(pid, s) for pid, s in dense_reference(upserted, question, everything) if pid in live]
            assert_ranking(hits, rrf_reference(dense, expected, 10), 5)
    finally:
        store.close()


def test_the_index_persists_after_close(kind: str, tmp_path: Path, corpus: Corpus) -> None:
    store = open_store(kind, tmp_path)
    fill(store, corpus)
    question = QUESTIONS[2]
    before = store.search(NAME, embed(question), 5, sparse=ENCODER.encode_query(question), candidates=10)
    store.close()
    again = open_store(kind, tmp_path)
    try:
        assert again.collections() == [NAME]
        assert again.count(NAME) == 50
        after = again.search(NAME, embed(question), 5, sparse=ENCODER.encode_query(question), candidates=10)
        assert [(h.point_id, h.score) for h in after] == [(h.point_id, h.score) for h in before]
        assert after[0].chunk == before[0].chunk
    finally:
        again.close()


# --- the two backends side by side ---------------------------------------------------------------------------


SEARCHES: dict[str, tuple[int, Callable[[VectorStore, str, Filters | None], list[ScoredChunk]]]] = {
    "dense": (10, lambda store, q, filters: store.search(NAME, embed(q), 10, filters)),
    "bm25": (10, lambda store, q, filters: store.search(NAME, None, 10, filters, ENCODER.encode_query(q))),
    "hybrid": (5, lambda store, q, filters: store.search(NAME, embed(q), 5, filters, ENCODER.encode_query(q), 10)),
    "weighted": (5, lambda store, q, filters: store.search(NAME, embed(q), 5, filters, ENCODER.encode_query(q), 10,
                                                           Fusion(k=10, dense_weight=0.5, sparse_weight=1.5))),
}


@pytest.mark.parametrize("mode", SEARCHES)
@pytest.mark.parametrize("filters", [None, {"doc_id": ["conf-3", "conf-4"]}, {"fiscal_year": 2019}])
@pytest.mark.parametrize("question", QUESTIONS)
def test_edge_returns_what_qdrant_client_returns(filled: dict[str, VectorStore], question: str,
                                                 filters: Filters | None, mode: str) -> None:
    limit, search = SEARCHES[mode]
    expected = search(filled["client"], question, filters)
    got = search(filled["edge"], question, filters)
    assert expected, "a check of nothing"
    assert_ranking(got, [(h.point_id, h.score) for h in expected], limit, cut=True)
    chunks = {h.point_id: h.chunk for h in expected}
    assert all(chunks[h.point_id] == h.chunk for h in got if h.point_id in chunks)


# --- Edge only -----------------------------------------------------------------------------------------------


def test_edge_optimize_keeps_every_ranking(tmp_path: Path, corpus: Corpus) -> None:
    store = EdgeStore.open(tmp_path)
    try:
        fill(store, corpus)
        store.delete_document(NAME, "conf-1")
        question = QUESTIONS[3]
        args = (embed(question), 6, None, ENCODER.encode_query(question), 12)
        before = store.search(NAME, *args)
        store.optimize(NAME)
        after = store.search(NAME, *args)
        assert [(h.point_id, h.score) for h in after] == [(h.point_id, h.score) for h in before]
        assert store.count(NAME) == 46
    finally:
        store.close()


def test_edge_indexes_every_filterable_field_and_adds_missing_ones(tmp_path: Path, corpus: Corpus) -> None:
    import qdrant_edge

    expected = {key: "integer" if key in INTEGER_FIELDS else "keyword" for key in FILTERABLE_FIELDS}
    store = EdgeStore.open(tmp_path)
    try:
        fill(store, corpus)
        assert store.payload_indexes(NAME) == expected
    finally:
        store.close()
    shard = qdrant_edge.EdgeShard.load(str(tmp_path / NAME))  # a shard made before a field became filterable
    shard.update(qdrant_edge.UpdateOperation.delete_field_index("fiscal_year"))
    shard.close()
    store = EdgeStore.open(tmp_path)
    try:
        assert "fiscal_year" not in store.payload_indexes(NAME)
        store.ensure_collection(NAME, DIM)
        assert store.payload_indexes(NAME) == expected
        assert store.count(NAME) == 50
    finally:
        store.close()


def test_edge_directory_has_one_owner(tmp_path: Path, corpus: Corpus) -> None:
    first = EdgeStore.open(tmp_path)
    try:
        fill(first, corpus)
        with pytest.raises(IndexLocked, match=r"open in another process") as exc:
            EdgeStore.open(tmp_path)
        assert exc.value.status_code == 409
    finally:
        first.close()
    again = EdgeStore.open(tmp_path)
    try:
        assert again.count(NAME) == 50
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", NAME]  # one shard per collection
    finally:
        again.close()


def test_edge_refuses_a_collection_name_that_is_not_a_directory_name(tmp_path: Path) -> None:
    store = EdgeStore.open(tmp_path / "edge")
    try:
        with pytest.raises(BadRequest, match=r"cannot name a collection"):
            store.ensure_collection("../outside", DIM)
        with pytest.raises(UnknownCollection):
            store.search("../outside", embed("x"), limit=1)
        assert store.count("../outside") == 0
        assert not (tmp_path / "outside").exists()
        assert store.collections() == []
    finally:
        store.close()
