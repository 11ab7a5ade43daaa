"""HTTP routes for the indexed documents: list, serve, view and delete them, read one chunk, upload files and
follow the ingest jobs that index them.

The only module of `assistant` that imports `ingest`: it is the HTTP face of the ingest service (as the CLI is
its command-line face), so an uploaded file takes the CLI's code path (`ingest.jobs` → `Ingestor.ingest_file`).

Files are served only from the paths the document registry holds, never from a path a request names. Uploads are
stored in DATA_DIR/uploads/<collection>/<name>: uploading a name again replaces the file and re-indexes it as a
new version of the same document (a doc_id is per collection and path). The ingest worker runs in this process;
its job table is in memory (jobs do not survive a restart, the registry does) and it stops with the app.
"""

from __future__ import annotations

import codecs
import logging
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Query, Request, Response, status
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ingest.jobs import IngestJobs, Job
from ingest.loading import SUPPORTED, LoadError, load
from ingest.pipeline import doc_id_for

from .api import components_of, readable_collection
from .auth import principal_of
from .db import documents
from .document_view import ViewedDocument, render
from .errors import (
    BadRequest,
    DocumentBusy,
    FileMissing,
    UnknownChunk,
    UnknownCollection,
    UnknownDocument,
    UnknownJob,
    UploadRejected,
)
from .schemas import UtcDatetime
from .tenancy import CollectionOwners
from .uploads import check_collection, receive

log = logging.getLogger(__name__)

MEDIA_TYPES = {"pdf": "application/pdf", "html": "text/html", "text": "text/plain", "markdown": "text/markdown"}
# The view may show itself in the web UI's frame and use its inline style; nothing else, no script at all.
VIEW_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"


# --- response bodies -------------------------------------------------------------------------------------------


class DocumentOut(BaseModel):
    id: str = Field(description="The document's id (doc_id), stable per collection and file path.")
    collection: str = Field(description="Collection the document is indexed in.")
    source: str = Field(description="File name, as citations name it.")
    title: str | None = Field(description="Title read from the document (else its file name's stem).")
    doc_type: str = Field(description="'filing', 'regulation' or 'document'.")
    pages: int | None = Field(description="Pages (PDFs and paged HTML); null for unpaged text.")
    chunks: int = Field(description="Chunks indexed.")
    size_bytes: int = Field(description="File size when it was indexed.")
    indexed_at: UtcDatetime = Field(description="When this version was indexed.")
    media_type: str = Field(description="Media type of the original file (GET /v1/documents/{id}/file).")
    file_available: bool = Field(description="Whether the original file is still on disk to be served and viewed.")


class ChunkOut(BaseModel):
    point_id: str = Field(description="The chunk's point id (what citations carry).")
    collection: str = Field(description="Collection asked for (its served physical index was read).")
    doc_id: str = Field(description="Document the chunk belongs to.")
    source: str = Field(description="File name of the document.")
    title: str | None = Field(description="Title of the document.")
    doc_type: str = Field(description="'filing', 'regulation' or 'document'.")
    pages: list[int] = Field(description="Pages the chunk spans (PDFs; empty for unpaged text).")
    section: str | None = Field(description="Heading path or rule number of the chunk.")
    text: str = Field(description="The chunk's text as indexed.")


class UploadedFile(BaseModel):
    name: str = Field(description="The file's name as stored (sanitised: base name, no control characters).")
    status: Literal["queued", "rejected"] = Field(description="'queued' for ingesting, or 'rejected'.")
    error: str | None = Field(default=None, description="Why the file was rejected.")


class UploadAccepted(BaseModel):
    job_id: str = Field(description="The ingest job of the queued files: GET /v1/ingest/jobs/{job_id}.")
    collection: str = Field(description="Collection the files are ingested into.")
    files: list[UploadedFile] = Field(description="Every file of the upload, in the order sent.")


class IngestFileOut(BaseModel):
    name: str = Field(description="File name as stored.")
    doc_id: str = Field(description="The document the file is indexed as.")
    status: Literal["queued", "parsing", "embedding", "indexed", "unchanged", "failed"] = Field(
        description="queued → parsing → embedding → indexed (a new version) | unchanged (already indexed as it "
        "is) | failed (`error` says why; any earlier version stays indexed).")
    chunks_done: int = Field(description="Chunks embedded so far.")
    chunks_total: int = Field(description="Chunks to embed (0 until the file is parsed).")
    error: str | None = Field(description="Why the file failed.")


