"""Authentication and rate limiting of every request, and the web UI's sign-in.

`AuthMiddleware` runs before any route: it finds the API key (`Authorization: Bearer fk_...`, `X-API-Key`, or the
web UI's `finrag_key` cookie), verifies it (assistant.keys), applies the key's rate limit (assistant.ratelimit) and
puts the `Principal` (tenant and role, assistant.tenancy) on the request, where routes read it with
`principal_of`. Only /health, the sign-in page and the UI's static files are served without a key. A page request
without a key is sent to /login; an API request gets 401 (OpenAI's error shape under the OpenAI-compatible paths).

With AUTH_ENABLED=false every request acts as `Principal.unscoped()`, rate limited per client address.

The sign-in cookie holds the key itself: HttpOnly (no script reads it), SameSite=Strict (no other site's page
sends it), Secure with AUTH_COOKIE_SECURE. A request authenticated by the cookie that changes something must come
from this origin (its Origin header, when sent, names this host).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from .errors import FinragError, Unauthorized
from .keys import ApiKeys
from .ratelimit import RateLimiter, retry_after_headers
from .settings import AuthSettings
from .tenancy import Principal

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "finrag_key"
PUBLIC_PATHS = frozenset({"/health", "/login", "/logout"})
PUBLIC_PREFIXES = ("/static/",)
OPENAI_PATHS = ("/v1/chat/completions", "/v1/models")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def principal_of(request: Request) -> Principal:
    """Who the request acts for, as the middleware found; Unauthorized if it did not run (fail closed)."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        raise Unauthorized("the request was not authenticated")
    return principal


def admin_only(request: Request) -> None:
    """A route dependency: Forbidden unless the key is an admin key (or authentication is off)."""
    principal_of(request).require_admin(f"{request.method} {request.url.path}")


class AuthMiddleware:
    """Pure ASGI middleware (streams pass through untouched)."""

    def __init__(self, app: ASGIApp, *, settings: AuthSettings, keys: Callable[[], ApiKeys]) -> None:
        self.app = app
        self.settings = settings
        self.keys = keys  # built on first use: the database is opened by the components
        self._limiters: dict[float, RateLimiter] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            principal, limit, rate_key = await self._authenticate(scope, headers)
            self._limit(rate_key, limit)
        except FinragError as exc:
            await self._refuse(scope, headers, exc)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope, headers: dict[str, str]) -> tuple[Principal, float | None, str]:
        if not self.settings.enabled:
            client = scope.get("client")
            return Principal.unscoped(), None, f"client:{client[0] if client else 'unknown'}"
        key, from_cookie = _key_of(headers)
        if not key:
            raise Unauthorized("an API key is required: send `Authorization: Bearer <key>` "
                               "(keys are made with `python -m assistant.keys create`)")
        if from_cookie and scope["method"] not in SAFE_METHODS and not _same_origin(headers):
            raise Unauthorized("a request from another site cannot use the sign-in cookie")
        principal, limit = await run_in_threadpool(lambda: self.keys().verify(key))  # opens the database: a thread
        return principal, limit, f"key:{principal.key_id}"

    def _limit(self, rate_key: str, own_limit: float | None) -> None:
        per_minute = self.settings.rate_limit_per_minute if own_limit is None else own_limit
        if per_minute <= 0:
            return
        limiter = self._limiters.get(per_minute)
        if limiter is None:
            limiter = self._limiters.setdefault(per_minute, RateLimiter(per_minute, self.settings.rate_limit_burst))
        limiter.check(rate_key)

    @staticmethod
    def _refuse(scope: Scope, headers: dict[str, str], exc: FinragError) -> Response:
        path: str = scope["path"]
        extra = dict(retry_after_headers(exc))
        if isinstance(exc, Unauthorized):
            extra["WWW-Authenticate"] = 'Bearer realm="finrag"'
            if scope["method"] in ("GET", "HEAD") and not path.startswith("/v1/") \
                    and "text/html" in headers.get("accept", ""):
                return RedirectResponse(f"/login?next={quote(path)}", status_code=303)
        if path.startswith(OPENAI_PATHS):
            from .openai_api import openai_error  # the OpenAI-compatible routes answer in OpenAI's shape

            response: Response = openai_error(exc.status_code, exc.message, exc.code)
        else:
            response = Response(json.dumps({"error": exc.code, "detail": exc.message}), exc.status_code,
                                media_type="application/json")
        response.headers.update(extra)
        return response


def _key_of(headers: dict[str, str]) -> tuple[str | None, bool]:
    """(the key sent, whether it came from the sign-in cookie)."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), False
    if headers.get("x-api-key", "").strip():
        return headers["x-api-key"].strip(), False
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value, True
    return None, False


def _same_origin(headers: dict[str, str]) -> bool:
    """Whether a browser request comes from a page of this site (no Origin header: not a cross-site fetch)."""
    origin = headers.get("origin")
    return origin is None or urlsplit(origin).netloc == headers.get("host", "")


def document_security(app: FastAPI) -> None:
    """Name the API-key schemes in the OpenAPI schema, and the 401 and 429 every operation but /health may answer."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "An API key: `Authorization: Bearer fk_…`"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        schema["security"] = [{"bearer": []}, {"apiKey": []}]
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                if path in PUBLIC_PATHS:
                    operation["security"] = []
                    continue
                responses = operation.setdefault("responses", {})
                responses.setdefault("401", {"description": "No API key, or one that is unknown or revoked."})
                responses.setdefault("429", {"description": "The key's rate limit is reached: retry after "
                                                            "`Retry-After` seconds."})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# --- the sign-in page ---------------------------------------------------------------------------------------------

router = APIRouter(include_in_schema=False)


def _local(next_path: str | None) -> str:
    """`next_path` when it is a path on this site, else "/" (no open redirect)."""
    if not next_path or not next_path.startswith("/") or next_path.startswith("//") or "\\" in next_path:
        return "/"
    return next_path


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None, error: str | None = None) -> HTMLResponse:
    from .web import login_html

    return HTMLResponse(login_html(_local(next), error), headers=_page_headers())


@router.post("/login")
async def login(request: Request, key: str = Form(...), next: str | None = Form(None)) -> Response:
    settings: AuthSettings = request.app.state.settings.auth
    target = _local(next)
    if not settings.enabled:
        return RedirectResponse(target, status_code=303)
    keys: ApiKeys = request.app.state.api_keys()
    try:
        principal, _ = await run_in_threadpool(keys.verify, key.strip())
    except Unauthorized as exc:
        return RedirectResponse(f"/login?next={quote(target)}&error={quote(exc.message)}", status_code=303)
    log.info("web sign-in with key %s (tenant %s)", principal.key_id, principal.tenant)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, key.strip(), httponly=True, samesite="strict", secure=settings.cookie_secure,
                        path="/", max_age=12 * 3600)
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def _page_headers() -> dict[str, str]:
    from .web import HEADERS

    return HEADERS
