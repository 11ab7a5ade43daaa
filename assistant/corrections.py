"""Where a correction comes from: the chunk of the collection a user's corrected answer quotes or restates.

A compliance officer who corrects an answer usually pastes the rule (or the filing's sentence) that is right.
Finding that chunk turns the correction into evidence: feedback memory raises it for the question's
neighbours, and learning trains on it — even when retrieval never showed it. Only a close match counts
(cosine of the correction and the chunk ≥ `min_similarity` with the embedder); a correction in the user's own
words that matches nothing closely adds no evidence.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from .db import answers
from .errors import UnknownCollection
from .retrieval import Retriever
from .sources import page_list

log = logging.getLogger(__name__)


def correction_sources(engine: sa.Engine, retriever: Retriever, answer_id: str, correction: str,
                       min_similarity: float) -> list[dict[str, Any]]:
    """The chunk the correction restates ({point_id, source, section, pages}), or none."""
    with engine.connect() as conn:
        collection = conn.execute(sa.select(answers.c.collection).where(answers.c.id == answer_id)).scalar()
    if collection is None or not correction.strip():
        return []
    try:
        hits = retriever.search(correction, collection, 1).hits
    except UnknownCollection:  # the collection was dropped since: the vote still counts, without evidence
        log.warning("correction of answer %s: collection %r is gone", answer_id, collection)
        return []
    if not hits or hits[0].score < min_similarity:
        return []
    h = hits[0]
    return [{"point_id": h.point_id, "source": h.chunk.source, "section": h.chunk.section, "pages": page_list(h),
             "similarity": round(h.score, 4)}]
