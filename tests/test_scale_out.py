"""Scale-out, run for real: two `python -m assistant` replicas behind a round-robin proxy, one Qdrant server and
one PostgreSQL database between them: compose.yaml's "scale" profile, on one machine.

The replicas are the real entry point in their own processes, configured from compose.yaml's `assistant-scale`
environment (only the addresses and DATA_DIR changed), each with a private DATA_DIR; the index is built by
`python -m ingest` in a third process, as `ingest-scale` does. PostgreSQL is real (tests/postgres.py). What cannot
run here is replaced at its boundary by a fake that speaks the real protocol: the Qdrant server
(tests/fake_qdrant.py, one node: sharding and replication inside a cluster are Qdrant's own) and Ollama
(tests/fake_ollama.py). `RoundRobinProxy` stands in for nginx with the same policy as the profile's config:
round robin; a replica that refuses the connection is skipped for a while and the request goes to the next;
a request that reached a replica is never sent again (the client gets 502 and may retry).
"""

from __future__ import annotations

import http.client
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fake_ollama import FakeOllama
from fake_qdrant import FakeQdrant, distribution
from postgres import PostgresServer
from test_compose import _load, environment

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # three processes load the embedder (about a minute on 2 busy cores)

POLICY = """# Treasury policy of Northwind Ltd

## Cash reserves

Northwind keeps a minimum cash reserve of 42 million euros at all times, held at no fewer than three banks.

## Hedging

Foreign exchange exposure above 5 million euros is hedged with forwards of at most twelve months.

## Counterparties

Deposits with any one bank may not exceed 20 million euros, and every bank must hold an A rating or better.
"""
QUESTION = "What minimum cash reserve does Northwind keep?"
REPLY = "Northwind keeps a minimum cash reserve of 42 million euros at all times [1]."
START_TIMEOUT_S = 240.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the load balancer --------------------------------------------------------------------------------------------

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
               "proxy-authenticate", "host", "content-length"}


