"""Feedback memory: learning from votes at once, without a training run.

Every vote that says which sources helped or misled becomes a *lesson*: (question, useful chunks, wrong
chunks). For a new question, the lessons of past questions close to it (cosine similarity of their
embeddings ≥ `threshold`, same collection) move chunks in its ranking: useful ones are raised to the top
(fetched from the store when retrieval missed them, if they pass the request's filters), wrong ones are
moved to the bottom. Only the question's neighbourhood is touched; a chunk is never boosted globally.

What a vote teaches (`lessons_of`):
- a citation marked useful / not useful: raise / lower that chunk (always wins over the rules below);
- thumbs up: the answer's cited chunks were useful;
- thumbs down with reason `wrong_evidence`: its cited chunks were wrong;
- other thumbs down (wrong_answer, incomplete …): nothing about chunks — the generator, not the evidence,
  may be at fault; such votes become evaluation cases and training pairs instead (`eval feedback-export`).

The memory keeps each lesson's question embedding in RAM (384 floats a lesson: 100k lessons ≈ 150 MB) and
reloads from the database when feedback changes (one cheap aggregate query per search).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import sqlalchemy as sa

from .chunks import Chunk, ScoredChunk
from .db import answers, feedback
from .embedding import Embedder
from .query import value_matches

log = logging.getLogger(__name__)

Effect = Literal["raised", "added", "lowered"]


@dataclass(frozen=True)
class Lesson:
    feedback_id: int
    collection: str
    question: str
    useful: tuple[str, ...]  # point ids
    wrong: tuple[str, ...]


@dataclass(frozen=True)
class MemoryEffect:
    """One chunk moved in one ranking, and the past feedback that moved it."""

    point_id: str
    effect: Effect
    score: float  # sum over neighbouring lessons of similarity x (+1 useful, -1 wrong)
    feedback_ids: tuple[int, ...]
    similarity: float  # of the closest lesson that moved it

    def as_record(self) -> dict[str, Any]:
        data = asdict(self)
        data["feedback_ids"] = list(self.feedback_ids)
        return data


def lessons_of(row: Mapping[str, Any]) -> Lesson | None:
    """The lesson of one feedback row joined with its answer (keys: id, collection, question,
    standalone_question, rating, reason, citation_marks, citations); None when it says nothing about chunks."""
    marks = {m["point_id"]: bool(m["useful"]) for m in row.get("citation_marks") or [] if m.get("point_id")}
    cited = [c["point_id"] for c in row.get("citations") or [] if c.get("point_id")]
    useful = [p for p, ok in marks.items() if ok]
    wrong = [p for p, ok in marks.items() if not ok]
    if row["rating"] == "up":
        useful += [p for p in cited if p not in marks]
    elif row.get("reason") == "wrong_evidence":
        wrong += [p for p in cited if p not in marks]
    if not useful and not wrong:
        return None
    question = row.get("standalone_question") or row["question"]
    return Lesson(int(row["id"]), row["collection"], question, tuple(dict.fromkeys(useful)),
                  tuple(dict.fromkeys(wrong)))


def lesson_rows(engine: sa.Engine, collection: str | None = None) -> list[dict[str, Any]]:
    """Every vote joined with its answer, oldest first, with the keys `lessons_of` reads (and `updated_at`)."""
    query = (
        sa.select(feedback.c.id, feedback.c.updated_at, feedback.c.rating, feedback.c.reason,
                  feedback.c.citation_marks, answers.c.collection, answers.c.question,
                  answers.c.standalone_question, answers.c.citations)
        .join(answers, answers.c.id == feedback.c.answer_id)
        .order_by(feedback.c.id)
    )
    if collection:
        query = query.where(answers.c.collection == collection)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def matches_filters(chunk: Chunk, filters: Mapping[str, Any] | None) -> bool:
    """Whether a chunk passes request filters (field → value or list of values), as the store decides."""
    if not filters:
        return True
    payload = chunk.payload()
    return all(value_matches(payload.get(key), wanted) for key, wanted in filters.items())


class FeedbackMemory:
    """Lessons from feedback, searched by question similarity. Thread-safe; reloads when feedback changes."""

    def __init__(
        self, engine: sa.Engine, embedder: Embedder, *, threshold: float = 0.85, neighbours: int = 5,
        max_raised: int = 3,
    ) -> None:
        self.engine = engine
        self.embedder = embedder
        self.threshold = threshold
        self.neighbours = neighbours
        self.max_raised = max_raised
        self._lock = threading.Lock()
        self._stamp: tuple[Any, ...] | None = None
        self._lessons: dict[str, list[Lesson]] = {}
        self._vectors: dict[str, np.ndarray] = {}
        self._cache: dict[tuple[int, Any], tuple[Lesson, np.ndarray]] = {}  # (feedback id, updated_at) -> vector

    # --- loading -----------------------------------------------------------------------------------------

    def _current_stamp(self) -> tuple[Any, ...]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(sa.func.count(), sa.func.max(feedback.c.id),
                                         sa.func.max(feedback.c.updated_at))).one()
        return tuple(row)

    def refresh(self) -> None:
        """Reload the lessons if feedback was added or changed since the last load; only new or changed votes
        are embedded again."""
        stamp = self._current_stamp()
        with self._lock:
            if stamp == self._stamp:
                return
            rows = lesson_rows(self.engine)
            lessons: list[tuple[Lesson, Any]] = []
            fresh: list[tuple[Lesson, Any]] = []
            for row in rows:
                lesson = lessons_of(row)
                if lesson is None:
                    continue
                key = (lesson.feedback_id, row["updated_at"])
                cached = self._cache.get(key)
                lessons.append((lesson, key))
                if cached is None or cached[0] != lesson:
                    fresh.append((lesson, key))
            if fresh:
                vectors = self.embedder.embed_batch([lesson.question for lesson, _ in fresh])
                for (lesson, key), vector in zip(fresh, vectors, strict=True):
                    v = np.asarray(vector, dtype=np.float32)
                    self._cache[key] = (lesson, v / (np.linalg.norm(v) + 1e-12))
            keep = {key for _, key in lessons}
            self._cache = {k: v for k, v in self._cache.items() if k in keep}
            by_collection: dict[str, list[Lesson]] = defaultdict(list)
            vecs: dict[str, list[np.ndarray]] = defaultdict(list)
            for lesson, key in lessons:
                by_collection[lesson.collection].append(lesson)
                vecs[lesson.collection].append(self._cache[key][1])
            self._lessons = dict(by_collection)
            self._vectors = {c: np.stack(v) for c, v in vecs.items()}
            self._stamp = stamp
            log.debug("feedback memory: %d lessons (%d embedded now)", len(lessons), len(fresh))

    @property
    def size(self) -> int:
        return sum(len(v) for v in self._lessons.values())

    # --- use ---------------------------------------------------------------------------------------------

    def neighbours_of(self, vector: Sequence[float], collection: str) -> list[tuple[Lesson, float]]:
        """Lessons of past questions within `threshold` of `vector`, closest first (at most `neighbours`)."""
        self.refresh()
        with self._lock:
            lessons, matrix = self._lessons.get(collection), self._vectors.get(collection)
        if not lessons or matrix is None:
            return []
        q = np.asarray(vector, dtype=np.float32)
        q /= np.linalg.norm(q) + 1e-12
        sims = matrix @ q
        order = np.argsort(-sims)[: self.neighbours]
        return [(lessons[i], float(sims[i])) for i in order if sims[i] >= self.threshold]

    def apply(
        self, vector: Sequence[float], collection: str, hits: Sequence[ScoredChunk],
        fetch: Callable[[list[str]], dict[str, Chunk]], filters: Mapping[str, Any] | None = None,
    ) -> tuple[list[ScoredChunk], list[MemoryEffect]]:
        """`hits` re-ordered by the neighbouring lessons, and what moved. Raised chunks lead (strongest
        first, `max_raised` at most), lowered ones trail; the rest keep their order."""
        near = self.neighbours_of(vector, collection)
        if not near:
            return list(hits), []
        score: dict[str, float] = defaultdict(float)
        who: dict[str, list[int]] = defaultdict(list)
        closest: dict[str, float] = {}
        for lesson, sim in near:
            for sign, ids in ((1.0, lesson.useful), (-1.0, lesson.wrong)):
                for pid in ids:
                    score[pid] += sign * sim
                    who[pid].append(lesson.feedback_id)
                    closest[pid] = max(closest.get(pid, 0.0), sim)
        present = {h.point_id: h for h in hits}
        raise_ids = [p for p, s in sorted(score.items(), key=lambda kv: -kv[1]) if s > 0][: self.max_raised]
        missing = [p for p in raise_ids if p not in present]
        fetched = fetch(missing) if missing else {}
        top = max((h.score for h in hits), default=1.0)
        raised: list[ScoredChunk] = []
        effects: list[MemoryEffect] = []
        for pid in raise_ids:
            hit = present.get(pid)
            if hit is None:
                chunk = fetched.get(pid)
                if chunk is None or not matches_filters(chunk, filters):  # deleted since, or filtered out
                    continue
                hit = ScoredChunk(chunk, top, pid)
                effect: Effect = "added"
            else:
                effect = "raised"
            raised.append(hit)
            effects.append(MemoryEffect(pid, effect, round(score[pid], 4), tuple(who[pid]), round(closest[pid], 4)))
        lowered_ids = {p for p, s in score.items() if s < 0 and p in present}
        raised_ids = {h.point_id for h in raised}
        rest = [h for h in hits if h.point_id not in raised_ids and h.point_id not in lowered_ids]
        lowered = [h for h in hits if h.point_id in lowered_ids]
        effects += [MemoryEffect(h.point_id, "lowered", round(score[h.point_id], 4), tuple(who[h.point_id]),
                                 round(closest[h.point_id], 4)) for h in lowered]
        return raised + rest + lowered, effects
