"""The evaluation run: for every question, retrieve, match evidence, score; optionally answer and score.

The runner takes the product's components (`assistant.components.Components`) and never builds its own:
the retriever is the one the assistant answers with, and the answerer (LLM) is only touched with
`with_answers`. One record per question comes out, ready for results.json (see `results.py`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from assistant.answering import Answerer
from assistant.chunks import ScoredChunk
from assistant.errors import FinragError
from assistant.retrieval import Retriever

from .answers import answer_record, answer_scores
from .matching import match_ranks
from .metrics import first_match_rank, matched_within, retrieval_scores
from .questions import Question

log = logging.getLogger(__name__)

SCORE_DIGITS = 6


@dataclass(frozen=True)
class RunConfig:
    collection: str
    ks: tuple[int, ...] = (1, 3, 5, 10)
    with_answers: bool = False
    answer_top_k: int | None = None  # None: the assistant's RETRIEVAL_TOP_K

    def __post_init__(self) -> None:
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError("every k must be a positive integer")
        object.__setattr__(self, "ks", tuple(sorted(set(self.ks))))

    @property
    def depth(self) -> int:
        """How many chunks are retrieved per question: the largest k."""
        return max(self.ks)


@dataclass
class RunResult:
    records: list[dict[str, Any]]
    seconds: float
    timings_ms: dict[str, list[int]] = field(default_factory=dict)


def chunk_record(rank: int, hit: ScoredChunk, matched: Sequence[int]) -> dict[str, Any]:
    c = hit.chunk
    return {
        "rank": rank, "point_id": hit.point_id, "source": c.source, "page_start": c.page_start,
        "page_end": c.page_end, "section": c.section, "score": round(hit.score, SCORE_DIGITS),
        "matches": list(matched),
    }


@dataclass
class Runner:
    retriever: Retriever
    config: RunConfig
    answerer: Answerer | None = None

    def __post_init__(self) -> None:
        if self.config.with_answers and self.answerer is None:
            raise ValueError("with_answers needs an answerer")

    def run(self, questions: Sequence[Question], *, progress: bool = True) -> RunResult:
        started = time.perf_counter()
        timings: dict[str, list[int]] = {"retrieve": [], "answer": []}
        records = []
        for question in tqdm(questions, desc="evaluating", unit="q", file=sys.stderr, disable=not progress):
            record = self.evaluate(question)
            for stage, ms in record["timings_ms"].items():
                timings[stage].append(ms)
            records.append(record)
        return RunResult(records, time.perf_counter() - started, timings)

    def evaluate(self, question: Question) -> dict[str, Any]:
        """One question's record: retrieved chunks with their matches, scores, and the answer if asked."""
        t = time.perf_counter()
        hits = self.retriever.retrieve(question.question, self.config.collection, self.config.depth)
        timings = {"retrieve": _ms(t)}
        ranks = match_ranks(question.evidence, [h.chunk for h in hits])
        record: dict[str, Any] = {
            "id": question.id,
            "question": question.question,
            "tags": dict(question.tags),
            "segments": question.segments(),
            "answerable": question.answerable,
            "reference_answer": question.reference_answer,
            "evidence": [e.model_dump(exclude_none=True) for e in question.evidence],
            "retrieved": [chunk_record(r, h, m) for r, (h, m) in enumerate(zip(hits, ranks, strict=True), 1)],
            "matched_evidence": sorted(matched_within(ranks)),
            "first_match_rank": first_match_rank(ranks),
            "retrieval": (
                retrieval_scores(ranks, len(question.evidence), self.config.ks) if question.evidence else None
            ),
            "answer": None,
            "answer_scores": None,
            "error": None,
        }
        if self.config.with_answers and self.answerer is not None:
            t = time.perf_counter()
            try:
                answer = self.answerer.answer(
                    question.question, self.config.collection, top_k=self.config.answer_top_k
                )
            except FinragError as exc:  # one failed generation should not lose the run
                log.warning("question %s: answering failed: %s", question.id, exc.message)
                record["error"] = exc.message
            else:
                record["answer"] = answer_record(answer)
                record["answer_scores"] = answer_scores(question, answer)
            timings["answer"] = _ms(t)
        record["timings_ms"] = timings
        return record


def _ms(since: float) -> int:
    return int((time.perf_counter() - since) * 1000)
