"""Vector stores hold chunks and their vectors. The seam callers use is `VectorStore.search`.

`QdrantStore` serves both embedded Qdrant (`QdrantClient(path=...)`) and a Qdrant server
(`QdrantClient(url=...)`) with the same code; which one is picked in `assistant.components`.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from .chunks import DEFAULT_TENANT, FILTERABLE_FIELDS, INTEGER_FIELDS, TENANT_FIELD, Chunk, ScoredChunk
from .errors import ComponentUnavailable, IndexLocked, InvalidFilter, UnknownCollection
from .sparse import SparseVector

log = logging.getLogger(__name__)

FilterValue = str | int | list[str] | list[int]
Filters = Mapping[str, FilterValue]


DENSE = "dense"
SPARSE = "bm25"


@dataclass(frozen=True)
class Fusion:
    """Weighted reciprocal-rank fusion: score = Σ 1 / (rank / weight + k - 1) over the two rankings
    (Qdrant's formula; rank is 1-based). Equal weights and k = 2 are Qdrant's plain RRF."""

    k: int = 2
    dense_weight: float = 1.0
    sparse_weight: float = 1.0

    def rrf(self) -> models.Rrf:
        return models.Rrf(k=self.k, weights=[self.dense_weight, self.sparse_weight])


class VectorStore(Protocol):
    def search(
        self, collection: str, vector: Sequence[float] | None, limit: int, filters: Filters | None = None,
        sparse: SparseVector | None = None, candidates: int | None = None, fusion: Fusion | None = None,
    ) -> list[ScoredChunk]:
        """The `limit` best chunks that pass `filters`, best first: nearest to `vector`; with `sparse`,
        dense and BM25 candidates (`candidates` of each) fused by reciprocal rank (`fusion`: its constant
        and per-retriever weights); with `sparse` and no `vector`, BM25 alone."""
        ...

    def ensure_collection(self, collection: str, dim: int) -> None: ...
    def upsert(
        self, collection: str, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]],
        sparse: Sequence[SparseVector] | None = None,
    ) -> None: ...
    def delete_document(
        self, collection: str, doc_id: str, keep_file_hash: str | None = None, keep_chunks: int | None = None
    ) -> None:
        """A document's chunks deleted; with `keep_file_hash`, only those of other file versions, and with
        `keep_chunks` too, that version's chunks from index `keep_chunks` on (left by a chunking that made more)."""
        ...
    def count(self, collection: str, doc_id: str | None = None) -> int: ...
    def scroll_chunks(
        self, collection: str, batch: int = 512, doc_id: str | None = None
    ) -> Iterable[tuple[str, Chunk]]:
        """(point id, chunk) of every chunk of a collection, or of one document's with `doc_id`."""
        ...
    def get_chunks(self, collection: str, point_ids: Sequence[str]) -> dict[str, Chunk]:
        """The chunks of the given point ids that exist (missing ids are left out)."""
        ...

    def collections(self) -> list[str]: ...
    def close(self) -> None: ...


def build_filter(filters: Filters | None) -> models.Filter | None:
    """Translate `{"field": value | [values]}` into a Qdrant payload filter (all must hold).

    A list matches any of its values. Integer fields (`INTEGER_FIELDS`, e.g. fiscal_year) also take digit
    strings ("2023"), as a command line passes them; a list-valued payload (quarters) matches when any of its
    items does. `tenant` keeps that tenant's chunks (`tenant_condition`).
    """
    if not filters:
        return None
    if not isinstance(filters, Mapping):
        raise InvalidFilter('filters must be an object of field: value, e.g. {"ticker": "AAPL"}')
    must: list[models.Condition] = []
    for key, value in filters.items():
        if key == TENANT_FIELD:
            must.append(tenant_condition(value))
            continue
        if key not in FILTERABLE_FIELDS:
            raise InvalidFilter(
                f"cannot filter on {key!r}; filterable fields are: {', '.join(FILTERABLE_FIELDS)}"
            )
        if isinstance(value, list):
            if not value or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in value):
                raise InvalidFilter(f"filter {key!r} needs a non-empty list of strings or integers")
            any_of: list[int] | list[str]
            if key in INTEGER_FIELDS or all(isinstance(v, int) for v in value):
                any_of = [integer_value(key, v) for v in value]
            elif all(isinstance(v, str) for v in value):
                any_of = [str(v) for v in value]
            else:
                raise InvalidFilter(f"filter {key!r} mixes strings and integers; give a list of one or the other")
            must.append(models.FieldCondition(key=key, match=models.MatchAny(any=any_of)))
        elif isinstance(value, str | int) and not isinstance(value, bool):
            one = integer_value(key, value) if key in INTEGER_FIELDS or isinstance(value, int) else value
            must.append(models.FieldCondition(key=key, match=models.MatchValue(value=one)))
        else:
            raise InvalidFilter(f"filter {key!r} must be a string, an integer or a list of them")
    return models.Filter(must=must)


