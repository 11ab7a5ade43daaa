"""Request and response bodies of the HTTP API: the native `/v1/chat` API, then the OpenAI-compatible one."""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)

if TYPE_CHECKING:
    from .answering import Citation
    from .chat import RecordedAnswer
    from .feedback_stats import FeedbackStats, Tally

def _as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; the database stores UTC, so say so (clients show local time). A request's
    time whose offset moves it past datetime's range (0001-01-01T00:00+01:00) is refused."""
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is out of range once converted to UTC") from None


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
Int64 = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]  # what payload filters hold


def _one_message(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """The filters, or one error that says which filter is wrong and what it may be (not one per union member)."""
    if not isinstance(value, dict):
        raise ValueError('filters must be an object of field: value, e.g. {"ticker": "AAPL"}')
    try:
        return handler(value)
    except ValidationError as exc:
        key = next((e["loc"][0] for e in exc.errors() if e["loc"]), "?")
        raise ValueError(f"filter {str(key)[:80]!r} must be a string, a 64-bit integer, or a list of strings or of "
                         "integers") from None


FilterValues = Annotated[dict[str, StrictStr | Int64 | list[StrictStr] | list[Int64]], WrapValidator(_one_message)]
GENERATOR_HELP = (
    "Generator to answer with instead of the collection's or the server's default: an embedded model name "
    "(`python -m assistant.models list`, e.g. qwen2.5-coder-0.5b-instruct) or `ollama:TAG`."
)


class ErrorOut(BaseModel):
    """Every error of the native API (assistant.errors), request validation's included."""

    error: str = Field(description="A stable code: invalid_request, invalid_filter, unknown_collection …")
    detail: str = Field(description="What went wrong and what to do about it.")


class OpenAIErrorDetail(BaseModel):
    message: str
    type: Literal["invalid_request_error", "server_error"]
    param: str | None = None
    code: str


class OpenAIErrorOut(BaseModel):
    """An error of the OpenAI-compatible API, in OpenAI's shape."""

    error: OpenAIErrorDetail


# The 422 every operation documents (instead of FastAPI's default, which our validation handler never sends).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorOut, "description": "The request is invalid: `detail` says which field and why."},
}
OPENAI_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {"model": OpenAIErrorOut, "description": "The request is invalid: `message` says which field and why."},
}


class ChatRequest(BaseModel):
    question: str = Field(min_length=1, description="The question, in natural language.")
    collection: str | None = Field(default=None, description="Collection to search (default: the server's).")
    filters: FilterValues | None = Field(
        default=None,
        description="Payload filters, all must hold: e.g. {\"source\": \"2023 Q3 AAPL.pdf\"}, "
        "{\"ticker\": \"AAPL\", \"fiscal_year\": 2023, \"fiscal_quarter\": \"Q3\"}, {\"doc_kind\": \"10-Q\"} or "
        "{\"doc_kind\": [\"rulebook\", \"guidance\"], \"family\": [\"COBS\", \"AML\"]}. Fields: source, doc_type, "
        "doc_kind (10-K, 10-Q, rulebook, guidance …), company, ticker, form, period, fiscal_year, fiscal_quarter, "
        "quarters (\"2023-Q3\"), family, section, title.",
    )
    top_k: int | None = Field(default=None, ge=1, le=50, description="Number of sources to retrieve.")
    conversation_id: str | None = Field(
        default=None, min_length=1,
        description="Continue this conversation (from an earlier response): the question may then be a follow-up "
        "(\"and in 2022?\"), rewritten into a standalone question before retrieval.",
    )
    model: str | None = Field(default=None, description=GENERATOR_HELP)
    stream: bool = Field(
        default=False,
        description="Answer as Server-Sent Events: `token` events ({\"text\"}, the model's raw text as it is "
        "generated), then one `done` event whose data is the full response (its `answer` is the checked text), or "
        "an `error` event ({\"error\", \"detail\"}) if generation fails midway.",
    )


