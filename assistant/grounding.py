"""Grounding checks on a finished answer: is every figure backed by the sources it cites?

A number in the answer is *supported* when one of the cited chunks states it (the agreement of
`assistant.numbers.same_number`: scale words, roundings such as "$81.8 billion" for "81,797" in a table
in millions), or when simple arithmetic over two figures of those chunks gives it (sum, difference,
ratio, percentage, percentage change), or when the product computed it itself (`assistant.calc`).
Anything else is reported so that the response can warn and the eval can count it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

from .numbers import Number, find_numbers, same_number
from .sources import CITE, SENTENCE_END

MAX_SOURCE_NUMBERS = 80  # pairs grow quadratically; chunks hold far fewer figures than this
REL_TOL = 0.005
# Small counts ("3 months", "2 directors") and list numbering are not the figures users must trust.
MIN_CHECKED = 10.0


def _derived(values: Sequence[float]) -> Iterable[float]:
    for a, b in itertools.permutations(values, 2):
        yield a + b
        yield a - b
        if b:
            yield a / b
            yield a / b * 100
            yield (a - b) / b * 100


def _close(x: float, y: float, decimals: int) -> bool:
    if abs(x) == abs(y):
        return True
    tolerance = max(REL_TOL * max(abs(x), abs(y)), 0.5 * 10.0 ** (-decimals))
    return abs(abs(x) - abs(y)) <= tolerance


def _rescaled(number: Number, source: Number) -> bool:
    """A scaled answer figure against a table figure without a scale word ("in millions" is said once)."""
    if number.scale == 1.0 or source.scale != 1.0 or number.percent or source.percent:
        return False
    wanted = abs(number.value) * number.scale
    tolerance = max(REL_TOL * wanted, 0.5 * 10.0 ** (-number.decimals) * number.scale)
    return any(abs(abs(source.value) * unit - wanted) <= tolerance for unit in (1e3, 1e6, 1e9))


def is_supported(number: Number, sources: Sequence[Number], computed: Sequence[float] = ()) -> bool:
    if any(same_number(src, number) or _rescaled(number, src) for src in sources):
        return True
    value = abs(number.value)
    if any(_close(value, c, number.decimals) for c in computed):
        return True
    raw = [s.value for s in sources[:MAX_SOURCE_NUMBERS]]
    return any(_close(value, d, number.decimals) for d in _derived(raw))


def _checked(number: Number) -> bool:
    return abs(number.value) >= MIN_CHECKED or number.percent or number.decimals > 0


def checked_numbers(answer: str, excluding: Sequence[str] = ()) -> list[str]:
    """The figures of `answer` the numeric check looks at, as written, less those in `excluding`."""
    return [n.text for n in find_numbers(answer) if _checked(n) and n.text not in excluding]


def unsupported_numbers(answer: str, source_texts: Sequence[str], computed: Sequence[float] = ()) -> list[str]:
    """The figures of `answer` that the sources neither state nor give by simple arithmetic, as written."""
    sources = [n for text in source_texts for n in find_numbers(text)]
    out: list[str] = []
    for number in find_numbers(answer):
        if not _checked(number):
            continue
        if not is_supported(number, sources, computed) and number.text not in out:
            out.append(number.text)
    return out


def has_cited_statement(answer: str) -> bool:
    """Whether some sentence cites a source without stating a figure (a claim the numeric check cannot judge)."""
    return any(CITE.search(sentence) and not any(_checked(n) for n in find_numbers(sentence))
               for sentence in SENTENCE_END.split(answer))


def uncited_claims(answer: str) -> list[str]:
    """Sentences that state a figure but cite no source."""
    out = []
    for sentence in SENTENCE_END.split(answer):
        if CITE.search(sentence):
            continue
        if any(_checked(n) for n in find_numbers(sentence)):
            out.append(sentence.strip())
    return out
