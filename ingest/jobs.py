"""Ingest jobs: files uploaded through the API, ingested by one background worker thread, one file at a time.

A job is the files of one upload. Each file goes `queued` → `parsing` → `embedding` (`chunks_done` of
`chunks_total`) → `indexed` | `unchanged` | `failed` (`error` says why); the job goes `queued` → `running` →
`done`. Ingesting is `Ingestor.ingest_file`, the code path the CLI runs, so an uploaded file is versioned,
replaced and registered exactly as a file ingested from the command line.

The job table is in memory and keeps the last `keep` jobs: jobs do not survive a restart, the document registry
(and the index) do. `close()` lets the file being ingested finish, marks the files still waiting as failed and
stops the worker; the app calls it at shutdown.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from assistant.components import Components
from assistant.errors import ComponentUnavailable, FinragError, UnknownJob

from .pipeline import FileOutcome, Ingestor, doc_id_for

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done"]
FileStatus = Literal["queued", "parsing", "embedding", "indexed", "unchanged", "failed"]
WORKING: frozenset[str] = frozenset({"queued", "parsing", "embedding"})
STOPPED = "the server stopped before this file was ingested; upload it again"


@dataclass
class JobFile:
    name: str
    path: Path
    doc_id: str
    status: FileStatus = "queued"
    chunks_done: int = 0
    chunks_total: int = 0
    error: str | None = None


@dataclass
class Job:
    id: str
    collection: str
    files: list[JobFile]
    created_at: datetime
    state: JobState = "queued"
    started_at: datetime | None = None
    finished_at: datetime | None = None

    def copy(self) -> Job:
        return replace(self, files=[replace(f) for f in self.files])


class IngestJobs:
    """Queue of ingest jobs and the worker thread that runs them (started with the first job)."""

    def __init__(self, components: Components, *, keep: int = 50) -> None:
        self.components = components
        self.keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()  # the job table, every job in it, the queue's order
        self._stopping = threading.Event()
        self._current: JobFile | None = None  # the file being ingested
        self._worker: threading.Thread | None = None
        self._ingestor: Ingestor | None = None

    # --- the API's side ------------------------------------------------------------------------------------

    def submit(self, collection: str, files: Sequence[tuple[str, Path]]) -> Job:
        """Queue (name, path) files for ingesting into `collection`; a copy of the new job."""
        job = Job(
            id=uuid.uuid4().hex, collection=collection, created_at=datetime.now(UTC),
            files=[JobFile(name, path, doc_id_for(collection, path)) for name, path in files],
        )
        with self._lock:
            if self._stopping.is_set():
                raise ComponentUnavailable("the server is shutting down; upload again once it is back")
            self._jobs[job.id] = job
            self._forget_old()
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="finrag-ingest", daemon=True)
                self._worker.start()
            self._queue.put(job)
            return job.copy()

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise UnknownJob(f"no ingest job {job_id!r} (jobs are kept in memory: the last {self.keep}, "
                                 "until the server restarts); GET /v1/ingest/jobs lists them")
            return job.copy()

    def recent(self) -> list[Job]:
        """The jobs kept, newest first."""
        with self._lock:
            return [job.copy() for job in reversed(self._jobs.values())]

    def working_on(self, doc_id: str) -> str | None:
        """The id of a job that has yet to finish ingesting the document, if any."""
        with self._lock:
            for job in self._jobs.values():
                if any(f.doc_id == doc_id and f.status in WORKING for f in job.files):
                    return job.id
        return None

    def resume(self, uploads: Path) -> list[Job]:
        """Queue again the uploaded files whose ingest a stop cut short (a kill or a crash mid-file, a shutdown with
        files still queued): every file of `uploads`/<collection>/ that the registry and the index do not hold as
        it is. One job per collection; [] when every upload is indexed. A file that fails to ingest stays in the
        uploads folder and is tried again at each start (DELETE its document, or remove the file, to stop that)."""
        ingestor = Ingestor(self.components)
        resumed = []
        for folder in sorted(p for p in uploads.iterdir() if p.is_dir()) if uploads.is_dir() else []:
            try:
                files = [(f.name, f) for f in sorted(folder.iterdir())
                         if f.is_file() and not f.name.startswith(".") and ingestor.needs_indexing(f, folder.name)]
            except (FinragError, OSError) as exc:  # the store or the database cannot serve: say so, start anyway
                log.error("cannot check the uploads of %s for interrupted ingests: %s", folder.name, exc)
                continue
            if not files:
                continue
            log.warning("resuming the ingest of %d uploaded file(s) of %s that a stop interrupted: %s", len(files),
                        folder.name, ", ".join(name for name, _ in files))
            try:
                resumed.append(self.submit(folder.name, files))
            except ComponentUnavailable:  # shutting down already
                break
        return resumed

    def close(self, timeout: float | None = None) -> None:
        """Stop the worker once the file it is ingesting is done; files still waiting end `failed`."""
        with self._lock:
            self._stopping.set()
            self._queue.put(None)  # behind every job queued: the worker reaches it once they are marked
            worker = self._worker
        if worker is not None:
            worker.join(timeout)
            if worker.is_alive():
                log.warning("the ingest worker is still ingesting %s; not waiting longer",
                            self._current.name if self._current else "a file")

    def _forget_old(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.state == "done"]
        for job_id in finished[: max(0, len(self._jobs) - self.keep)]:
            del self._jobs[job_id]

    # --- the worker ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self._run_job(job)
            except Exception:  # never let one job stop the worker
                log.exception("ingest job %s failed", job.id)
                self._finish(job, "the ingest worker failed on this job; the server log says why")

    def _run_job(self, job: Job) -> None:
        with self._lock:
            job.state, job.started_at = "running", datetime.now(UTC)
        for file in job.files:
            if self._stopping.is_set():
                break
            with self._lock:
                self._current = file
            outcome = self._ingest(job.collection, file)
            with self._lock:
                file.status, file.error = outcome.status, outcome.error
                if outcome.status != "failed":
                    file.chunks_done = file.chunks_total = outcome.chunks
                self._current = None
        self._finish(job, STOPPED)

    def _ingest(self, collection: str, file: JobFile) -> FileOutcome:
        started = time.perf_counter()
        try:
            if self._ingestor is None:
                self._ingestor = Ingestor(self.components, on_progress=self._progress)
            outcome = self._ingestor.ingest_file(file.path, collection)
        except FinragError as exc:  # the store or the embedder cannot serve
            outcome = FileOutcome(file.path, file.doc_id, "failed", exc.message)
        except Exception as exc:  # a parser crash must not stop the worker
            log.exception("ingesting %s failed", file.path)
            outcome = FileOutcome(file.path, file.doc_id, "failed", f"unexpected error: {type(exc).__name__}")
        log.info("ingest %s into %s: %s in %.1fs%s", file.name, collection, outcome.status,
                 time.perf_counter() - started, f" ({outcome.error})" if outcome.error else "")
        return outcome

    def _progress(self, path: Path, stage: str, done: int, total: int) -> None:
        with self._lock:
            file = self._current
            if file is None or file.path != path or stage not in ("parsing", "embedding"):
                return
            file.status = "parsing" if stage == "parsing" else "embedding"
            file.chunks_done, file.chunks_total = done, total

    def _finish(self, job: Job, reason: str) -> None:
        """Mark the job done; files it did not reach fail with `reason`."""
        with self._lock:
            for file in job.files:
                if file.status in WORKING:
                    file.status, file.error = "failed", reason
            job.state, job.finished_at = "done", datetime.now(UTC)
            job.started_at = job.started_at or job.finished_at
