"""Crash-safe ingestion: the real ingest CLI (a subprocess, the real MiniLM, Qdrant Edge, SQLite) over real documents,
killed with SIGKILL and run again, must leave the index an uninterrupted run leaves: the same point ids, payloads,
vectors and registry rows, no duplicate and no orphan chunk. The checks are bench/crash_ingest.py's (imported), which
measures the same at the scale of the whole sample corpus.

An upload's ingest job is killed with the server (`python -m assistant`, SIGKILL) midway through the file: started
again, the server resumes it by itself and the index ends as an uninterrupted CLI run of that file leaves it.
Also: a re-chunked file (same file, new chunk settings) keeps no stale chunk, and a collection whose creation was
killed midway is created again.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from conftest import REPO, SAMPLES, make_settings

from assistant.components import Components
from assistant.edge_store import EdgeStore
from assistant.embedding import SentenceTransformerEmbedder
from ingest.pipeline import Ingestor


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("crash_ingest", REPO / "bench" / "crash_ingest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


crash = _bench()
KILLS, SEED = 5, 20261204


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two ADGM rulebooks and an Apple 10-Q: 364 chunks, ~25 s to ingest on 2 idle cores."""
    folder = tmp_path_factory.mktemp("corpus")
    for path in (SAMPLES / "adgm" / "CONF_VER03.18042019.txt", SAMPLES / "adgm" / "FEES_VER16.181223.txt",
                 SAMPLES / "sec-10q" / "2023 Q3 AAPL.pdf"):
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def clean(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object]:
    """An uninterrupted run: (its Run, its Snapshot)."""
    data_dir = tmp_path_factory.mktemp("clean")
    run = crash.run_ingest(corpus, data_dir)
    assert run.returncode == 0 and run.first_progress_s is not None, run.stderr_tail
    snap = crash.snapshot(data_dir)
    assert crash.problems(snap) == []
    assert len(snap.registry) == 3 and len(snap.points) > 300
    return run, snap


@pytest.mark.slow
def test_killed_at_random_points_and_resumed_the_index_is_a_clean_runs(
        corpus: Path, clean: tuple[object, object], tmp_path: Path) -> None:
    clean_run, clean_snap = clean
    indexing = clean_run.seconds - clean_run.first_progress_s  # type: ignore[attr-defined]
    rng = random.Random(SEED)
    outcomes = []
    for i in range(KILLS):
        data_dir = tmp_path / f"kill-{i}"
        killed = crash.run_ingest(corpus, data_dir, kill_after=rng.uniform(0.0, indexing * 0.9))
        assert killed.killed, f"the run ended before its kill at {killed.killed_at_s} s: choose earlier points"
        resumed = crash.run_ingest(corpus, data_dir)
        assert resumed.returncode == 0, resumed.stderr_tail
        snap = crash.snapshot(data_dir)
        found = crash.problems(snap) + crash.differences(clean_snap, snap)
        outcomes.append((killed.killed_at_s, killed.progress_at_kill, found))
    print("\n".join(f"SIGKILL at {at} s ({progress}): {found or 'identical'}" for at, progress, found in outcomes))
    assert [found for _, _, found in outcomes] == [[]] * KILLS