class IngestJobOut(BaseModel):
    id: str = Field(description="Job id.")
    collection: str = Field(description="Collection the files are ingested into.")
    state: Literal["queued", "running", "done"] = Field(description="queued → running → done.")
    files: list[IngestFileOut] = Field(description="The job's files in upload order.")
    created_at: UtcDatetime = Field(description="When the upload was accepted.")
    started_at: UtcDatetime | None = Field(description="When the worker started the job.")
    finished_at: UtcDatetime | None = Field(description="When its last file was done.")

    @classmethod
    def of(cls, job: Job) -> IngestJobOut:
        files = [IngestFileOut(name=f.name, doc_id=f.doc_id, status=f.status, chunks_done=f.chunks_done,
                               chunks_total=f.chunks_total, error=f.error) for f in job.files]
        return cls(id=job.id, collection=job.collection, state=job.state, files=files, created_at=job.created_at,
                   started_at=job.started_at, finished_at=job.finished_at)


# --- the ingest worker's life ----------------------------------------------------------------------------------

_JOBS_LOCK = threading.Lock()


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """At start-up, queues again in the background the uploads whose ingest a stop cut short (IngestJobs.resume);
    stops the ingest worker when the app shuts down (before the app closes its components)."""
    uploads = app.state.settings.data_dir / "uploads"
    if uploads.is_dir() and any(uploads.iterdir()):
        with _JOBS_LOCK:
            jobs = app.state.ingest_jobs = getattr(app.state, "ingest_jobs", None) or IngestJobs(app.state.components)
        threading.Thread(target=jobs.resume, args=(uploads,), name="finrag-resume", daemon=True).start()
    yield
    with _JOBS_LOCK:
        jobs, app.state.ingest_jobs = getattr(app.state, "ingest_jobs", None), None
    if jobs is not None:
        await run_in_threadpool(jobs.close, app.state.settings.server_shutdown_timeout_s)


router = APIRouter(tags=["documents"], lifespan=_lifespan)


def ingest_jobs(request: Request) -> IngestJobs:
    """The app's job runner, made on first use (its worker thread starts with the first job)."""
    state = request.app.state
    with _JOBS_LOCK:
        if getattr(state, "ingest_jobs", None) is None:
            state.ingest_jobs = IngestJobs(state.components)
        return state.ingest_jobs


def _existing_jobs(request: Request) -> IngestJobs | None:
    return getattr(request.app.state, "ingest_jobs", None)


# --- documents -------------------------------------------------------------------------------------------------


@router.get("/v1/documents", response_model=list[DocumentOut])
def list_documents(request: Request, collection: str | None = Query(
        default=None, description="Collection to list (default: the COLLECTION setting).")) -> list[DocumentOut]:
    """The documents indexed in a collection, by file name."""
    comp = components_of(request)
    _, name = readable_collection(request, collection)
    query = sa.select(documents).where(documents.c.collection == name)
    with comp.engine.connect() as conn:
        rows = conn.execute(query.order_by(documents.c.source)).mappings().all()
    return [_document_out(dict(row)) for row in rows]


@router.get("/v1/documents/{doc_id}", response_model=DocumentOut)
def get_document(doc_id: str, request: Request) -> DocumentOut:
    return _document_out(_row(request, doc_id))


@router.get("/v1/documents/{doc_id}/file", response_class=FileResponse, responses={
    200: {"description": "The original file, shown inline.",
          "content": {t: {} for t in MEDIA_TYPES.values()}}})
def document_file(doc_id: str, request: Request) -> FileResponse:
    """The original file of a document (PDFs open at a page with `#page=N`). HTML is served sandboxed: its scripts
    never run."""
    row = _row(request, doc_id)
    path = _file(row)
    headers = {"Content-Disposition": content_disposition(row["source"]), "X-Content-Type-Options": "nosniff"}
    if _kind(path) == "html":
        headers["Content-Security-Policy"] = "sandbox"
    return FileResponse(path, media_type=media_type(path, charset=True), headers=headers)


