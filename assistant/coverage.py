"""Does the evidence talk about what the question names? A refusal check that needs no model.

Questions about a company, regulator, place, period or rule that the indexed documents do not cover still
retrieve *something* (the nearest text about revenue, or about capital rules), and small models then answer
from the wrong document. `missing_terms` reads the names a question depends on (`salient_terms`: proper
names such as "Tesla" or "Singapore", acronyms such as "DFSA", years, rule numbers such as "42.7.3") and
returns those that none of the retrieved chunks mentions (text, title, file name, company, section and the
other metadata). The assistant refuses when one is missing; the eval measures how often that wrongly refuses
an answerable question (eval/refusal_calibrate.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import date, timedelta

from .chunks import ScoredChunk
from .query import _DATE, Facets, _date_key

# Capitalised words that name nothing: question words, function words, months, generic finance nouns.
_COMMON_WORDS = """
a an the and or of in on at to for from by with about under over into per as is are was were be been being do does
did has have had can could should would will shall may might must what which who whom whose when where why how
whether if than then that this these those there their its it they them we our you your i he she his her
list describe explain give tell name state show compare summarise summarize define according please also any all
each every some such other another same both either neither not no nor only more most less least much many
january february march april may june july august september october november december
jan feb mar apr jun jul aug sep sept oct nov dec q1 q2 q3 q4 h1 h2 fy ytd
quarter quarters year years fiscal annual interim period periods month months ended ending end total net gross
company companies firm firms person persons entity entities authorised authorized rule rules rulebook guidance
regulation regulations regulator regulatory section chapter part item note notes schedule appendix form
inc corp corporation ltd limited plc llc group holdings co
"""
_COMMON = frozenset(_COMMON_WORDS.split())
_ACRONYM = re.compile(r"\b[A-Z][A-Z0-9&]{1,7}s?\b")
_NAME = re.compile(r"\b[A-Z][a-zA-Z0-9&\-]+(?:\s+[A-Z][a-zA-Z0-9&\-]+)*")
_DEFINED = re.compile(r"\(\s*[A-Z][A-Za-z&]{1,7}\s*\)")
_YEAR = re.compile(r"\b(?:19|20)\d{2}\b")
_RULE = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){2,}\b")
_FORM = re.compile(r"\b(?:10-[QK]|8-K|20-F|S-1)(?:s|'s)?\b", re.IGNORECASE)
_FILLERS = r"(?:(?:and|of|the|for|on|in|&)\s+)*"


def salient_terms(question: str) -> list[str]:
    """Names, acronyms, years and rule numbers the question depends on, in order, without duplicates."""
    text = _FORM.sub(" ", question).replace("*", " ")
    text = _DEFINED.sub(" ", text)  # "Enhanced Due Diligence (EDD)": the question defines the acronym
    terms: list[str] = []

    def add(term: str) -> None:
        if term and term.lower() not in (t.lower() for t in terms):
            terms.append(term)

    for m in _NAME.finditer(text):
        raw = re.split(r"\s+", m.group(0))
        before = text[: m.start()].rstrip()
        starts_sentence = not before or before.endswith((".", "?", "!", ":", '"', "("))
        # a sentence's first word is capitalised anyway: a name only when an acronym or a possessive ("Tesla's")
        if starts_sentence and not _ACRONYM.fullmatch(raw[0]) and not raw[0].endswith(("'s", "’s")):
            raw = raw[1:]
        parts = [p for w in raw for p in w.split("-") if p[:1].isupper()]
        words = [w.removesuffix("'s").removesuffix("’s") for w in parts]
        words = [w for w in words if w and w.lower() not in _COMMON]
        for w in words:
            if not w[0].isdigit():
                add(w)
    for pattern in (_YEAR, _RULE):
        for m in pattern.finditer(text):
            add(m.group(0))
    return terms


def _haystack(hits: Iterable[ScoredChunk]) -> str:
    parts: list[str] = []
    for hit in hits:
        c = hit.chunk
        parts += [c.text, c.source, c.title or "", c.section or ""]
        parts += [str(v) for v in c.extra.values() if isinstance(v, str | int)]
        parts += [str(x) for v in c.extra.values() if isinstance(v, list) for x in v]
    return " ".join(parts).lower()


def _expansion(acronym: str) -> re.Pattern[str]:
    """Words whose initials spell the acronym: "R&D" -> research and development, "IoT" -> internet of things."""
    letters = [c.lower() for c in acronym if c.isalpha()]
    words = [rf"{c}[a-z]*" for c in letters]
    return re.compile(r"(?<![a-z])" + rf"[\s,\-]+{_FILLERS}".join(words) + r"(?![a-z])")


def _mentioned(term: str, haystack: str) -> bool:
    t = term.lower()
    if re.search(rf"(?<![a-z0-9]){re.escape(t)}(?![a-z0-9])", haystack):
        return True
    bare = t[:-1] if t.endswith("s") and len(t) > 3 else t
    if bare != t and re.search(rf"(?<![a-z0-9]){re.escape(bare)}(?![a-z0-9])", haystack):  # "ETFs"
        return True
    is_acronym = sum(c.isupper() for c in term) >= 2 and 2 <= sum(c.isalpha() for c in bare) <= 6
    return is_acronym and _expansion(term.removesuffix("s") if bare != t else term).search(haystack) is not None


def _named(term: str, vocabulary: frozenset[str]) -> bool:
    """Whether the collection's document names use `term`: acronyms as written ("US" is not "us")."""
    if sum(c.isupper() for c in term) >= 2:
        return term in vocabulary
    return term.lower() in {w.lower() for w in vocabulary}


