"""Backup and restore (`python -m assistant.backup`): a real data directory (Qdrant Edge index of a real rulebook,
SQLite with answers and votes, an upload, a learned model) archived, wiped and restored; the restored assistant
retrieves and reports exactly what it did before. Corrupt, truncated, altered and foreign archives are refused with
nothing touched; a data directory with data is only replaced with --force; an index held by a running server is
not copied; a backup taken while another connection writes is a consistent snapshot; what is not covered
(PostgreSQL, a Qdrant server) is said.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import SAMPLES, make_settings
from fastapi.testclient import TestClient

from assistant.answering import Answer
from assistant.app import create_app
from assistant.backup import BackupError, create, main
from assistant.components import Components
from assistant.db import answers, connect, documents, feedback
from assistant.edge_store import EdgeStore
from assistant.embedding import SentenceTransformerEmbedder
from assistant.records import AnswerLog, FeedbackLog
from assistant.restore import restore, verify
from assistant.settings import Settings
from assistant.sources import Citation
from ingest.pipeline import Ingestor

COLLECTION = "rules"
QUESTION = "When may the Regulator disclose confidential information?"


def record_answer(engine: sa.Engine, n: int = 0) -> str:
    answer = Answer(answer=f"Answer {n} [1].", retrieved=[], refused=False, model="m", prompt_version="p1",
                    citations=[Citation(n=1, point_id="p", source="CONF.txt", pages=[], section="1.1",
                                        snippet="s", score=0.5)])
    return AnswerLog(engine, "emb").record(answer, question=f"Q{n}?", collection=COLLECTION, filters=None,
                                           latency_ms=1)


def rows(db: Path, table: sa.Table) -> list[dict[str, Any]]:
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(table).order_by(table.c.id)).mappings()]
    finally:
        engine.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
def filled(settings: Settings, embedder: SentenceTransformerEmbedder) -> Iterator[dict[str, Any]]:
    """DATA_DIR with an index, answers and votes, an upload, a learned model and model weights; what it serves."""
    components = Components(settings, embedder=embedder)
    try:
        upload = settings.data_dir / "uploads" / COLLECTION / "CONF.txt"
        upload.parent.mkdir(parents=True)
        shutil.copy(SAMPLES / "adgm" / "CONF_VER03.18042019.txt", upload)
        report = Ingestor(components).ingest([upload], COLLECTION, progress=False)
        assert report.indexed == 1 and not report.failed
        answer_id = record_answer(components.engine)
        FeedbackLog(components.engine).add(answer_id, "up", "right rule", user_id="ann")
        client = TestClient(create_app(settings, components, preload=False))
        hits = client.post("/v1/retrieve", json={"question": QUESTION, "collection": COLLECTION}).json()["hits"]
        stats = client.get("/v1/feedback/stats").json()
    finally:
        components.close()
    (settings.learned_dir / "reranker-v2").mkdir(parents=True)
    (settings.learned_dir / "reranker-v2" / "weights.bin").write_bytes(b"learned")
    (settings.models_dir / "onnx").mkdir(parents=True)
    (settings.models_dir / "onnx" / "model.onnx").write_bytes(b"cache" * 100)
    (settings.models_dir / "tiny.gguf").write_bytes(b"GGUF" * 100)
    yield {"hits": hits, "stats": stats, "answer_id": answer_id, "upload": upload}


def served(settings: Settings, embedder: SentenceTransformerEmbedder) -> tuple[list[Any], Any]:
    components = Components(settings, embedder=embedder)
    try:
        client = TestClient(create_app(settings, components, preload=False))
        hits = client.post("/v1/retrieve", json={"question": QUESTION, "collection": COLLECTION}).json()["hits"]
        return hits, client.get("/v1/feedback/stats").json()
    finally:
        components.close()


def test_backup_wipe_restore_serves_the_same(settings: Settings, filled: dict[str, Any], tmp_path: Path,
                                             embedder: SentenceTransformerEmbedder,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "backup.tar.gz"
    db = settings.data_dir / "finrag.db"
    before = {t.name: rows(db, t) for t in (documents, answers, feedback)}
    assert main(["create", "--out", str(archive), "--quiet"], settings) == 0
    out = capsys.readouterr()
    assert f"wrote {archive}" in out.out and "database, index, uploads, models" in out.out

    shutil.rmtree(settings.data_dir)
    assert main(["verify", str(archive), "--quiet"], settings) == 0
    assert main(["restore", str(archive), "--quiet"], settings) == 0
    assert "restored" in capsys.readouterr().out

    assert {t.name: rows(db, t) for t in (documents, answers, feedback)} == before
    hits, stats = served(settings, embedder)
    assert hits == filled["hits"] and len(hits) > 0
    assert stats == filled["stats"] and stats["total"] == 1
    assert filled["upload"].read_text(encoding="utf-8") == (SAMPLES / "adgm" / "CONF_VER03.18042019.txt").read_text(
        encoding="utf-8")
    assert (settings.learned_dir / "reranker-v2" / "weights.bin").read_bytes() == b"learned"
    assert not (settings.models_dir / "tiny.gguf").exists()  # weights and caches only with --with-models
    assert not (settings.models_dir / "onnx").exists()
    assert [p.name for p in settings.data_dir.parent.iterdir() if p.name.startswith(".")] == []  # no staging left

    # ingest again over the restored state: nothing to do, the index and the registry agree
    components = Components(settings, embedder=embedder)
    try:
        report = Ingestor(components).ingest([filled["upload"]], COLLECTION, progress=False)
        assert (report.unchanged, report.embedded) == (1, 0)
    finally:
        components.close()


def test_with_models_takes_weights_and_caches_too(settings: Settings, filled: dict[str, Any], tmp_path: Path) -> None:
    manifest = create(settings, tmp_path / "b.tar", with_models=True, progress=False)
    assert {"models/tiny.gguf", "models/onnx/model.onnx", "models/learned/reranker-v2/weights.bin"} <= set(
        manifest["files"])
    shutil.rmtree(settings.data_dir)
    restore(tmp_path / "b.tar", settings, progress=False)
    assert (settings.models_dir / "tiny.gguf").read_bytes() == b"GGUF" * 100


def test_restore_replaces_data_only_with_force(settings: Settings, filled: dict[str, Any], tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    create(settings, archive, progress=False)
    engine = connect(settings.db_url)
    record_answer(engine, 2)  # data written after the backup
    engine.dispose()
    (settings.models_dir / "kept.gguf").write_bytes(b"weights stay")
    with pytest.raises(BackupError, match=r"already exist.*--force"):
        restore(archive, settings, progress=False)
    assert len(rows(settings.data_dir / "finrag.db", answers)) == 2  # untouched

    restore(archive, settings, force=True, progress=False)
    assert [r["question"] for r in rows(settings.data_dir / "finrag.db", answers)] == ["Q0?"]
    assert (settings.models_dir / "kept.gguf").read_bytes() == b"weights stay"  # not a part: left alone
    assert not list(settings.data_dir.rglob(".*replaced-*"))  # what was replaced is gone


def test_restore_refuses_corrupt_truncated_altered_and_foreign_archives(settings: Settings, filled: dict[str, Any],
                                                                        tmp_path: Path) -> None:
    good = tmp_path / "good.tar"
    create(settings, good, progress=False)
    raw = good.read_bytes()
    gz = tmp_path / "good.tar.gz"
    create(settings, gz, progress=False)

    flipped = bytearray(gz.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    (tmp_path / "flipped.tar.gz").write_bytes(bytes(flipped))
    (tmp_path / "truncated.tar.gz").write_bytes(gz.read_bytes()[: len(flipped) // 2])

    altered = bytearray(raw)  # one byte of the uploaded file's content, tar headers intact
    at = raw.index(b"Confidential")
    altered[at] = ord("c")
    (tmp_path / "altered.tar").write_bytes(bytes(altered))

    foreign = tmp_path / "foreign.tar"
    with tarfile.open(foreign, "w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    no_manifest = tmp_path / "no-manifest.tar"
    with tarfile.open(good) as src, tarfile.open(no_manifest, "w") as tar:
        for member in src.getmembers():
            if member.name != "MANIFEST.json":
                tar.addfile(member, src.extractfile(member))

    shutil.rmtree(settings.data_dir)
    broken = "corrupt|not a complete finrag backup"  # where a damaged stream fails depends on the byte hit
    for name, says in [("flipped.tar.gz", broken), ("truncated.tar.gz", broken),
                       ("altered.tar", "does not match its manifest"), ("foreign.tar", "no finrag backup holds"),
                       ("no-manifest.tar", "no finrag manifest")]:
        with pytest.raises(BackupError, match=says):
            restore(tmp_path / name, settings, progress=False)
        assert not settings.data_dir.exists(), name
        assert main(["verify", str(tmp_path / name), "--quiet"], settings) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_index_held_by_a_server_is_not_copied_nor_replaced(settings: Settings, filled: dict[str, Any],
                                                              tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    create(settings, archive, progress=False)
    held = EdgeStore.open(settings.qdrant_path)  # what the server or an ingest holds while it runs
    try:
        with pytest.raises(BackupError, match=r"open in another process.*stop it"):
            create(settings, tmp_path / "c.tar.gz", progress=False)
        assert not (tmp_path / "c.tar.gz").exists() and not list(tmp_path.glob(".c.tar.gz*"))
        with pytest.raises(BackupError, match=r"open in another process.*stop it before restoring"):
            restore(archive, settings, force=True, progress=False)
        assert held.count(COLLECTION) > 0
    finally:
        held.close()


def test_a_backup_while_another_connection_writes_is_one_consistent_snapshot(settings: Settings,
                                                                             tmp_path: Path) -> None:
    engine = connect(settings.db_url)
    for n in range(300):
        record_answer(engine, n)
    stop, written = threading.Event(), []

    def write() -> None:
        log = FeedbackLog(engine)
        ids = [record_answer(engine, 1000 + n) for n in range(5)]
        n = 0
        while not stop.is_set():
            log.add(ids[n % 5], "up", user_id=f"u{n}")
            written.append(n)
            n += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        while len(written) < 20:
            stop.wait(0.01)
        at_start = len(written)
        manifest = create(settings, tmp_path / "b.tar", progress=False)
        at_end = len(written)
        while len(written) < at_end + 20:  # the writer went on, unblocked
            stop.wait(0.01)
    finally:
        stop.set()
        writer.join()
        engine.dispose()
    votes = manifest["parts"]["database"]["rows"]["feedback"]
    assert at_start <= votes <= at_end + 1

    target = make_settings(tmp_path / "restored")
    restore(tmp_path / "b.tar", target, progress=False)
    db = sqlite3.connect(target.data_dir / "finrag.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT count(*) FROM feedback").fetchone()[0] == votes
        assert db.execute("SELECT count(*) FROM answers").fetchone()[0] == 305
    finally:
        db.close()


def test_what_is_not_covered_is_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(tmp_path / "data", database_url="postgresql://finrag:secret@db:5432/finrag",
                             store={"url": "http://qdrant:6333"})
    (settings.data_dir / "eval").mkdir(parents=True)
    manifest = create(settings, tmp_path / "b.tar.gz", progress=False)
    err = capsys.readouterr().err
    assert "NOT in this backup" in err and "pg_dump" in err and "snapshot" in err and "secret" not in err
    assert f"{settings.data_dir / 'eval'} is not in the backup" in err
    assert manifest["parts"] == {} and len(manifest["not_included"]) == 3
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        assert json.load(tar.extractfile("MANIFEST.json"))["not_included"] == manifest["not_included"]  # type: ignore[arg-type]
    assert verify(tmp_path / "b.tar.gz", settings, progress=False)["files"] == {}
