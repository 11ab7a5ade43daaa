"""What users make of the answers: votes by segment, by model and by the versions that served them, the reasons
given for down votes, and the cited chunks most often voted down. Computed from `FeedbackLog.records`.

A cited chunk is counted once per vote on an answer citing it: as a down when the answer was voted down, unless
the voter marked that citation; a citation marked useful counts as an up, one marked not useful as a down (an
up-voted answer's unmarked citations count neither way).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

UNVERSIONED = "unversioned"  # answers recorded before the served versions were
NO_RERANKER = "none"  # served without reranking
UNSPECIFIED = "unspecified"  # a down vote that gave no reason
TOP_SOURCES = 10


@dataclass
class Tally:
    key: str | None
    up: int = 0
    down: int = 0

    @property
    def total(self) -> int:
        return self.up + self.down

    @property
    def up_rate(self) -> float | None:
        return round(self.up / self.total, 4) if self.total else None

    def count(self, rating: str) -> None:
        if rating == "up":
            self.up += 1
        else:
            self.down += 1


@dataclass
class SourceVotes:
    point_id: str
    source: str
    section: str | None
    pages: list[int]
    down: int = 0
    up: int = 0


@dataclass
class FeedbackStats:
    overall: Tally = field(default_factory=lambda: Tally(None))
    by_segment: list[Tally] = field(default_factory=list)
    by_model: list[Tally] = field(default_factory=list)
    by_embedder: list[Tally] = field(default_factory=list)
    by_reranker: list[Tally] = field(default_factory=list)
    by_prompt_version: list[Tally] = field(default_factory=list)
    by_reason: list[tuple[str, int]] = field(default_factory=list)  # over down votes, most frequent first
    most_downvoted_sources: list[SourceVotes] = field(default_factory=list)
    corrections: int = 0


def feedback_stats(records: Iterable[Mapping[str, Any]], *, top_sources: int = TOP_SOURCES) -> FeedbackStats:
    """Aggregate votes given as `FeedbackLog.records` dicts (keys used: rating, segment, reason, correction,
    citation_marks, and the answer's model, prompt_version, versions, citations)."""
    rows = list(records)
    overall = Tally(None)
    for row in rows:
        overall.count(row["rating"])
    reasons = Counter(row["reason"] or UNSPECIFIED for row in rows if row["rating"] == "down")
    return FeedbackStats(
        overall=overall,
        by_segment=_tallies(rows, lambda r: r["segment"]),
        by_model=_tallies(rows, lambda r: r["model"]),
        by_embedder=_tallies(rows, lambda r: _version(r, "embedder")),
        by_reranker=_tallies(rows, lambda r: _version(r, "reranker")),
        by_prompt_version=_tallies(rows, lambda r: r["prompt_version"]),
        by_reason=sorted(reasons.items(), key=lambda item: (-item[1], item[0])),
        most_downvoted_sources=_downvoted_sources(rows)[:top_sources],
        corrections=sum(1 for row in rows if row["correction"]),
    )


def _tallies(rows: list[Mapping[str, Any]], key: Callable[[Mapping[str, Any]], str | None]) -> list[Tally]:
    """Votes per key, the most voted first (ties by name; no key last)."""
    tallies: dict[str | None, Tally] = {}
    for row in rows:
        k = key(row)
        tallies.setdefault(k, Tally(k)).count(row["rating"])
    return sorted(tallies.values(), key=lambda t: (-t.total, t.key is None, t.key or ""))


def _version(row: Mapping[str, Any], kind: str) -> str:
    versions = row["versions"]
    if not isinstance(versions, Mapping):
        return UNVERSIONED
    served = versions.get(kind)
    return str(served) if served else NO_RERANKER if kind == "reranker" else UNVERSIONED


def _downvoted_sources(rows: list[Mapping[str, Any]]) -> list[SourceVotes]:
    chunks: dict[str, SourceVotes] = {}
    for row in rows:
        marks = {m["n"]: m["useful"] for m in row["citation_marks"] or []}
        for citation in row["citations"] or []:
            useful = marks.get(citation["n"])
            if useful is None and row["rating"] == "up":
                continue
            votes = chunks.setdefault(citation["point_id"], SourceVotes(
                citation["point_id"], citation["source"], citation.get("section"), list(citation.get("pages") or []),
            ))
            if useful:
                votes.up += 1
            else:
                votes.down += 1
    return sorted((v for v in chunks.values() if v.down), key=lambda v: (-v.down, v.up, v.point_id))
