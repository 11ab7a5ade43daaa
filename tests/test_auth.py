"""API keys, tenants and document-level access, end to end through the real app.

Two tenants over one real index (embedded Qdrant Edge, MiniLM, SQLite, Qwen2.5-Coder-0.5B): `acme` owns the
collection `acme-filings` (Apple's Q3 2023 10-Q), `globex` owns `globex-rules` (the ADGM FEES rulebook), and
`legacy` (the CONF rulebook) was indexed before tenants existed, so it is the default tenant's. Every test calls
the app as a client would, with keys made by `assistant.keys` (the CLI's own code).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import SAMPLES, make_settings
from fastapi.testclient import TestClient

from assistant.app import create_app
from assistant.chunks import Chunk
from assistant.components import Components
from assistant.db import api_keys, documents
from assistant.keys import ApiKeys
from assistant.keys import main as keys_main
from assistant.settings import AuthSettings
from assistant.tenancy import CollectionOwners
from ingest.pipeline import Ingestor

ACME, GLOBEX = "acme-filings", "globex-rules"
LEGACY = "legacy"
APPLE_Q = "What was Apple's total net sales in the quarter ended July 1, 2023?"
FEES_Q = "In which currency must fees payable to the Regulator be paid?"


@dataclass
class Tenants:
    components: Components
    client: TestClient
    acme: str  # member key of acme
    acme_admin: str
    globex: str  # member key of globex
    globex_admin: str
    default: str  # member key of the default tenant

    def get(self, key: str, path: str, **kw: Any) -> Any:
        return self.client.get(path, headers=bearer(key), **kw)

    def post(self, key: str, path: str, **kw: Any) -> Any:
        return self.client.post(path, headers=bearer(key), **kw)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory, embedder: Any, small_llm: Any) -> Iterator[Tenants]:
    data = tmp_path_factory.mktemp("tenants")
    settings = make_settings(data, auth=AuthSettings(enabled=True, rate_limit_per_minute=0, _env_file=None))  # type: ignore[call-arg]
    components = Components(settings, embedder=embedder, llm=small_llm)
    ingestor = Ingestor(components)
    owners = CollectionOwners(components.engine)
    for collection, tenant, path in ((ACME, "acme", SAMPLES / "sec-10q" / "2023 Q3 AAPL.pdf"),
                                     (GLOBEX, "globex", SAMPLES / "adgm" / "FEES_VER16.181223.txt")):
        owners.claim(collection, tenant, exists=False)
        report = ingestor.ingest([path], collection, progress=False)
        assert not report.failed, report.failed
    report = ingestor.ingest([SAMPLES / "adgm" / "CONF_VER03.18042019.txt"], LEGACY, progress=False)
    assert not report.failed
    keys = ApiKeys(components.engine)
    app = create_app(settings, components, preload=False)
    with TestClient(app) as client:
        yield Tenants(
            components, client,
            acme=keys.create("acme", "acme analyst").key, acme_admin=keys.create("acme", "acme ops", role="admin").key,
            globex=keys.create("globex", "globex analyst").key,
            globex_admin=keys.create("globex", "globex ops", role="admin").key,
            default=keys.create("default", "old team").key,
        )
    components.close()


def a_document(t: Tenants, collection: str) -> dict[str, Any]:
    with t.components.engine.connect() as conn:
        return dict(conn.execute(sa.select(documents).where(documents.c.collection == collection)).mappings().first())


def a_chunk(t: Tenants, collection: str) -> tuple[str, Chunk]:
    return next(iter(t.components.store.scroll_chunks(collection, batch=4)))


# --- keys -------------------------------------------------------------------------------------------------------


def test_every_endpoint_but_health_needs_a_key(tenants: Tenants) -> None:
    client = tenants.client
    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    operations = [(method.upper(), path) for path, ops in paths.items() for method in ops]
    operations += [("GET", page) for page in ("/", "/ingest", "/evaluation", "/docs", "/redoc", "/openapi.json")]
    checked = 0
    for method, path in operations:
        response = client.request(method, re.sub(r"\{[^}]+\}", "x", path), headers={"Accept": "application/json"})
        if path == "/health":
            assert response.status_code != 401
            continue
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        checked += 1
    assert checked >= 30
    assert client.get("/health").status_code in (200, 503)  # no key needed
    assert client.get("/openapi.json").status_code == 401 and client.get("/docs").status_code == 401
    body = client.get("/v1/collections").json()
    assert body["error"] == "unauthorized" and "Authorization: Bearer" in body["detail"]
    openai = client.post("/v1/chat/completions", json={}).json()  # OpenAI clients get OpenAI's error shape
    assert openai["error"]["code"] == "unauthorized" and openai["error"]["type"] == "invalid_request_error"


def test_unknown_malformed_and_forged_keys_are_refused(tenants: Tenants) -> None:
    good = tenants.acme
    key_id = good.split("_")[1]
    for bad in ("nonsense", good[:-1] + ("A" if good[-1] != "A" else "B"), f"fk_{key_id}_" + "x" * 43,
                "fk_000000000000_" + "y" * 43, good + " trailing"):
        response = tenants.get(bad, "/v1/collections")
        assert response.status_code == 401, bad
    assert tenants.client.get("/v1/collections", headers={"X-API-Key": good}).status_code == 200


def test_keys_are_hashed_at_rest_and_revoked_by_the_command(tenants: Tenants, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    settings = tenants.components.settings
    monkeypatch.setenv("DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("COLLECTION", settings.collection)
    assert keys_main(["create", "--tenant", "acme", "--name", "temp"]) == 0
    key = capsys.readouterr().out.strip()
    key_id, secret = key.split("_")[1], key.split("_", 2)[2]
    with tenants.components.engine.connect() as conn:
        row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).mappings().one()
    assert secret not in str(dict(row)) and row["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert tenants.get(key, "/v1/collections").status_code == 200

    assert keys_main(["list", "--tenant", "acme"]) == 0
    listed = capsys.readouterr().out
    assert key_id in listed and secret not in listed
    assert keys_main(["revoke", key_id]) == 0
    response = tenants.get(key, "/v1/collections")
    assert response.status_code == 401 and "revoked" in response.json()["detail"]
    assert keys_main(["revoke", key_id]) == 1  # twice: a clear error
    assert keys_main(["create", "--tenant", "Not A Tenant", "--name", "x"]) == 1
    assert "invalid tenant name" in capsys.readouterr().err


# --- tenants ----------------------------------------------------------------------------------------------------


def test_a_key_sees_only_its_tenants_collections(tenants: Tenants) -> None:
    def names(key: str, path: str = "/v1/collections") -> set[str]:
        body = tenants.get(key, path).json()
        return {c["name"] for c in body} if isinstance(body, list) else {m["id"] for m in body["data"]}

    assert names(tenants.acme) == {ACME}
    assert names(tenants.globex) == {GLOBEX}
    assert names(tenants.default) == {LEGACY}  # indexed before tenants existed: the default tenant's
    assert names(tenants.acme, "/v1/models") == {ACME}
    assert tenants.get(tenants.globex, f"/v1/models/{ACME}").status_code == 404


def test_a_key_cannot_retrieve_or_ask_another_tenants_collection(tenants: Tenants) -> None:
    mine = tenants.post(tenants.acme, "/v1/retrieve", json={"question": APPLE_Q, "collection": ACME})
    assert mine.status_code == 200 and mine.json()["hits"]
    for path, body in (("/v1/retrieve", {"question": APPLE_Q, "collection": ACME}),
                       ("/v1/chat", {"question": APPLE_Q, "collection": ACME}),
                       ("/v1/chat", {"question": APPLE_Q, "collection": ACME, "stream": True})):
        theirs = tenants.post(tenants.globex, path, json=body)
        assert theirs.status_code == 404, (path, theirs.text)
        assert theirs.json() == {"error": "unknown_collection",
                                 "detail": f"no collection named {ACME!r}; GET /v1/collections lists them"}
    completion = tenants.post(tenants.globex, "/v1/chat/completions",
                              json={"model": ACME, "messages": [{"role": "user", "content": APPLE_Q}]})
    assert completion.status_code == 404 and completion.json()["error"]["code"] == "unknown_collection"
    # a tenant filter in the request cannot widen the search: the caller's tenant replaces it
    sneaky = tenants.post(tenants.acme, "/v1/retrieve", json={"question": FEES_Q, "collection": ACME,
                                                             "filters": {"tenant": "globex"}})
    assert sneaky.status_code == 200 and {h["source"] for h in sneaky.json()["hits"]} == {"2023 Q3 AAPL.pdf"}
    assert tenants.get(tenants.globex, f"/v1/collections/{ACME}/facets").status_code == 404


def test_the_tenant_filter_is_in_the_store_query(tenants: Tenants, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of two tenants in one collection (as a misconfigured import would leave them): the store's own
    search returns only the caller's, because the filter is part of the Qdrant query."""
    comp = tenants.components
    store = comp.store
    mixed = "mixed"
    foreign = [Chunk(text=f"Globex secret revenue line {i}: 999 million", source="globex.txt", doc_id="g",
                     chunk_index=i, file_hash="h", tenant="globex") for i in range(3)]
    own = [Chunk(text=f"Acme revenue line {i}: 5 million", source="acme.txt", doc_id="a", chunk_index=i,
                 file_hash="h", tenant="acme") for i in range(3)]
    store.ensure_collection(mixed, comp.embedder.dim)
    chunks = foreign + own
    texts = [c.text for c in chunks]
    store.upsert(mixed, chunks, comp.embedder.embed_batch(texts), [comp.sparse.encode_document(t) for t in texts])
    owners = CollectionOwners(comp.engine)
    owners.claim(mixed, "acme", exists=False)
    try:
        _search_mixed(tenants, mixed, monkeypatch)
    finally:
        store.drop_collection(mixed)
        owners.release(mixed)


