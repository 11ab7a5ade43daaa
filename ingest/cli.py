"""`python -m ingest PATH... [--collection NAME] [--tenant NAME] [--prune]` — index documents into Qdrant.

A new collection becomes the tenant's named by --tenant (default: the default tenant); an existing one keeps its
owner, and --tenant naming another tenant is refused.

Exit codes: 0 all files indexed or unchanged; 1 some files failed (the others are indexed);
2 bad usage; 3 the index is locked or a component is unavailable.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from assistant.components import Components
from assistant.errors import FinragError
from assistant.settings import Settings
from assistant.tenancy import DEFAULT_TENANT, CollectionOwners

from .pipeline import Ingestor


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(
        prog="python -m ingest",
        description="Parse, chunk and embed PDF, HTML, TXT and Markdown files into Qdrant.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="files or folders (folders are walked)")
    parser.add_argument("--collection", help="Qdrant collection (default: COLLECTION setting)")
    parser.add_argument("--tenant", help="tenant that owns a new collection (default: 'default'); checked for an "
                        "existing one")
    parser.add_argument("--prune", action="store_true", help="remove chunks of files that no longer exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--if-empty", action="store_true",
                        help="do nothing when the collection already holds documents (used by `make run`)")
    args = parser.parse_args(argv)

    settings = Settings.load()
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    collection = args.collection or settings.collection
    components = Components(settings)
    try:
        if args.if_empty and (n := components.store.count(collection)):
            print(f"collection {collection!r} already holds {n} chunks; nothing to do (--if-empty)")
            return 0
        exists = collection in components.store.collections()
        owners = CollectionOwners(components.engine)
        if args.tenant is not None or not exists:
            owners.claim(collection, args.tenant or DEFAULT_TENANT, exists=exists)
        report = Ingestor(components).ingest(args.paths, collection, prune=args.prune, progress=not args.quiet)
    except FinragError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 3
    finally:
        components.close()
    print(f"collection: {collection}")
    print(report.summary())
    return 1 if report.failed else 0
