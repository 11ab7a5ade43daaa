"""The whole HTTP API fuzzed by Schemathesis from its own OpenAPI schema: no request gets a server error.

Every operation of `create_app`'s schema is called in-process (Schemathesis' ASGI transport) with data generated
from the schema (positive: valid by the schema; negative: broken on purpose), over real components: embedded
Qdrant Edge and SQLite in a private DATA_DIR holding two real documents, the real MiniLM embedder and the real
Qwen2.5-Coder-0.5B (answers capped at a few tokens). Generation is derandomized and bounded per operation, so a
run takes the same cases every time.

Checks: no 5xx (`not_a_server_error`), and responses that conform to the documented schema where one is
documented for their status (`response_schema_conformance`, `content_type_conformance`).
"""

from __future__ import annotations

import io
import logging
import os
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from conftest import SAMPLES, make_settings
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from pypdf import PdfReader, PdfWriter
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from assistant.app import create_app
from assistant.components import Components
from assistant.embedding import SentenceTransformerEmbedder
from assistant.keys import ApiKeys
from assistant.llm import LlamaCppLLM
from assistant.settings import AuthSettings, LLMSettings, RetrievalSettings
from ingest.pipeline import Ingestor

log = logging.getLogger(__name__)
COLLECTION = "samples"  # make_settings' default collection
CONF = SAMPLES / "adgm" / "CONF_VER03.18042019.txt"
AAPL_Q3 = SAMPLES / "sec-10q" / "2023 Q3 AAPL.pdf"
# Cases per operation and mode; FINRAG_FUZZ_SCALE=10 fuzzes ten times deeper (a longer, still derandomized run).
SCALE = float(os.environ.get("FINRAG_FUZZ_SCALE", "1"))
EXAMPLES = {GenerationMode.POSITIVE: round(25 * SCALE), GenerationMode.NEGATIVE: round(15 * SCALE)}
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


def _documents(folder: Path) -> list[Path]:
    """Chapter 1 of the ADGM confidentiality rulebook and the income-statement page of Apple's Q3 2023 10-Q."""
    lines = CONF.read_text(encoding="utf-8").splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("2.\t"))
    rules = folder / "CONF_VER03.18042019.txt"
    rules.write_text("\n".join(lines[:end]) + "\n", encoding="utf-8")
    writer = PdfWriter()
    writer.add_page(PdfReader(AAPL_Q3).pages[3])
    out = io.BytesIO()
    writer.write(out)
    pdf = folder / "2023 Q3 AAPL.pdf"
    pdf.write_bytes(out.getvalue())
    return [rules, pdf]


@pytest.fixture(scope="module")
def fuzz_components(tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder,
                    small_llm: LlamaCppLLM) -> Iterator[Components]:
    root = tmp_path_factory.mktemp("fuzz")
    settings_ = make_settings(
        root / "data", llm=LLMSettings(max_tokens=16),  # answers cut short: the fuzzing is about requests
        retrieval=RetrievalSettings(top_k=2, context_tokens=100),
        auth=AuthSettings(enabled=True, rate_limit_per_minute=0, _env_file=None),  # type: ignore[call-arg]
    )
    components = Components(settings_, embedder=embedder, llm=small_llm)
    report = Ingestor(components).ingest(_documents(root), COLLECTION, progress=False)
    assert (report.indexed, report.failed) == (2, [])
    yield components
    components.close()


@pytest.fixture(scope="module")
def app(fuzz_components: Components) -> Iterator[FastAPI]:
    app = create_app(fuzz_components.settings, fuzz_components, preload=False)
    yield app
    jobs = getattr(app.state, "ingest_jobs", None)  # uploads the fuzzing got accepted: stop their worker
    if jobs is not None:
        jobs.close()