class CitationOut(BaseModel):
    n: int = Field(description="The number the answer uses, as in [n].")
    source: str
    pages: list[int]
    section: str | None
    snippet: str
    score: float
    point_id: str
    doc_id: str = Field(default="", description="The document: GET /v1/documents/{doc_id}/file (#page=N for PDFs).")
    quote: str | None = Field(
        default=None, description="The source's sentence that best supports the answer's sentences citing [n] "
        "(null for a source shown without an answer, e.g. closest sources of a refusal).",
    )

    @classmethod
    def of(cls, citation: Citation) -> CitationOut:
        return cls(**asdict(citation))


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
    conversation_id: str | None = Field(
        default=None, description="Pass it back as `conversation_id` to ask a follow-up question."
    )
    standalone_question: str | None = Field(
        default=None, description="The follow-up question rewritten to stand alone (what retrieval and the model "
        "answered); null when the question was used as asked.",
    )
    timings_ms: dict[str, int] = Field(default_factory=dict, description="Milliseconds per pipeline stage.")
    unsupported_numbers: list[str] = Field(
        default_factory=list,
        description="Figures of the answer that no cited source states or gives by simple arithmetic (also "
        "named in `warnings`).",
    )
    calculation: dict[str, Any] | None = Field(
        default=None,
        description="For questions that need arithmetic: the calculation the model wrote over quoted figures and "
        "the value the product computed, {\"expression\", \"value\", \"error\"}.",
    )
    closest_sources: list[CitationOut] = Field(
        default_factory=list,
        description="With a refusal: the nearest sources found, to check by hand (they did not answer).",
    )
    memory: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Chunks feedback on similar past questions moved in this answer's ranking: {point_id, effect "
        "(raised, added, lowered), score, feedback_ids, similarity}.",
    )

    @classmethod
    def of(cls, result: RecordedAnswer) -> ChatResponse:
        a = result.answer
        standalone = result.standalone_question
        rewritten = standalone and standalone.split() != result.question.split()  # not just respaced
        return cls(
            answer_id=result.answer_id, answer=a.answer, citations=[CitationOut.of(c) for c in a.citations],
            refused=a.refused, inferred_filters=a.inferred_filters, warnings=a.warnings, model=a.model,
            prompt_version=a.prompt_version, latency_ms=result.latency_ms, conversation_id=result.conversation_id,
            standalone_question=standalone if rewritten else None, timings_ms=a.timings_ms,
            unsupported_numbers=a.unsupported_numbers, calculation=a.calculation,
            closest_sources=[CitationOut.of(c) for c in a.closest], memory=a.memory,
        )


class RetrieveRequest(BaseModel):
    question: str = Field(min_length=1, description="The question, in natural language.")
    collection: str | None = Field(default=None, description="Collection to search (default: the server's).")
    filters: FilterValues | None = Field(default=None, description="As in POST /v1/chat.")
    top_k: int | None = Field(default=None, ge=1, le=50, description="Chunks to return (default RETRIEVAL_TOP_K).")


class HitOut(BaseModel):
    point_id: str
    doc_id: str
    source: str
    pages: list[int]
    section: str | None
    score: float = Field(description="Fused (or reranked) score: orders the hits, not comparable across modes.")
    text: str


class RetrieveResponse(BaseModel):
    hits: list[HitOut] = Field(description="Best first.")
    inferred_filters: dict[str, Any] | None = Field(default=None, description="As in POST /v1/chat.")
    timings_ms: dict[str, float] = Field(description="Milliseconds per stage: embed, search, rerank, memory.")
    memory: list[dict[str, Any]] = Field(default_factory=list, description="As in POST /v1/chat.")


FeedbackReason = Literal["wrong_answer", "wrong_evidence", "incomplete", "outdated", "other"]
_USER_ID = re.compile(r"[A-Za-z0-9._@:-]+")


class CitationMark(BaseModel):
    n: StrictInt = Field(ge=1, description="The citation's number, as [n] in the answer.")
    useful: StrictBool = Field(description="Whether that source helped (false: it was wrong or beside the point).")


class FeedbackRequest(BaseModel):
    answer_id: str = Field(min_length=1, description="The answer rated, as returned by /v1/chat.")
    rating: Literal["up", "down"]
    reason: FeedbackReason | None = Field(default=None, description="Why (mostly for a down vote).")
    comment: str | None = Field(default=None, max_length=5000)
    correction: str | None = Field(default=None, max_length=20000, description="The answer that would be right.")
    citations: list[CitationMark] | None = Field(
        default=None, description="Marks on the answer's citations, each at most once: was source [n] useful?",
    )
    user_id: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="Who votes (letters, digits and . _ @ - :). One vote per user and answer: voting again "
        "replaces the earlier vote. Without it the vote is the user \"anonymous\"'s.",
    )
    segment: str | None = Field(default=None, min_length=1, max_length=100, description="The voter's team or role.")

    @field_validator("user_id")
    @classmethod
    def _user_id_characters(cls, value: str | None) -> str | None:
        if value is not None and not _USER_ID.fullmatch(value):
            raise ValueError("may contain only letters, digits and the characters . _ @ - :")
        return value

    @field_validator("correction", "segment")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("is blank; leave it out or give the text")
        return value


class FeedbackResponse(BaseModel):
    feedback_id: int
    answer_id: str
    rating: str
    updated: bool = Field(description="True when this vote replaced the user's earlier vote on the answer (200).")


class VoteTally(BaseModel):
    total: int
    up: int
    down: int
    up_rate: float | None = Field(description="up / total; null without votes.")


class SegmentVotes(VoteTally):
    segment: str | None = Field(description="The voters' team or role; null for votes that gave none.")


class ModelVotes(VoteTally):
    model: str = Field(description="The generator that answered (or `evidence-gate` / `coverage` for refusals "
                       "made before it was asked).")


class VersionVotes(VoteTally):
    version: str


class VersionStats(BaseModel):
    embedder: list[VersionVotes] = Field(description="By the embedder that served the answer; `unversioned` for "
                                         "answers recorded before versions were.")
    reranker: list[VersionVotes] = Field(description="By the reranker that served the answer (`none`: no "
                                         "reranking; `unversioned` as for the embedder).")
    prompt_version: list[VersionVotes]


