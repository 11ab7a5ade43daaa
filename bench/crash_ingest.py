"""Crash-safe ingestion: kill `python -m ingest` with SIGKILL at random points, run it again, and compare the index
with an uninterrupted run's.

    python bench/crash_ingest.py samples --kills 5 --seed 9 --out bench/results/crash_ingest

First one clean run into a fresh DATA_DIR (timed: when its first chunk is embedded, when it ends). Then per kill,
a fresh DATA_DIR: the same command, killed with SIGKILL (the main process, as the OOM killer would; its parse-ahead
worker is left to die of its own) a seeded random time after its first embedding progress line (uniform over the
clean run's indexing time), then run again to completion. The resumed index must equal the clean one: the same
point ids, each point's payload, dense vector (within 1e-5) and BM25 vector, the same document registry rows
(timestamps aside), and no duplicate chunk (doc_id, chunk_index), no orphan (a point of an unregistered document or of
another file version than the registered one), every registered document holding exactly its `chunks` points.

Only the embedded Qdrant Edge index (the default engine) is read. `tests/test_crash_safe_ingest.py` runs the same
checks (importing this file) on a smaller scale.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from assistant.db import documents  # noqa: E402
from assistant.edge_store import EdgeStore  # noqa: E402

COLLECTION = "crash"
TOLERANCE = 1e-5
_PROGRESS = re.compile(rb"(files|chunks):[^|\r\n]*\|[^|\r\n]*\|\s*(\d+)/(\d+)")


@dataclass
class Run:
    """One `python -m ingest` process."""

    returncode: int
    seconds: float
    first_progress_s: float | None  # when it first reported embedding progress
    killed: bool = False
    killed_at_s: float | None = None
    progress_at_kill: str = ""  # "file 2/4, chunk 128/310"
    stderr_tail: str = ""
    lingering: bool = False  # processes it started were still alive after it ended (then killed)


def ingest_env(data_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1", **(extra or {})}


def progress_of(output: bytes) -> str:
    """The last file and chunk counts the progress bars showed."""
    last: dict[bytes, tuple[bytes, bytes]] = {}
    for m in _PROGRESS.finditer(output):
        last[m.group(1)] = (m.group(2), m.group(3))
    parts = [f"{name.decode()[:-1]} {min(int(n) + (name == b'files'), int(t))}/{int(t)}"
             for name, (n, t) in sorted(last.items())]
    return ", ".join(parts) or "before the first progress line"


def run_ingest(corpus: Path, data_dir: Path, *, kill_after: float | None = None, after_chunks: int = 0,
               env: dict[str, str] | None = None, collection: str = COLLECTION, timeout: float = 1800) -> Run:
    """Run the ingest CLI over `corpus`; with `kill_after`, SIGKILL it that many seconds after its first embedding
    progress line that shows at least `after_chunks` chunks of a file done (0: as soon as one starts)."""
    command = [sys.executable, "-m", "ingest", str(corpus), "--collection", collection]
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, env=ingest_env(data_dir, env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    output = bytearray()
    first: list[float] = []  # when embedding progress was first shown
    anchor: list[float] = []  # when it first showed `after_chunks` chunks of a file done
    assert proc.stderr is not None

    def read() -> None:
        assert proc.stderr is not None
        while chunk := proc.stderr.read1(65536):
            output.extend(chunk)
            if not anchor and b"chunks:" in output:
                now = time.perf_counter() - started
                first[:] = first or [now]
                if any(m.group(1) == b"chunks" and int(m.group(2)) >= after_chunks
                       for m in _PROGRESS.finditer(output)):
                    anchor.append(now)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    killed_at = None
    progress = ""
    if kill_after is not None:
        while not anchor and proc.poll() is None:
            time.sleep(0.01)
        deadline = time.perf_counter() + kill_after
        while proc.poll() is None and time.perf_counter() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            progress = progress_of(bytes(output))
            proc.send_signal(signal.SIGKILL)  # the main process only, as a crash would
            killed_at = time.perf_counter() - started
    proc.wait(timeout=timeout)
    # What the process started (the parse-ahead worker and its helpers) is in its process group: they outlive a
    # SIGKILL of the main process, holding nothing of the index but memory and the stderr pipe. Note, then end them.
    time.sleep(1.0 if killed_at is not None else 0)
    lingering = _group_alive(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    reader.join(timeout=30)
    proc.stderr.close()
    tail = bytes(output).decode(errors="replace").replace("\r", "\n").strip().splitlines()[-5:]
    return Run(proc.returncode, round(time.perf_counter() - started, 2),
               round(first[0], 2) if first else None, killed_at is not None,
               round(killed_at, 2) if killed_at is not None else None, progress, "\n".join(tail), lingering)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies waiting for init do not count). Linux's /proc."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
            if int(group) == pgid and state != "Z":
                return True
    return False


# --- the state of an index ------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    points: dict[str, tuple[dict[str, Any], list[float], tuple[list[int], list[float]] | None]]
    registry: dict[str, dict[str, Any]]  # doc_id -> row, without the time it was indexed
    extra_collections: list[str] = field(default_factory=list)


def snapshot(data_dir: Path, collection: str = COLLECTION) -> Snapshot:
    """Every point of `collection` in DATA_DIR's Edge index, and the document registry of its SQLite database."""
    store = EdgeStore.open(data_dir / "qdrant-edge")
    try:
        points = {pid: (payload, vectors["dense"], vectors.get("bm25"))
                  for pid, payload, vectors in (store.points(collection) if collection in store.collections() else [])}
        others = [c for c in store.collections() if c != collection]
    finally:
        store.close()
    engine = sa.create_engine(f"sqlite:///{data_dir / 'finrag.db'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(documents).where(documents.c.collection == collection)).mappings().all()
    finally:
        engine.dispose()
    registry = {r["id"]: {k: v for k, v in r.items() if k != "indexed_at"} for r in rows}
    return Snapshot(points, registry, others)


def problems(snap: Snapshot) -> list[str]:
    """Duplicates, orphans and count mismatches within one index."""
    found = []
    keys = Counter((p["doc_id"], p["chunk_index"]) for p, _, _ in snap.points.values())
    found += [f"duplicate chunk {key} x{n}" for key, n in keys.items() if n > 1]
    per_doc: Counter[str] = Counter()
    for pid, (payload, _, _) in snap.points.items():
        row = snap.registry.get(payload["doc_id"])
        if row is None:
            found.append(f"orphan point {pid}: document {payload['doc_id']} ({payload['source']}) is not registered")
        elif payload["file_hash"] != row["file_hash"]:
            found.append(f"orphan point {pid}: file version {payload['file_hash'][:12]} of {payload['source']}, "
                         f"registered {row['file_hash'][:12]}")
        per_doc[payload["doc_id"]] += 1
    found += [f"{row['source']}: registered with {row['chunks']} chunks, {per_doc[doc_id]} indexed"
              for doc_id, row in snap.registry.items() if per_doc[doc_id] != row["chunks"]]
    return found


def differences(clean: Snapshot, other: Snapshot, tolerance: float = TOLERANCE) -> list[str]:
    """How `other` differs from `clean` (empty: identical)."""
    found = []
    missing, extra = clean.points.keys() - other.points.keys(), other.points.keys() - clean.points.keys()
    found += [f"{len(missing)} points missing, e.g. {sorted(missing)[:3]}"] if missing else []
    found += [f"{len(extra)} points the clean run does not have, e.g. {sorted(extra)[:3]}"] if extra else []
    worst = 0.0
    for pid in clean.points.keys() & other.points.keys():
        (p1, d1, s1), (p2, d2, s2) = clean.points[pid], other.points[pid]
        if p1 != p2:
            changed = sorted(k for k in p1.keys() | p2.keys() if p1.get(k) != p2.get(k))
            found.append(f"point {pid}: payload differs in {changed}")
        worst = max(worst, max((abs(a - b) for a, b in zip(d1, d2, strict=True)), default=0.0))
        if s1 is None or s2 is None or s1[0] != s2[0] or not all(
                math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance) for a, b in zip(s1[1], s2[1], strict=True)):
            found.append(f"point {pid}: BM25 vector differs")
    if worst > tolerance:
        found.append(f"dense vectors differ by up to {worst:.2e} (tolerance {tolerance:.0e})")
    if clean.registry != other.registry:
        for doc_id in clean.registry.keys() | other.registry.keys():
            a, b = clean.registry.get(doc_id), other.registry.get(doc_id)
            if a != b:
                found.append(f"registry row {doc_id}: clean {a}, resumed {b}")
    if clean.extra_collections != other.extra_collections:
        found.append(f"collections differ: {clean.extra_collections} vs {other.extra_collections}")
    return found


