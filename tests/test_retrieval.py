"""Retrieval as composed by the product: filters inferred from the question, the reranker over the fused
candidates, per-stage timings; and moving an index from qdrant-client local mode to Qdrant Edge."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import SAMPLE_COLLECTION, SampleIndex

from assistant.chunks import Chunk, passage_text
from assistant.edge_store import EdgeStore
from assistant.retrieval import QueryBatcher, QueryVectors
from assistant.sparse import BM25Encoder
from assistant.store import QdrantStore
from ingest.copy_index import main as copy_main

APPLE_Q3 = "What was Apple's total net sales in the quarter ended July 1, 2023?"


def test_the_question_names_the_filing_and_retrieval_keeps_to_it(sample_index: SampleIndex) -> None:
    retriever = sample_index.components.retriever_for("hybrid", rerank=False)
    got = retriever.search(APPLE_Q3, SAMPLE_COLLECTION, top_k=8)
    assert got.inferred_filters is not None and got.inferred_filters.get("ticker") == "AAPL"
    assert {h.chunk.source for h in got.hits} == {"2023 Q3 AAPL.pdf"}  # not the Q2 filing beside it
    assert set(got.timings_ms) == {"embed", "search", "memory"}  # feedback memory is on by default
    without = replace(retriever, inference=None).search(APPLE_Q3, SAMPLE_COLLECTION, top_k=8)
    assert without.inferred_filters is None
    assert {h.chunk.source for h in without.hits} != {"2023 Q3 AAPL.pdf"}  # the filter is what made the difference


def test_filters_given_by_the_caller_win_over_inferred_ones(sample_index: SampleIndex) -> None:
    retriever = sample_index.components.retriever_for("hybrid", rerank=False)
    got = retriever.search(APPLE_Q3, SAMPLE_COLLECTION, top_k=5, filters={"source": "2023 Q2 AAPL.pdf"})
    assert {h.chunk.source for h in got.hits} == {"2023 Q2 AAPL.pdf"}


def test_a_regulation_question_infers_nothing(sample_index: SampleIndex) -> None:
    retriever = sample_index.components.retriever_for("hybrid", rerank=False)
    got = retriever.search("In which currency must fees payable to the Regulator be paid?", SAMPLE_COLLECTION, 5)
    assert got.inferred_filters is None
    assert got.hits and got.hits[0].chunk.source == "FEES_VER16.181223.txt"


class ShortestFirst:
    name = "shortest-first"

    def scores(self, question: str, passages: Sequence[str]) -> list[float]:
        return [-float(len(p)) for p in passages]


def test_the_reranker_reorders_the_fused_candidates_and_is_timed(sample_index: SampleIndex) -> None:
    base = sample_index.components.retriever_for("hybrid", rerank=False)
    reranked = replace(base, reranker=ShortestFirst(), rerank_depth=10)
    fused = base.search("application fee", SAMPLE_COLLECTION, top_k=10).hits
    got = reranked.search("application fee", SAMPLE_COLLECTION, top_k=3)
    assert "rerank" in got.timings_ms and len(got.hits) == 3
    assert {h.point_id for h in got.hits} <= {h.point_id for h in fused}  # reordered, never new
    assert got.hits[0].score >= got.hits[1].score >= got.hits[2].score
    assert got.hits[0].point_id == min(fused, key=lambda h: len(passage_text(h.chunk))).point_id


def vector(text: str, dim: int = 16) -> list[float]:
    v = [0.0] * dim
    for word in text.lower().split():
        v[int(hashlib.sha256(word.encode()).hexdigest(), 16) % dim] += 1.0
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]


TEXTS = ["The application fee is paid in US dollars.", "Records are kept for six years.",
         "Marketing material names the firm.", "Capital must exceed the base requirement.",
         "Complaints are acknowledged within five days."]


def test_copy_index_moves_a_collection_to_edge_without_re_embedding(tmp_path: Path) -> None:
    bm25 = BM25Encoder()
    chunks = [Chunk(text=t, source="RULES.txt", doc_id="rules", chunk_index=i, section=f"1.{i}", file_hash="h",
                    extra={"family": "GEN"}) for i, t in enumerate(TEXTS)]
    source = QdrantStore.embedded_at(str(tmp_path / "local"))
    source.ensure_collection("rules", 16)
    source.upsert("rules", chunks, [vector(t) for t in TEXTS], [bm25.encode_document(t) for t in TEXTS])
    source.close()
    assert copy_main(["--from", str(tmp_path / "local"), "--to", str(tmp_path / "edge"), "--quiet"]) == 0
    source, target = QdrantStore.embedded_at(str(tmp_path / "local")), EdgeStore.open(tmp_path / "edge")
    try:
        assert target.count("rules") == 5
        question = "how long are records kept"
        for sparse in (None, bm25.encode_query(question)):  # dense, then hybrid: the same on both engines
            got_a = source.search("rules", vector(question), 3, sparse=sparse, candidates=5)
            got_b = target.search("rules", vector(question), 3, sparse=sparse, candidates=5)
            assert [h.chunk for h in got_a] == [h.chunk for h in got_b]
            assert [round(h.score, 5) for h in got_a] == [round(h.score, 5) for h in got_b]
        bm25_only = target.search("rules", None, 1, {"family": "GEN"}, sparse=bm25.encode_query(question))
        assert bm25_only[0].chunk == chunks[1]
    finally:
        source.close()
        target.close()


def test_copy_index_refuses_a_locked_source(tmp_path: Path) -> None:
    holder = QdrantStore.embedded_at(str(tmp_path / "local"))
    try:
        assert copy_main(["--from", str(tmp_path / "local"), "--to", str(tmp_path / "edge"), "--quiet"]) == 2
    finally:
        holder.close()


def test_offline_fusion_of_the_tuner_is_what_the_store_computes(tmp_path: Path) -> None:
    from assistant.store import Fusion
    from eval.fusion_tune import fuse

    bm25 = BM25Encoder()
    chunks = [Chunk(text=t, source="RULES.txt", doc_id="rules", chunk_index=i, file_hash="h")
              for i, t in enumerate(TEXTS)]
    store = EdgeStore.open(tmp_path / "edge")
    try:
        store.ensure_collection("rules", 16)
        store.upsert("rules", chunks, [vector(t) for t in TEXTS], [bm25.encode_document(t) for t in TEXTS])
        for question in ("records kept years", "fee paid in dollars", "complaints acknowledged"):
            dense = store.search("rules", vector(question), 5)
            sparse = store.search("rules", None, 5, sparse=bm25.encode_query(question))
            for k, w_dense, w_sparse in ((2, 1.0, 1.0), (60, 0.3, 1.0), (10, 1.0, 0.5)):
                fused = store.search("rules", vector(question), 5, sparse=bm25.encode_query(question), candidates=5,
                                     fusion=Fusion(k=k, dense_weight=w_dense, sparse_weight=w_sparse))
                offline = fuse(dense, sparse, k, w_dense, w_sparse)
                assert [round(h.score, 6) for h in offline] == [round(h.score, 6) for h in fused]
                assert {h.point_id for h in offline} == {h.point_id for h in fused}
    finally:
        store.close()


def test_query_vectors_remember_questions_per_embedder() -> None:
    from assistant.retrieval import QueryVectors

    class Counting:
        dim = 2

        def __init__(self, name: str) -> None:
            self.name, self.calls = name, 0

        def embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
            self.calls += len(texts)
            return [[1.0, float(len(t))] for t in texts]

    cache, a, b = QueryVectors(size=2), Counting("a"), Counting("b")
    assert cache.vector(a, "net sales?") == cache.vector(a, " net  sales? ") == [1.0, 10.0]
    assert a.calls == 1 and cache.hits == 1
    cache.vector(b, "net sales?")  # another embedder: its own vector
    assert b.calls == 1
    cache.vector(a, "other")  # size 2: the least recently used entry goes
    cache.vector(a, "net sales?")
    assert a.calls == 3
    off = QueryVectors(size=0)
    off.vector(a, "x"), off.vector(a, "x")
    assert a.calls == 5


# --- RETRIEVAL_QUERY_BATCHING: questions asked together are embedded together --------------------------------

class _SlowEmbedder:
    """Each text's vector is [len(text), batch size]; every call takes 50 ms; 'boom' fails its batch."""

    name = "slow"
    dim = 2

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        time.sleep(0.05)
        if "boom" in texts:
            raise RuntimeError("embedder failed")
        return [[float(len(t)), float(len(texts))] for t in texts]