def _search_mixed(tenants: Tenants, mixed: str, monkeypatch: pytest.MonkeyPatch) -> None:
    comp = tenants.components
    store = comp.store
    seen: list[Any] = []
    search = store.search

    def spy(collection: str, vector: Any, limit: int, filters: Any = None, **kw: Any) -> Any:
        seen.append(filters)
        return search(collection, vector, limit, filters, **kw)

    monkeypatch.setattr(store, "search", spy)
    response = tenants.post(tenants.acme, "/v1/retrieve",
                            json={"question": "Globex secret revenue", "collection": mixed, "top_k": 6})
    assert response.status_code == 200
    assert {h["source"] for h in response.json()["hits"]} == {"acme.txt"}
    assert seen and all(f and f.get("tenant") == "acme" for f in seen)
    # the store itself, asked without the filter, would have returned Globex's chunks first
    vector = comp.embedder.embed_batch(["Globex secret revenue"])[0]
    assert search(mixed, vector, 1)[0].chunk.source == "globex.txt"
    assert {h.chunk.source for h in search(mixed, vector, 6, {"tenant": "acme"})} == {"acme.txt"}


def test_a_key_cannot_read_download_or_delete_another_tenants_documents(tenants: Tenants) -> None:
    doc = a_document(tenants, ACME)
    point_id, _ = a_chunk(tenants, ACME)
    assert tenants.get(tenants.acme, f"/v1/documents/{doc['id']}/file").status_code == 200
    assert tenants.get(tenants.acme, f"/v1/chunks/{point_id}", params={"collection": ACME}).status_code == 200
    for path, params in ((f"/v1/documents/{doc['id']}", None), (f"/v1/documents/{doc['id']}/file", None),
                         (f"/v1/documents/{doc['id']}/view", None), ("/v1/documents", {"collection": ACME}),
                         (f"/v1/chunks/{point_id}", {"collection": ACME}),
                         (f"/v1/chunks/{point_id}", {"collection": GLOBEX})):
        response = tenants.get(tenants.globex, path, params=params)
        assert response.status_code == 404, (path, response.status_code)
        assert "2023 Q3 AAPL" not in response.text
    assert tenants.client.delete(f"/v1/documents/{doc['id']}", headers=bearer(tenants.globex_admin)).status_code == 404
    assert tenants.get(tenants.acme, f"/v1/documents/{doc['id']}").status_code == 200  # still there
    # uploading into another tenant's collection is refused, and the file is not stored
    files = {"files": ("note.txt", b"Globex note: nothing to see.", "text/plain")}
    refused = tenants.client.post("/v1/documents", params={"collection": ACME}, files=files,
                                  headers=bearer(tenants.globex_admin))
    assert refused.status_code == 403 and "taken" in refused.json()["detail"]
    assert not (tenants.components.settings.data_dir / "uploads" / ACME / "note.txt").exists()


