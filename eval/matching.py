"""Evidence matching: does a retrieved chunk hold an evidence item? The rule is in eval/README.md.

A chunk matches an evidence item when every criterion the item gives holds:

- source: `fnmatch.fnmatchcase(chunk.source, evidence.source)` (case-sensitive glob on the file name);
- page: the chunk's page range covers the page (a chunk without pages never matches a paged item);
- text: `TEXT_OVERLAP` of the evidence's distinct word pairs (consecutive words, see `word_pairs`) appear
  in the chunk, or, for a chunk of at least `MIN_CHUNK_PAIRS` distinct pairs, `TEXT_OVERLAP` of the
  chunk's pairs appear in the evidence (the chunk is a part of a long gold passage). Pairs, not single
  words: a long chunk of the same rulebook holds most single words of any short rule;
- section: used only when the item has neither page nor text; then the chunk's section must contain the
  section number, or a line of its text start with it, at a boundary (`18.8.2` matches `18.8.2` and
  `18.8.2.(a)`, not `18.8.20` nor `1.18.8.2`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fnmatch import fnmatchcase
from functools import lru_cache
from itertools import pairwise

from assistant.chunks import Chunk

from .questions import Evidence

TEXT_OVERLAP = 0.6  # share of distinct word pairs that must be found on the other side
MIN_TOKEN_CHARS = 2  # shorter tokens ("a", "(b)", "5") say nothing about where a passage lies
MIN_CHUNK_PAIRS = 8  # a chunk needs this many distinct word pairs to match as a part of the evidence

_TOKEN = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lowercased alphanumeric runs of at least `MIN_TOKEN_CHARS` characters, in order."""
    return [t for t in _TOKEN.findall(text.lower()) if len(t) >= MIN_TOKEN_CHARS]


def tokens(text: str) -> frozenset[str]:
    """Distinct words of `text` (see `words`)."""
    return frozenset(words(text))


@lru_cache(maxsize=4096)
def word_pairs(text: str) -> frozenset[str]:
    """Distinct pairs of consecutive words, e.g. "paid in full" -> {"paid in", "in full"}."""
    w = words(text)
    return frozenset(f"{a} {b}" for a, b in pairwise(w))


def coverage(part: frozenset[str], whole: frozenset[str]) -> float:
    """Share of `part`'s items that are in `whole` (0.0 for an empty `part`)."""
    return len(part & whole) / len(part) if part else 0.0


def source_matches(evidence: Evidence, chunk: Chunk) -> bool:
    return fnmatchcase(chunk.source, evidence.source)


def page_matches(evidence: Evidence, chunk: Chunk) -> bool:
    if evidence.page is None:
        return True
    if chunk.page_start is None:
        return False
    end = chunk.page_end if chunk.page_end is not None else chunk.page_start
    return chunk.page_start <= evidence.page <= end


def text_matches(evidence: Evidence, chunk: Chunk) -> bool:
    if not evidence.text:
        return True
    gold = word_pairs(evidence.text)
    if not gold:  # fewer than two words: the word itself must be in the chunk; none at all: silent
        single = tokens(evidence.text)
        return not single or single <= tokens(chunk.text)
    got = word_pairs(chunk.text)
    if coverage(gold, got) >= TEXT_OVERLAP:
        return True
    return len(got) >= MIN_CHUNK_PAIRS and coverage(got, gold) >= TEXT_OVERLAP


def _section_patterns(section: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(anywhere in a heading path, at the start of a text line), both ending at a boundary."""
    number = re.escape(section.strip())
    return (
        re.compile(rf"(?<![0-9A-Za-z.]){number}(?![0-9A-Za-z])", re.IGNORECASE),
        re.compile(rf"^[ \t]*{number}(?![0-9A-Za-z])", re.IGNORECASE | re.MULTILINE),
    )


def section_matches(evidence: Evidence, chunk: Chunk) -> bool:
    """Only decides when the item has a section but neither page nor text; otherwise informative."""
    if not evidence.section or not evidence.section.strip() or evidence.page is not None or evidence.text:
        return True
    in_heading, at_line_start = _section_patterns(evidence.section)
    return bool(in_heading.search(chunk.section or "") or at_line_start.search(chunk.text))


def matches(evidence: Evidence, chunk: Chunk) -> bool:
    """True when `chunk` holds `evidence` under every criterion the evidence gives."""
    return (
        source_matches(evidence, chunk)
        and page_matches(evidence, chunk)
        and text_matches(evidence, chunk)
        and section_matches(evidence, chunk)
    )


def match_ranks(evidence: Sequence[Evidence], chunks: Sequence[Chunk]) -> list[list[int]]:
    """For each retrieved chunk, in rank order, the indices of the evidence items it matches."""
    return [[i for i, item in enumerate(evidence) if matches(item, chunk)] for chunk in chunks]