def test_questions_asked_together_are_embedded_in_one_batch_each_getting_its_own_vector() -> None:
    embedder, batcher = _SlowEmbedder(), QueryBatcher(max_batch=32)
    assert batcher.vector(embedder, "lone") == [4.0, 1.0]  # alone: a batch of one, no waiting for company
    questions = ["q" * n for n in range(1, 25)]
    with ThreadPoolExecutor(24) as pool:
        vectors = list(pool.map(lambda q: batcher.vector(embedder, q), questions))
    assert [v[0] for v in vectors] == [float(len(q)) for q in questions]
    assert sorted(q for call in embedder.calls[1:] for q in call) == sorted(questions)
    assert len(embedder.calls) - 1 < len(questions) / 3  # 24 questions in a handful of forward passes
    assert max(len(call) for call in embedder.calls) > 4


def test_a_failed_batch_fails_its_callers_and_the_next_batch_works() -> None:
    embedder, batcher = _SlowEmbedder(), QueryBatcher()
    with ThreadPoolExecutor(3) as pool:
        slow = pool.submit(batcher.vector, embedder, "first")  # busy, so the next two queue up together
        time.sleep(0.01)
        failed = [pool.submit(batcher.vector, embedder, q) for q in ("boom", "bystander")]
        assert slow.result() == [5.0, 1.0]
        for future in failed:
            with pytest.raises(RuntimeError, match="embedder failed"):
                future.result()
    assert batcher.vector(embedder, "after") == [5.0, 1.0]


def test_query_vectors_use_the_batcher_for_misses_only() -> None:
    embedder, batcher = _SlowEmbedder(), QueryBatcher()
    vectors = QueryVectors(8, batcher)
    assert vectors.vector(embedder, "what  is a fee?") == vectors.vector(embedder, "what is a fee?")
    assert (vectors.hits, vectors.misses, batcher.questions) == (1, 1, 1)
