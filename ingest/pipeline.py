"""The ingest pipeline: discover → load → chunk → embed → index, idempotent and safe to re-run.

A document is identified by (collection, resolved path). Its file hash and the pipeline fingerprint
(parser version, chunk settings, embedder) decide what happens: unchanged → nothing is embedded;
changed → new chunks are upserted first, then the old version's chunks are deleted, so a failure midway
never leaves the document without chunks; unreadable → reported, and whatever was indexed before stays.
`prune` drops documents whose files no longer exist.

`Ingestor.ingest` runs a list of paths for the CLI (progress bars, one `IngestReport`); `Ingestor.ingest_file`
runs one file and says what became of it (`FileOutcome`), for the upload API's job runner (ingest.jobs).
`on_progress(path, stage, done, total)` is told "parsing" (0, 0) before a file is read and "embedding"
(chunks done, chunks in all) before its first batch and after each.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import signal
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import sqlalchemy as sa
from tqdm import tqdm

from assistant.chunks import passage_text
from assistant.components import Components
from assistant.db import checked_collection, documents, storable
from assistant.embedding import embedder_name
from assistant.tenancy import DEFAULT_TENANT, CollectionOwners

from .loading import SUPPORTED, Limits, LoadedDocument, LoadError, PdfParser, load

if TYPE_CHECKING:
    from .chunking import Chunker

log = logging.getLogger(__name__)

_DOC_NAMESPACE = uuid.UUID("0b5d3c52-2f4e-4b43-a1a4-3f0e6c6f9a11")
# Bump when parsing or chunking changes what a file turns into: every document is then re-indexed.
PARSER_VERSION = "12"  # 12: chunks flagged for instruction-like text (assistant.injection)


@dataclass
class IngestReport:
    files: int = 0
    indexed: int = 0
    unchanged: int = 0
    pages: int = 0
    chunks: int = 0
    embedded: int = 0
    ignored: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, outcome: FileOutcome) -> None:
        if outcome.status == "failed":
            self.failed.append((str(outcome.path), outcome.error or "failed"))
            return
        if outcome.status == "indexed":
            self.indexed += 1
        else:
            self.unchanged += 1
        self.pages += outcome.pages
        self.chunks += outcome.chunks
        self.embedded += outcome.embedded

    def summary(self) -> str:
        lines = [
            f"files: {self.files} ({self.indexed} indexed, {self.unchanged} unchanged, "
            f"{len(self.failed)} failed, {len(self.ignored)} ignored)",
            f"pages: {self.pages}  chunks: {self.chunks} ({self.embedded} embedded)"
            + (f"  pruned: {len(self.pruned)}" if self.pruned else ""),
            f"seconds: {self.seconds:.1f}",
        ]
        lines += [f"FAILED {path}: {reason}" for path, reason in self.failed]
        return "\n".join(lines)


FileStatus = Literal["indexed", "unchanged", "failed"]
Progress = Callable[[Path, str, int, int], None]  # (path, "parsing" | "embedding", done, total)


@dataclass(frozen=True)
class FileOutcome:
    """What became of one file: indexed (a new version embedded), unchanged (nothing to do) or failed (`error`
    says why in one line; whatever was indexed before stays)."""

    path: Path
    doc_id: str
    status: FileStatus
    error: str | None = None
    pages: int = 0
    chunks: int = 0
    embedded: int = 0


@dataclass(frozen=True)
class _Plan:
    """A file that needs indexing: where to, as which document, of which content."""

    collection: str
    physical: str
    doc_id: str
    file_hash: str
    known: bool  # the registry has an earlier version
    tenant: str = DEFAULT_TENANT  # the collection's owner: every chunk carries it (assistant.tenancy)


@contextmanager
def _parser(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """Worker processes that parse files ahead (spawned: the parent holds torch and store threads), or None."""
    if workers <= 0:
        yield None
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_die_with_parent, initargs=(os.getpid(),))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _die_with_parent(parent: int) -> None:
    """In a parse-ahead worker: end when the ingest that started it ends, even killed (SIGKILL, the OOM killer),
    instead of living on orphaned. Linux only (PR_SET_PDEATHSIG); elsewhere the pool's own checks apply."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)


