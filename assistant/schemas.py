"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, StrictInt, StrictStr


class ChatRequest(BaseModel):
    question: str = Field(min_length=1, description="The question, in natural language.")
    collection: str | None = Field(default=None, description="Collection to search (default: the server's).")
    filters: dict[str, StrictStr | StrictInt | list[StrictStr] | list[StrictInt]] | None = Field(
        default=None,
        description="Payload filters, all must hold: e.g. {\"source\": \"2023 Q3 AAPL.pdf\"}, "
        "{\"ticker\": \"AAPL\", \"fiscal_year\": 2023, \"fiscal_quarter\": \"Q3\"}, {\"doc_kind\": \"10-Q\"} or "
        "{\"doc_kind\": [\"rulebook\", \"guidance\"], \"family\": [\"COBS\", \"AML\"]}. Fields: source, doc_type, "
        "doc_kind (10-K, 10-Q, rulebook, guidance …), company, ticker, form, period, fiscal_year, fiscal_quarter, "
        "quarters (\"2023-Q3\"), family, section, title.",
    )
    top_k: int | None = Field(default=None, ge=1, le=50, description="Number of sources to retrieve.")


class CitationOut(BaseModel):
    n: int = Field(description="The number the answer uses, as in [n].")
    source: str
    pages: list[int]
    section: str | None
    snippet: str
    score: float
    point_id: str


class ChatResponse(BaseModel):
    answer_id: str
    answer: str
    citations: list[CitationOut]
    refused: bool = Field(description="True when the documents did not contain the answer.")
    inferred_filters: dict[str, Any] | None = Field(
        default=None,
        description="Filters read from the question (company/ticker, fiscal period, form) that retrieval kept to, "
        "e.g. {\"ticker\": \"AAPL\", \"period\": \"July 1, 2023\"}; RETRIEVAL_INFER_FILTERS=false turns this off.",
    )
    warnings: list[str]
    model: str
    prompt_version: str
    latency_ms: int


class FeedbackRequest(BaseModel):
    answer_id: str = Field(min_length=1)
    rating: Literal["up", "down"]
    comment: str | None = Field(default=None, max_length=5000)


class FeedbackResponse(BaseModel):
    feedback_id: int
    answer_id: str
    rating: str


class ComponentHealth(BaseModel):
    ok: bool
    detail: str


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    components: dict[str, ComponentHealth]


class CollectionOut(BaseModel):
    name: str
    chunks: int
    documents: int
