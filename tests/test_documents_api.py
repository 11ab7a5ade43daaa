"""Documents, uploads and ingest jobs over HTTP: upload → job → listed → served → viewed → chunk → deleted.

The real app (`create_app`) over real components: embedded Qdrant Edge and SQLite in a private DATA_DIR, the real
MiniLM embedder, the real ingest pipeline on the worker thread. Documents are real: the first chapter of the
ADGM confidentiality rulebook, the income-statement page of Apple's Q3 2023 10-Q; the rejected files are the
kinds people actually upload by mistake (archives, renamed binaries, a fake PDF, a path in the name).
"""

from __future__ import annotations

import io
import random
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import SAMPLES, make_settings
from fastapi.testclient import TestClient
from pypdf import PdfReader, PdfWriter

from assistant.app import create_app
from assistant.components import Components
from assistant.db import documents
from assistant.documents_api import content_disposition
from assistant.embedding import SentenceTransformerEmbedder
from assistant.settings import UploadSettings
from assistant.uploads import safe_name
from ingest.pipeline import doc_id_for

COLLECTION = "samples"  # make_settings' default collection
CONF = SAMPLES / "adgm" / "CONF_VER03.18042019.txt"
AAPL_Q3 = SAMPLES / "sec-10q" / "2023 Q3 AAPL.pdf"
SCRIPT = '<script>alert("owned")</script>'


def chapter_one() -> bytes:
    """Chapter 1 of the ADGM confidentiality rulebook (a few rules: a few chunks), with a hostile line."""
    lines = CONF.read_text(encoding="utf-8").splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("2.\t"))
    return ("\n".join([*lines[:end], f"1.9.9\tA hostile line {SCRIPT} shown as text."]) + "\n").encode()


def income_statement_pdf() -> bytes:
    """Page 4 (the income statement) of Apple's Q3 2023 10-Q as a one-page PDF."""
    writer = PdfWriter()
    writer.add_page(PdfReader(AAPL_Q3).pages[3])
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.fixture
def client(fresh_components: Components) -> Iterator[TestClient]:
    with TestClient(create_app(fresh_components.settings, fresh_components, preload=False)) as c:
        yield c


def upload(client: TestClient, *files: tuple[str, bytes], collection: str | None = None) -> Any:
    params = {"collection": collection} if collection else {}
    return client.post("/v1/documents", params=params, files=[("files", (name, data)) for name, data in files])


def finished(client: TestClient, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/ingest/jobs/{job_id}").json()
        if job["state"] == "done":
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s}s: {job}")


def ingested(client: TestClient, *files: tuple[str, bytes], collection: str | None = None) -> dict[str, Any]:
    response = upload(client, *files, collection=collection)
    assert response.status_code == 202, response.text
    return finished(client, response.json()["job_id"])


def chunk_ids(components: Components, doc_id: str, collection: str = COLLECTION) -> list[str]:
    return [pid for pid, _ in components.store.scroll_chunks(collection, doc_id=doc_id)]


def uploads_dir(components: Components, collection: str = COLLECTION) -> Path:
    return components.settings.data_dir / "uploads" / collection


def registry(components: Components) -> list[dict[str, Any]]:
    with components.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(documents)).mappings()]


# --- the life of a document ------------------------------------------------------------------------------------


