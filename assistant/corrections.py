"""Where a correction comes from: the chunks of the collection a user's corrected answer quotes or restates.

A compliance officer who corrects an answer usually pastes the rule (or the filing's sentence) that is right.
Finding that chunk turns the correction into evidence: feedback memory raises it for the question's
neighbours, and learning trains on it — even when retrieval never showed it. Each paragraph of the correction
is looked up on its own (a correction may quote several rules). Only a close match counts
(cosine of the correction and the chunk ≥ `min_similarity` with the embedder); a correction in the user's own
words that matches nothing closely adds no evidence.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import sqlalchemy as sa

from .db import answers
from .errors import UnknownCollection
from .retrieval import Retriever
from .sources import page_list
from .tenancy import TENANT_FIELD

log = logging.getLogger(__name__)


MAX_PARTS = 8  # passages of one correction looked up
MIN_PART_CHARS = 40  # shorter paragraphs ("See also:") are joined to the next


def parts_of(correction: str) -> list[str]:
    """The passages a correction quotes: its paragraphs (blank-line separated), short ones joined to the next;
    the whole text when it is one paragraph."""
    parts: list[str] = []
    pending = ""
    for paragraph in re.split(r"\n\s*\n", correction.strip()):
        pending = f"{pending}\n{paragraph}".strip() if pending else paragraph.strip()
        if len(pending) >= MIN_PART_CHARS:
            parts.append(pending)
            pending = ""
    if pending and parts:  # a short last paragraph belongs to the passage before it
        parts[-1] = f"{parts[-1]}\n{pending}"
    elif pending:
        parts.append(pending)
    return parts[:MAX_PARTS]


def correction_sources(engine: sa.Engine, retriever: Retriever, answer_id: str, correction: str,
                       min_similarity: float, tenant: str | None = None) -> list[dict[str, Any]]:
    """The chunks the correction restates, one per quoted passage ({point_id, source, section, pages,
    similarity}); none when no passage is close to a chunk. `tenant`: search only its chunks."""
    with engine.connect() as conn:
        collection = conn.execute(sa.select(answers.c.collection).where(answers.c.id == answer_id)).scalar()
    if collection is None or not correction.strip():
        return []
    found: dict[str, dict[str, Any]] = {}
    for part in parts_of(correction):
        try:
            hits = retriever.search(part, collection, 1, {TENANT_FIELD: tenant} if tenant else None).hits
        except UnknownCollection:  # the collection was dropped since: the vote still counts, without evidence
            log.warning("correction of answer %s: collection %r is gone", answer_id, collection)
            return []
        if hits and hits[0].score >= min_similarity and hits[0].point_id not in found:
            h = hits[0]
            found[h.point_id] = {"point_id": h.point_id, "source": h.chunk.source, "section": h.chunk.section,
                                 "pages": page_list(h), "similarity": round(h.score, 4)}
    return list(found.values())
