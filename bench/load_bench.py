"""Throughput and latency under concurrent load: retrieval-only requests against the served API on loopback.

    QDRANT_PATH=data/eval/adgm/index python bench/load_bench.py ../shared/corpora/adgm/obliqa_dev.jsonl \
        --collection adgm --clients 1 8 32 --seconds 30 --env RETRIEVAL_QUERY_CACHE=0 --out bench/results/load

Starts `python -m assistant` on a free loopback port with the environment given (the index, the collection), waits
for /health, then for each client count runs that many asyncio clients (httpx) for `--seconds`, each sending
`POST /v1/retrieve` for the next question of the file (one feed across the levels; with RETRIEVAL_QUERY_CACHE=0,
as `make bench` runs it, a repeated question is embedded again), and reports requests/s, latency p50/p95/p99 and
errors. One server process, as `make run` starts it; the server's own threads serve the requests. The clients send
an API key made for the run (`python -m assistant.keys create`, no rate limit), as any client must.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m assistant` on loopback `port` with `env` over this environment, in its own process group (a
    caller may kill the group), its output appended to `log`; returns once /health answers (200 or 503)."""
    with log.open("ab") as out:
        server = subprocess.Popen([sys.executable, "-m", "assistant"], cwd=REPO, stdout=out, stderr=out,
                                  start_new_session=True, env={**os.environ, "PORT": str(port), "HOST": "127.0.0.1",
                                                               "LOG_LEVEL": "WARNING", **env})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code in (200, 503):
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise SystemExit(f"server did not start in 300 s (log: {log})")


def api_key(env: dict[str, str]) -> str:
    """A key of the default tenant with no rate limit, made in the server's database (same environment)."""
    made = subprocess.run([sys.executable, "-m", "assistant.keys", "create", "--tenant", "default", "--name",
                           "benchmark", "--rate-limit", "0"], cwd=REPO, capture_output=True, text=True, check=True,
                          env={**os.environ, **env})
    return made.stdout.strip()


async def run_level(url: str, feed: Iterator[str], clients: int, seconds: float, collection: str | None,
                    top_k: int, headers: dict[str, str]) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    stop = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < stop:
            body: dict[str, Any] = {"question": next(feed), "top_k": top_k}
            if collection:
                body["collection"] = collection
            started = time.perf_counter()
            try:
                response = await http.post(f"{url}/v1/retrieve", json=body)
                if response.status_code != 200:
                    errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
                    continue
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            latencies.append((time.perf_counter() - started) * 1000)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as http:
        began = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - began
    done = len(latencies)
    pct = {f"p{q}_ms": round(float(np.percentile(latencies, q)), 1) if done else None for q in (50, 95, 99)}
    return {"clients": clients, "requests": done, "errors": sum(errors.values()), "error_kinds": errors,
            "seconds": round(elapsed, 1), "rps": round(done / elapsed, 2), **pct}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("questions", type=Path, help="a questions file (JSONL with `question`)")
    p.add_argument("--collection", default=None)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--repeat", type=int, default=0, help="use only this many distinct questions (cache hits)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="server environment")
    p.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    with args.questions.open(encoding="utf-8") as fh:
        questions = [json.loads(line)["question"] for line in fh if line.strip()]
    if args.repeat:
        questions = questions[: args.repeat]
    env = dict(e.split("=", 1) for e in args.env)
    port = free_port()
    headers = {"Authorization": f"Bearer {api_key(env)}"}
    server = start_server(port, env, Path(tempfile.gettempdir()) / f"finrag-load-bench-{port}.log")
    url = f"http://127.0.0.1:{port}"
    try:
        httpx.post(f"{url}/v1/retrieve", json={"question": "warm up", **({"collection": args.collection}
                                                                         if args.collection else {})},
                   timeout=120, headers=headers)
        rows = []
        feed = itertools.cycle(questions)  # one feed across the levels: each level asks questions not yet asked
        for clients in args.clients:
            row = asyncio.run(run_level(url, feed, clients, args.seconds, args.collection, args.top_k, headers))
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    header = (f"`python bench/load_bench.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
              f"(server env: {env or 'defaults'}), {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
              f"{os.cpu_count()} CPUs; {len(questions)} distinct questions, top_k {args.top_k}, "
              f"{args.seconds:.0f} s per level")
    lines = [header, "", "| clients | requests | errors | req/s | p50 ms | p95 ms | p99 ms |",
             "|--:|--:|--:|--:|--:|--:|--:|"]
    lines += [f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['rps']} | {r['p50_ms']} | {r['p95_ms']} | "
              f"{r['p99_ms']} |" for r in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(table)
        args.out.with_suffix(".json").write_text(json.dumps({"header": header, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
