"""Answering: retrieve, build a prompt with numbered sources (`assistant.sources`), generate, check the answer.

The evidence gate comes first: when the best chunk scores under `RETRIEVAL_MIN_SCORE`, the LLM is not
asked at all and the assistant says the indexed documents do not contain the answer.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .calculation import is_constant, needs_calculation, numbers_of, parse, render
from .chunks import ScoredChunk
from .coverage import missing_terms
from .grounding import checked_numbers, has_cited_statement, uncited_claims, unsupported_numbers
from .injection import prompt_guard
from .llm import LLM, Message, estimate_tokens
from .numbers import find_numbers, same_number
from .packing import pack_sources
from .prompts import Prompt, load_prompt
from .query import Facets
from .retrieval import Retriever
from .settings import GroundingSettings, LLMSettings, RetrievalSettings
from .sources import (
    ANSWER_REMINDER,
    Citation,
    attribute_figures,
    attribute_statements,
    build_messages,
    extract_citations,
    make_citation,
    page_list,
    render_messages,
    source_header,
    source_texts,
    sources_of,
)
from .store import Filters

log = logging.getLogger(__name__)

__all__ = [  # with the prompt and citation helpers it is built on, importable from here too
    "ANSWER_REMINDER", "NOT_FOUND_MARK", "REFUSAL_TEXT", "Answer", "Answerer", "Citation", "Draft",
    "attribute_figures", "build_messages", "extract_citations", "final_answer", "is_refusal", "make_citation",
    "page_list", "render_messages", "source_header", "source_texts",
]

NOT_FOUND_MARK = "NOT_FOUND"
REFUSAL_TEXT = "I could not find the answer to this question in the indexed documents."
LEAK_TEXT = "The model's draft repeated the assistant's instructions and is not shown."
CLOSEST = 3  # sources shown with a refusal
@dataclass
class Answer:
    answer: str
    citations: list[Citation]
    retrieved: list[ScoredChunk]
    refused: bool
    model: str
    prompt_version: str
    timings_ms: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    inferred_filters: dict[str, Any] | None = None  # what retrieval kept to because the question named it
    unsupported_numbers: list[str] = field(default_factory=list)  # figures no cited source states or gives
    calculation: dict[str, Any] | None = None  # {expression, value, error} when the product computed the answer
    closest: list[Citation] = field(default_factory=list)  # a refusal's nearest sources, to look at by hand
    memory: list[dict[str, Any]] = field(default_factory=list)  # chunks feedback memory moved (MemoryEffect)


_REFUSAL = re.compile(r"\W*not[\s_]found\b", re.I)
_ONLY_MARKS = re.compile(r"(?:\s*\[\d+(?:\s*[,;]\s*\d+)*\]\s*[.,;:]?)*\s*")


def is_refusal(text: str) -> bool:
    """The model's NOT_FOUND (alone or leading the reply), an empty reply, or one of bare citation marks."""
    return bool(_REFUSAL.match(text)) or _ONLY_MARKS.fullmatch(text) is not None


@dataclass
class Draft:
    """Retrieval done and the prompt built: either `refusal` is the answer, or `messages` go to the LLM."""

    hits: list[ScoredChunk]
    messages: list[Message]
    shown: int  # sources printed in the prompt (citations may only point to these)
    timings_ms: dict[str, int]
    inferred_filters: dict[str, Any] | None
    refusal: Answer | None = None
    prompt: Prompt | None = None  # which prompt `messages` were built with
    memory: list[dict[str, Any]] = field(default_factory=list)  # what feedback memory moved in `hits`


