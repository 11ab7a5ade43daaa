"""Copy a collection between embedded engines without re-embedding: qdrant-client local mode → Qdrant Edge.

    python -m ingest.copy_index --from data/qdrant --to data/qdrant-edge [--collection NAME ...]

Dense and BM25 vectors and payloads are copied as they are (point ids included), so the ingest registry
(SQLite) stays valid: point QDRANT_ENGINE=edge and QDRANT_PATH at the target afterwards. Both directories
must be free (stop the assistant first). Exit status: 0 copied, 2 bad arguments or a locked index.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from qdrant_client import QdrantClient, models
from tqdm import tqdm

from assistant.chunks import Chunk
from assistant.edge_store import EdgeStore
from assistant.errors import FinragError
from assistant.sparse import SparseVector
from assistant.store import DENSE, SPARSE, QdrantStore

BATCH = 512


def copy_collection(client: QdrantClient, target: EdgeStore, collection: str, progress: bool = True) -> int:
    info = client.get_collection(collection)
    params = info.config.params.vectors
    dim = params[DENSE].size if isinstance(params, dict) else None
    if dim is None:
        raise FinragError(f"collection {collection!r} has no named dense vector (built by an older finrag)")
    target.ensure_collection(collection, dim)
    total = client.count(collection, exact=True).count
    copied, offset = 0, None
    with tqdm(total=total, desc=collection, unit="pt", disable=not progress) as bar:
        while True:
            points, offset = client.scroll(collection, limit=BATCH, offset=offset, with_payload=True,
                                           with_vectors=True)
            if points:
                chunks = [Chunk.from_payload(p.payload or {}) for p in points]
                vectors = [_named(p.vector)[DENSE] for p in points]
                sparse = [_sparse(_named(p.vector).get(SPARSE)) for p in points]
                target.upsert(collection, chunks, vectors, sparse)  # type: ignore[arg-type]
                copied += len(points)
                bar.update(len(points))
            if offset is None:
                break
    return copied


def _named(vector: object) -> dict[str, object]:
    return vector if isinstance(vector, dict) else {DENSE: vector}


def _sparse(vector: object) -> SparseVector:
    if isinstance(vector, models.SparseVector):
        return SparseVector(list(vector.indices), list(vector.values))
    return SparseVector([], [])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest.copy_index", description=__doc__.split("\n")[0])
    parser.add_argument("--from", dest="source", type=Path, required=True, help="qdrant-client local-mode directory")
    parser.add_argument("--to", dest="target", type=Path, required=True, help="Qdrant Edge directory")
    parser.add_argument("--collection", action="append", help="collection(s) to copy (default: all)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        source = QdrantStore.embedded_at(str(args.source))
        target = EdgeStore.open(args.target)
    except FinragError as exc:
        print(f"copy_index: {exc.message}", file=sys.stderr)
        return 2
    try:
        names = args.collection or source.collections()
        for name in names:
            n = copy_collection(source.client, target, name, progress=not args.quiet)
            print(f"{name}: {n} points copied to {args.target}")
    finally:
        source.close()
        target.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