def tenant_condition(tenant: object) -> models.Filter:
    """Chunks of `tenant`; for the default tenant also chunks with no tenant (indexed before tenants existed)."""
    if not isinstance(tenant, str) or not tenant:
        raise InvalidFilter("filter 'tenant' must be a tenant name")
    same: list[models.Condition] = [models.FieldCondition(key=TENANT_FIELD, match=models.MatchValue(value=tenant))]
    if tenant == DEFAULT_TENANT:
        same.append(models.IsEmptyCondition(is_empty=models.PayloadField(key=TENANT_FIELD)))
    return models.Filter(should=same)


def integer_value(key: str, value: str | int) -> int:
    """The value of an integer field (`INTEGER_FIELDS`), from an int or a digit string ("2023"); a 64-bit one, as
    payloads hold."""
    try:
        number = value if isinstance(value, int) else int(value.strip())
    except ValueError:
        raise InvalidFilter(f"{key} takes an integer (whole years and other integers, e.g. 2023), "
                            f"got {str(value)[:40]!r}") from None
    if not -(2**63) <= number < 2**63:
        raise InvalidFilter(f"filter {key!r}: {str(number)[:40]} is out of range (64-bit integers)")
    return number


def check_vectors(chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]],
                  sparse: Sequence[SparseVector] | None) -> None:
    """Every store's upsert: one dense (and, if given, one sparse) vector per chunk."""
    if len(chunks) != len(vectors) or (sparse is not None and len(sparse) != len(chunks)):
        raise ValueError("one vector per chunk")


# Qdrant (server and Edge): "Vector dimension error: expected dim: 384, got 256"; qdrant-client's local mode lets
# numpy say it: "shapes (5,384) and (256,) not aligned: 384 (dim 1) != 256 (dim 0)".
_DIMENSION_ERROR = re.compile(r"[Vv]ector dimension error: expected dim: (\d+), got (\d+)|"
                              r"not aligned: (\d+) \(dim 1\) != (\d+) \(dim 0\)")


def dimension_mismatch(collection: str, error: Exception) -> ComponentUnavailable | None:
    """A search whose question vector has another size than the collection's (the embedder changed since it was
    indexed, e.g. EMBEDDING_BACKEND=static over a MiniLM index), as Qdrant Edge and servers report it."""
    text = str(error)
    if isinstance(error, UnexpectedResponse) and error.content:
        text += error.content.decode("utf-8", "replace")
    found = _DIMENSION_ERROR.search(text)
    if not found:
        return None
    size, dim = (found[1], found[2]) if found[1] else (found[3], found[4])
    return _other_size(collection, int(size), int(dim))


def check_dimension(collection: str, size: int, dim: int) -> None:
    """Every store's ensure_collection: an existing collection must hold vectors of the embedder's size."""
    if size != dim:
        raise _other_size(collection, size, dim)


def _other_size(collection: str, size: int, dim: int) -> ComponentUnavailable:
    return ComponentUnavailable(
        f"collection {collection!r} holds {size}-d vectors but the embedder makes {dim}-d ones; "
        "re-ingest into a new collection (--collection) or switch the embedder back"
    )


def _payload_schema(key: str) -> models.PayloadSchemaType:
    return models.PayloadSchemaType.INTEGER if key in INTEGER_FIELDS else models.PayloadSchemaType.KEYWORD


