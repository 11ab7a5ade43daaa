"""A cap on request bodies: a JSON request larger than MAX_BODY_KB is refused (413) before the app reads it.

FastAPI reads a whole body into memory before validating it, so without a cap a 1 GB "question" would be held,
then parsed, before the 422 that says it is too long. `BodyLimit` answers 413 at once when the declared
Content-Length is over the cap, and otherwise reads the body (chunked ones too) only up to the cap before handing it
on. Routes that stream their body and check it themselves (uploads: UPLOAD_MAX_MB) are exempt.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import RequestTooLarge


class BodyLimit:
    """ASGI middleware: bodies of at most `max_bytes`, except for the (method, path) pairs in `exempt`."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, exempt: Collection[tuple[str, str]] = ()) -> None:
        self.app, self.max_bytes, self.exempt = app, max_bytes, set(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in self.exempt:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, int(declared))
            return
        messages: list[Message] = []
        size = 0
        while True:  # read up to the cap: a chunked body has no length to check first
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(send, None)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, size: int | None) -> None:
        what = "larger than" if size is None else f"{size / 1024:.0f} KB, more than"
        error = RequestTooLarge(
            f"the request body is {what} the {self.max_bytes / 1024:g} KB accepted (MAX_BODY_KB); send files to "
            "POST /v1/documents"
        )
        body = json.dumps({"error": error.code, "detail": error.message}).encode()
        headers: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                              (b"connection", b"close")]
        await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": body})