@router.get("/v1/documents/{doc_id}/view", response_class=HTMLResponse)
def document_view(doc_id: str, request: Request) -> HTMLResponse:
    """The document's text as indexed, one HTML page with an anchor `#p-<point_id>` where each chunk starts,
    `#section-<slug>` at each section and `#page-<n>` at each page."""
    comp = components_of(request)
    row = _row(request, doc_id)
    path = _file(row)
    try:
        loaded = load(path)
    except (LoadError, OSError) as exc:
        raise BadRequest(f"{row['source']} cannot be read now: {exc}") from None
    physical = comp.served.physical(row["collection"])
    chunks = list(comp.store.scroll_chunks(physical, doc_id=doc_id)) if physical in comp.store.collections() else []
    page = render(ViewedDocument(title=row["title"] or row["source"], source=row["source"], doc_type=row["doc_type"],
                                 pages=[(p.number, p.text) for p in loaded.pages], chunks=chunks))
    return HTMLResponse(page, headers={"Content-Security-Policy": VIEW_CSP, "X-Content-Type-Options": "nosniff"})


@router.delete("/v1/documents/{doc_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def delete_document(doc_id: str, request: Request) -> Response:
    """Remove a document: its chunks from every index serving its collection, its registry row, and its file if
    it was uploaded (files ingested from elsewhere stay where they are). 409 while an ingest job works on it."""
    principal_of(request).require_admin("deleting a document")
    comp = components_of(request)
    row = _row(request, doc_id)
    jobs = _existing_jobs(request)
    if jobs is not None and (job_id := jobs.working_on(doc_id)):
        raise DocumentBusy(f"ingest job {job_id} is working on {row['source']}; delete it once the job is done "
                           f"(GET /v1/ingest/jobs/{job_id})")
    collection = row["collection"]
    for physical in dict.fromkeys((comp.served.physical(collection), collection)):
        comp.store.delete_document(physical, doc_id)
    with comp.engine.begin() as conn:
        conn.execute(sa.delete(documents).where(documents.c.id == doc_id))
    path = Path(row["path"])
    if path.resolve().is_relative_to((comp.settings.data_dir / "uploads").resolve()):
        path.unlink(missing_ok=True)
    log.info("deleted document %s (%s) from %s", doc_id, row["source"], collection)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- chunks ----------------------------------------------------------------------------------------------------


@router.get("/v1/chunks/{point_id}", response_model=ChunkOut)
def get_chunk(point_id: str, request: Request, collection: str | None = Query(
        default=None, description="Collection of the chunk (default: the COLLECTION setting).")) -> ChunkOut:
    """One indexed chunk by the point id citations carry."""
    comp = components_of(request)
    principal, name = readable_collection(request, collection)
    try:
        point_id = str(uuid.UUID(point_id))
    except ValueError:
        raise UnknownChunk(f"no chunk {point_id!r}: point ids are UUIDs, as citations give them") from None
    physical = comp.served.physical(name)
    if physical not in comp.store.collections():
        raise UnknownCollection(f"no collection named {name!r}; GET /v1/collections lists them")
    chunk = comp.store.get_chunks(physical, [point_id]).get(point_id)
    if chunk is None or (principal.tenant is not None and chunk.tenant != principal.tenant):
        raise UnknownChunk(f"no chunk {point_id} in collection {name!r} (re-ingesting a changed file replaces its "
                           "chunks)")
    return ChunkOut(point_id=point_id, collection=name, doc_id=chunk.doc_id, source=chunk.source, title=chunk.title,
                    doc_type=chunk.doc_type, pages=chunk.pages(), section=chunk.section, text=chunk.text)


# --- uploads and ingest jobs -----------------------------------------------------------------------------------

_UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["files"],
    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"},
                             "description": "PDF, HTML/HTM, TXT or Markdown files (UTF-8 text)."}},
}}}}}


@router.post("/v1/documents", status_code=status.HTTP_202_ACCEPTED, response_model=UploadAccepted,
             openapi_extra=_UPLOAD_BODY)
