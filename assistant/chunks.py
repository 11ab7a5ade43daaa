"""The chunk: the unit that is embedded, stored, retrieved and cited."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

# Payload fields stored with every point, in this order of usefulness to a reader. Documents carry those their
# text shows (see ingest.loading.describe): doc_kind ("10-Q", "rulebook", "guidance" ...), company, ticker,
# form, period (as printed), fiscal_year, fiscal_quarter ("Q3"), quarters (every "YYYY-Qn" a filing's quarter
# is known by), family (rulebooks: "COBS" ...).
FILTERABLE_FIELDS = ("source", "doc_id", "doc_type", "doc_kind", "company", "ticker", "form", "period", "fiscal_year",
                     "fiscal_quarter", "quarters", "family", "section", "title", "tenant")
# Filterable fields whose values are integers (indexed as such); the others are keywords.
INTEGER_FIELDS = frozenset({"fiscal_year"})

# Every chunk names the tenant that owns its collection (assistant.tenancy); chunks indexed before tenants existed
# have no such field and are the default tenant's.
DEFAULT_TENANT = "default"
TENANT_FIELD = "tenant"

_NAMESPACE = uuid.UUID("6f1c1f0e-6b8e-4ad6-9b1c-6f3c9b2d7a10")


@dataclass(frozen=True)
class Chunk:
    """A piece of a document with everything needed to cite it."""

    text: str
    source: str  # file name as ingested, e.g. "2023 Q3 AAPL.pdf"
    doc_id: str
    chunk_index: int
    page_start: int | None = None  # 1-based, PDFs only
    page_end: int | None = None
    section: str | None = None  # heading path, e.g. "Item 2. Management's Discussion ..." or "18.8.2"
    title: str | None = None
    doc_type: str = "document"  # "filing" | "regulation" | "document"
    file_hash: str = ""
    content_hash: str = ""
    tenant: str = DEFAULT_TENANT
    extra: dict[str, Any] = field(default_factory=dict)  # company, form, period ...

    @property
    def id(self) -> str:
        """Deterministic point id: the same file version always yields the same ids."""
        return str(uuid.uuid5(_NAMESPACE, f"{self.doc_id}:{self.file_hash}:{self.chunk_index}"))

    def payload(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        data.update(extra)
        return data

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Chunk:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        base = {k: v for k, v in payload.items() if k in known}
        extra = {k: v for k, v in payload.items() if k not in known}
        return cls(**base, extra=extra)

    def pages(self) -> list[int]:
        """The 1-based pages the chunk spans (PDFs); [] for other sources."""
        if self.page_start is None:
            return []
        return list(range(self.page_start, (self.page_end or self.page_start) + 1))

    def pages_label(self) -> str:
        if self.page_start is None:
            return ""
        if self.page_end is None or self.page_end == self.page_start:
            return f"p. {self.page_start}"
        return f"pp. {self.page_start}-{self.page_end}"


@dataclass(frozen=True)
class ScoredChunk:
    chunk: Chunk
    score: float
    point_id: str = ""


def passage_text(chunk: Chunk) -> str:
    """A chunk as models read it: where it sits (title, heading, section), then its text.

    The embedder embeds this at ingest time and the reranker reads it at query time.
    """
    context = [chunk.title or chunk.source]
    if chunk.extra.get("heading"):
        context.append(str(chunk.extra["heading"]))
    if chunk.section:
        context.append(chunk.section)
    return " | ".join(context) + "\n" + chunk.text
