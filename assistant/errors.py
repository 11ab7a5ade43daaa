"""Errors of the assistant, each carrying the HTTP status it maps to.

    FinragError (500)
    ├── BadRequest (422)            the request is well-formed JSON but cannot be served as asked
    │   └── InvalidFilter
    ├── NotFound (404)
    │   ├── UnknownAnswer
    │   ├── UnknownCollection
    │   └── UnknownConversation
    ├── IndexLocked (409)           embedded Qdrant is open in another process
    └── ComponentUnavailable (503)  the LLM, the store or the embedder cannot serve
        └── ModelMissing            model weights were not fetched yet

One FastAPI handler (assistant.app) turns them into `{"error": code, "detail": message}` responses.
Messages say what went wrong and what to do about it.
"""

from __future__ import annotations


class FinragError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(FinragError):
    status_code = 422
    code = "bad_request"


class InvalidFilter(BadRequest):
    code = "invalid_filter"


class NotFound(FinragError):
    status_code = 404
    code = "not_found"


class UnknownAnswer(NotFound):
    code = "unknown_answer"


class UnknownCollection(NotFound):
    code = "unknown_collection"


class UnknownConversation(NotFound):
    code = "unknown_conversation"


class IndexLocked(FinragError):
    status_code = 409
    code = "index_locked"


class ComponentUnavailable(FinragError):
    status_code = 503
    code = "unavailable"


class ModelMissing(ComponentUnavailable):
    code = "model_missing"