def test_uploads_and_their_jobs_are_the_uploaders_tenants(tenants: Tenants) -> None:
    files = {"files": ("acme-memo.txt", b"Acme treasury memo: cash is held in USD deposits.", "text/plain")}
    accepted = tenants.client.post("/v1/documents", params={"collection": "acme-memos"}, files=files,
                                   headers=bearer(tenants.acme_admin))
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    for _ in range(600):
        job = tenants.get(tenants.acme, f"/v1/ingest/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert job["state"] == "done", job
    assert CollectionOwners(tenants.components.engine).owner("acme-memos") == "acme"  # a new collection: theirs
    assert tenants.get(tenants.globex, f"/v1/ingest/jobs/{job_id}").status_code == 404
    assert job_id not in {j["id"] for j in tenants.get(tenants.globex, "/v1/ingest/jobs").json()}
    assert job_id in {j["id"] for j in tenants.get(tenants.acme, "/v1/ingest/jobs").json()}
    hits = tenants.post(tenants.acme, "/v1/retrieve", json={"question": "treasury memo", "collection": "acme-memos"})
    assert hits.status_code == 200 and hits.json()["hits"][0]["source"] == "acme-memo.txt"
    point = hits.json()["hits"][0]["point_id"]
    assert tenants.components.store.get_chunks("acme-memos", [point])[point].tenant == "acme"  # in the payload
    assert tenants.post(tenants.globex, "/v1/retrieve",
                        json={"question": "treasury memo", "collection": "acme-memos"}).status_code == 404


def test_members_cannot_change_documents_or_use_admin_endpoints(tenants: Tenants) -> None:
    doc = a_document(tenants, ACME)
    assert tenants.client.delete(f"/v1/documents/{doc['id']}", headers=bearer(tenants.acme)).status_code == 403
    files = {"files": ("note.txt", b"A note.", "text/plain")}
    upload = tenants.client.post("/v1/documents", params={"collection": ACME}, files=files,
                                 headers=bearer(tenants.acme))
    assert upload.status_code == 403 and "admin key" in upload.json()["detail"]
    for path in ("/v1/admin/models", "/v1/eval/reports"):
        assert tenants.get(tenants.acme, path).status_code == 403
        assert tenants.get(tenants.acme_admin, path).status_code == 200


def test_answers_conversations_and_feedback_are_tenant_scoped(tenants: Tenants) -> None:
    asked = tenants.post(tenants.acme, "/v1/chat", json={"question": APPLE_Q, "collection": ACME})
    assert asked.status_code == 200, asked.text
    body = asked.json()
    answer_id, conversation_id = body["answer_id"], body["conversation_id"]
    assert all(c["source"] == "2023 Q3 AAPL.pdf" for c in body["citations"])

    # another tenant cannot rate it, read its conversation, continue it, or see it in stats and lists
    vote = tenants.post(tenants.globex, "/v1/feedback", json={"answer_id": answer_id, "rating": "down"})
    assert vote.status_code == 404 and vote.json()["error"] == "unknown_answer"
    assert tenants.get(tenants.globex, f"/v1/conversations/{conversation_id}").status_code == 404
    follow = tenants.post(tenants.globex, "/v1/chat", json={"question": "and the quarter before?",
                                                            "collection": GLOBEX, "conversation_id": conversation_id})
    assert follow.status_code == 404 and follow.json()["error"] == "unknown_conversation"
    assert conversation_id not in {c["id"] for c in tenants.get(tenants.globex, "/v1/conversations").json()}

    ok = tenants.post(tenants.acme, "/v1/feedback", json={"answer_id": answer_id, "rating": "up", "user_id": "ann"})
    assert ok.status_code == 201
    assert tenants.get(tenants.acme, "/v1/feedback/stats").json()["total"] >= 1
    assert tenants.get(tenants.globex, "/v1/feedback/stats").json()["total"] == 0
    assert conversation_id in {c["id"] for c in tenants.get(tenants.acme, "/v1/conversations").json()}
    with tenants.components.engine.connect() as conn:
        tenants_of = conn.execute(sa.text(
            "SELECT a.tenant, c.tenant, f.tenant FROM answers a JOIN conversations c ON c.id = a.conversation_id "
            "JOIN feedback f ON f.answer_id = a.id WHERE a.id = :id"), {"id": answer_id}).one()
    assert tuple(tenants_of) == ("acme", "acme", "acme")


def test_default_tenant_sees_chunks_indexed_before_tenants(tenants: Tenants) -> None:
    """Chunks with no tenant field (an index from before tenants) are the default tenant's, nobody else's."""
    comp = tenants.components
    old = "pre-tenant"
    chunk = Chunk(text="Old rule 9.9: annual fees are payable in USD.", source="old.txt", doc_id="o", chunk_index=0,
                  file_hash="h")
    comp.store.ensure_collection(old, comp.embedder.dim)
    vector = comp.embedder.embed_batch([chunk.text])
    comp.store.upsert(old, [chunk], vector, [comp.sparse.encode_document(chunk.text)])
    payload_without_tenant = {k: v for k, v in chunk.payload().items() if k != "tenant"}
    assert Chunk.from_payload(payload_without_tenant).tenant == "default"
    try:
        hits = comp.store.search(old, vector[0], 3, {"tenant": "default"})
        assert [h.chunk.source for h in hits] == ["old.txt"]
        assert comp.store.search(old, vector[0], 3, {"tenant": "acme"}) == []
    finally:
        comp.store.drop_collection(old)


# --- web sign-in ------------------------------------------------------------------------------------------------


def test_pages_send_to_sign_in_and_the_cookie_works_from_this_site_only(tenants: Tenants) -> None:
    client = TestClient(tenants.client.app, base_url="http://testserver")
    page = client.get("/", headers={"Accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=/"
    assert client.get("/login").status_code == 200 and "API key" in client.get("/login").text
    wrong = client.post("/login", data={"key": "fk_nope", "next": "/"}, follow_redirects=False)
    assert wrong.status_code == 303 and "error=" in wrong.headers["location"]
    signed = client.post("/login", data={"key": tenants.acme, "next": "//evil.example/"}, follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/"  # no open redirect
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert client.get("/", headers={"Accept": "text/html"}).status_code == 200
    assert {c["name"] for c in client.get("/v1/collections").json()} & {ACME, GLOBEX} == {ACME}
    cross = client.post("/v1/retrieve", json={"question": APPLE_Q, "collection": ACME},
                        headers={"Origin": "https://evil.example"})
    assert cross.status_code == 401
    same = client.post("/v1/retrieve", json={"question": APPLE_Q, "collection": ACME},
                       headers={"Origin": "http://testserver"})
    assert same.status_code == 200
    client.post("/logout")
    assert client.get("/v1/collections").status_code == 401


# --- rate limits ------------------------------------------------------------------------------------------------


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(tenants: Tenants) -> None:
    limited = ApiKeys(tenants.components.engine).create("acme", "batch job", rate_limit_per_minute=6).key
    codes = [tenants.get(limited, "/v1/collections").status_code for _ in range(70)]
    assert codes.count(200) < 70 and codes[-1] == 429
    response = tenants.get(limited, "/v1/collections")
    assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 1
    assert response.json()["error"] == "rate_limited"
    assert tenants.get(tenants.acme, "/v1/collections").status_code == 200  # other keys are not affected


def test_production_refuses_auth_disabled(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from assistant.settings import Settings

    with pytest.raises(ValidationError, match="AUTH_ENABLED=false"):
        Settings(env="production", data_dir=tmp_path, auth=AuthSettings(enabled=False, _env_file=None),  # type: ignore[call-arg]
                 _env_file=None)  # type: ignore[call-arg]