@dataclass(frozen=True)
class Distribution:
    """How a Qdrant server lays out a new collection and applies writes (QDRANT_SHARDS, QDRANT_REPLICATION_FACTOR,
    QDRANT_WRITE_CONSISTENCY, QDRANT_WRITE_ORDERING). None leaves it to the server's defaults."""

    shards: int | None = None
    replication_factor: int | None = None
    write_consistency: int | None = None
    write_ordering: Literal["weak", "medium", "strong"] | None = None

    def __post_init__(self) -> None:
        for key in ("shards", "replication_factor", "write_consistency"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be 1 or more, got {value}")
        if self.write_consistency is not None and self.write_consistency > (self.replication_factor or 1):
            raise ValueError("write_consistency must not exceed replication_factor")

    @property
    def ordering(self) -> models.WriteOrdering | None:
        return None if self.write_ordering is None else models.WriteOrdering(self.write_ordering)


class QdrantStore:
    """Qdrant through qdrant-client; cosine distance; one point per chunk, the chunk as payload.

    On a server, `distribution` lays out the collections it creates (shards, replicas, write consistency) and
    orders point writes across replicas; every write waits until applied (`wait=True`), so a count or search
    right after an ingest sees it.
    """

    def __init__(self, client: QdrantClient, *, embedded: bool, distribution: Distribution | None = None) -> None:
        self._client = client
        self.embedded = embedded
        self.distribution = distribution or Distribution()

    @classmethod
    def embedded_at(cls, path: str) -> QdrantStore:
        """Embedded Qdrant in `path`. Only one process may hold it: check the lock before loading."""
        import portalocker

        locked = IndexLocked(
            f"the embedded index at {path} is open in another process (is the assistant running?). "
            "Stop it, ingest through its API, or point QDRANT_URL at a Qdrant server."
        )
        lock_file = Path(path) / ".lock"
        if lock_file.exists():
            with lock_file.open("r+") as fh:
                try:
                    portalocker.lock(fh, portalocker.LOCK_EX | portalocker.LOCK_NB)
                except portalocker.exceptions.LockException:
                    raise locked from None
                portalocker.unlock(fh)
        try:
            client = QdrantClient(path=path)
        except RuntimeError as exc:
            if "already accessed by another instance" in str(exc):
                raise locked from exc
            raise
        return cls(client, embedded=True)

    @property
    def client(self) -> QdrantClient:
        """The underlying qdrant-client (maintenance tools such as ingest.copy_index)."""
        return self._client

    @classmethod
    def server(cls, url: str, api_key: str | None = None, timeout_s: float = 30.0,
               distribution: Distribution | None = None) -> QdrantStore:
        """A Qdrant server (or cluster node) over HTTP at `url`."""
        client = QdrantClient(url=url, api_key=api_key, timeout=max(1, math.ceil(timeout_s)), prefer_grpc=False)
        return cls(_Reachable(client, url), embedded=False, distribution=distribution)  # type: ignore[arg-type]

    def ensure_collection(self, collection: str, dim: int) -> None:
        if self._client.collection_exists(collection):
            info = self._client.get_collection(collection)
            params = info.config.params.vectors
            dense = params.get(DENSE) if isinstance(params, dict) else None
            if dense is None:
                raise ComponentUnavailable(
                    f"collection {collection!r} was built by an older finrag (no named dense/bm25 vectors); "
                    "delete it (or DATA_DIR/qdrant) and ingest again"
                )
            check_dimension(collection, dense.size, dim)
            self._note_other_layout(collection, info.config.params)
            self._create_payload_indexes(collection, existing=info.payload_schema)
            return
        d = self.distribution
        log.info("creating collection %s (%d-d, cosine; shards %s, replicas %s, write consistency %s)",
                 collection, dim, d.shards or "default", d.replication_factor or "default",
                 d.write_consistency or "default")
        self._client.create_collection(
            collection,
            vectors_config={DENSE: models.VectorParams(size=dim, distance=models.Distance.COSINE)},
            sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
            shard_number=d.shards, replication_factor=d.replication_factor,
            write_consistency_factor=d.write_consistency,
            # a server keeps payloads (chunk text) on disk and only the indexed fields in RAM
            on_disk_payload=None if self.embedded else True,
        )
        self._create_payload_indexes(collection, existing={})

    def _note_other_layout(self, collection: str, params: models.CollectionParams) -> None:
        """Distribution settings apply to new collections only: say so when an existing one differs."""
        d = self.distribution
        wanted = {"shard_number": d.shards, "replication_factor": d.replication_factor,
                  "write_consistency_factor": d.write_consistency}
        differ = {k: (getattr(params, k, None), v) for k, v in wanted.items()
                  if v is not None and getattr(params, k, None) not in (None, v)}
        if differ:
            log.warning("collection %s keeps the layout it was created with (%s): QDRANT_SHARDS, "
                        "QDRANT_REPLICATION_FACTOR and QDRANT_WRITE_CONSISTENCY apply to new collections (change "
                        "an existing one with Qdrant's collection and cluster APIs)", collection,
                        ", ".join(f"{k} {have}, settings {want}" for k, (have, want) in differ.items()))

    def _create_payload_indexes(self, collection: str, existing: Mapping[str, Any]) -> None:
        """Index every filterable field not indexed yet (integer for INTEGER_FIELDS, keyword otherwise).

        A collection from an older finrag gets the fields added since. Embedded Qdrant accepts the calls, keeps
        no index (it filters by scanning) and reports no schema, so it is asked each time, at no cost.
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Payload indexes have no effect in the local Qdrant",
                                    category=UserWarning)
            for key in FILTERABLE_FIELDS:
                if key not in existing:
                    self._client.create_payload_index(collection, key, _payload_schema(key))

    def upsert(
        self, collection: str, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]],
        sparse: Sequence[SparseVector] | None = None,
    ) -> None:
        check_vectors(chunks, vectors, sparse)
        points = []
        for i, (chunk, vector) in enumerate(zip(chunks, vectors, strict=True)):
            named: dict[str, Any] = {DENSE: list(vector)}
            if sparse is not None:
                named[SPARSE] = models.SparseVector(indices=sparse[i].indices, values=sparse[i].values)
            points.append(models.PointStruct(id=chunk.id, vector=named, payload=chunk.payload()))
        for start in range(0, len(points), 256):
            self._client.upsert(collection, points[start : start + 256], wait=True,
                                ordering=self.distribution.ordering)

    def delete_document(self, collection: str, doc_id: str, keep_file_hash: str | None = None,
                        keep_chunks: int | None = None) -> None:
        """Delete a document's chunks; with `keep_file_hash`, only those of other file versions, and with
        `keep_chunks` too, that version's chunks from index `keep_chunks` on (left by a chunking that made more)."""
        if not self._client.collection_exists(collection):
            return
        must_not: list[models.Condition] = []
        if keep_file_hash is not None:
            kept: list[models.Condition] = [
                models.FieldCondition(key="file_hash", match=models.MatchValue(value=keep_file_hash))]
            if keep_chunks is not None:
                kept.append(models.FieldCondition(key="chunk_index", range=models.Range(lt=keep_chunks)))
            must_not.append(models.Filter(must=kept))
        selector = models.Filter(
            must=[models.FieldCondition(key="doc_id", match=models.MatchValue(value=doc_id))],
            must_not=must_not or None,
        )
        self._client.delete(collection, points_selector=models.FilterSelector(filter=selector), wait=True,
                            ordering=self.distribution.ordering)

    def count(self, collection: str, doc_id: str | None = None) -> int:
        if not self._client.collection_exists(collection):
            return 0
        flt = build_doc_filter(doc_id)
        return int(self._client.count(collection, count_filter=flt, exact=True).count)

    def search(
        self, collection: str, vector: Sequence[float] | None, limit: int, filters: Filters | None = None,
        sparse: SparseVector | None = None, candidates: int | None = None, fusion: Fusion | None = None,
    ) -> list[ScoredChunk]:
        flt = build_filter(filters)
        no_terms = sparse is None or not sparse.indices
        if limit < 1 or (vector is None and no_terms):  # BM25 alone, a question of stop words: nothing
            self._require(collection)
            return []
        with _collection_of(collection):  # one round trip to a server: no separate existence check
            if vector is None:
                assert sparse is not None
                response = self._client.query_points(
                    collection, query=models.SparseVector(indices=sparse.indices, values=sparse.values),
                    using=SPARSE, limit=limit, query_filter=flt, with_payload=True,
                )
            elif sparse is None or no_terms:
                response = self._client.query_points(
                    collection, query=list(vector), using=DENSE, limit=limit, query_filter=flt, with_payload=True
                )
            else:
                depth = max(candidates or limit, limit)
                response = self._client.query_points(
                    collection,
                    prefetch=[
                        models.Prefetch(query=list(vector), using=DENSE, limit=depth, filter=flt),
                        models.Prefetch(
                            query=models.SparseVector(indices=sparse.indices, values=sparse.values),
                            using=SPARSE, limit=depth, filter=flt,
                        ),
                    ],
                    query=models.RrfQuery(rrf=(fusion or Fusion()).rrf()),
                    limit=limit, with_payload=True,
                )
        return [
            ScoredChunk(chunk=Chunk.from_payload(p.payload or {}), score=float(p.score), point_id=str(p.id))
            for p in response.points
        ]

    def scroll_chunks(
        self, collection: str, batch: int = 512, doc_id: str | None = None
    ) -> Iterable[tuple[str, Chunk]]:
        """Every chunk of a collection, or of one document's (baselines, maintenance, the document view)."""
        offset: Any = None
        flt = build_doc_filter(doc_id)
        while True:
            with _collection_of(collection):
                points, offset = self._client.scroll(collection, scroll_filter=flt, limit=batch, offset=offset,
                                                     with_payload=True)
            for p in points:
                yield str(p.id), Chunk.from_payload(p.payload or {})
            if offset is None:
                return

    def get_chunks(self, collection: str, point_ids: Sequence[str]) -> dict[str, Chunk]:
        if not point_ids:
            return {}
        for point_id in point_ids:  # as Qdrant Edge does; local mode would ignore it, a server answers 400
            try:
                uuid.UUID(point_id)
            except ValueError:
                raise ValueError(f"failed to parse {point_id} as UUID: point ids are UUIDs") from None
        with _collection_of(collection):
            points = self._client.retrieve(collection, ids=list(point_ids), with_payload=True)
        return {str(p.id): Chunk.from_payload(p.payload or {}) for p in points}

    def collections(self) -> list[str]:
        return sorted(c.name for c in self._client.get_collections().collections)

    def _require(self, collection: str) -> None:
        if not self._client.collection_exists(collection):
            raise _unknown(collection)

    def drop_collection(self, collection: str) -> None:
        """Delete a collection (nothing happens when it does not exist)."""
        if self._client.collection_exists(collection):
            self._client.delete_collection(collection)

    def close(self) -> None:
        self._client.close()


def _unknown(collection: str) -> UnknownCollection:
    return UnknownCollection(
        f"collection {collection!r} does not exist; ingest documents into it first "
        f"(python -m ingest PATH --collection {collection})"
    )


class _Reachable:
    """A server's client whose outages are ComponentUnavailable (503 with the reason): refused connections and
    timeouts, and 5xx answers (a node restarting, a cluster without a leader). Every call is tried afresh, so the
    API recovers by itself when the server is back."""

    def __init__(self, client: QdrantClient, url: str) -> None:
        self._client = client
        self._url = url

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except ResponseHandlingException as exc:
                raise ComponentUnavailable(f"the Qdrant server at {self._url} cannot be reached: {exc}") from exc
            except UnexpectedResponse as exc:
                if exc.status_code is not None and exc.status_code >= 500:
                    detail = exc.content.decode("utf-8", "replace")[:200] if exc.content else exc.reason_phrase
                    raise ComponentUnavailable(
                        f"the Qdrant server at {self._url} answered {exc.status_code}: {detail}"
                    ) from exc
                raise

        return call


@contextmanager
def _collection_of(collection: str) -> Iterator[None]:
    """A missing collection, as local mode (ValueError) and a server (404) report it, is UnknownCollection."""
    try:
        yield
    except UnexpectedResponse as exc:
        if exc.status_code == 404:
            raise _unknown(collection) from None
        if (mismatch := dimension_mismatch(collection, exc)) is not None:
            raise mismatch from None
        raise
    except ValueError as exc:
        if str(exc) == f"Collection {collection} not found":
            raise _unknown(collection) from None
        if (mismatch := dimension_mismatch(collection, exc)) is not None:
            raise mismatch from None
        raise


def build_doc_filter(doc_id: str | None) -> models.Filter | None:
    if doc_id is None:
        return None
    return models.Filter(must=[models.FieldCondition(key="doc_id", match=models.MatchValue(value=doc_id))])
