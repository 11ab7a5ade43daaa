"""The evaluation run: for every question, retrieve, match evidence, score; optionally answer and score.

The runner takes the product's components (`assistant.components.Components`) and never builds its own:
the retriever is the one the assistant answers with (or a baseline: `--retriever bm25|dense`), and the
answerer (LLM) is only touched with `with_answers`. One record per question comes out, ready for
results.json (see `results.py`).

Contexts for answers (`context`):
- `retrieved` (default): the product as users get it: retrieve from the whole collection, gate, answer.
- `evidence`: retrieval restricted to the question's evidence documents (exact file names) and no
  evidence gate, so the generator is tested on the right context (TAT-QA: "table + paragraphs").
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tqdm import tqdm

from assistant.answering import Answerer
from assistant.chunks import ScoredChunk
from assistant.errors import FinragError
from assistant.retrieval import Retriever
from assistant.store import FilterValue

from .answers import answer_record, answer_scores
from .judge import Judge
from .matching import match_ranks
from .metrics import BUDGETS, count_tokens, figure_hits, first_match_rank, matched_within, retrieval_scores
from .questions import Question
from .summary import stage_timings

log = logging.getLogger(__name__)

SCORE_DIGITS = 6
EVIDENCE_TOP_K = 10  # chunks of the evidence documents shown with --context evidence
_GLOB = set("*?[")

ContextMode = Literal["retrieved", "evidence"]
BUDGET_DEPTH = 30  # chunks retrieved at least; MRR and first_match_rank are within this depth


@dataclass(frozen=True)
class RunConfig:
    collection: str
    ks: tuple[int, ...] = (1, 3, 5, 10)
    with_answers: bool = False
    answer_top_k: int | None = None  # None: the assistant's RETRIEVAL_TOP_K (EVIDENCE_TOP_K for evidence)
    budgets: tuple[int, ...] = BUDGETS
    context: ContextMode = "retrieved"
    filters: Mapping[str, FilterValue] | None = None  # payload filters on every retrieval (`--filter`)

    def __post_init__(self) -> None:
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError("every k must be a positive integer")
        object.__setattr__(self, "ks", tuple(sorted(set(self.ks))))

    @property
    def depth(self) -> int:
        """How many chunks are retrieved per question: the largest k, and at least `BUDGET_DEPTH` so that the
        token budgets (`recall@2000tok`) are filled with small chunks too (one rule can be 40 tokens)."""
        return max(*self.ks, BUDGET_DEPTH)


@dataclass
class RunResult:
    records: list[dict[str, Any]]
    seconds: float

    @property
    def timings_ms(self) -> dict[str, list[float]]:
        """Per-stage milliseconds of every question, from the records."""
        return stage_timings(self.records)


def chunk_record(rank: int, hit: ScoredChunk, matched: Sequence[int]) -> dict[str, Any]:
    c = hit.chunk
    return {
        "rank": rank, "point_id": hit.point_id, "source": c.source, "page_start": c.page_start,
        "page_end": c.page_end, "section": c.section, "score": round(hit.score, SCORE_DIGITS),
        "tokens": count_tokens(c.text), "matches": list(matched),
    }


def evidence_filter(question: Question) -> dict[str, Any] | None:
    """A source filter on the question's evidence documents; None when a source is a glob or absent."""
    sources = sorted({e.source for e in question.evidence})
    if not sources or any(_GLOB & set(s) for s in sources):
        return None
    return {"source": sources}


@dataclass
class Runner:
    retriever: Retriever
    config: RunConfig
    answerer: Answerer | None = None
    judge: Judge | None = None

    def __post_init__(self) -> None:
        if self.config.with_answers and self.answerer is None:
            raise ValueError("with_answers needs an answerer")
        if self.judge is not None and not self.config.with_answers:
            raise ValueError("the judge grades answers: it needs with_answers")

    def run(
        self, questions: Sequence[Question], *, progress: bool = True,
        done: Sequence[dict[str, Any]] = (), on_record: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> RunResult:
        """Evaluate `questions`, after the records `done` of an earlier, interrupted run (`--resume`).

        `on_record(records)` is called after every question with all records so far (checkpointing).
        """
        started = time.perf_counter()
        records = list(done)
        for question in tqdm(questions, desc="evaluating", unit="q", file=sys.stderr, disable=not progress):
            records.append(self.evaluate(question))
            if on_record is not None:
                on_record(records)
        return RunResult(records, time.perf_counter() - started)

    def evaluate(self, question: Question) -> dict[str, Any]:
        """One question's record: retrieved chunks with their matches, scores, and the answer if asked."""
        t = time.perf_counter()
        retrieval = self.retriever.search(question.question, self.config.collection, self.config.depth,
                                          self.config.filters)
        hits = retrieval.hits
        timings = {"retrieve": _ms(t), **{k: round(v) for k, v in retrieval.timings_ms.items()}}
        chunks = [h.chunk for h in hits]
        ranks = match_ranks(question.evidence, chunks)
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
                {**retrieval_scores(ranks, question.evidence, chunks, self.config.ks, self.config.budgets),
                 **figure_hits(question.reference_answer, [c.text for c in chunks], [bool(m) for m in ranks],
                               self.config.ks)}
                if question.evidence else None
            ),
            "answer": None,
            "answer_scores": None,
            "error": None,
        }
        if self.config.with_answers and self.answerer is not None:
            self._answer(question, record, timings)
        record["timings_ms"] = timings
        return record

    def _answer(self, question: Question, record: dict[str, Any], timings: dict[str, int]) -> None:
        assert self.answerer is not None
        top_k, filters, min_score = self.config.answer_top_k, self.config.filters, None
        if self.config.context == "evidence":
            evidence = evidence_filter(question)
            if evidence is None:
                record["error"] = "no exact evidence file names to take the context from"
                return
            filters = {**(self.config.filters or {}), **evidence}
            top_k, min_score = top_k or EVIDENCE_TOP_K, 0.0
        t = time.perf_counter()
        try:
            answer = self.answerer.answer(
                question.question, self.config.collection, top_k=top_k, filters=filters, min_score=min_score
            )
        except FinragError as exc:  # one failed generation should not lose the run
            log.warning("question %s: answering failed: %s", question.id, exc.message)
            record["error"] = exc.message
            timings["answer"] = _ms(t)
            return
        timings["answer"] = _ms(t)
        record["answer"] = answer_record(answer)
        scores = answer_scores(question, answer)
        if self.judge is not None:
            t = time.perf_counter()
            try:
                graded, reply = self.judge.grade(question, answer)
            except FinragError as exc:
                log.warning("question %s: judging failed: %s", question.id, exc.message)
                graded, reply = {}, None
            scores.update(graded)
            record["answer"]["judge_reply"] = reply
            timings["judge"] = _ms(t)
        record["answer_scores"] = scores


def _ms(since: float) -> int:
    return int((time.perf_counter() - since) * 1000)