def covered_years(facets: Facets) -> set[int] | None:
    """Years a collection of filings reports on: its periods' years and the comparative years before them
    (a 10-Q compares with the prior year, a 10-K shows three). None when no document has a period."""
    years: set[int] = set()
    for doc in facets.documents:
        found = {int(y) for text in (str(doc.fiscal_year or ""), doc.period or "", *doc.quarters)
                 for y in _YEAR.findall(text)}
        back = 2 if (doc.doc_kind or "").upper() == "10-K" else 1
        years |= {y - k for y in found for k in range(back + 1)}
    return years or None


PERIOD_SLACK_DAYS = 7  # fiscal quarters end on a weekday: a year earlier is 364 or 371 days back


def uncovered_dates(question: str, facets: Facets) -> list[str]:
    """Period-end dates the question names ("the quarter ended October 27, 2024") that are neither a filing's
    period end nor, within `PERIOD_SLACK_DAYS`, the same date a year earlier (a 10-Q's comparative column).
    Empty when the collection's documents carry no period dates."""
    ends = [d for p in facets.values("period") if (d := _as_date(str(p))) is not None]
    if not ends:
        return []
    known = ends + [e - timedelta(days=365) for e in ends]
    out = []
    for m in _DATE.finditer(question):
        day = _as_date(m.group(0))
        if day is not None and all(abs((day - k).days) > PERIOD_SLACK_DAYS for k in known):
            out.append(m.group(0))
    return out


def _as_date(text: str) -> date | None:
    key = _date_key(text)
    if key is None:
        return None
    try:
        return date(*key)
    except ValueError:
        return None


def missing_terms(question: str, hits: Sequence[ScoredChunk], facets: Facets | None = None) -> list[str]:
    """The salient terms of `question` that none of `hits` mentions.

    With the collection's `facets`: a year must be one the filings report on (`covered_years`), a rule number
    one the collection has, and a name the collection's own document names or titles use ("ADGM", "MIR")
    counts as mentioned."""
    haystack = _haystack(hits)
    years = covered_years(facets) if facets is not None else None
    missing = []
    for term in salient_terms(question):
        if _YEAR.fullmatch(term) and years is not None:
            covered = int(term) in years
        elif _RULE.fullmatch(term) and facets is not None and facets.rules:
            covered = term in facets.rules
        else:
            covered = _mentioned(term, haystack) or (facets is not None and _named(term, facets.vocabulary))
        if not covered:
            missing.append(term)
    if facets is not None:
        missing += [d for d in uncovered_dates(question, facets) if not any(y in d for y in missing)]
    return missing
