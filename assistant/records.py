"""The answer log and the feedback log: every answer is recorded (with its conversation), feedback links to it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from .answering import Answer, page_list
from .conversations import title_of, unknown_conversation
from .db import answers, checked_collection, conversations, feedback, storable
from .errors import BadRequest, UnknownAnswer
from .store import Filters
from .tenancy import DEFAULT_TENANT


class AnswerLog:
    def __init__(self, engine: sa.Engine, embedder_name: str) -> None:
        self.engine = engine
        self.embedder_name = embedder_name

    def record(
        self, answer: Answer, *, question: str, collection: str, filters: Filters | None, latency_ms: int,
        conversation_id: str | None = None, standalone_question: str | None = None,
        versions: dict[str, Any] | None = None, tenant: str = DEFAULT_TENANT,
    ) -> str:
        """Store an answer with everything needed to learn from feedback on it: the question (and what retrieval
        saw), the retrieved chunk ids and scores, the citations, model and prompt versions, the learned model
        versions and index that served it (`versions`), and which past feedback moved its ranking (`memory`); as
        `tenant`'s (its conversation must be that tenant's too)."""
        answer_id = str(uuid.uuid4())
        retrieved = [
            {"point_id": h.point_id, "source": h.chunk.source, "pages": page_list(h), "section": h.chunk.section,
             "score": round(h.score, 4)}
            for h in answer.retrieved
        ]
        now = datetime.now(UTC)
        question = storable(question)
        with self.engine.begin() as conn:  # committed before the response is sent
            if conversation_id is not None:  # the conversation's latest answer; its first question is its title
                touched = conn.execute(sa.update(conversations).where(
                    conversations.c.id == conversation_id, conversations.c.tenant == tenant).values(
                    updated_at=now, title=sa.func.coalesce(conversations.c.title, title_of(question)),
                ))
                if touched.rowcount == 0:
                    raise unknown_conversation(conversation_id)
            conn.execute(sa.insert(answers).values(
                id=answer_id, created_at=now, collection=checked_collection(collection), question=question,
                answer=storable(answer.answer), refused=answer.refused, model=answer.model,
                prompt_version=answer.prompt_version, embedder=self.embedder_name,
                filters=dict(filters) if filters else None, retrieved=retrieved,
                citations=[asdict(c) for c in answer.citations], latency_ms=latency_ms, timings=answer.timings_ms,
                conversation_id=conversation_id,
                standalone_question=storable(standalone_question) if standalone_question is not None else None,
                inferred_filters=answer.inferred_filters, versions=versions, memory=answer.memory or None,
                tenant=tenant,
            ))
        return answer_id

    def get(self, answer_id: str, tenant: str | None = None) -> dict[str, Any]:
        """The answer's row; UnknownAnswer when there is none, or it is not `tenant`'s (None: any tenant's)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(answers).where(answers.c.id == answer_id)).mappings().first()
        if row is None or (tenant is not None and row["tenant"] != tenant):
            raise UnknownAnswer(f"no answer with id {answer_id!r}; feedback must name an answer_id from /v1/chat")
        return dict(row)


ANONYMOUS = "anonymous"  # the voter when a request names no user_id


@dataclass(frozen=True)
class Vote:
    """A stored vote: its feedback row, and whether it replaced the user's earlier vote on the answer."""

    feedback_id: int
    updated: bool


class FeedbackLog:
    """Votes on recorded answers, one per user and answer: a user's second vote on an answer replaces the first."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def add(
        self, answer_id: str, rating: str, comment: str | None = None, *, reason: str | None = None,
        correction: str | None = None, citations: Sequence[tuple[int, bool]] | None = None,
        user_id: str | None = None, segment: str | None = None, sources: Sequence[Mapping[str, Any]] = (),
        tenant: str | None = None,
    ) -> Vote:
        """Record `user_id`'s vote on an answer (ANONYMOUS when None), or replace the vote they gave it before:
        rating, reason, comment, correction, citation marks and segment are all the new vote's.

        `citations` marks the answer's citations useful or not, as (n, useful) pairs, n as shown with the answer;
        they are stored resolved to the cited chunks, [{n, point_id, source, section, pages, useful}].
        `sources`: chunks the correction points to (`assistant.corrections`), stored as useful marks with n None
        and "from": "correction".
        `tenant`: the voter's; an answer of another tenant is unknown (None: any answer). The vote is the answer's
        tenant's.
        Raises UnknownAnswer, or BadRequest when a mark names no citation of the answer or one twice.
        """
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(answers.c.citations, answers.c.tenant)
                               .where(answers.c.id == answer_id)).first()
        if row is None or (tenant is not None and row.tenant != tenant):
            raise _unknown_answer(answer_id)
        now = datetime.now(UTC)
        user = user_id or ANONYMOUS
        marks = resolve_marks(citations, row.citations) if citations else []
        marks += [{"n": None, "point_id": c["point_id"], "source": c["source"], "section": c.get("section"),
                   "pages": list(c.get("pages") or []), "useful": True, "from": "correction"} for c in sources]
        vote = {"rating": rating, "reason": reason, "comment": storable(comment) if comment is not None else None,
                "correction": storable(correction) if correction is not None else None,
                "segment": segment, "citation_marks": marks or None}
        try:  # insert, and when the unique (answer, user) index refuses it, update: race-free on any database
            with self.engine.begin() as conn:
                key = conn.execute(sa.insert(feedback).values(
                    answer_id=answer_id, user_id=user, created_at=now, tenant=row.tenant, **vote,
                )).inserted_primary_key
            return Vote(int(key[0]) if key else 0, updated=False)
        except sa.exc.IntegrityError:
            pass  # the user has voted on this answer before
        mine = (feedback.c.answer_id == answer_id) & (feedback.c.user_id == user)
        with self.engine.begin() as conn:
            conn.execute(sa.update(feedback).where(mine).values(updated_at=now, **vote))
            feedback_id = conn.execute(sa.select(feedback.c.id).where(mine)).scalar_one_or_none()
        if feedback_id is None:  # the insert failed on the answer's reference: it was deleted meanwhile
            raise _unknown_answer(answer_id)
        return Vote(int(feedback_id), updated=True)

    def for_answer(self, answer_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(feedback).where(feedback.c.answer_id == answer_id).order_by(feedback.c.id)
            ).mappings().all()
        return [dict(r) for r in rows]

    def records(self, collection: str | None = None, since: datetime | None = None,
                tenant: str | None = None) -> list[dict[str, Any]]:
        """Each vote joined with the answer it rates, in the order they were first given (feedback memory, the
        exporter and learning read these; so does `feedback_stats`).

        Keys of the vote: `feedback_id`, `answer_id`, `user_id` (ANONYMOUS, or `legacy-<id>` for votes given
        before users were recorded), `segment`, `rating` ("up" | "down"), `reason`, `comment`, `correction`,
        `citation_marks` ([{n, point_id, source, section, pages, useful}] or None), `created_at` (when first
        given), `updated_at` (when last changed; None if never). Keys of the answer: `collection`, `question`,
        `standalone_question` (what retrieval and the LLM saw; None when asked as is), `answer`, `refused`,
        `model`, `prompt_version`, `versions` ({embedder, reranker, index, memory}; None for answers recorded before
        versions were), `citations` ([{n, point_id, source, pages, section, score}]), `retrieved` ([{point_id,
        source, pages, section, score}]), `answered_at` (when the answer was given).

        `collection` keeps votes on that collection's answers; `since` keeps votes given or changed at or after
        that time (a naive time is UTC); `tenant` keeps that tenant's votes (None: every tenant's).
        """
        f, a = feedback.c, answers.c
        query = (
            sa.select(f.id.label("feedback_id"), f.answer_id, f.user_id, f.segment, f.rating, f.reason, f.comment,
                      f.correction, f.citation_marks, f.created_at, f.updated_at, a.collection, a.question,
                      a.standalone_question, a.answer, a.refused, a.model, a.prompt_version, a.versions, a.citations,
                      a.retrieved, a.created_at.label("answered_at"))
            .join(answers, a.id == f.answer_id)
            .order_by(f.id)
        )
        if collection is not None:
            query = query.where(a.collection == collection)
        if tenant is not None:
            query = query.where(f.tenant == tenant)
        if since is not None:
            since = since.astimezone(UTC) if since.tzinfo else since.replace(tzinfo=UTC)
            query = query.where(sa.func.coalesce(f.updated_at, f.created_at) >= since)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]


def resolve_marks(marks: Sequence[tuple[int, bool]], citations: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """(n, useful) marks as stored: each with the chunk that citation n of the answer (`citations`) points to."""
    cited = {int(c["n"]): c for c in citations}
    valid = (f"its citations are {', '.join(f'[{n}]' for n in sorted(cited))}" if cited
             else "it cites no source, so there is nothing to mark")
    resolved: list[dict[str, Any]] = []
    for n, useful in marks:
        if n not in cited:
            raise BadRequest(f"citations: the answer has no citation [{n}]; {valid}")
        if any(m["n"] == n for m in resolved):
            raise BadRequest(f"citations: citation [{n}] is marked twice; mark each at most once ({valid})")
        c = cited[n]
        resolved.append({"n": n, "point_id": c["point_id"], "source": c["source"], "section": c.get("section"),
                         "pages": c.get("pages") or [], "useful": useful})
    return resolved


def _unknown_answer(answer_id: str) -> UnknownAnswer:
    return UnknownAnswer(f"no answer with id {answer_id!r}; feedback must name an answer_id from /v1/chat")