@pytest.fixture(scope="module")
def headers(fuzz_components: Components) -> dict[str, str]:
    """Sent with every request: an admin key (AUTH_ENABLED), so every operation is reached past the middleware."""
    return {"Authorization": f"Bearer {ApiKeys(fuzz_components.engine).create('default', 'fuzz', role='admin').key}"}


@pytest.fixture(scope="module")
def client(app: FastAPI) -> TestClient:
    return TestClient(app)  # not entered: the app's shutdown is the module's (see `app`)


@pytest.fixture(scope="module")
def known(client: TestClient, fuzz_components: Components, headers: dict[str, str]) -> dict[str, str]:
    """Path parameters that name things that exist (a document, a chunk, a conversation, an ingest job, an
    evaluation report, the collection), so that fuzzing also reaches past the 404s."""
    [doc] = [d for d in client.get("/v1/documents", headers=headers).json() if d["source"].endswith(".pdf")]
    [(point_id, _)] = list(fuzz_components.store.scroll_chunks(COLLECTION, doc_id=doc["id"]))[:1]
    answer = client.post("/v1/chat", json={"question": "What were Apple's total net sales?"}, headers=headers)
    assert answer.status_code == 200, answer.text
    upload = client.post("/v1/documents", files=[("files", ("note.txt", b"A short note on net sales."))],
                         headers=headers)
    assert upload.status_code == 202, upload.text
    reports = client.get("/v1/eval/reports", headers=headers).json()
    return {"doc_id": doc["id"], "point_id": point_id, "conversation_id": answer.json()["conversation_id"],
            "job_id": upload.json()["job_id"], "name": reports[0]["name"] if reports else "none",
            "model_id": COLLECTION, "collection": COLLECTION}


def fuzz(operation: Any, mode: GenerationMode, examples: int, headers: dict[str, str], run: Counter[str],
         path_parameters: dict[str, str] | None = None) -> None:
    """Call `operation` with `examples` cases of `mode` and check each response; raise on the first failure
    (shrunk to its simplest case). `path_parameters` fixes those, the rest is generated."""
    label = f"{operation.label} ({mode.value}{', known ids' if path_parameters else ''})"

    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate, Phase.shrink])
    def call(case: Any) -> None:
        run[label] += 1
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=120)  # a first answer loads the model

    call()


@pytest.mark.slow
def test_no_request_gets_a_server_error(app: FastAPI, headers: dict[str, str], known: dict[str, str]) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=headers)  # the schema needs a key too
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == sum(len(methods) for methods in app.openapi()["paths"].values())  # none skipped
    passes: list[tuple[Any, GenerationMode, int, dict[str, str] | None]] = []
    for operation in operations:
        passes += [(operation, mode, examples, None) for mode, examples in EXAMPLES.items()]
        names = {p.name for p in operation.path_parameters}
        if names and names <= known.keys() and operation.method.upper() == "GET":  # deleting: with made-up ids
            passes.append((operation, GenerationMode.POSITIVE, EXAMPLES[GenerationMode.NEGATIVE],
                           {name: known[name] for name in names}))
    run: Counter[str] = Counter()
    failures: dict[str, str] = {}
    for operation, mode, examples, path_parameters in passes:
        try:
            fuzz(operation, mode, examples, headers, run, path_parameters)
        except Unsatisfiable:  # nothing of the operation can be made invalid (no body, free-text path)
            continue
        except (Exception, BaseExceptionGroup) as exc:  # every operation is fuzzed; failures reported together
            failures[f"{operation.label} ({mode.value})"] = "".join(traceback.format_exception(exc))[-6000:]
    log.info("fuzzed %d operations in %d passes, %d requests: %s", len(operations), len(run), sum(run.values()),
             ", ".join(f"{label}: {n}" for label, n in run.items()))  # pytest -o log_cli=true shows it
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
    assert all(run[f"{op.label} (positive)"] for op in operations)


# --- what the fuzzing found, and the other limits of a request, one by one --------------------------------------


