"""Answering: retrieve, build a prompt with numbered sources, generate, keep only valid citations.

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

from .chunks import ScoredChunk
from .llm import LLM, Message
from .prompts import Prompt, load_prompt
from .retrieval import Retriever
from .settings import LLMSettings, RetrievalSettings
from .store import Filters

log = logging.getLogger(__name__)

NOT_FOUND_MARK = "NOT_FOUND"
REFUSAL_TEXT = "I could not find the answer to this question in the indexed documents."
_CITE = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")
SNIPPET_CHARS = 400
# Repeated after the sources: small models follow the instruction they read last.
ANSWER_REMINDER = "Answer from the sources above and cite each fact with its source number, like [2]."


@dataclass(frozen=True)
class Citation:
    n: int
    point_id: str
    source: str
    pages: list[int]
    section: str | None
    snippet: str
    score: float


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


def page_list(hit: ScoredChunk) -> list[int]:
    c = hit.chunk
    if c.page_start is None:
        return []
    return list(range(c.page_start, (c.page_end or c.page_start) + 1))


def source_header(n: int, hit: ScoredChunk) -> str:
    c = hit.chunk
    parts = [c.source]
    if c.title and c.title != c.source.rsplit(".", 1)[0]:
        parts.append(c.title)
    if c.pages_label():
        parts.append(c.pages_label())
    if c.section:
        parts.append(c.section)
    return f"[{n}] ({', '.join(parts)})"


def source_texts(hits: Sequence[ScoredChunk], max_chars: int) -> list[str]:
    """The text of each source that fits the prompt, in rank order, trimmed to `max_chars` in all.

    The best source is always shown; later ones only while more than 200 characters of room are left.
    """
    texts: list[str] = []
    used = 0
    for hit in hits:
        room = max_chars - used
        if room <= 200 and texts:
            break
        text = hit.chunk.text.strip()[:room]
        used += len(text)
        texts.append(text)
    return texts


def render_messages(
    prompt: Prompt, question: str, hits: Sequence[ScoredChunk], texts: Sequence[str]
) -> list[Message]:
    """System prompt + one user message: numbered sources (`texts[i]` shows `hits[i]`), then the question."""
    shown = zip(hits, texts, strict=False)  # texts may cover only the first hits
    blocks = [f"{source_header(n, hit)}\n{text}" for n, (hit, text) in enumerate(shown, start=1)]
    user = "Sources:\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question.strip()}\n\n{ANSWER_REMINDER}"
    return [{"role": "system", "content": prompt.text}, {"role": "user", "content": user}]


def build_messages(prompt: Prompt, question: str, hits: Sequence[ScoredChunk], max_chars: int) -> list[Message]:
    """The prompt for `question` over as many of `hits` as fit in `max_chars` of source text."""
    return render_messages(prompt, question, hits, source_texts(hits, max_chars))


def extract_citations(text: str, n_sources: int) -> tuple[str, list[int], list[int]]:
    """Keep `[n]` marks that point to a source; drop the others. Returns (text, cited, dropped)."""
    cited: list[int] = []
    dropped: list[int] = []

    def keep(match: re.Match[str]) -> str:
        numbers = [int(x) for x in re.split(r"\s*[,;]\s*", match.group(1))]
        valid = [x for x in numbers if 1 <= x <= n_sources]
        dropped.extend(x for x in numbers if x not in valid)
        for x in valid:
            if x not in cited:
                cited.append(x)
        return "".join(f"[{x}]" for x in valid)

    cleaned = _CITE.sub(keep, text)
    cleaned = re.sub(r"[ \t]+([.,;:])", r"\1", cleaned)
    return cleaned.strip(), cited, dropped


def make_citation(n: int, hit: ScoredChunk) -> Citation:
    text = " ".join(hit.chunk.text.split())
    return Citation(
        n=n, point_id=hit.point_id, source=hit.chunk.source, pages=page_list(hit), section=hit.chunk.section,
        snippet=text[:SNIPPET_CHARS], score=round(hit.score, 4),
    )


_FIGURE = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+|\d{3,}")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"])")


def attribute_figures(text: str, hits: Sequence[ScoredChunk]) -> tuple[str, list[int]]:
    """Cite, for each uncited sentence with figures, the best-ranked source that prints all of them.

    Small models often state a figure correctly but forget the [n]; a figure found verbatim in a source is
    strong evidence of where it came from. Sentences without figures stay uncited.
    """
    cited: list[int] = []
    out = []
    for sentence in _SENTENCE_END.split(text):
        figures = [f for f in _FIGURE.findall(sentence) if not re.fullmatch(r"(19|20)\d{2}", f)]
        source = next((n for n, hit in enumerate(hits, start=1)
                       if figures and all(f in hit.chunk.text for f in figures)), None)
        if source is not None:
            stripped = sentence.rstrip()
            end = len(stripped) - 1 if stripped.endswith((".", "!", "?")) else len(stripped)
            sentence = f"{stripped[:end]} [{source}]{stripped[end:]}"
            if source not in cited:
                cited.append(source)
        out.append(sentence)
    return " ".join(out), cited


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


@dataclass
class Answerer:
    retriever: Retriever
    llm_factory: Callable[[], LLM]
    retrieval: RetrievalSettings
    llm_settings: LLMSettings
    prompt: Prompt = field(default_factory=lambda: load_prompt("answer_v1"))

    def draft(
        self, question: str, collection: str, *, top_k: int | None = None, filters: Filters | None = None,
        min_score: float | None = None,
    ) -> Draft:
        """Retrieve and build the prompt; refuse here when the evidence is too weak to ask the LLM.

        `min_score` overrides the evidence gate (RETRIEVAL_MIN_SCORE); evaluation with given contexts passes
        0.0 to test the generator alone."""
        timings: dict[str, int] = {}
        started = time.perf_counter()
        found = self.retriever.search(question, collection, top_k or self.retrieval.top_k, filters)
        hits = list(found.hits)
        timings["retrieve"] = _ms(started)
        timings.update({f"retrieve_{k}": round(v) for k, v in found.timings_ms.items()})
        gate = self.retrieval.min_score if min_score is None else min_score
        if not hits or found.evidence < gate:
            log.info("refusing: nearest chunk scores %.3f, under %.3f", found.evidence, gate)
            refusal = Answer(REFUSAL_TEXT, [], hits, True, "evidence-gate", self.prompt.version, timings,
                             inferred_filters=found.inferred_filters)
            return Draft(hits, [], 0, timings, found.inferred_filters, refusal)
        texts = source_texts(hits, self.retrieval.context_chars)
        messages = render_messages(self.prompt, question, hits, texts)
        return Draft(hits, messages, len(texts), timings, found.inferred_filters)

    def stream(
        self, question: str, collection: str, *, top_k: int | None = None, filters: Filters | None = None,
        min_score: float | None = None, llm: LLM | None = None,
    ) -> Iterator[str | Answer]:
        """Yield the model's text as it is generated, then the finished `Answer` (always last).

        The streamed text is the model's raw reply; the final Answer holds the checked text (invalid
        citations removed, calculations evaluated) that is recorded and shown."""
        draft = self.draft(question, collection, top_k=top_k, filters=filters, min_score=min_score)
        if draft.refusal is not None:
            yield draft.refusal
            return
        yield from self.generate(draft, llm or self.llm_factory())

    def generate(self, draft: Draft, llm: LLM) -> Iterator[str | Answer]:
        """Run the LLM over a draft's prompt: text pieces, then the Answer."""
        timings = dict(draft.timings_ms)
        pieces: list[str] = []
        t = time.perf_counter()
        for piece in llm.stream(draft.messages, max_tokens=self.llm_settings.max_tokens,
                                temperature=self.llm_settings.temperature):
            if not pieces:
                timings["first_token"] = _ms(t)
            pieces.append(piece)
            yield piece
        timings["generate"] = _ms(t)
        answer = self.finish("".join(pieces), draft.hits, llm.name, timings, shown=draft.shown)
        yield replace(answer, inferred_filters=draft.inferred_filters)

    def answer(
        self, question: str, collection: str, *, top_k: int | None = None, filters: Filters | None = None,
        min_score: float | None = None, llm: LLM | None = None,
    ) -> Answer:
        """`stream`, collected: the finished Answer."""
        return final_answer(self.stream(question, collection, top_k=top_k, filters=filters, min_score=min_score,
                                        llm=llm))

    def finish(
        self, raw: str, hits: Sequence[ScoredChunk], model: str, timings: dict[str, int], shown: int | None = None
    ) -> Answer:
        """Turn the model's reply into an Answer; citations may only point to the `shown` sources."""
        if is_refusal(raw):
            return Answer(REFUSAL_TEXT, [], list(hits), True, model, self.prompt.version, timings)
        shown = len(hits) if shown is None else min(shown, len(hits))
        text, cited, dropped = extract_citations(raw, shown)
        warnings: list[str] = []
        if not cited:
            text, cited = attribute_figures(text, hits[:shown])
            if cited:
                warnings.append("the model cited no source; citations were added where the answer's figures "
                                "appear verbatim in a source")
        if dropped:
            log.warning("dropped citations to missing sources: %s", dropped)
            warnings.append(f"removed citations to sources that do not exist: {sorted(set(dropped))}")
        if not cited:
            warnings.append("the answer cites no source; check it against the sources before relying on it")
        citations = [make_citation(n, hits[n - 1]) for n in cited]
        return Answer(text, citations, list(hits), False, model, self.prompt.version, timings, warnings)


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