def doc_id_for(collection: str, path: Path) -> str:
    return uuid.uuid5(_DOC_NAMESPACE, f"{collection}:{path.resolve()}").hex


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def discover(paths: Iterable[Path], report: IngestReport) -> list[Path]:
    """Files to ingest. Explicit files of an unsupported type fail; inside folders they are ignored."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if not child.is_file() or any(part.startswith(".") for part in child.relative_to(path).parts):
                    continue
                if child.suffix.lower() in SUPPORTED:
                    found.append(child)
                else:
                    report.ignored.append(str(child))
        elif path.is_file():
            found.append(path)
        else:
            report.failed.append((str(path), "no such file or folder"))
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


class Ingestor:
    """One code path for ingesting, used by the CLI and the upload API (ingest.jobs)."""

    def __init__(self, components: Components, *, on_progress: Progress | None = None) -> None:
        self.components = components
        self.store = components.store
        self.engine = components.engine
        self.on_progress = on_progress
        self._chunker: Chunker | None = None

    @property
    def chunker(self) -> Chunker:
        if self._chunker is None:
            from .chunking import Chunker  # llama-index: imported once something is chunked, not by the API's import

            embedder = self.components.embedder
            tokenize = getattr(embedder, "tokenize", None) or (lambda s: s.split())
            c = self.components.settings.chunking
            self._chunker = Chunker(tokenize, c.size_tokens, c.overlap_tokens, c.pack_rules)
        return self._chunker

    @property
    def pdf_parser(self) -> PdfParser:
        return self.components.settings.ingest.pdf_parser

    @property
    def limits(self) -> Limits:
        """Size, pages, parse time and memory one file may take (INGEST_MAX_MB, INGEST_PARSE_TIMEOUT_S …)."""
        return Limits.of(self.components.settings.ingest)

    def pipeline(self, path: Path) -> str:
        """Fingerprint of everything besides the file that decides its chunks and vectors (the PDF parser: for PDFs)."""
        c = self.components.settings.chunking
        model = embedder_name(self.components.settings.embedding)  # with the backend where vectors differ (int8)
        spec = f"{PARSER_VERSION}:{c.size_tokens}:{c.overlap_tokens}:{c.pack_rules}:{model}"
        if path.suffix.lower() == ".pdf" and self.pdf_parser != "pypdf":  # pypdf: the fingerprint from before
            spec += f":{self.pdf_parser}"
        return hashlib.sha256(spec.encode()).hexdigest()[:16]

    def ingest(
        self, paths: Sequence[Path], collection: str, *, prune: bool = False, progress: bool = True
    ) -> IngestReport:
        """Ingest files and folders. With INGEST_WORKERS > 0, files are parsed ahead in that many worker
        processes while this one embeds and indexes the files parsed before (in the order given)."""
        started = time.perf_counter()
        checked_collection(collection)
        report = IngestReport()
        files = discover(paths, report)
        report.files = len(files) + sum(1 for p, _ in report.failed)
        workers = min(self.components.settings.ingest.workers, len(files) - 1)
        with tqdm(total=len(files), desc="files", unit="file", disable=not progress) as bar, \
                _parser(workers) as parse_ahead:
            planned = [(path, self._plan(path, collection)) for path in files]
            to_parse = deque(path for path, plan in planned if isinstance(plan, _Plan))
            parsing: dict[Path, Future[LoadedDocument]] = {}
            for path, plan in planned:
                while parse_ahead is not None and to_parse and len(parsing) <= workers:  # bounded read-ahead
                    ahead = to_parse.popleft()
                    parsing[ahead] = parse_ahead.submit(load, ahead, self.pdf_parser, self.limits)
                bar.set_postfix_str(path.name[:40])
                if isinstance(plan, FileOutcome):
                    report.add(plan)
                else:
                    index = partial(self._index_parsed, path, plan, parsing.pop(path, None), progress)
                    report.add(self._guarded(path, collection, index))
                bar.update(1)
        if prune:
            report.pruned = self.prune(collection)
        report.seconds = time.perf_counter() - started
        log.info("ingest into %s done in %.1fs", collection, report.seconds)
        return report

    def needs_indexing(self, path: Path, collection: str) -> bool:
        """Whether ingesting `path` into `collection` would index anything: not when the registry and the index
        hold it as it is (hash, pipeline, chunk count), nor when it cannot be read. Nothing is parsed."""
        return isinstance(self._plan(path, collection), _Plan)

    def ingest_file(self, path: Path, collection: str, *, progress: bool = False) -> FileOutcome:
        """Ingest one file into `collection`; a file that cannot be read comes back `failed` with the reason."""
        def run() -> FileOutcome:
            plan = self._plan(path, collection)
            return plan if isinstance(plan, FileOutcome) else self._index(path, plan, self._load(path), progress)

        return self._guarded(path, collection, run)

    @staticmethod
    def _guarded(path: Path, collection: str, run: Callable[[], FileOutcome]) -> FileOutcome:
        try:
            return run()
        except LoadError as exc:
            log.warning("%s: %s", path, exc)
            return FileOutcome(path, doc_id_for(collection, path), "failed", str(exc))
        except OSError as exc:
            return FileOutcome(path, doc_id_for(collection, path), "failed",
                               f"cannot read file: {exc.strerror or exc}")

    def _progress(self, path: Path, stage: str, done: int = 0, total: int = 0) -> None:
        if self.on_progress is not None:
            self.on_progress(path, stage, done, total)

    def _plan(self, path: Path, collection: str) -> _Plan | FileOutcome:
        """What `path` needs: nothing (unchanged: same file, same pipeline, all its chunks indexed), or indexing."""
        try:
            file_hash = file_sha256(path)
        except OSError as exc:
            return FileOutcome(path, doc_id_for(collection, path), "failed", f"cannot read file: {exc.strerror or exc}")
        doc_id = doc_id_for(collection, path)
        physical = self.components.served.physical(collection)  # re-embedded by a learned embedder?
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(documents).where(documents.c.id == doc_id)).mappings().first()
        if (row and row["file_hash"] == file_hash and row["pipeline"] == self.pipeline(path)
                and self.store.count(physical, doc_id) == row["chunks"]):
            return FileOutcome(path, doc_id, "unchanged", pages=row["pages"] or 0, chunks=row["chunks"])
        return _Plan(collection, physical, doc_id, file_hash, known=row is not None,
                     tenant=CollectionOwners(self.engine).owner(collection))

    def _index_parsed(self, path: Path, plan: _Plan, parsed: Future[LoadedDocument] | None,
                      progress: bool) -> FileOutcome:
        """Index `path` from its parse-ahead result, or parse it here."""
        try:
            doc = parsed.result() if parsed is not None else self._load(path)
        except BrokenProcessPool as exc:
            raise LoadError(f"the parser process stopped while reading this file ({exc})") from None
        return self._index(path, plan, doc, progress)

    def _load(self, path: Path) -> LoadedDocument:
        self._progress(path, "parsing")
        return load(path, self.pdf_parser, self.limits)

    def _index(self, path: Path, plan: _Plan, doc: LoadedDocument, progress: bool) -> FileOutcome:
        chunks = [replace(c, tenant=plan.tenant) for c in self.chunker.chunk(doc, plan.doc_id, plan.file_hash)]
        if not chunks:
            raise LoadError("no text to index after chunking")
        embedder = self.components.embedder_for(plan.collection)
        self.store.ensure_collection(plan.physical, embedder.dim)
        batch = 64
        self._progress(path, "embedding", 0, len(chunks))
        with tqdm(total=len(chunks), desc="  chunks", unit="chunk", leave=False, disable=not progress) as bar:
            for start in range(0, len(chunks), batch):
                part = chunks[start : start + batch]
                texts = [passage_text(c) for c in part]
                vectors = embedder.embed_batch(texts)
                sparse = [self.components.sparse.encode_document(t) for t in texts]
                self.store.upsert(plan.physical, part, vectors, sparse)
                bar.update(len(part))
                self._progress(path, "embedding", start + len(part), len(chunks))
        # Other versions' chunks, and this version's past the last one (a chunking that made more): the index
        # then holds exactly `chunks`, before the registry says so (a crash before this line is redone next run).
        self.store.delete_document(plan.physical, plan.doc_id, keep_file_hash=plan.file_hash,
                                   keep_chunks=len(chunks))
        record = {
            "collection": plan.collection, "path": storable(str(path.resolve())), "source": storable(doc.source),
            "title": storable(doc.title) if doc.title else doc.title,
            "doc_type": doc.doc_type, "file_hash": plan.file_hash, "size_bytes": path.stat().st_size,
            "pages": doc.page_count, "chunks": len(chunks), "indexed_at": datetime.now(UTC),
            "pipeline": self.pipeline(path),
        }
        with self.engine.begin() as conn:
            if plan.known:
                conn.execute(sa.update(documents).where(documents.c.id == plan.doc_id).values(**record))
            else:
                conn.execute(sa.insert(documents).values(id=plan.doc_id, **record))
        return FileOutcome(path, plan.doc_id, "indexed", pages=doc.page_count or 0, chunks=len(chunks),
                           embedded=len(chunks))

    def prune(self, collection: str) -> list[str]:
        removed = []
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(documents.c.id, documents.c.path).where(documents.c.collection == collection)
            ).all()
        for doc_id, path in rows:
            if not Path(path).exists():
                self.store.delete_document(self.components.served.physical(collection), doc_id)
                with self.engine.begin() as conn:
                    conn.execute(sa.delete(documents).where(documents.c.id == doc_id))
                removed.append(path)
                log.info("pruned %s", path)
        return removed
