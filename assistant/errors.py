"""Errors of the assistant, each carrying the HTTP status it maps to.

    FinragError (500)
    ├── BadRequest (422)            the request is well-formed JSON but cannot be served as asked
    │   ├── InvalidFilter
    │   ├── InvalidCollectionName
    │   └── UploadRejected          no file of an upload can be accepted (the reasons say why)
    ├── NotFound (404)
    │   ├── UnknownAnswer
    │   ├── UnknownCollection
    │   ├── UnknownConversation
    │   ├── UnknownDocument
    │   ├── UnknownChunk
    │   ├── UnknownJob
    │   └── FileMissing             a registered document's file is gone from disk
    ├── Unauthorized (401)          no API key, or one that is unknown or revoked
    ├── Forbidden (403)             the key may not do this (an admin endpoint, a collection of another tenant)
    ├── IndexLocked (409)           embedded Qdrant is open in another process
    ├── DocumentBusy (409)          an ingest job is working on the document
    ├── RequestTooLarge (413)       a JSON request body past MAX_BODY_KB
    │   └── UploadTooLarge          the request body is past what any accepted upload can be
    ├── RateLimited (429)           the key sent more requests than its limit; `retry_after_s` says when to retry
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


class InvalidCollectionName(BadRequest):
    code = "invalid_collection"


class UploadRejected(BadRequest):
    code = "upload_rejected"


class NotFound(FinragError):
    status_code = 404
    code = "not_found"


class UnknownAnswer(NotFound):
    code = "unknown_answer"


class UnknownCollection(NotFound):
    code = "unknown_collection"


class UnknownConversation(NotFound):
    code = "unknown_conversation"


class UnknownDocument(NotFound):
    code = "unknown_document"


class UnknownChunk(NotFound):
    code = "unknown_chunk"


class UnknownJob(NotFound):
    code = "unknown_job"


class FileMissing(NotFound):
    code = "file_missing"


class Unauthorized(FinragError):
    status_code = 401
    code = "unauthorized"


class Forbidden(FinragError):
    status_code = 403
    code = "forbidden"


class IndexLocked(FinragError):
    status_code = 409
    code = "index_locked"


class DocumentBusy(FinragError):
    status_code = 409
    code = "document_busy"


class RequestTooLarge(FinragError):
    status_code = 413
    code = "request_too_large"


class UploadTooLarge(RequestTooLarge):
    code = "upload_too_large"


class RateLimited(FinragError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ComponentUnavailable(FinragError):
    status_code = 503
    code = "unavailable"


class ModelMissing(ComponentUnavailable):
    code = "model_missing"