async def upload_documents(request: Request, collection: str | None = Query(
        default=None, description="Collection to ingest into (default: the COLLECTION setting).")) -> UploadAccepted:
    """Upload files (multipart/form-data, one `files` part each) to be ingested by a background job. Files that
    break a rule are rejected, the others queued; all rejected → 422 with the reasons. Uploading a name again
    replaces that document with the new file."""
    principal = principal_of(request)
    principal.require_admin("uploading documents")
    comp = components_of(request)
    name = check_collection(collection or comp.settings.collection)
    if principal.tenant is not None:  # a new collection becomes the tenant's; another tenant's is refused
        CollectionOwners(comp.engine).claim(name, principal.tenant, exists=name in comp.store.collections())
    folder = comp.settings.data_dir / "uploads" / name
    limits = comp.settings.upload
    received = await receive(request, folder, SUPPORTED, max_bytes=int(limits.max_mb * 1_000_000),
                             max_files=limits.max_files)
    jobs = ingest_jobs(request)
    queued = []
    for part in received:
        if part.error is None:
            destination = folder / part.name
            if busy := jobs.working_on(doc_id_for(name, destination)):
                part.reject(f"job {busy} is still ingesting a file of this name; upload it again once it is done")
            else:
                queued.append((part.name, part.keep(destination)))
    if not queued:
        raise UploadRejected("no file was accepted: " + "; ".join(f"{p.name or '(no name)'}: {p.error}"
                                                                  for p in received))
    job = jobs.submit(name, queued)
    log.info("upload into %s: %d queued as job %s, %d rejected", name, len(queued), job.id,
             len(received) - len(queued))
    return UploadAccepted(job_id=job.id, collection=name, files=[
        UploadedFile(name=p.name, status="queued" if p.error is None else "rejected", error=p.error)
        for p in received])


@router.get("/v1/ingest/jobs", response_model=list[IngestJobOut])
def list_jobs(request: Request) -> list[IngestJobOut]:
    """Recent ingest jobs, newest first (kept in memory: the last 50 since the server started)."""
    jobs = _existing_jobs(request)
    if jobs is None:
        return []
    recent = jobs.recent()
    visible = set(CollectionOwners(components_of(request).engine).visible(principal_of(request),
                                                                          {job.collection for job in recent}))
    return [IngestJobOut.of(job) for job in recent if job.collection in visible]


@router.get("/v1/ingest/jobs/{job_id}", response_model=IngestJobOut)
def get_job(job_id: str, request: Request) -> IngestJobOut:
    """One ingest job and the state of each of its files."""
    job = ingest_jobs(request).get(job_id)
    if not CollectionOwners(components_of(request).engine).may_read(principal_of(request), job.collection):
        raise UnknownJob(f"no ingest job {job_id!r} (jobs are kept in memory until the server restarts); "
                         "GET /v1/ingest/jobs lists them")
    return IngestJobOut.of(job)


# --- helpers ---------------------------------------------------------------------------------------------------


def _row(request: Request, doc_id: str) -> dict[str, Any]:
    """The registry row of a document of the caller's tenant; UnknownDocument for another tenant's."""
    comp = components_of(request)
    with comp.engine.connect() as conn:
        row = conn.execute(sa.select(documents).where(documents.c.id == doc_id)).mappings().first()
    if row is None or not CollectionOwners(comp.engine).may_read(principal_of(request), row["collection"]):
        raise UnknownDocument(f"no document {doc_id!r}; GET /v1/documents?collection=NAME lists them")
    return dict(row)


def _file(row: dict[str, Any]) -> Path:
    path = Path(row["path"])
    if not path.is_file():
        raise FileMissing(f"the file of {row['source']} is no longer at {path.name!r} on the server; its chunks "
                          "are still indexed (upload it again, or DELETE the document)")
    return path


def _document_out(row: dict[str, Any]) -> DocumentOut:
    path = Path(row["path"])
    return DocumentOut(id=row["id"], collection=row["collection"], source=row["source"], title=row["title"],
                       doc_type=row["doc_type"], pages=row["pages"], chunks=row["chunks"], size_bytes=row["size_bytes"],
                       indexed_at=row["indexed_at"], media_type=media_type(path), file_available=path.is_file())


def _kind(path: Path) -> str | None:
    return SUPPORTED.get(path.suffix.lower())


def media_type(path: Path, *, charset: bool = False) -> str:
    """The media type of a document's file; with `charset`, text types name their encoding (UTF-8, else the
    Windows-1252 the loader falls back to; HTML without one then, so that its own <meta charset> decides)."""
    kind = _kind(path)
    media = MEDIA_TYPES.get(kind or "", "application/octet-stream")
    if not charset or not media.startswith("text/"):
        return media
    if _is_utf8(path):
        return f"{media}; charset=utf-8"
    return media if kind == "html" else f"{media}; charset=windows-1252"


def _is_utf8(path: Path) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                decoder.decode(block)
        decoder.decode(b"", True)
    except (UnicodeDecodeError, OSError):
        return False
    return True


def content_disposition(name: str) -> str:
    """`inline` with the file name: plain ASCII in `filename`, the exact name in `filename*` when they differ."""
    plain = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_" for ch in name)
    exact = "" if plain == name else f"; filename*=UTF-8''{quote(name, safe='')}"
    return f'inline; filename="{plain}"{exact}'