def test_upload_list_serve_view_chunk_delete(client: TestClient, fresh_components: Components) -> None:
    text = chapter_one()
    accepted = upload(client, ("conf-ch1.txt", text))
    assert accepted.status_code == 202
    body = accepted.json()
    assert body["files"] == [{"name": "conf-ch1.txt", "status": "queued", "error": None}]
    assert body["collection"] == COLLECTION

    job = finished(client, body["job_id"])
    [file] = job["files"]
    assert (file["status"], file["error"]) == ("indexed", None)
    assert file["chunks_done"] == file["chunks_total"] > 1
    created, started, ended = (datetime.fromisoformat(job[k]) for k in ("created_at", "started_at", "finished_at"))
    assert created <= started <= ended
    assert client.get("/v1/ingest/jobs").json()[0]["id"] == job["id"]

    doc_id = file["doc_id"]
    stored = uploads_dir(fresh_components) / "conf-ch1.txt"
    assert doc_id == doc_id_for(COLLECTION, stored) and stored.read_bytes() == text
    [listed] = client.get("/v1/documents").json()
    assert listed["id"] == doc_id and listed["source"] == "conf-ch1.txt" and listed["doc_type"] == "regulation"
    assert (listed["media_type"], listed["file_available"], listed["size_bytes"]) == ("text/plain", True, len(text))
    assert listed["chunks"] == file["chunks_total"] == len(chunk_ids(fresh_components, doc_id))
    assert client.get(f"/v1/documents/{doc_id}").json() == listed
    assert client.get("/v1/documents", params={"collection": "other"}).json() == []

    served = client.get(f"/v1/documents/{doc_id}/file")
    assert served.status_code == 200 and served.content == text
    assert served.headers["content-type"] == "text/plain; charset=utf-8"
    assert served.headers["content-disposition"] == 'inline; filename="conf-ch1.txt"'

    view = client.get(f"/v1/documents/{doc_id}/view")
    assert view.status_code == 200 and view.headers["content-type"].startswith("text/html")
    assert "script-src" not in view.headers["content-security-policy"]
    assert "default-src 'none'" in view.headers["content-security-policy"]
    page = view.text
    assert "<title>conf-ch1.txt</title>" in page
    ids = chunk_ids(fresh_components, doc_id)
    assert all(page.count(f'id="p-{pid}"') == 1 for pid in ids)
    assert "<script" not in page and "&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt;" in page
    assert 'id="section-' in page and ":target" in page
    # each chunk's block starts with that chunk's opening words
    pid, chunk = next((p, c) for p, c in fresh_components.store.scroll_chunks(COLLECTION, doc_id=doc_id)
                      if c.chunk_index == 1)
    assert page.split(f'id="p-{pid}">', 1)[1].startswith(chunk.text.split()[0])

    got = client.get(f"/v1/chunks/{pid}").json()
    assert got == {"point_id": pid, "collection": COLLECTION, "doc_id": doc_id, "source": "conf-ch1.txt",
                   "title": chunk.title, "doc_type": "regulation", "pages": [], "section": chunk.section,
                   "text": chunk.text}
    assert client.get(f"/v1/chunks/{pid.replace('-', '').upper()}").json()["point_id"] == pid

    assert client.delete(f"/v1/documents/{doc_id}").status_code == 204
    assert fresh_components.store.count(COLLECTION, doc_id) == 0
    assert registry(fresh_components) == [] and not stored.exists()
    assert client.get(f"/v1/documents/{doc_id}").json()["error"] == "unknown_document"
    assert client.get(f"/v1/chunks/{pid}").json()["error"] == "unknown_chunk"
    assert client.delete(f"/v1/documents/{doc_id}").status_code == 404


def test_pdf_is_served_inline_and_a_corrupt_one_fails_beside_it(client: TestClient,
                                                                  fresh_components: Components) -> None:
    corrupt = b"%PDF-1.7\n" + random.Random(3).randbytes(6000)
    job = ingested(client, ("broken.pdf", corrupt), ("2023 Q3 AAPL p4.pdf", income_statement_pdf()))
    broken, good = job["files"]
    assert broken["status"] == "failed" and broken["error"] and "pdf" in broken["error"].lower()
    assert (good["status"], good["error"]) == ("indexed", None)
    assert [d["source"] for d in client.get("/v1/documents").json()] == ["2023 Q3 AAPL p4.pdf"]

    served = client.get(f"/v1/documents/{good['doc_id']}/file")
    assert served.content.startswith(b"%PDF") and served.headers["content-type"] == "application/pdf"
    assert served.headers["content-disposition"] == 'inline; filename="2023 Q3 AAPL p4.pdf"'
    assert served.headers["x-content-type-options"] == "nosniff"

    pid = chunk_ids(fresh_components, good["doc_id"])[0]
    assert client.get(f"/v1/chunks/{pid}").json()["pages"] == [1]
    page = client.get(f"/v1/documents/{good['doc_id']}/view").text
    assert 'id="page-1"' in page and f'id="p-{pid}"' in page and "81,797" in page

    # the worker survived the failure: a later job runs
    assert ingested(client, ("after.txt", chapter_one()))["files"][0]["status"] == "indexed"


def test_html_is_served_sandboxed(client: TestClient) -> None:
    html = f"<html><head><title>Notice</title></head><body><h1>Notice</h1><p>{'Fees are due on time. ' * 20}</p>" \
           f"{SCRIPT}</body></html>"
    job = ingested(client, ("notice.html", html.encode()))
    served = client.get(f"/v1/documents/{job['files'][0]['doc_id']}/file")
    assert served.headers["content-type"] == "text/html; charset=utf-8"
    assert served.headers["content-security-policy"] == "sandbox"


