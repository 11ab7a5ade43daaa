"""Answering: retrieve, build a prompt with numbered sources, generate, keep only valid citations.

The evidence gate comes first: when the best chunk scores under `RETRIEVAL_MIN_SCORE`, the LLM is not
asked at all and the assistant says the indexed documents do not contain the answer.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .chunks import ScoredChunk
from .llm import LLM, Message, complete
from .prompts import Prompt, load_prompt
from .retrieval import Retriever
from .settings import LLMSettings, RetrievalSettings
from .store import Filters

log = logging.getLogger(__name__)

NOT_FOUND_MARK = "NOT_FOUND"
REFUSAL_TEXT = "I could not find the answer to this question in the indexed documents."
_CITE = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")
SNIPPET_CHARS = 400


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


def build_messages(prompt: Prompt, question: str, hits: Sequence[ScoredChunk], max_chars: int) -> list[Message]:
    """System prompt + one user message holding the numbered sources and the question."""
    blocks: list[str] = []
    used = 0
    for n, hit in enumerate(hits, start=1):
        text = hit.chunk.text.strip()
        room = max_chars - used
        if room <= 200 and blocks:
            break
        text = text[:room]
        used += len(text)
        blocks.append(f"{source_header(n, hit)}\n{text}")
    user = "Sources:\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question.strip()}"
    return [{"role": "system", "content": prompt.text}, {"role": "user", "content": user}]


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


def is_refusal(text: str) -> bool:
    return NOT_FOUND_MARK in text.upper().replace(" ", "_") or not text.strip()


@dataclass
class Answerer:
    retriever: Retriever
    llm_factory: Callable[[], LLM]
    retrieval: RetrievalSettings
    llm_settings: LLMSettings
    prompt: Prompt = field(default_factory=lambda: load_prompt("answer_v1"))

    def answer(
        self, question: str, collection: str, *, top_k: int | None = None, filters: Filters | None = None
    ) -> Answer:
        timings: dict[str, int] = {}
        started = time.perf_counter()
        found = self.retriever.search(question, collection, top_k or self.retrieval.top_k, filters)
        hits = found.hits
        timings["retrieve"] = _ms(started)
        llm = self.llm_factory()
        if not hits or found.evidence < self.retrieval.min_score:
            log.info("refusing: nearest chunk scores %.3f, under %.3f", found.evidence, self.retrieval.min_score)
            return Answer(REFUSAL_TEXT, [], hits, True, llm.name, self.prompt.version, timings)
        messages = build_messages(self.prompt, question, hits, self.retrieval.context_chars)
        t = time.perf_counter()
        raw = complete(llm, messages, max_tokens=self.llm_settings.max_tokens,
                       temperature=self.llm_settings.temperature)
        timings["generate"] = _ms(t)
        return self.finish(raw, hits, llm.name, timings)

    def finish(self, raw: str, hits: Sequence[ScoredChunk], model: str, timings: dict[str, int]) -> Answer:
        if is_refusal(raw):
            return Answer(REFUSAL_TEXT, [], list(hits), True, model, self.prompt.version, timings)
        text, cited, dropped = extract_citations(raw, len(hits))
        warnings: list[str] = []
        if dropped:
            log.warning("dropped citations to missing sources: %s", dropped)
            warnings.append(f"removed citations to sources that do not exist: {sorted(set(dropped))}")
        if not cited:
            warnings.append("the answer cites no source; check it against the sources before relying on it")
        citations = [make_citation(n, hits[n - 1]) for n in cited]
        return Answer(text, citations, list(hits), False, model, self.prompt.version, timings, warnings)


def _ms(since: float) -> int:
    return int((time.perf_counter() - since) * 1000)
