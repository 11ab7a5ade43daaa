"""The FastAPI app, built by `create_app` from settings and (optionally) ready-made components.

`assistant.app:app` is the app for the current environment; `python -m assistant` serves it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from . import __version__
from .admin_api import router as admin_router
from .api import router
from .auth import AuthMiddleware, document_security
from .auth import router as auth_router
from .body_limit import BodyLimit
from .components import Components
from .conversations_api import router as conversations_router
from .documents_api import router as documents_router
from .errors import FinragError
from .keys import ApiKeys
from .openai_api import router as openai_router
from .ratelimit import retry_after_headers
from .reports_api import router as reports_router
from .schemas import ERROR_RESPONSES
from .settings import Settings
from .web import mount_web

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, components: Components | None = None,
               *, preload: bool = True) -> FastAPI:
    settings = settings or Settings.load()
    owns_components = components is None
    components = components or Components(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if preload:
            await run_in_threadpool(_preload, components)
        yield
        if owns_components:  # components handed in belong to the caller
            components.close()

    app = FastAPI(
        title="finrag", version=__version__, lifespan=lifespan,
        description="Answers questions about financial filings and regulations from indexed documents, "
        "citing pages and rules; records answers and thumbs-up/down feedback.",
        responses=ERROR_RESPONSES,  # the error shape of the handlers below
    )
    app.state.components = components
    app.state.settings = settings
    app.state.api_keys = lambda: ApiKeys(components.engine)
    app.add_middleware(AuthMiddleware, settings=settings.auth, keys=app.state.api_keys)  # keys, tenants, limits
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_kb * 1024,  # uploads check their own size
                       exempt={("POST", "/v1/documents")})
    app.include_router(auth_router)  # /login, /logout
    app.include_router(router)
    app.include_router(conversations_router)
    app.include_router(admin_router)
    app.include_router(documents_router)  # documents, uploads, ingest jobs
    app.include_router(reports_router)
    app.include_router(openai_router)  # its errors take OpenAI's shape
    mount_web(app)  # the web UI: /, /evaluation, /ingest and /static
    document_security(app)

    @app.exception_handler(FinragError)
    async def finrag_error(_request: Request, exc: FinragError) -> JSONResponse:
        if exc.status_code >= 500:
            log.error("%s: %s", exc.code, exc.message)
        return JSONResponse({"error": exc.code, "detail": exc.message}, status_code=exc.status_code,
                            headers=dict(retry_after_headers(exc)))  # Retry-After on a 429

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()
        ]
        return JSONResponse({"error": "invalid_request", "detail": "; ".join(problems)}, status_code=422)

    return app


def _preload(components: Components) -> None:
    """Load models and open the store at start-up, so the first question is not slow. Failures are
    logged and shown by /health rather than stopping the server."""
    for name in ("store", "engine", "embedder", "llm", "served", "reranker"):
        try:
            getattr(components, name)
        except Exception as exc:  # reported by /health
            log.error("could not load %s: %s", name, exc)


def __getattr__(name: str) -> FastAPI:
    # `assistant.app:app` builds the app for the current environment when first asked for,
    # so importing this module (tests, tools) reads no settings and loads nothing.
    if name == "app":
        built = create_app()
        globals()["app"] = built
        return built
    raise AttributeError(name)
