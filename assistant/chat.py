"""The chat service: answer a question and record the answer. Routes and tools call this."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from .answering import Answer, Answerer
from .errors import BadRequest
from .records import AnswerLog
from .store import Filters, build_filter

log = logging.getLogger(__name__)


@dataclass
class RecordedAnswer:
    answer_id: str
    answer: Answer
    latency_ms: int


class ChatService:
    def __init__(self, answerer: Answerer, log_: AnswerLog, *, default_collection: str, max_question_chars: int):
        self.answerer = answerer
        self.answers = log_
        self.default_collection = default_collection
        self.max_question_chars = max_question_chars

    def ask(
        self, question: str, *, collection: str | None = None, filters: Filters | None = None,
        top_k: int | None = None,
    ) -> RecordedAnswer:
        question = question.strip()
        if not question:
            raise BadRequest("the question is empty")
        if len(question) > self.max_question_chars:
            raise BadRequest(
                f"the question has {len(question)} characters; the limit is {self.max_question_chars}"
            )
        build_filter(filters)  # validate before any work is done
        collection = collection or self.default_collection
        started = time.perf_counter()
        answer = self.answerer.answer(question, collection, top_k=top_k, filters=filters)
        latency_ms = int((time.perf_counter() - started) * 1000)
        answer_id = self.answers.record(
            answer, question=question, collection=collection, filters=filters, latency_ms=latency_ms
        )
        log.info("answer %s in %d ms (%s) refused=%s", answer_id, latency_ms, answer.timings_ms, answer.refused)
        return RecordedAnswer(answer_id, answer, latency_ms)