@pytest.mark.parametrize(("method", "path", "body", "status", "detail"), [
    # found by the fuzzing: an offset that moves the time out of range was a 500 (OverflowError)
    ("GET", "/v1/feedback/stats?since=0001-01-01T00:00:00%2B00:01", None, 422,
     "since: Value error, the time is out of range once converted to UTC"),
    # integers past 64 bits in filters were a 500 from the vector store
    ("POST", "/v1/retrieve", {"question": "net sales", "filters": {"fiscal_year": 10**30}}, 422,
     "filters: Value error, filter 'fiscal_year' must be a string, a 64-bit integer, or a list of strings or of "
     "integers"),
    ("POST", "/v1/retrieve", {"question": "net sales", "filters": {"fiscal_year": "9" * 30}}, 422,
     "filter 'fiscal_year': 999999999999999999999999999999 is out of range (64-bit integers)"),
    ("POST", "/v1/chat", {"question": "net sales", "filters": {"ticker": ["AAPL", 1]}}, 422,
     "filters: Value error, filter 'ticker' must be a string, a 64-bit integer, or a list of strings or of integers"),
    ("POST", "/v1/chat", {"question": "net sales", "filters": ["AAPL"]}, 422,
     'filters: Value error, filters must be an object of field: value, e.g. {"ticker": "AAPL"}'),
    ("POST", "/v1/chat", {"question": "net sales", "filters": {"colour": "red"}}, 422, "cannot filter on 'colour'"),
    ("POST", "/v1/chat", {"question": "q" * 2001}, 422, "the question has 2001 characters; the limit is 2000"),
    ("POST", "/v1/chat", {"question": " "}, 422, "the question is empty"),
    ("POST", "/v1/retrieve", {"question": "net sales", "top_k": 51}, 422, "top_k: Input should be less than or "
     "equal to 50"),
    ("POST", "/v1/retrieve", {"question": "net sales", "collection": "no-such"}, 404, "'no-such'"),
    ("POST", "/v1/chat", {"question": "net sales", "collection": "../../etc"}, 404, "'../../etc'"),
    ("GET", "/v1/collections/no-such/facets", None, 404, "no collection named 'no-such'"),
    ("POST", "/v1/documents?collection=..%2Fescape", None, 422, "invalid collection name '../escape'"),
])
def test_bad_requests_get_clear_client_errors(client: TestClient, headers: dict[str, str], method: str, path: str,
                                              body: Any, status: int, detail: str) -> None:
    response = client.request(method, path, json=body, headers=headers)
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"], response.json()


def test_a_body_past_max_body_kb_is_refused_unread(app: FastAPI, client: TestClient, headers: dict[str, str]) -> None:
    limit = app.state.settings.max_body_kb * 1024
    big = {"question": "q" * limit}
    response = client.post("/v1/chat", json=big, headers=headers)
    assert response.status_code == 413
    assert response.json()["error"] == "request_too_large"
    assert "MAX_BODY_KB" in response.json()["detail"]

    def chunked() -> Iterator[bytes]:  # no Content-Length to go by: counted as it arrives
        yield b'{"question": "'
        for _ in range(limit // 1024 + 1):
            yield b"q" * 1024
        yield b'"}'

    response = client.post("/v1/retrieve", content=chunked(), headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    small = client.post("/v1/retrieve", json={"question": "net sales"}, headers=headers)
    assert small.status_code == 200, small.text


def test_openai_errors_keep_openai_shape(client: TestClient, headers: dict[str, str]) -> None:
    response = client.post("/v1/chat/completions", headers=headers, json={
        "model": COLLECTION, "messages": [{"role": "user", "content": "net sales"}], "filters": {"x": {"y": 1}}})
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "filter 'x'" in response.json()["error"]["message"]


def test_the_schema_documents_the_error_shapes(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    native = paths["/v1/chat"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    openai = paths["/v1/chat/completions"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert native["$ref"].endswith("/ErrorOut") and openai["$ref"].endswith("/OpenAIErrorOut")