def max_dense_difference(clean: Snapshot, other: Snapshot) -> float:
    return max((max(abs(a - b) for a, b in zip(clean.points[p][1], other.points[p][1], strict=True))
                for p in clean.points.keys() & other.points.keys()), default=0.0)


# --- the benchmark --------------------------------------------------------------------------------------------


def trials(corpus: Path, work: Path, kills: int, seed: int, env: dict[str, str] | None = None,
           log: Any = None) -> dict[str, Any]:
    """The clean run, then `kills` killed-and-resumed runs compared with it."""
    def say(text: str) -> None:
        if log is not None:
            print(text, file=log, flush=True)

    clean_dir = work / "clean"
    clean_run = run_ingest(corpus, clean_dir, env=env)
    if clean_run.returncode != 0 or clean_run.first_progress_s is None:
        raise SystemExit(f"the clean run failed ({clean_run.returncode}):\n{clean_run.stderr_tail}")
    clean = snapshot(clean_dir)
    clean_problems = problems(clean)
    indexing_s = clean_run.seconds - clean_run.first_progress_s
    say(f"clean: {len(clean.points)} points, {len(clean.registry)} documents, {clean_run.seconds} s "
        f"(first chunk at {clean_run.first_progress_s} s)" + (f"; PROBLEMS {clean_problems}" if clean_problems else ""))
    rng = random.Random(seed)
    rows = []
    for i in range(kills):
        delay = round(rng.uniform(0.0, indexing_s), 2)
        data_dir = work / f"kill-{i + 1}"
        killed = run_ingest(corpus, data_dir, kill_after=delay, env=env)
        resumed = run_ingest(corpus, data_dir, env=env)
        snap = snapshot(data_dir)
        found = problems(snap) + differences(clean, snap)
        row = {"trial": i + 1, "kill_after_first_chunk_s": delay, "killed": killed.killed,
               "killed_at_s": killed.killed_at_s, "progress_at_kill": killed.progress_at_kill,
               "left_processes": killed.lingering, "resume_returncode": resumed.returncode,
               "resume_s": resumed.seconds, "points": len(snap.points),
               "documents": len(snap.registry), "max_dense_diff": max_dense_difference(clean, snap),
               "identical": not found and resumed.returncode == 0, "problems": found[:10]}
        rows.append(row)
        say(f"kill {i + 1}: {'SIGKILL' if killed.killed else 'finished before the kill'} at "
            f"{killed.killed_at_s} s ({killed.progress_at_kill}); resumed in {resumed.seconds} s: "
            f"{'identical' if row['identical'] else 'DIFFERENT: ' + '; '.join(found[:5])}")
    return {"clean": {"points": len(clean.points), "documents": len(clean.registry), "seconds": clean_run.seconds,
                      "first_chunk_s": clean_run.first_progress_s, "problems": clean_problems},
            "kills": rows, "identical": sum(1 for r in rows if r["identical"] and r["killed"]),
            "killed": sum(1 for r in rows if r["killed"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("corpus", type=Path, help="a file or folder to ingest (e.g. samples)")
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--seed", type=int, default=9)
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="ingest environment")
    p.add_argument("--work", type=Path, default=None, help="keep the data directories here (default: a temp dir)")
    p.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    env = dict(e.split("=", 1) for e in args.env)
    with tempfile.TemporaryDirectory(prefix="finrag-crash-") as tmp:
        result = trials(args.corpus.resolve(), args.work or Path(tmp), args.kills, args.seed, env, log=sys.stderr)
    header = (f"`python bench/crash_ingest.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
              f"(ingest env: {env or 'defaults'}), {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
              f"{os.cpu_count()} CPUs")
    c = result["clean"]
    lines = [header, "",
             f"Clean run: {c['points']} chunks from {c['documents']} documents in {c['seconds']} s (first chunk "
             f"embedded at {c['first_chunk_s']} s). **{result['identical']}/{len(result['kills'])}** killed runs, "
             "resumed, ended with an index identical to it.", "",
             "| kill | SIGKILL at | progress then | parser left running | resumed in | chunks | documents | "
             "max dense diff | identical |", "|--:|--:|---|---|--:|--:|--:|--:|---|"]
    lines += [f"| {r['trial']} | {r['killed_at_s']} s | {r['progress_at_kill']} | "
              f"{'yes' if r['left_processes'] else 'no'} | {r['resume_s']} s | {r['points']} | "
              f"{r['documents']} | {r['max_dense_diff']:.1e} | "
              f"{'yes' if r['identical'] else 'NO: ' + '; '.join(r['problems'][:2])} |" for r in result["kills"]]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(table)
        args.out.with_suffix(".json").write_text(json.dumps({"header": header, **result}, indent=2, default=str) + "\n")
    return 0 if result["identical"] == result["killed"] == len(result["kills"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