@dataclass
class Answerer:
    retriever: Retriever
    llm_factory: Callable[[], LLM]
    retrieval: RetrievalSettings
    llm_settings: LLMSettings
    grounding: GroundingSettings = field(default_factory=GroundingSettings)
    prompt: Prompt = field(default_factory=lambda: load_prompt("answer_v3"))
    calc_prompt: Prompt | None = field(default_factory=lambda: load_prompt("calc_v2"))

    def prompt_for(self, question: str) -> Prompt:
        """The calculation prompt for questions that need arithmetic (when configured), else the answer prompt."""
        if self.calc_prompt is not None and needs_calculation(question):
            return self.calc_prompt
        return self.prompt

    def facets(self, collection: str) -> Facets | None:
        facets = self.retriever.facets
        return facets(collection) if facets is not None else None

    def draft(
        self, question: str, collection: str, *, top_k: int | None = None, filters: Filters | None = None,
        min_score: float | None = None, llm: LLM | None = None,
    ) -> Draft:
        """Retrieve and build the prompt; refuse here when the evidence is too weak to ask the LLM.

        `min_score` overrides the evidence gate (RETRIEVAL_MIN_SCORE); evaluation with given contexts passes
        0.0 to test the generator alone."""
        timings: dict[str, int] = {}
        started = time.perf_counter()
        found = self.retriever.search(question, collection, top_k or self.retrieval.top_k, filters)
        hits = list(found.hits)
        memory = [effect.as_record() for effect in found.memory]
        timings["retrieve"] = _ms(started)
        timings.update({f"retrieve_{k}": round(v) for k, v in found.timings_ms.items()})
        gate = self.retrieval.min_score if min_score is None else min_score
        reason = None
        if not hits or found.evidence < gate:
            log.info("refusing: nearest chunk scores %.3f, under %.3f", found.evidence, gate)
            reason = "evidence-gate"
        elif self.grounding.require_coverage and min_score is None:
            missing = missing_terms(question, hits, self.facets(collection))
            if missing:
                log.info("refusing: no retrieved chunk mentions %s", missing)
                reason = "coverage"
                timings["refusal_missing"] = len(missing)
        if reason is not None:
            text = REFUSAL_TEXT
            if reason == "coverage":
                text = f"{REFUSAL_TEXT} None of the sources found mentions {_names(missing)}."
            refusal = Answer(text, [], hits, True, reason, self.prompt.version, timings,
                             inferred_filters=found.inferred_filters, closest=closest_sources(hits), memory=memory)
            return Draft(hits, [], 0, timings, found.inferred_filters, refusal, memory=memory)
        prompt = self.prompt_for(question)
        texts = self.fit_sources(prompt, question, hits, llm)
        messages = render_messages(prompt, question, hits, texts)
        return Draft(hits, messages, len(texts), timings, found.inferred_filters, prompt=prompt, memory=memory)

    def fit_sources(self, prompt: Prompt, question: str, hits: Sequence[ScoredChunk], llm: LLM | None) -> list[str]:
        """The sources' texts that fit the prompt: RETRIEVAL_CONTEXT_TOKENS of them, within the model's context
        window less the answer's tokens, counted with the model's tokenizer; lowest-ranked sources are dropped
        first and a table row is never cut (`assistant.packing`). Without a model that counts tokens, the
        character budget RETRIEVAL_CONTEXT_CHARS applies."""
        window = getattr(llm, "context_tokens", None)
        if not isinstance(window, int):
            return source_texts(hits, self.retrieval.context_chars)
        count = getattr(llm, "count_tokens", estimate_tokens)
        fixed = sum(count(m["content"]) for m in render_messages(prompt, question, [], []))
        answer_tokens = self.llm_settings.max_tokens
        margin = 32
        budget = min(window, fixed + answer_tokens + margin + self.retrieval.context_tokens)
        return pack_sources(hits, fixed_tokens=fixed, context_tokens=budget, answer_tokens=answer_tokens,
                            count=count, margin_tokens=margin)

    def stream(
        self, question: str, collection: str, *, top_k: int | None = None, filters: Filters | None = None,
        min_score: float | None = None, llm: LLM | None = None,
    ) -> Iterator[str | Answer]:
        """Yield the model's text as it is generated, then the finished `Answer` (always last).

        The streamed text is the model's raw reply; the final Answer holds the checked text (invalid
        citations removed, calculations evaluated) that is recorded and shown."""
        llm = llm or self.llm_factory()
        draft = self.draft(question, collection, top_k=top_k, filters=filters, min_score=min_score, llm=llm)
        if draft.refusal is not None:
            yield draft.refusal
            return
        yield from self.generate(draft, llm)

    def generate(self, draft: Draft, llm: LLM) -> Iterator[str | Answer]:
        """Run the LLM over a draft's prompt: text pieces, then the Answer.

        A reply that repeats the system prompt (a source may ask for it) is withheld, and while it streams
        the words that could begin such a repeat are held back until they cannot (`injection.PromptGuard`).
        A calculation reply is not streamed, and only its CALC and ANSWER lines can reach the reader: the guard
        checks the answer made from them (a model that appends the prompt's formula list after a good
        calculation has not shown it to anyone)."""
        timings = dict(draft.timings_ms)
        pieces: list[str] = []
        # A calculation reply (CALC/ANSWER lines) means nothing to a reader until the product has computed it:
        # it is not streamed; the finished answer with its working is sent as one piece instead.
        hold = draft.prompt is not None and draft.prompt is self.calc_prompt
        system = next((m["content"] for m in draft.messages if m["role"] == "system"), None)
        guard = prompt_guard(system) if system else None
        sent, leaked = 0, False  # characters streamed; whether the reply repeats the system prompt
        t = time.perf_counter()
        for piece in llm.stream(draft.messages, max_tokens=self.llm_settings.max_tokens,
                                temperature=self.llm_settings.temperature):
            if not pieces:
                timings["first_token"] = _ms(t)
            pieces.append(piece)
            if hold or leaked:
                continue
            if guard is None:
                yield piece
                continue
            text = "".join(pieces)
            leaked = guard.leaks(text)
            safe = 0 if leaked else guard.safe_length(text)
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        timings["generate"] = _ms(t)
        raw = "".join(pieces)
        if guard is not None and (leaked or (not hold and guard.leaks(raw))):
            yield self._leak_refusal(draft, llm.name, timings)
            return
        if guard is not None and not hold and sent < len(raw):
            yield raw[sent:]
        answer = self.finish(raw, draft.hits, llm.name, timings, shown=draft.shown, prompt=draft.prompt)
        if hold and guard is not None and guard.leaks("\n".join([answer.answer, *answer.warnings])):
            yield self._leak_refusal(draft, llm.name, timings)
            return
        if hold:
            yield answer.answer
        yield replace(answer, inferred_filters=draft.inferred_filters, memory=draft.memory)

    def answer(
        self, question: str, collection: str, *, top_k: int | None = None, filters: Filters | None = None,
        min_score: float | None = None, llm: LLM | None = None,
    ) -> Answer:
        """`stream`, collected: the finished Answer."""
        return final_answer(self.stream(question, collection, top_k=top_k, filters=filters, min_score=min_score,
                                        llm=llm))

    def finish(
        self, raw: str, hits: Sequence[ScoredChunk], model: str, timings: dict[str, int], shown: int | None = None,
        prompt: Prompt | None = None,
    ) -> Answer:
        """Turn the model's reply into an Answer; citations may only point to the `shown` sources.

        Replies to the calculation prompt are computed here (`assistant.calculation`); every answer's figures
        are then checked against the sources it cites (`assistant.grounding`)."""
        prompt = prompt or self.prompt
        if is_refusal(raw):
            return Answer(REFUSAL_TEXT, [], list(hits), True, model, prompt.version, timings)
        shown = len(hits) if shown is None else min(shown, len(hits))
        warnings: list[str] = []
        calculation: dict[str, Any] | None = None
        computed: list[float] = []
        if prompt is self.calc_prompt:
            reply = parse(raw)
            worked = render(reply, cites=sources_of(numbers_of(reply.expression or ""), hits[:shown]))
            if worked is not None:
                raw = worked.text
                if worked.expression is not None:
                    calculation = {"expression": worked.expression, "value": worked.value, "error": worked.error}
                if worked.value is not None:
                    computed.append(worked.value)
                # the formula's own constants (× 100, ÷ 2) are not figures to find in a source
                computed += [abs(n.value) for n in find_numbers(worked.expression or "") if is_constant(n)]
                if worked.error:
                    warnings.append(f"the calculation could not be computed: {worked.error}")
                withheld = self._unverified_calculation(worked.expression, worked.error, hits[:shown])
                if withheld is not None and self.grounding.refuse_unsupported:
                    return self._withhold(withheld, worked.text, hits, model, prompt, timings, calculation)
        text, cited, dropped = extract_citations(raw, shown)
        text, added = attribute_figures(text, hits[:shown])
        if added:
            warnings.append("citations were added where the answer's figures appear verbatim in a source")
            cited.extend(n for n in added if n not in cited)
        model_cited = has_cited_statement(text)  # a statement the model itself cited, without figures
        text, matched = attribute_statements(text, hits[:shown])
        if matched:
            warnings.append("citations were added to sentences the model left uncited, from the source holding "
                            "most of their words")
            cited.extend(n for n in matched if n not in cited)
        if dropped:
            log.warning("dropped citations to missing sources: %s", dropped)
            warnings.append(f"removed citations to sources that do not exist: {sorted(set(dropped))}")
        if not cited:
            warnings.append("the answer cites no source; check it against the sources before relying on it")
        else:
            uncited = uncited_claims(text)
            if uncited:
                warnings.append(f"{len(uncited)} sentence(s) with figures cite no source: " + " | ".join(
                    f"\"{s[:80]}\"" for s in uncited))
        cited_texts = [hits[n - 1].chunk.text for n in cited] or [h.chunk.text for h in hits[:shown]]
        unsupported = unsupported_numbers(text, cited_texts, computed)
        if (unsupported and self.grounding.refuse_unsupported and not checked_numbers(text, unsupported)
                and not model_cited):
            reason = f"stated figures that none of the sources gives ({', '.join(unsupported)})"
            answer = self._withhold(reason, text, hits, model, prompt, timings, calculation)
            answer.unsupported_numbers = unsupported
            return answer
        if unsupported:
            warnings.append("figures not found in (or computable from) the cited sources: " + ", ".join(unsupported))
        citations = [make_citation(n, hits[n - 1], text) for n in cited]
        return Answer(text, citations, list(hits), False, model, prompt.version, timings, warnings,
                      unsupported_numbers=unsupported, calculation=calculation)


    @staticmethod
    def _unverified_calculation(expression: str | None, error: str | None,
                                hits: Sequence[ScoredChunk]) -> str | None:
        """Why a calculation's result cannot be trusted, or None: it failed, or it uses a figure (other than a
        formula constant such as 100 or 2) that no shown source prints."""
        if error:
            return f"wrote a calculation that could not be computed ({error})"
        sources = [n for hit in hits for n in find_numbers(hit.chunk.text)]
        quoted = [n for n in find_numbers(expression or "") if not is_constant(n)]
        missing = [n.text for n in quoted if not any(same_number(src, n) for src in sources)]
        return f"calculated with figures no source prints ({', '.join(missing)})" if missing else None

    def _leak_refusal(self, draft: Draft, model: str, timings: dict[str, int]) -> Answer:
        """The answer instead of a reply that repeats the system prompt; the reply itself is not kept."""
        log.warning("withholding an answer: the model's reply repeats its system prompt")
        prompt = draft.prompt or self.prompt
        return Answer(f"{REFUSAL_TEXT} {LEAK_TEXT}", [], list(draft.hits), True, model, prompt.version, timings,
                      ["withheld: the model's reply repeated its system prompt (a source may have asked for it)"],
                      closest=closest_sources(draft.hits), inferred_filters=draft.inferred_filters,
                      memory=draft.memory)

    def _withhold(self, reason: str, text: str, hits: Sequence[ScoredChunk], model: str, prompt: Prompt,
                  timings: dict[str, int], calculation: dict[str, Any] | None) -> Answer:
        """Refuse instead of showing an answer the sources do not support; the draft stays in `warnings`."""
        log.info("withholding an answer: the model %s", reason)
        return Answer(f"{REFUSAL_TEXT} The model's draft answer {reason}.", [], list(hits), True, model,
                      prompt.version, timings, [f"withheld draft: {text[:300]}"], calculation=calculation,
                      closest=closest_sources(hits))


def closest_sources(hits: Sequence[ScoredChunk]) -> list[Citation]:
    """What a refusal shows instead of an answer: the first `CLOSEST` sources found."""
    return [make_citation(n, hit) for n, hit in enumerate(hits[:CLOSEST], start=1)]


def _names(terms: Sequence[str]) -> str:
    quoted = [f"\"{t}\"" for t in terms]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def final_answer(events: Iterable[str | Answer]) -> Answer:
    """The Answer at the end of a stream of text pieces."""
    last = None
    for event in events:
        last = event
    if not isinstance(last, Answer):
        raise RuntimeError("the answer stream ended without an Answer")
    return last


def _ms(since: float) -> int:
    return int((time.perf_counter() - since) * 1000)