def test_uploading_a_name_again_replaces_the_document(client: TestClient, fresh_components: Components) -> None:
    first = ingested(client, ("rules.txt", chapter_one()))["files"][0]
    again = ingested(client, ("rules.txt", chapter_one()))["files"][0]
    assert (again["doc_id"], again["status"]) == (first["doc_id"], "unchanged")

    bigger = CONF.read_bytes()  # the whole rulebook: its job is still at work when the delete comes
    accepted = upload(client, ("rules.txt", bigger)).json()
    busy = client.delete(f"/v1/documents/{first['doc_id']}")
    assert busy.status_code == 409 and busy.json()["error"] == "document_busy"
    assert accepted["job_id"] in busy.json()["detail"]
    replaced = finished(client, accepted["job_id"])["files"][0]
    assert (replaced["doc_id"], replaced["status"]) == (first["doc_id"], "indexed")
    [row] = registry(fresh_components)
    assert row["chunks"] == replaced["chunks_total"] > first["chunks_total"]
    assert fresh_components.store.count(COLLECTION, first["doc_id"]) == row["chunks"]  # the old version is gone
    assert client.get(f"/v1/documents/{first['doc_id']}/file").content == bigger


def test_an_uploaded_collection_is_its_own(client: TestClient) -> None:
    job = ingested(client, ("conf.txt", chapter_one()), collection="rules-2024")
    assert job["collection"] == "rules-2024"
    [doc] = client.get("/v1/documents", params={"collection": "rules-2024"}).json()
    assert doc["collection"] == "rules-2024" and client.get("/v1/documents").json() == []
    bad = upload(client, ("conf.txt", b"text"), collection="../etc")
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_collection"


# --- what is refused -------------------------------------------------------------------------------------------


def test_bad_files_are_rejected_and_the_good_one_queued(client: TestClient, fresh_components: Components) -> None:
    zip_magic = b"PK\x03\x04" + random.Random(1).randbytes(2000)
    response = upload(
        client,
        ("../../etc/passwd.txt", b"root:x:0:0:root:/root:/bin/bash\n"),
        ("setup.exe", b"MZ\x90\x00"),
        ("filings.zip", zip_magic),
        ("notes.txt", zip_magic),
        ("report.pdf", b"<html>not a pdf</html>"),
        ("nul.txt", b"text\x00with a NUL"),
        ("latin.txt", "caf\u00e9".encode("latin-1")),
        ("empty.md", b""),
        ("..", b"nothing"),
        ("passwd.txt", b"the same name twice"),
    )
    assert response.status_code == 202
    files = response.json()["files"]
    assert files[0] == {"name": "passwd.txt", "status": "queued", "error": None}
    reasons = {f["name"]: f["error"] for f in files[1:]}
    assert all(f["status"] == "rejected" for f in files[1:])
    assert reasons["setup.exe"].startswith("unsupported file type '.exe'")
    assert reasons["filings.zip"] == reasons["notes.txt"] == "archives are not accepted; unpack and upload the files"
    assert reasons["report.pdf"] == "not a PDF: it does not start with %PDF-"
    assert "NUL" in reasons["_nul.txt"] and "UTF-8" in reasons["latin.txt"] and reasons["empty.md"] == "empty file"
    assert reasons[".."] == "no usable file name"
    assert "appears twice" in files[-1]["error"]

    job = finished(client, response.json()["job_id"])
    assert [f["name"] for f in job["files"]] == ["passwd.txt"]
    folder = uploads_dir(fresh_components)
    assert sorted(p.name for p in folder.iterdir()) == ["passwd.txt"]  # no temporary file is left behind
    assert (folder / "passwd.txt").read_bytes().startswith(b"root:x")


def test_everything_rejected_is_422(client: TestClient) -> None:
    response = upload(client, ("a.zip", b"PK\x05\x06" + bytes(18)), ("b.docx", b"PK\x03\x04"))
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "upload_rejected"
    assert "a.zip: archives are not accepted" in body["detail"] and "b.docx: unsupported file type" in body["detail"]
    assert client.get("/v1/ingest/jobs").json() == []


def test_malformed_requests_are_422(client: TestClient) -> None:
    too_many = upload(client, *[(f"f{i}.txt", b"text") for i in range(21)])
    assert too_many.status_code == 422 and "at most 20" in too_many.json()["detail"]
    not_multipart = client.post("/v1/documents", json={"files": ["a.txt"]})
    assert not_multipart.status_code == 422 and "multipart/form-data" in not_multipart.json()["detail"]
    no_files = client.post("/v1/documents", files={"other": ("a.txt", b"text")})
    assert no_files.status_code == 422 and no_files.json()["detail"].startswith("no files")


