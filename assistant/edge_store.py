"""Qdrant Edge: Qdrant's own engine in-process (`qdrant-edge-py`), one on-disk shard per collection.

`EdgeStore` keeps the `VectorStore` contract of `QdrantStore` — named vectors "dense" (cosine) and "bm25"
(sparse, IDF modifier), the chunk as payload, the same filters, scores and errors — but searches in Rust
(HNSW, an inverted sparse index, payload indexes) instead of qdrant-client local mode's Python loops.

    ROOT/.lock                    held while a store is open: one process owns ROOT, as with embedded Qdrant
    ROOT/<collection>/            an `EdgeShard` (edge_config.json, segments/, wal/)

Where the engines could differ, this store pins qdrant-client's behaviour:
- RRF takes its constant and weights from `Fusion` (k = 2, equal weights: the Qdrant server's and
  qdrant-client's plain RRF); Edge has no default and is always told both.
- IDF is computed over the live points that carry a "bm25" vector (`IdfParams(corpus=<all>)`), as local
  mode does. Edge's collection-wide statistics read the sparse index, which keeps counting deleted points
  until an optimizer vacuums them, and leaves out points whose sparse vector is empty.
- Searches are exact (brute force) until `optimize()` builds HNSW for segments past the indexing threshold;
  from then on dense search is approximate, as on a Qdrant server.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import qdrant_edge as qe
from qdrant_client import models

from .chunks import FILTERABLE_FIELDS, INTEGER_FIELDS, Chunk, ScoredChunk
from .errors import BadRequest, ComponentUnavailable, IndexLocked, UnknownCollection
from .sparse import SparseVector
from .store import (
    DENSE,
    SPARSE,
    Filters,
    Fusion,
    build_doc_filter,
    build_filter,
    check_dimension,
    check_vectors,
    dimension_mismatch,
)

log = logging.getLogger(__name__)

_BATCH = 512
_CONFIG_FILE = "edge_config.json"  # written by EdgeShard.create: the shard's vector configuration
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
# IDF over every live point with a sparse vector (an empty `must` matches all), as qdrant-client local mode.
_IDF_LIVE = qe.SearchParams(idf=qe.IdfParams(corpus=qe.Filter(must=[])))


class EdgeStore:
    """Qdrant Edge shards under one root directory; cosine distance; one point per chunk, the chunk as payload."""

    embedded = True

    def __init__(self, root: Path, lock: IO[str]) -> None:
        self.root = root
        self._lock_file: IO[str] | None = lock
        self._shards: dict[str, qe.EdgeShard] = {}
        self._guard = threading.Lock()  # the open shards
        self._creating = threading.Lock()  # one ensure_collection at a time

    @classmethod
    def open(cls, path: str | Path) -> EdgeStore:
        """The store in `path` (created if absent). Only one process may hold it at a time."""
        import portalocker

        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        fh = (root / ".lock").open("a+")
        try:
            portalocker.lock(fh, portalocker.LOCK_EX | portalocker.LOCK_NB)
        except portalocker.exceptions.LockException:
            fh.close()
            raise _locked(root) from None
        return cls(root, fh)

    # --- collections -------------------------------------------------------------------------------------

    def _path(self, collection: str) -> Path | None:
        """The shard directory of `collection`, or None for a name that cannot be one."""
        if not _NAME.fullmatch(collection):
            return None
        return self.root / collection

    def _exists(self, collection: str) -> bool:
        path = self._path(collection)
        return path is not None and (path / _CONFIG_FILE).is_file()

    def _shard(self, collection: str) -> qe.EdgeShard:
        with self._guard:
            if self._lock_file is None:
                raise ComponentUnavailable("the vector store is closed")
            shard = self._shards.get(collection)
            if shard is not None:
                return shard
            path = self._path(collection)
            if path is None or not (path / _CONFIG_FILE).is_file():
                raise UnknownCollection(
                    f"collection {collection!r} does not exist; ingest documents into it first "
                    f"(python -m ingest PATH --collection {collection})"
                )
            try:
                shard = qe.EdgeShard.load(str(path))
            except Exception as exc:  # the shard's WAL lock: another process opened it without our root lock
                if "WouldBlock" in str(exc):
                    raise _locked(self.root) from exc
                raise
            self._shards[collection] = shard
            return shard

    def ensure_collection(self, collection: str, dim: int) -> None:
        with self._creating:
            self._ensure_collection(collection, dim)

    def _ensure_collection(self, collection: str, dim: int) -> None:
        path = self._path(collection)
        if path is None:
            raise BadRequest(
                f"{collection!r} cannot name a collection: use letters, digits, '_', '-' and '.', "
                "starting with a letter or digit"
            )
        if (path / _CONFIG_FILE).is_file():
            vectors = json.loads((path / _CONFIG_FILE).read_text(encoding="utf-8")).get("vectors") or {}
            dense = vectors.get(DENSE)
            if dense is None:
                raise ComponentUnavailable(
                    f"collection {collection!r} has no named dense vector; delete {path} and ingest again"
                )
            check_dimension(collection, dense["size"], dim)
            shard = self._shard(collection)
            self._index_payload(shard, existing=shard.info().payload_schema)  # fields added since it was made
            return
        if path.exists():  # a creation killed midway left segments without a config: nothing was ever stored there
            log.warning("removing %s: the leftovers of a collection whose creation was interrupted", path)
            shutil.rmtree(path)
        log.info("creating collection %s (%d-d, cosine) in %s", collection, dim, self.root)
        config = qe.EdgeConfig(
            vectors={DENSE: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)},
            sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        )
        with self._guard:
            if self._lock_file is None:
                raise ComponentUnavailable("the vector store is closed")
            shard = qe.EdgeShard.create(str(path), config)
            self._shards[collection] = shard
        self._index_payload(shard, existing={})

    @staticmethod
    def _index_payload(shard: qe.EdgeShard, existing: Mapping[str, Any]) -> None:
        """Index every filterable field not indexed yet: integer for INTEGER_FIELDS, keyword otherwise."""
        for key in FILTERABLE_FIELDS:
            if key not in existing:
                schema = qe.PayloadSchemaType.Integer if key in INTEGER_FIELDS else qe.PayloadSchemaType.Keyword
                shard.update(qe.UpdateOperation.create_field_index(key, schema))

    def payload_indexes(self, collection: str) -> dict[str, str]:
        """The indexed payload fields of a collection and their types ("keyword", "integer")."""
        schema = self._shard(collection).info().payload_schema
        return {key: str(info.data_type).rsplit(".", 1)[-1].lower() for key, info in sorted(schema.items())}

    def collections(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / _CONFIG_FILE).is_file())

    def drop_collection(self, collection: str) -> None:
        """Delete a collection and its files (nothing happens when it does not exist)."""
        path = self._path(collection)
        if path is None or not path.exists():
            return
        with self._guard:
            shard = self._shards.pop(collection, None)
            if shard is not None:
                shard.close()
        shutil.rmtree(path)

    # --- points ------------------------------------------------------------------------------------------

    def upsert(
        self, collection: str, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]],
        sparse: Sequence[SparseVector] | None = None,
    ) -> None:
        check_vectors(chunks, vectors, sparse)
        shard = self._shard(collection)
        points = []
        for i, (chunk, vector) in enumerate(zip(chunks, vectors, strict=True)):
            named: dict[str, Any] = {DENSE: [float(x) for x in vector]}
            if sparse is not None:
                named[SPARSE] = qe.SparseVector(sparse[i].indices, sparse[i].values)
            points.append(qe.Point(chunk.id, named, chunk.payload()))
        for start in range(0, len(points), _BATCH):
            shard.update(qe.UpdateOperation.upsert_points(points[start : start + _BATCH]))

    def delete_document(self, collection: str, doc_id: str, keep_file_hash: str | None = None,
                        keep_chunks: int | None = None) -> None:
        """Delete a document's chunks; with `keep_file_hash`, only those of other file versions, and with
        `keep_chunks` too, that version's chunks from index `keep_chunks` on (left by a chunking that made more)."""
        if not self._exists(collection):
            return
        must_not: list[Any] = []
        if keep_file_hash is not None:
            kept: list[Any] = [_match("file_hash", keep_file_hash)]
            if keep_chunks is not None:
                kept.append(qe.FieldCondition(key="chunk_index", range=qe.RangeFloat(lt=float(keep_chunks))))
            must_not.append(qe.Filter(must=kept))
        selector = qe.Filter(must=[_match("doc_id", doc_id)], must_not=must_not)
        self._shard(collection).update(qe.UpdateOperation.delete_points_by_filter(selector))

    def count(self, collection: str, doc_id: str | None = None) -> int:
        if not self._exists(collection):
            return 0
        request = qe.CountRequest(exact=True, filter=edge_filter(build_doc_filter(doc_id)))
        return int(self._shard(collection).count(request))

    def search(
        self, collection: str, vector: Sequence[float] | None, limit: int, filters: Filters | None = None,
        sparse: SparseVector | None = None, candidates: int | None = None, fusion: Fusion | None = None,
    ) -> list[ScoredChunk]:
        shard = self._shard(collection)
        flt = edge_filter(build_filter(filters))
        if vector is None:  # BM25 alone (a question of stop words only finds nothing)
            if sparse is None or not sparse.indices:
                return []
            request = qe.QueryRequest(
                limit=limit, query=_sparse_query(sparse), filter=flt, params=_IDF_LIVE, with_payload=True
            )
        elif sparse is None or not sparse.indices:
            request = qe.QueryRequest(limit=limit, query=_dense_query(vector), filter=flt, with_payload=True)
        else:
            depth = max(candidates or limit, limit)
            rrf = fusion or Fusion()
            request = qe.QueryRequest(
                limit=limit,
                prefetches=[
                    qe.Prefetch(limit=depth, query=_dense_query(vector), filter=flt),
                    qe.Prefetch(limit=depth, query=_sparse_query(sparse), filter=flt, params=_IDF_LIVE),
                ],
                # the 0.9.0 stubs leave Fusion.Rrf out of the query types QueryRequest takes
                query=qe.Fusion.Rrf(k=rrf.k, weights=[rrf.dense_weight, rrf.sparse_weight]),  # type: ignore[arg-type]
                with_payload=True,
            )
        try:
            points = shard.query(request)
        except Exception as exc:  # qdrant_edge raises plain Exceptions
            if (mismatch := dimension_mismatch(collection, exc)) is not None:
                raise mismatch from None
            raise
        return [
            ScoredChunk(chunk=Chunk.from_payload(p.payload or {}), score=float(p.score), point_id=str(p.id))
            for p in points
        ]

    def scroll_chunks(
        self, collection: str, batch: int = 512, doc_id: str | None = None
    ) -> Iterable[tuple[str, Chunk]]:
        """Every chunk of a collection, or of one document's (baselines, maintenance, the document view)."""
        shard = self._shard(collection)
        flt = edge_filter(build_doc_filter(doc_id))
        offset: Any = None
        while True:
            records, offset = shard.scroll(
                qe.ScrollRequest(offset=offset, limit=batch, filter=flt, with_payload=True, with_vector=False)
            )
            for r in records:
                yield str(r.id), Chunk.from_payload(r.payload or {})
            if offset is None:
                return

    def points(self, collection: str, batch: int = 512) -> Iterable[tuple[str, dict[str, Any], dict[str, Any]]]:
        """Every point as stored: (id, payload, vectors) with vectors {"dense": [floats], "bm25": ([indices],
        [values])} (checks that an index is what an uninterrupted ingest makes, and backups)."""
        shard = self._shard(collection)
        offset: Any = None
        while True:
            records, offset = shard.scroll(
                qe.ScrollRequest(offset=offset, limit=batch, with_payload=True, with_vector=True)
            )
            for r in records:
                named = r.vector if isinstance(r.vector, dict) else {DENSE: r.vector}
                vectors = {name: (list(v.indices), list(v.values)) if isinstance(v, qe.SparseVector) else list(v or [])
                           for name, v in named.items()}
                yield str(r.id), dict(r.payload or {}), vectors
            if offset is None:
                return

    def get_chunks(self, collection: str, point_ids: Sequence[str]) -> dict[str, Chunk]:
        if not point_ids:
            return {}
        records = self._shard(collection).retrieve(list(point_ids), True, False)
        return {str(r.id): Chunk.from_payload(r.payload or {}) for r in records}

    # --- maintenance -------------------------------------------------------------------------------------

    def optimize(self, collection: str) -> bool:
        """Vacuum deleted points, merge segments and build HNSW for large ones (blocking; seconds for 10k
        points). Edge runs no optimizer in the background. True if anything changed."""
        return bool(self._shard(collection).optimize())

    def release_shards(self) -> None:
        """Close every open shard (each flushes to disk) but keep ROOT's lock: the files are then complete and no
        other process can change them, so they can be copied as they are (assistant.backup). Later calls reopen."""
        with self._guard:
            for shard in self._shards.values():
                shard.close()
            self._shards.clear()

    def close(self) -> None:
        with self._guard:
            for shard in self._shards.values():
                shard.close()
            self._shards.clear()
            if self._lock_file is not None:
                self._lock_file.close()  # closing the handle releases the lock
                self._lock_file = None


