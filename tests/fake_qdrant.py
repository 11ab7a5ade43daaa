"""A fake Qdrant server that speaks Qdrant's REST API, so the real qdrant-client remote mode is exercised.

No Qdrant server can run here, so tests start this instead: a FastAPI app served by uvicorn on a free loopback
port, in a background thread. Behind the HTTP layer is a real Qdrant engine, qdrant-client's local mode
(`QdrantClient(":memory:")`): request bodies are parsed into `qdrant_client.http.models` exactly as a server's
OpenAPI schema defines them, run there, and answered in Qdrant's envelope `{"result": ..., "status": "ok",
"time": seconds}` (errors: `{"status": {"error": "..."}, "time": ...}` with the server's status code).

    with FakeQdrant() as server:
        store = QdrantStore.server(server.url)
        ...
        server.created["finrag"]["shard_number"]          # the create-collection body, as received
        server.writes()[-1].params["ordering"]          # query parameters of each write

What a server does that local mode does not, the fake adds: it keeps the distribution parameters of the create
body (`shard_number`, `replication_factor`, `write_consistency_factor`, `on_disk_payload`) and reports them in
the collection's config; it reports the payload indexes created (`payload_schema`); updates answer
`completed` with `?wait=true`, else `acknowledged`; with `api_key` it refuses requests without it (401), except
the version and health endpoints.

Endpoints (the subset qdrant-client calls for `assistant.store.QdrantStore`, and a little around it):
- `GET /` (version), `GET /healthz`, `GET /livez`, `GET /readyz`
- `GET /collections`, `GET|PUT|DELETE /collections/{name}`, `GET /collections/{name}/exists`
- `PUT /collections/{name}/index`, `DELETE /collections/{name}/index/{field}`
- `PUT /collections/{name}/points` (upsert), `POST /collections/{name}/points` (retrieve),
  `GET /collections/{name}/points/{id}`, `POST .../points/delete`, `POST .../points/payload` (set payload)
- `POST .../points/count`, `POST .../points/scroll`, `POST .../points/query` (prefetch, fusion, filters),
  `POST .../points/query/batch`
An unknown path is a 404 with an empty body, as the server's actix router sends it.

Outages, for robustness tests: `fail_with(503, "...")` makes every request (health checks included) answer that
status until `fail_with(None)`; `stop()` closes the listening socket (connection refused) and `start()` serves
again on the same port with the data kept; `delay_s` holds every response back (client timeouts).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Annotated, Any

import uvicorn
from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, TypeAdapter, ValidationError
from qdrant_client import QdrantClient, models

# Reported at GET /: qdrant-client checks that the server's major.minor is within one of its own.
VERSION = importlib.metadata.version("qdrant-client")

_INSERT = TypeAdapter(models.PointInsertOperations)
_SELECTOR = TypeAdapter(models.PointsSelector)
Json = Annotated[dict[str, Any], Body()]
OptionalJson = Annotated[dict[str, Any] | None, Body()]
_POINT_WRITES = {("PUT", ""), ("POST", "/delete"), ("POST", "/payload")}  # after /collections/{name}/points
_OPEN_PATHS = {"/", "/healthz", "/livez", "/readyz"}  # served without the API key, as Qdrant does
_DISTRIBUTION = ("shard_number", "replication_factor", "write_consistency_factor", "on_disk_payload")


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    body: Any = None


class QdrantError(Exception):
    """An error the server answers with `status` and `{"status": {"error": message}}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _not_found(name: str) -> QdrantError:
    return QdrantError(404, f"Not found: Collection `{name}` doesn't exist!")


def _json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_json(v) for v in value]
    return value


def _parse(model: Any, body: Any) -> Any:
    """The body as the server's schema reads it; a body that does not fit is a 400, as Qdrant answers it."""
    try:
        if isinstance(model, TypeAdapter):
            return model.validate_python(body)
        return model.model_validate(body if body is not None else {})
    except ValidationError as exc:
        raise QdrantError(400, f"Format error in JSON body: {exc.errors()[0]['msg']}") from None


class FakeQdrant:
    """A real HTTP server on 127.0.0.1 speaking Qdrant's REST API. Use it as a context manager.

    api_key: if set, requests must carry it (`api-key` header or `Authorization: Bearer`), else 401.
    delay_s: pause before answering each request (to provoke client timeouts).
    """

    def __init__(self, *, api_key: str | None = None, delay_s: float = 0.0) -> None:
        self.api_key = api_key
        self.delay_s = delay_s
        self.engine = QdrantClient(location=":memory:")
        self.requests: list[Recorded] = []
        self.created: dict[str, dict[str, Any]] = {}  # collection -> its create-collection body, as received
        self.indexes: dict[str, dict[str, str]] = {}  # collection -> {field: data type}
        self._failure: tuple[int, str] | None = None
        self._operation = 0
        self._lock = threading.RLock()  # local mode is not thread-safe; the server answers from a thread pool
        self._port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.app = self._build_app()

    # --- lifecycle ------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeQdrant is not running; use it as a context manager")
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> None:
        """Serve (again, on the same port after `stop`); the collections are kept."""
        if self._server is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self._port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="fake-qdrant", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError("FakeQdrant did not start")
            time.sleep(0.01)
        self._server, self._thread, self._socket = server, thread, sock

    def stop(self) -> None:
        """Stop listening: clients get connection refused until `start`. Clients made before have their version
        check answered first (see `_settle_version_checks`); one made while stopped warns that it got none."""
        if self._server is None:
            return
        assert self._thread is not None and self._socket is not None
        _settle_version_checks()
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()
        self._server = self._thread = self._socket = None

    def fail_with(self, failure: tuple[int, str] | None) -> None:
        """Answer every request with `(status, message)` in Qdrant's error envelope; None: serve again."""
        self._failure = failure

    def __enter__(self) -> FakeQdrant:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self.engine.close()

    # --- what tests look at -----------------------------------------------------------------------------

    def calls(self, method: str, suffix: str) -> list[Recorded]:
        """Requests received with this method whose path ends with `suffix`, oldest first."""
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path.endswith(suffix)]

    def writes(self) -> list[Recorded]:
        """Point writes (upserts, deletes, payload updates), oldest first."""
        with self._lock:
            return [r for r in self.requests if "/points" in r.path
                    and (r.method, r.path.partition("/points")[2]) in _POINT_WRITES]

    # --- the HTTP layer -----------------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        fake = self

        @app.middleware("http")
        async def gate(request: Request, call_next: Callable[[Request], Any]) -> Response:
            started = time.perf_counter()
            body = await request.body()
            with fake._lock:  # every request is recorded, those refused below too (retries can be counted)
                fake.requests.append(Recorded(request.method, request.url.path, dict(request.query_params),
                                              _decode(body)))
            if fake.delay_s:
                await asyncio.sleep(fake.delay_s)
            if fake._failure is not None:
                return _error(fake._failure[0], fake._failure[1], started)
            if fake.api_key is not None and request.url.path not in _OPEN_PATHS:
                given = request.headers.get("api-key") or request.headers.get("authorization", "").removeprefix(
                    "Bearer ")
                if given != fake.api_key:
                    return _error(401, "Must provide an API key or an Authorization bearer token", started)
            response: Response = await call_next(request)
            return response

        @app.exception_handler(QdrantError)
        async def qdrant_error(request: Request, exc: QdrantError) -> JSONResponse:
            return _error(exc.status, exc.message)

        @app.exception_handler(ValueError)
        async def engine_error(request: Request, exc: ValueError) -> JSONResponse:  # the engine refused it
            missing = str(exc).startswith("Collection ") and str(exc).endswith(" not found")
            return _error(404 if missing else 400, f"{'Not found' if missing else 'Wrong input'}: {exc}")

        @app.exception_handler(RequestValidationError)
        async def bad_json(request: Request, exc: RequestValidationError) -> JSONResponse:
            return _error(400, f"Format error in JSON body: {exc.errors()[0]['msg']}")

        @app.exception_handler(404)
        async def no_route(request: Request, exc: Exception) -> Response:
            return Response(status_code=404)

        def answer(run: Callable[[], Any]) -> JSONResponse:
            started = time.perf_counter()
            with fake._lock:
                result = run()
            return JSONResponse({"result": _json(result), "status": "ok", "time": time.perf_counter() - started})

        # service
        @app.get("/")
        def root() -> dict[str, Any]:
            return {"title": "qdrant - vector search engine", "version": VERSION, "commit": None}

        for probe in ("/healthz", "/livez", "/readyz"):
            app.add_api_route(probe, lambda: PlainTextResponse("healthz check passed"), methods=["GET"])

        # collections
        @app.get("/collections")
        def list_collections() -> JSONResponse:
            return answer(lambda: fake.engine.get_collections())

        @app.get("/collections/{name}/exists")
        def exists(name: str) -> JSONResponse:
            return answer(lambda: {"exists": fake.engine.collection_exists(name)})

        @app.get("/collections/{name}")
        def get_collection(name: str) -> JSONResponse:
            return answer(lambda: fake._info(name))

        @app.put("/collections/{name}")
        def create_collection(name: str, body: OptionalJson = None) -> JSONResponse:
            return answer(lambda: fake._create(name, body or {}))

        @app.delete("/collections/{name}")
        def delete_collection(name: str) -> JSONResponse:
            return answer(lambda: fake._drop(name))

        # payload indexes
        @app.put("/collections/{name}/index")
        def create_index(name: str, request: Request, body: Json) -> JSONResponse:
            return answer(lambda: fake._create_index(name, _parse(models.CreateFieldIndex, body), request))

        @app.delete("/collections/{name}/index/{field_name}")
        def delete_index(name: str, field_name: str, request: Request) -> JSONResponse:
            def run() -> models.UpdateResult:
                fake._require(name)
                fake.indexes.get(name, {}).pop(field_name, None)
                return fake._updated(request)
            return answer(run)

        # points
        @app.put("/collections/{name}/points")
        def upsert(name: str, request: Request, body: Json) -> JSONResponse:
            def run() -> models.UpdateResult:
                fake._require(name)
                operation = _parse(_INSERT, body)
                if isinstance(operation, models.PointsList):
                    fake.engine.upsert(name, operation.points)
                else:
                    fake.engine.upsert(name, operation.batch)
                return fake._updated(request)
            return answer(run)

        @app.post("/collections/{name}/points")
        def retrieve(name: str, body: Json) -> JSONResponse:
            def run() -> list[models.Record]:
                fake._require(name)
                req = _parse(models.PointRequest, body)
                _check_ids(req.ids)
                return fake.engine.retrieve(name, req.ids, with_payload=_default(req.with_payload, True),
                                            with_vectors=_default(req.with_vector, False))
            return answer(run)

        @app.get("/collections/{name}/points/{point_id}")
        def get_point(name: str, point_id: str) -> JSONResponse:
            def run() -> models.Record:
                fake._require(name)
                key: int | str = int(point_id) if point_id.isdigit() else point_id
                found = fake.engine.retrieve(name, [key], with_payload=True, with_vectors=True)
                if not found:
                    raise QdrantError(404, f"Not found: No point with id {point_id} found")
                return found[0]
            return answer(run)

        @app.post("/collections/{name}/points/delete")
        def delete_points(name: str, request: Request, body: Json) -> JSONResponse:
            def run() -> models.UpdateResult:
                fake._require(name)
                selector = _parse(_SELECTOR, body)
                if isinstance(selector, models.PointIdsList):
                    _check_ids(selector.points)
                fake.engine.delete(name, points_selector=selector)
                return fake._updated(request)
            return answer(run)

        @app.post("/collections/{name}/points/payload")
        def set_payload(name: str, request: Request, body: Json) -> JSONResponse:
            def run() -> models.UpdateResult:
                fake._require(name)
                req = _parse(models.SetPayload, body)
                if req.points is None and req.filter is None:
                    raise QdrantError(400, "Wrong input: Either list of point ids or filter must be provided")
                selector: Any = req.points if req.points is not None else models.FilterSelector(filter=req.filter)
                fake.engine.set_payload(name, req.payload, points=selector, key=req.key)
                return fake._updated(request)
            return answer(run)

        @app.post("/collections/{name}/points/count")
        def count(name: str, body: OptionalJson = None) -> JSONResponse:
            def run() -> models.CountResult:
                fake._require(name)
                req = _parse(models.CountRequest, body)
                return fake.engine.count(name, count_filter=req.filter, exact=_default(req.exact, True))
            return answer(run)

        @app.post("/collections/{name}/points/scroll")
        def scroll(name: str, body: OptionalJson = None) -> JSONResponse:
            def run() -> dict[str, Any]:
                fake._require(name)
                req = _parse(models.ScrollRequest, body)
                points, next_offset = fake.engine.scroll(
                    name, scroll_filter=req.filter, limit=_default(req.limit, 10), offset=req.offset,
                    with_payload=_default(req.with_payload, True), with_vectors=_default(req.with_vector, False),
                    order_by=req.order_by,
                )
                return {"points": _json(points), "next_page_offset": next_offset}
            return answer(run)

        @app.post("/collections/{name}/points/query")
        def query(name: str, body: OptionalJson = None) -> JSONResponse:
            def run() -> models.QueryResponse:
                fake._require(name)
                return fake._query(name, _parse(models.QueryRequest, body))
            return answer(run)

        @app.post("/collections/{name}/points/query/batch")
        def query_batch(name: str, body: Json) -> JSONResponse:
            def run() -> list[models.QueryResponse]:
                fake._require(name)
                return [fake._query(name, req) for req in _parse(models.QueryRequestBatch, body).searches]
            return answer(run)

        return app

    # --- the engine behind it -----------------------------------------------------------------------------

    def _require(self, name: str) -> None:
        if not self.engine.collection_exists(name):
            raise _not_found(name)

    def _updated(self, request: Request) -> models.UpdateResult:
        self._operation += 1
        waited = request.query_params.get("wait", "false").lower() == "true"
        status = models.UpdateStatus.COMPLETED if waited else models.UpdateStatus.ACKNOWLEDGED
        return models.UpdateResult(operation_id=self._operation, status=status)

    def _create(self, name: str, body: dict[str, Any]) -> bool:
        req = _parse(models.CreateCollection, body)
        if self.engine.collection_exists(name):
            raise QdrantError(409, f"Wrong input: Collection `{name}` already exists!")
        for key in ("shard_number", "replication_factor", "write_consistency_factor"):
            value = getattr(req, key)
            if value is not None and value < 1:
                raise QdrantError(422, f"Validation error in JSON body: [{key}: value {value} invalid, must be 1 "
                                       "or larger]")
        if (req.write_consistency_factor or 1) > (req.replication_factor or 1):
            # Qdrant accepts it, but then no write can reach enough replicas: refused here to catch the mistake
            raise QdrantError(400, "Wrong input: write_consistency_factor is larger than replication_factor")
        vectors: Any = req.vectors
        self.engine.create_collection(name, vectors_config=vectors, sparse_vectors_config=req.sparse_vectors)
        self.created[name] = dict(body)
        self.indexes[name] = {}
        return True

    def _drop(self, name: str) -> bool:
        self.created.pop(name, None)
        self.indexes.pop(name, None)
        return bool(self.engine.delete_collection(name))

    def _info(self, name: str) -> models.CollectionInfo:
        self._require(name)
        info = self.engine.get_collection(name)
        created = self.created.get(name, {})
        params = info.config.params
        defaults = {"shard_number": 1, "replication_factor": 1, "write_consistency_factor": 1,
                    "on_disk_payload": True}
        for key in _DISTRIBUTION:
            setattr(params, key, created.get(key) if created.get(key) is not None else defaults[key])
        points = info.points_count or 0
        info.payload_schema = {
            key: models.PayloadIndexInfo(data_type=models.PayloadSchemaType(kind), points=points)
            for key, kind in self.indexes.get(name, {}).items()
        }
        return info

    def _create_index(self, name: str, req: models.CreateFieldIndex, request: Request) -> models.UpdateResult:
        self._require(name)
        schema = req.field_schema
        if schema is None:
            raise QdrantError(400, "Wrong input: field_schema is required")
        kind = schema.value if isinstance(schema, models.PayloadSchemaType) else str(getattr(schema, "type", schema))
        self.indexes.setdefault(name, {})[req.field_name] = kind
        return self._updated(request)

    def _query(self, name: str, req: models.QueryRequest) -> models.QueryResponse:
        return self.engine.query_points(
            name, query=req.query, using=req.using, prefetch=req.prefetch, query_filter=req.filter,
            search_params=req.params, limit=_default(req.limit, 10), offset=req.offset,
            with_payload=_default(req.with_payload, False), with_vectors=_default(req.with_vector, False),
            score_threshold=req.score_threshold, lookup_from=req.lookup_from,
        )


def _settle_version_checks(timeout_s: float = 10.0) -> None:
    """Let the clients made so far finish asking for the server version before it goes away.

    qdrant-client asks `GET /` from a background thread when a client is made, and warns when it gets no answer,
    which `-W error` turns into an unhandled exception in that thread. A client made and closed within
    milliseconds (or just before the test stops the server) may not have asked yet.
    """
    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        if thread.name.endswith("(_check_compatibility)"):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


def _check_ids(ids: Sequence[Any]) -> None:
    """Point ids are unsigned integers or UUIDs; the server refuses any other string (local mode ignores it)."""
    for point_id in ids:
        if isinstance(point_id, int) and point_id >= 0:
            continue
        try:
            uuid.UUID(str(point_id))
        except ValueError:
            raise QdrantError(400, f"Format error in JSON body: value {point_id} is not a valid point ID, valid "
                                   "values are either an unsigned integer or a UUID") from None


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def _error(status: int, message: str, started: float | None = None) -> JSONResponse:
    elapsed = 0.0 if started is None else time.perf_counter() - started
    return JSONResponse({"status": {"error": message}, "time": elapsed}, status_code=status)


def distribution(body: Mapping[str, Any]) -> dict[str, Any]:
    """The distribution parameters of a create-collection body (absent ones left out)."""
    return {key: body[key] for key in _DISTRIBUTION if body.get(key) is not None}