class RoundRobinProxy:
    """An HTTP reverse proxy on a free loopback port, as the profile's nginx is configured: each request goes to the
    next replica in turn; one that refuses the connection is marked down for `fail_timeout_s` (nginx's
    max_fails=1) and the request goes on to the next; once a request is sent, a failure is the client's 502.
    Responses are buffered (the SSE pass-through is nginx's, checked in test_compose.py). Each response says which
    replica served it in `X-Served-By`."""

    def __init__(self, backends: dict[str, int], fail_timeout_s: float = 2.0) -> None:
        self.backends = backends
        self.fail_timeout_s = fail_timeout_s
        self._order = itertools.cycle(list(backends))
        self._down_until: dict[str, float] = {}
        self._lock = threading.Lock()
        handler = type("Handler", (_ProxyHandler,), {"proxy": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> RoundRobinProxy:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def candidates(self) -> list[str]:
        """Every replica once, starting with the next in turn; those marked down last."""
        with self._lock:
            start = next(self._order)
            names = list(self.backends)
            ordered = names[names.index(start):] + names[:names.index(start)]
            now = time.monotonic()
            return sorted(ordered, key=lambda name: self._down_until.get(name, 0.0) > now)

    def mark_down(self, name: str) -> None:
        with self._lock:
            self._down_until[name] = time.monotonic() + self.fail_timeout_s


class _ProxyHandler(BaseHTTPRequestHandler):
    proxy: RoundRobinProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        for name in self.proxy.candidates():
            conn = http.client.HTTPConnection("127.0.0.1", self.proxy.backends[name], timeout=60)
            try:
                conn.connect()
            except OSError:  # nothing was sent: the next replica may have it
                self.proxy.mark_down(name)
                continue
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException):  # sent, maybe acted on: never sent again
                self._reply(502, b'{"error": "bad_gateway"}', [("Content-Type", "application/json")], name)
                return
            finally:
                conn.close()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            self._reply(response.status, payload, kept, name)
            return
        self._reply(502, b'{"error": "no_replica"}', [("Content-Type", "application/json")], "")

    def _reply(self, status: int, payload: bytes, headers: list[tuple[str, str]], served_by: str) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("X-Served-By", served_by)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = _forward


# --- the deployment -----------------------------------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    port: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, cwd: Path) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "assistant"], cwd=cwd, env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT)

    def wait_healthy(self, deadline: float) -> None:
        assert self.process is not None
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} not healthy in {START_TIMEOUT_S:.0f} s:\n{self.tail()}")
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL, as a crashed container: no shutdown, connections cut."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@dataclass
class Deployment:
    proxy: RoundRobinProxy
    replicas: dict[str, Replica]
    database: sa.Engine
    qdrant: FakeQdrant
    ollama: FakeOllama
    workdir: Path
    headers: dict[str, str]  # an API key made by `python -m assistant.keys` (ENV=production requires one)
    served: list[str] = field(default_factory=list)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Through the proxy; remembers which replica served it."""
        response = httpx.request(method, f"{self.proxy.url}{path}", timeout=120, headers=self.headers, **kwargs)
        self.served.append(response.headers.get("x-served-by", ""))
        return response

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self.request("POST", path, json=body)


def _replica_env(base: dict[str, str], data_dir: Path, port: int) -> dict[str, str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    return {**base, "DATA_DIR": str(data_dir), "PORT": str(port)}


@pytest.fixture(scope="module")
def deployment(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("scale-out")
    docs = root / "corpus"
    docs.mkdir()
    (docs / "treasury-policy.md").write_text(POLICY, encoding="utf-8")
    database_url = postgres.create_database()

    with FakeQdrant() as qdrant, FakeOllama(reply=lambda _messages: REPLY) as ollama:
        # compose.yaml's replica environment, with this machine's addresses.
        compose_env = environment(_load()["services"]["assistant-scale"])
        base = {
            **compose_env,
            "HOST": "127.0.0.1", "QDRANT_URL": qdrant.url, "DATABASE_URL": database_url, "OLLAMA_HOST": ollama.url,
            "LOG_LEVEL": "WARNING", "EMBEDDING_THREADS": "1",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", str(root)),
            "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        }
        replicas = {name: Replica(name, port, _replica_env(base, root / name, port), root / f"{name}.log")
                    for name, port in (("replica-a", _free_port()), ("replica-b", _free_port()))}
        engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
        try:
            # All three processes start together: they migrate the empty database once (advisory lock).
            for replica in replicas.values():
                replica.start(root)
            ingest_log = root / "ingest.log"
            ingest = subprocess.run(
                [sys.executable, "-m", "ingest", str(docs), "--quiet"], cwd=root, capture_output=True, text=True,
                env=_replica_env(base, root / "ingest", 0), timeout=START_TIMEOUT_S,
            )
            ingest_log.write_text(ingest.stdout + ingest.stderr, encoding="utf-8")
            assert ingest.returncode == 0, ingest.stdout + ingest.stderr
            assert "1 indexed" in ingest.stdout
            made = subprocess.run(
                [sys.executable, "-m", "assistant.keys", "create", "--tenant", "default", "--name", "scale test",
                 "--admin"], cwd=root, capture_output=True, text=True, env=_replica_env(base, root / "ingest", 0),
                timeout=START_TIMEOUT_S, check=True,
            )
            headers = {"Authorization": f"Bearer {made.stdout.strip()}"}
            deadline = time.monotonic() + START_TIMEOUT_S
            for replica in replicas.values():
                replica.wait_healthy(deadline)
            with RoundRobinProxy({name: r.port for name, r in replicas.items()}) as proxy:
                yield Deployment(proxy, replicas, engine, qdrant, ollama, root, headers)
        finally:
            for replica in replicas.values():
                replica.stop()
            engine.dispose()
            postgres.drop_database(database_url)


# --- the tests ----------------------------------------------------------------------------------------------------


def test_the_index_is_laid_out_as_compose_asks(deployment: Deployment) -> None:
    compose_env = environment(_load()["services"]["assistant-scale"])
    assert distribution(deployment.qdrant.created["finrag"]) == {
        "shard_number": int(compose_env["QDRANT_SHARDS"]),
        "replication_factor": int(compose_env["QDRANT_REPLICATION_FACTOR"]),
        "write_consistency_factor": int(compose_env["QDRANT_WRITE_CONSISTENCY"]),
        "on_disk_payload": True,
    }
    with deployment.database.connect() as conn:  # migrated once, by whichever process came first
        assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
        assert conn.execute(sa.text("SELECT source FROM documents")).scalars().all() == ["treasury-policy.md"]


def test_every_replica_serves_the_same_index(deployment: Deployment) -> None:
    deployment.served.clear()
    responses = [deployment.post("/v1/retrieve", {"question": QUESTION, "top_k": 3}) for _ in range(4)]
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    assert set(deployment.served) == set(deployment.replicas)  # round robin reached both
    rankings = [[(h["point_id"], h["score"], h["text"]) for h in r.json()["hits"]] for r in responses]
    assert all(ranking == rankings[0] for ranking in rankings)
    top = responses[0].json()["hits"][0]
    assert top["source"] == "treasury-policy.md" and "42 million euros" in top["text"]

    listed = [deployment.request("GET", "/v1/collections").json() for _ in range(2)]
    assert listed[0] == listed[1] and [(c["name"], c["documents"]) for c in listed[0]] == [("finrag", 1)]
    for replica in deployment.replicas.values():
        health = httpx.get(f"{replica.url}/health", timeout=10).json()["components"]
        assert health["database"]["detail"] == "postgresql"
        assert health["store"]["detail"].startswith("server qdrant")


def test_an_answer_from_one_replica_is_rated_through_the_other(deployment: Deployment) -> None:
    """The vote reaches the shared database, and the feedback memory of *both* replicas acts on it at once."""
    deployment.served.clear()
    asked = deployment.post("/v1/chat", {"question": QUESTION})
    assert asked.status_code == 200, asked.text
    answer = asked.json()
    assert not answer["refused"] and "42 million euros" in answer["answer"]
    cited = next(c for c in answer["citations"] if c["n"] == 1)

    # Mark the cited chunk wrong through the other replica.
    voted = deployment.post("/v1/feedback", {
        "answer_id": answer["answer_id"], "rating": "down", "reason": "wrong_evidence", "user_id": "analyst-1",
        "citations": [{"n": 1, "useful": False}]})
    assert voted.status_code == 201, voted.text
    answered_by, rated_by = deployment.served
    assert answered_by != rated_by

    # Both replicas read the vote: the same stats, and the same chunk moved to the bottom for this question.
    deployment.served.clear()
    stats = [deployment.request("GET", "/v1/feedback/stats").json() for _ in range(2)]
    rankings = [deployment.post("/v1/retrieve", {"question": QUESTION, "top_k": 3}).json() for _ in range(2)]
    assert set(deployment.served) == set(deployment.replicas)
    assert stats[0] == stats[1]
    for ranking in rankings:
        assert ranking["hits"][-1]["point_id"] == cited["point_id"], ranking["hits"]
        assert [(e["point_id"], e["effect"]) for e in ranking["memory"]] == [(cited["point_id"], "lowered")]
    assert rankings[0]["hits"] == rankings[1]["hits"]

    # The conversation, recorded by one replica, is read back through the other.
    conversation = [deployment.request("GET", f"/v1/conversations/{answer['conversation_id']}") for _ in range(2)]
    assert [r.status_code for r in conversation] == [200, 200]
    assert conversation[0].json() == conversation[1].json()


def test_a_replica_crash_loses_no_feedback(deployment: Deployment) -> None:
    """Votes keep coming while one replica is killed: requests it refuses go to the other; one it received but could
    not answer is a 502, which the client sends again, and a vote sent twice is still one vote (one per user and
    answer). Every vote ends up in PostgreSQL exactly once; the replica restarted reads them all."""
    answers = []
    for i in range(4):  # answers recorded by both replicas
        response = deployment.post("/v1/chat", {"question": f"{QUESTION} ({i})"})
        assert response.status_code == 200, response.text
        answers.append(response.json()["answer_id"])
    with deployment.database.connect() as conn:
        votes_before = conn.execute(sa.text("SELECT count(*) FROM feedback")).scalar_one()
    votes = [(answer, f"user-{u}") for answer in answers for u in range(8)]
    victim, survivor = deployment.replicas["replica-a"], deployment.replicas["replica-b"]
    a_quarter_sent = threading.Event()
    served: list[str] = []  # by the replica named, in the order answered
    resent: list[int] = []

    def vote(i: int) -> int:
        answer_id, user = votes[i]
        if i == len(votes) // 4:
            a_quarter_sent.set()
        for attempt in range(5):
            try:
                response: httpx.Response | None = httpx.post(f"{deployment.proxy.url}/v1/feedback", timeout=60,
                                                             headers=deployment.headers, json={
                    "answer_id": answer_id, "rating": "up" if i % 3 else "down", "user_id": user})
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code in (200, 201):
                served.append(response.headers["x-served-by"])
                return response.status_code
            resent.append(i)
            time.sleep(0.2 * (attempt + 1))
        raise AssertionError(f"vote {i} failed: {response.status_code if response else 'no response'}")

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(vote, range(len(votes)))
        assert a_quarter_sent.wait(timeout=120)
        victim.kill()
        statuses = list(results)
    assert all(status in (200, 201) for status in statuses)
    assert victim.name in served and served[-1] == survivor.name, served  # both took votes, the survivor last

    with deployment.database.connect() as conn:
        stored = conn.execute(sa.text("SELECT answer_id, user_id FROM feedback WHERE answer_id IN :ids")
                              .bindparams(sa.bindparam("ids", expanding=True)), {"ids": answers}).all()
    assert sorted(stored) == sorted(votes), f"resent: {resent}"  # each vote once: none lost, none doubled

    # The survivor serves alone; nothing was lost with the crashed replica, which comes back and sees every vote.
    deployment.served.clear()
    for _ in range(3):
        assert deployment.post("/v1/retrieve", {"question": QUESTION}).status_code == 200
    assert set(deployment.served) == {survivor.name}
    victim.start(deployment.workdir)
    victim.wait_healthy(time.monotonic() + START_TIMEOUT_S)
    time.sleep(deployment.proxy.fail_timeout_s)  # past the proxy's fail_timeout: it tries the victim again
    deployment.served.clear()
    stats = [deployment.request("GET", "/v1/feedback/stats").json() for _ in range(4)]
    assert set(deployment.served) == set(deployment.replicas)
    assert all(s == stats[0] for s in stats)
    assert stats[0]["total"] == votes_before + len(votes), stats[0]