def edge_filter(flt: models.Filter | None) -> qe.Filter | None:
    """The Edge twin of a qdrant-client filter made by `build_filter` / `build_doc_filter` (field matches, and the
    tenant's nested `should` with an is-empty condition)."""
    if flt is None:
        return None
    return qe.Filter(must=[_condition(c) for c in _conditions(flt.must)],
                     should=[_condition(c) for c in _conditions(flt.should)] or None,
                     must_not=[_condition(c) for c in _conditions(flt.must_not)])


def _conditions(part: Any) -> list[Any]:
    if part is None:
        return []
    return list(part) if isinstance(part, list) else [part]


def _condition(condition: Any) -> Any:
    if isinstance(condition, models.Filter):
        return edge_filter(condition)
    if isinstance(condition, models.IsEmptyCondition):
        return qe.IsEmptyCondition(key=condition.is_empty.key)
    if isinstance(condition, models.FieldCondition):
        if isinstance(condition.match, models.MatchValue):
            return qe.FieldCondition(key=condition.key, match=qe.MatchValue(value=condition.match.value))
        if isinstance(condition.match, models.MatchAny):
            return qe.FieldCondition(key=condition.key, match=qe.MatchAny(any=condition.match.any))
    raise TypeError(f"no Qdrant Edge translation for filter condition {condition!r}")


def _match(key: str, value: str) -> qe.FieldCondition:
    return qe.FieldCondition(key=key, match=qe.MatchValue(value=value))


def _dense_query(vector: Sequence[float]) -> qe.Query:
    return qe.Query.Nearest([float(x) for x in vector], using=DENSE)


def _sparse_query(sparse: SparseVector) -> qe.Query:
    return qe.Query.Nearest(qe.SparseVector(list(sparse.indices), list(sparse.values)), using=SPARSE)


def _locked(root: Path) -> IndexLocked:
    return IndexLocked(
        f"the embedded index at {root} is open in another process (is the assistant running?). "
        "Stop it, ingest through its API, or point QDRANT_URL at a Qdrant server."
    )