def test_size_limits(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    settings = make_settings(tmp_path / "data", upload=UploadSettings(max_mb=0.01, max_files=2))  # 10 kB each
    components = Components(settings, embedder=embedder)
    try:
        with TestClient(create_app(settings, components, preload=False)) as client:
            response = upload(client, ("big.txt", b"a" * 10_001), ("small.txt", chapter_one()))  # 3 kB
            assert response.status_code == 202
            big, small = response.json()["files"]
            assert big == {"name": "big.txt", "status": "rejected",
                           "error": "larger than the 0.01 MB limit (UPLOAD_MAX_MB)"}
            assert small["status"] == "queued"
            finished(client, response.json()["job_id"])
            huge = upload(client, ("huge.txt", b"a" * 1_200_000))  # past 2 files of 10 kB + headers: refused unread
            assert huge.status_code == 413 and huge.json()["error"] == "upload_too_large"
            assert sorted(p.name for p in uploads_dir(components).iterdir()) == ["small.txt"]
    finally:
        components.close()


def test_unknown_ids_and_missing_files_are_404(client: TestClient, fresh_components: Components) -> None:
    for path in ("/v1/documents/nope", "/v1/documents/nope/file", "/v1/documents/nope/view"):
        assert client.get(path).json()["error"] == "unknown_document"
    assert client.delete("/v1/documents/nope").json()["error"] == "unknown_document"
    assert client.get("/v1/ingest/jobs/nope").json()["error"] == "unknown_job"
    assert client.get("/v1/chunks/not-a-uuid").json()["error"] == "unknown_chunk"
    assert client.get(f"/v1/chunks/{uuid.uuid4()}").json()["error"] == "unknown_collection"

    doc_id = ingested(client, ("gone.txt", chapter_one()))["files"][0]["doc_id"]
    missing = client.get(f"/v1/chunks/{uuid.uuid4()}")
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_chunk"
    (uploads_dir(fresh_components) / "gone.txt").unlink()
    for path in (f"/v1/documents/{doc_id}/file", f"/v1/documents/{doc_id}/view"):
        response = client.get(path)
        assert response.status_code == 404 and response.json()["error"] == "file_missing"
    assert client.get(f"/v1/documents/{doc_id}").json()["file_available"] is False
    assert client.delete(f"/v1/documents/{doc_id}").status_code == 204  # a document without its file still goes


def test_the_worker_stops_with_the_app(fresh_components: Components) -> None:
    app = create_app(fresh_components.settings, fresh_components, preload=False)
    with TestClient(app) as client:
        accepted = upload(client, ("one.txt", chapter_one()), ("two.txt", CONF.read_bytes())).json()
        assert any(t.name == "finrag-ingest" for t in threading.enumerate())
        jobs = app.state.ingest_jobs
    assert not any(t.name == "finrag-ingest" for t in threading.enumerate())
    assert app.state.ingest_jobs is None  # the app let go of its runner: a restart gets a fresh one
    job = jobs.get(accepted["job_id"])
    assert job.state == "done" and job.finished_at is not None
    for file in job.files:  # the file being ingested at shutdown was finished; one not reached says so
        assert file.status == "indexed" or (file.status == "failed" and "server stopped" in (file.error or ""))


def test_openapi_documents_the_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    upload_body = spec["paths"]["/v1/documents"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload_body["schema"]["properties"]["files"]["items"]["format"] == "binary"
    assert {"/v1/documents/{doc_id}/file", "/v1/documents/{doc_id}/view", "/v1/chunks/{point_id}",
            "/v1/ingest/jobs", "/v1/ingest/jobs/{job_id}"} <= set(spec["paths"])
    assert "delete" in spec["paths"]["/v1/documents/{doc_id}"]


# --- names -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "safe"), [
    ("2023 Q3 AAPL.pdf", "2023 Q3 AAPL.pdf"),
    ("../../etc/passwd.txt", "passwd.txt"),
    ("C:\\Users\\me\\report.md", "report.md"),
    (".hidden.txt", "hidden.txt"),
    ("a..b.txt", "a.b.txt"),
    ("bad\x00na\x1bme\u202e.txt", "badname.txt"),
    ('say "hi" | more?.txt', "say _hi_ _ more_.txt"),
    ("..", ""),
    ("/", ""),
    ("x" * 300 + ".pdf", "x" * 196 + ".pdf"),
    ("é" * 150 + ".txt", "é" * 118 + ".txt"),  # at most 240 bytes in UTF-8
])
def test_safe_name(raw: str, safe: str) -> None:
    assert safe_name(raw) == safe


def test_content_disposition_keeps_any_name_safe() -> None:
    assert content_disposition("2023 Q3 AAPL.pdf") == 'inline; filename="2023 Q3 AAPL.pdf"'
    assert content_disposition('Zürich "rules".txt') == (
        "inline; filename=\"Z_rich _rules_.txt\"; filename*=UTF-8''Z%C3%BCrich%20%22rules%22.txt")
