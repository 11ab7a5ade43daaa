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
    ├── IndexLocked (409)           embedded Qdrant is open in another process
    ├── DocumentBusy (409)          an ingest job is working on the document
    ├── UploadTooLarge (413)        the request body is past what any accepted upload can be
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


class IndexLocked(FinragError):
    status_code = 409
    code = "index_locked"


class DocumentBusy(FinragError):
    status_code = 409
    code = "document_busy"


class UploadTooLarge(FinragError):
    status_code = 413
    code = "upload_too_large"


class ComponentUnavailable(FinragError):
    status_code = 503
    code = "unavailable"


class ModelMissing(ComponentUnavailable):
    code = "model_missing"
