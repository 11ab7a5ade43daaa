"""The chat service: answer a question (streamed or whole) within a conversation and record the answer.

Routes and tools call this. A question with history (a `conversation_id`, or the messages an
OpenAI-style client sends) is first rewritten into a standalone question, which is what retrieval and
the LLM see; the user's own words are recorded beside it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .answering import Answer, Answerer
from .conversations import Conversations, Turn
from .errors import BadRequest
from .llm import LLM
from .records import AnswerLog
from .rewriting import Rewriter
from .store import Filters, build_filter
from .tenancy import DEFAULT_TENANT, TENANT_FIELD

log = logging.getLogger(__name__)


@dataclass
class RecordedAnswer:
    answer_id: str
    answer: Answer
    latency_ms: int
    conversation_id: str | None = None
    question: str = ""  # as the user asked it
    standalone_question: str = ""  # what retrieval and the LLM answered (== question without history)


# Picks the generator for a request: (model asked for or None, collection) -> LLM.
LLMPicker = Callable[[str | None, str], LLM]



def checked_question(question: str, max_chars: int) -> str:
    """The question stripped, or BadRequest when it is empty or longer than `max_chars`."""
    question = question.strip()
    if not question:
        raise BadRequest("the question is empty")
    if len(question) > max_chars:
        raise BadRequest(f"the question has {len(question)} characters; the limit is {max_chars}")
    return question

class ChatService:
    def __init__(
        self, answerer: Answerer, log_: AnswerLog, *, default_collection: str, max_question_chars: int,
        conversations: Conversations | None = None, rewriter: Rewriter | None = None,
        llm_for: LLMPicker | None = None, history_turns: int = 20,
        versions: Callable[[str], dict[str, object]] | None = None,
    ):
        self.answerer = answerer
        self.answers = log_
        self.default_collection = default_collection
        self.max_question_chars = max_question_chars
        self.conversations = conversations
        self.rewriter = rewriter
        self.llm_for = llm_for
        self.history_turns = history_turns
        self.versions = versions  # collection -> the learned versions and index serving it (recorded)

    def ask(
        self, question: str, *, collection: str | None = None, filters: Filters | None = None,
        top_k: int | None = None, conversation_id: str | None = None, history: Sequence[Turn] | None = None,
        model: str | None = None,
    ) -> RecordedAnswer:
        last = None
        for event in self.stream(question, collection=collection, filters=filters, top_k=top_k,
                                 conversation_id=conversation_id, history=history, model=model):
            last = event
        assert isinstance(last, RecordedAnswer)
        return last

    def stream(
        self, question: str, *, collection: str | None = None, filters: Filters | None = None,
        top_k: int | None = None, conversation_id: str | None = None, history: Sequence[Turn] | None = None,
        model: str | None = None, tenant: str | None = None,
    ) -> Iterator[str | RecordedAnswer]:
        """Check the request now (errors raise before anything streams), then return an iterator of the
        answer's text pieces ending with the RecordedAnswer.

        `conversation_id`: continue a stored conversation (its turns are the history); without one a new
        conversation is started when a conversation store is configured. `history`: turns given by the
        client instead (the OpenAI-compatible endpoint). `model`: a generator other than the default.
        `tenant`: whose request it is (None: unscoped): retrieval is filtered to its chunks in the store, a
        conversation of another tenant is unknown, and the answer and conversation are recorded as its own.
        """
        question = checked_question(question, self.max_question_chars)
        build_filter(filters)  # validate before any work is done
        collection = collection or self.default_collection
        turns: list[Turn] = list(history or [])
        if self.conversations is not None:
            if conversation_id:
                turns = self.conversations.history(conversation_id, limit=self.history_turns,
                                                   tenant=tenant) + turns
            else:
                conversation_id = self.conversations.start(collection, tenant=tenant or DEFAULT_TENANT)
        llm = self.llm_for(model, collection) if self.llm_for is not None else None
        return self._run(question, collection, filters, top_k, conversation_id, turns, llm, tenant)

    def _run(
        self, question: str, collection: str, filters: Filters | None, top_k: int | None,
        conversation_id: str | None, turns: list[Turn], llm: LLM | None, tenant: str | None = None,
    ) -> Iterator[str | RecordedAnswer]:
        started = time.perf_counter()
        standalone = question
        rewrite_ms = 0
        if turns and self.rewriter is not None:
            t = time.perf_counter()
            standalone = self.rewriter.rewrite(question, turns, collection).question
            rewrite_ms = int((time.perf_counter() - t) * 1000)
            if standalone != question:
                log.info("follow-up rewritten in %d ms: %r -> %r", rewrite_ms, question, standalone)
        answer: Answer | None = None
        searched = {**(filters or {}), TENANT_FIELD: tenant} if tenant is not None else filters  # in the store
        for event in self.answerer.stream(standalone, collection, top_k=top_k, filters=searched, llm=llm):
            if isinstance(event, Answer):
                answer = event
            else:
                yield event
        assert answer is not None
        if rewrite_ms:
            answer.timings_ms["rewrite"] = rewrite_ms
        latency_ms = int((time.perf_counter() - started) * 1000)
        answer_id = self.answers.record(
            answer, question=question, collection=collection, filters=filters, latency_ms=latency_ms,
            conversation_id=conversation_id, standalone_question=standalone,
            versions=self.versions(collection) if self.versions is not None else None,
            tenant=tenant or DEFAULT_TENANT,
        )
        log.info("answer %s in %d ms (%s) refused=%s", answer_id, latency_ms, answer.timings_ms, answer.refused)
        yield RecordedAnswer(answer_id, answer, latency_ms, conversation_id, question, standalone)