@pytest.mark.slow
def test_a_changed_file_killed_midway_ends_as_its_new_version_alone(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rules = corpus / "FEES_VER16.181223.txt"
    old_text = (SAMPLES / "adgm" / "FEES_VER16.181223.txt").read_text(encoding="utf-8")
    rules.write_text(old_text, encoding="utf-8")
    data_dir, reference = tmp_path / "data", tmp_path / "reference"
    assert crash.run_ingest(corpus, data_dir).returncode == 0  # version 1, indexed whole

    rules.write_text(old_text.replace("Fees", "Charges").replace("fee", "charge"), encoding="utf-8")  # version 2
    killed = crash.run_ingest(corpus, data_dir, kill_after=0.0, after_chunks=64)  # once its first batch is stored
    assert killed.killed
    midway = crash.problems(crash.snapshot(data_dir))
    assert midway, "the kill left the index consistent: it did not land while the new version was being written"

    assert crash.run_ingest(corpus, data_dir).returncode == 0
    assert crash.run_ingest(corpus, reference).returncode == 0  # version 2 alone, never interrupted
    resumed, clean = crash.snapshot(data_dir), crash.snapshot(reference)
    assert crash.problems(resumed) == [] and crash.differences(clean, resumed) == []
    (row,) = resumed.registry.values()
    assert {p["file_hash"] for p, _, _ in resumed.points.values()} == {row["file_hash"]}


def start_server(data_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m assistant` on a free loopback port over `data_dir`, ready (its /health answers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**crash.ingest_env(data_dir), "PORT": str(port), "HOST": "127.0.0.1", "AUTH_ENABLED": "false",
           "AUTH_RATE_LIMIT_PER_MINUTE": "0"}
    with log.open("ab") as out:
        server = subprocess.Popen([sys.executable, "-m", "assistant"], cwd=REPO, env=env, stdout=out, stderr=out,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code in (200, 503):
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise AssertionError("the server did not start in 300 s")


def wait_for(check: object, seconds: float = 600) -> object:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := check():  # type: ignore[operator]
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_an_upload_killed_with_the_server_is_resumed_when_it_starts_again(tmp_path: Path) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    server, url = start_server(data_dir, log)
    try:
        with (SAMPLES / "adgm" / "FEES_VER16.181223.txt").open("rb") as fh:
            upload = httpx.post(f"{url}/v1/documents", params={"collection": crash.COLLECTION},
                                files={"files": ("FEES_VER16.181223.txt", fh, "text/plain")}, timeout=60)
        assert upload.status_code == 202, upload.text
        job_id = upload.json()["job_id"]

        def midway() -> bool:
            (file,) = httpx.get(f"{url}/v1/ingest/jobs/{job_id}", timeout=10).json()["files"]
            assert file["status"] not in ("indexed", "failed"), file
            return bool(file["status"] == "embedding" and 0 < file["chunks_done"] < file["chunks_total"])

        wait_for(midway)  # a batch of chunks is in the index, the rest is not
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    assert crash.problems(crash.snapshot(data_dir)), "the kill did not land while the file was half indexed"

    server, url = start_server(data_dir, log)  # resumes the upload by itself
    try:
        def resumed() -> list[dict[str, object]]:
            jobs = httpx.get(f"{url}/v1/ingest/jobs", timeout=10).json()
            return [f for job in jobs if job["state"] == "done" for f in job["files"]]

        (file,) = wait_for(resumed)  # type: ignore[misc]
        assert file["status"] == "indexed", file
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    uploaded = data_dir / "uploads" / crash.COLLECTION / "FEES_VER16.181223.txt"
    reference = tmp_path / "reference"
    assert crash.run_ingest(uploaded, reference).returncode == 0  # the same file, never interrupted
    clean, snap = crash.snapshot(reference), crash.snapshot(data_dir)
    assert crash.problems(snap) == [] and crash.differences(clean, snap) == []


def test_a_file_chunked_into_fewer_chunks_keeps_no_stale_chunk(tmp_path: Path, embedder: SentenceTransformerEmbedder,
                                                               ) -> None:
    path = tmp_path / "CONF.txt"
    shutil.copy(SAMPLES / "adgm" / "CONF_VER03.18042019.txt", path)
    counts = []
    for size in (200, 240, 240):  # the same file under a larger chunk size: fewer chunks, the same first point ids
        components = Components(make_settings(tmp_path / "data", chunking={"size_tokens": size}), embedder=embedder)
        try:
            report = Ingestor(components).ingest([path], "rules", progress=False)
            counts.append((report.chunks, report.embedded, components.store.count("rules")))
        finally:
            components.close()
    (before, _, _), (after, embedded, stored), again = counts
    assert after < before and embedded == after
    assert stored == after, f"{stored - after} chunks of the earlier chunking were left behind"
    assert again == (after, 0, after)  # and the next run finds the file unchanged


def test_a_collection_whose_creation_was_killed_is_created_again(tmp_path: Path) -> None:
    root = tmp_path / "edge"
    store = EdgeStore.open(root)
    store.ensure_collection("half", 4)
    store.close()
    (root / "half" / "edge_config.json").unlink()  # as if killed before EdgeShard.create wrote its config
    store = EdgeStore.open(root)
    try:
        assert store.collections() == []
        store.ensure_collection("half", 4)
        assert store.collections() == ["half"] and store.count("half") == 0
    finally:
        store.close()