class ReasonCount(BaseModel):
    reason: str = Field(description="A reason of FeedbackRequest, or `unspecified`.")
    count: int


class SourceVotesOut(BaseModel):
    point_id: str
    source: str
    section: str | None
    pages: list[int]
    down: int = Field(description="Down votes on answers citing it (unless marked useful), and not-useful marks.")
    up: int = Field(description="Useful marks.")


class FeedbackStatsResponse(VoteTally):
    by_segment: list[SegmentVotes] = Field(description="Most voted first.")
    by_model: list[ModelVotes] = Field(description="Most voted first.")
    by_version: VersionStats
    by_reason: list[ReasonCount] = Field(description="Reasons of the down votes, most frequent first.")
    most_downvoted_sources: list[SourceVotesOut] = Field(description="The cited chunks most voted down (top 10).")
    corrections: int = Field(description="Votes that gave a corrected answer.")

    @classmethod
    def of(cls, stats: FeedbackStats) -> FeedbackStatsResponse:
        def versions(tallies: list[Tally]) -> list[VersionVotes]:
            return [VersionVotes(version=t.key or "", **_votes(t)) for t in tallies]

        return cls(
            **_votes(stats.overall),
            by_segment=[SegmentVotes(segment=t.key, **_votes(t)) for t in stats.by_segment],
            by_model=[ModelVotes(model=t.key or "", **_votes(t)) for t in stats.by_model],
            by_version=VersionStats(embedder=versions(stats.by_embedder), reranker=versions(stats.by_reranker),
                                    prompt_version=versions(stats.by_prompt_version)),
            by_reason=[ReasonCount(reason=reason, count=count) for reason, count in stats.by_reason],
            most_downvoted_sources=[SourceVotesOut(**asdict(s)) for s in stats.most_downvoted_sources],
            corrections=stats.corrections,
        )


def _votes(tally: Tally) -> dict[str, Any]:
    return {"total": tally.total, "up": tally.up, "down": tally.down, "up_rate": tally.up_rate}


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
    default: bool = Field(default=False, description="The collection a request without `collection` searches.")


class FacetsOut(BaseModel):
    """The values the filters of POST /v1/chat can take in a collection, each sorted."""

    documents: int
    company: list[str]
    ticker: list[str]
    doc_kind: list[str] = Field(description="Form or kind: 10-K, 10-Q, rulebook, guidance …")
    period: list[str] = Field(description="Period ends as the filings print them, e.g. \"July 1, 2023\".")
    fiscal_year: list[int]
    fiscal_quarter: list[str]
    family: list[str] = Field(description="Regulation families (rulebooks): COBS, AML …")


# --- the OpenAI-compatible API (/v1/models, /v1/chat/completions) -------------------------------------------


class ModelOut(BaseModel):
    id: str = Field(description="A collection name: pass it as `model`.")
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time the collection's first document was indexed (0 if unknown).")
    owned_by: str = "finrag"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


class ContentPart(BaseModel):
    type: str
    text: str | None = None


class MessageIn(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat-completions request. Fields it has that finrag does not use are ignored."""

    model: str = Field(description="The collection to answer from (GET /v1/models lists them).")
    messages: list[MessageIn] = Field(
        min_length=1, description="The last message is the question (role user); earlier user/assistant pairs are "
        "the conversation so far; system messages are ignored (the answering prompt is the server's).",
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, description="Accepted; the server's LLM_MAX_TOKENS applies.")
    max_completion_tokens: int | None = Field(default=None, ge=1, description="Accepted, as max_tokens.")
    temperature: float | None = Field(default=None, ge=0, le=2, description="Accepted; LLM_TEMPERATURE applies.")
    filters: FilterValues | None = Field(default=None, description="As in POST /v1/chat.")
    top_k: int | None = Field(default=None, ge=1, le=50, description="Number of sources to retrieve.")
    generator: str | None = Field(default=None, description=GENERATOR_HELP)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class FinragExtras(BaseModel):
    """What /v1/chat says beyond the answer, for clients that know finrag."""

    answer: str = Field(description="The checked answer without the Sources list (streamed deltas are the "
                        "model's raw text; this is what was recorded).")
    model: str = Field(description="The generator that answered.")
    prompt_version: str
    latency_ms: int
    conversation_id: str | None
    standalone_question: str | None
    inferred_filters: dict[str, Any] | None
    timings_ms: dict[str, int]


class ChatCompletion(BaseModel):
    """OpenAI's `chat.completion`, plus finrag's structured fields at the top level."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage = Field(description="Zeros: the LLM seam yields text, not token counts.")
    system_fingerprint: str | None = Field(default=None, description="The answering prompt's version.")
    answer_id: str = Field(description="Rate it with POST /v1/feedback.")
    citations: list[CitationOut]
    warnings: list[str]
    refused: bool
    finrag: FinragExtras
