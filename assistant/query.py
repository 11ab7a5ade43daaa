"""Query-side filters: the companies, fiscal periods, document kinds and rulebooks a question names.

`infer_filters(question, facets)` reads a question against what a collection holds (`Facets`, collected from
its chunks by `collection_facets`) and returns payload filters for `VectorStore.search`, or None when it
recognises nothing. It only ever returns values the collection holds, and never a combination that matches
no document: parts are added in order (company, date, period, kind, family) while some document still passes.

What it recognises, each kind switchable in `Inference` so that its effect can be measured:
- companies: a registrant's name without its legal suffix, capitalised as a name ("Apple" for "Apple Inc.",
  "Amazon" for "AMAZON.COM, INC.", "Nvidia" for "NVIDIA CORPORATION"); tickers: "AAPL" as an upper-case word.
  Filters on `ticker` where the documents have one, else on `company`; several companies give a list.
- periods: "Q3 2023", "2023 Q3", "third quarter of 2023" match `quarters` (the fiscal, calendar or file-name
  label of a filing's quarter, see ingest.loading); "Q3 fiscal 2023", "third quarter of fiscal year 2024"
  match `fiscal_year` + `fiscal_quarter`; "FY2023", "fiscal 2023" match `fiscal_year`.
- dates: a period end printed on a filing's cover ("the quarter ended July 1, 2023") matches `period`.
- doc kinds: a form ("10-Q", "Form 10-K"); with `rulebooks`, also the word "rulebook".
- families: a rulebook's acronym ("COBS") or name ("Conduct of Business").
Families and rulebooks are off by default. On the ADGM questions (obliqa_dev.jsonl) a family filter kept the
evidence of 77 of the 187 questions it applied to (a rulebook named in a question is mostly explained in a
guidance document), a "rulebook" filter 17 of 20. Companies, periods and forms kept it for all 195 sec-10q
questions while letting 14% of the documents through.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .chunks import Chunk
from .store import FilterValue

_LEGAL_SUFFIXES = {"inc", "incorporated", "corp", "corporation", "co", "company", "ltd", "limited", "plc", "llc",
                   "lp", "sa", "ag", "nv", "holdings", "group"}
_MONTHS = {name[:3].lower(): number for number, name in enumerate(
    ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
     "December"), start=1)}
_ORDINALS = {"first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4, "4th": 4}
# ADGM rulebooks by the names people call them (the acronym is matched too).
RULEBOOK_NAMES = {
    "AML": ("Anti-Money Laundering and Sanctions Rules", "Anti-Money Laundering Rulebook", "AML Rulebook"),
    "CIB": ("Captive Insurance Business",),
    "CMC": ("Code of Market Conduct",),
    "COBS": ("Conduct of Business",),
    "FEES": ("Fees Rules", "Fees Rulebook"),
    "FP": ("Fund Passporting Rules",),
    "FUNDS": ("Fund Rules", "Funds Rules"),
    "GEN": ("General Rulebook",),
    "GLO": ("Glossary",),
    "GPM": ("Guidance and Policies Manual",),
    "IFR": ("Islamic Finance Rules",),
    "MIR": ("Market Infrastructure Rules", "Market Infrastructure Rulebook"),
    "MKT": ("Market Rules", "Markets Rules"),
    "PRU": ("Prudential Rules", "Prudential Rulebook", "Prudential – Investment, Insurance Intermediation"),
}

_FISCAL = r"(?P<fiscal>FY\s?'?|fiscal\s+(?:year\s+)?)"
_YEAR = r"(?P<year>(?:19|20)\d\d)"
_PERIODS = [
    re.compile(r"(?<![\w-])Q(?P<quarter>[1-4])(?:\s+of)?\s+" + _FISCAL + r"?" + _YEAR + r"(?!\w)", re.I),
    re.compile(r"(?<![\w-])" + _FISCAL + r"?" + _YEAR + r"\s*Q(?P<quarter>[1-4])(?!\w)", re.I),
    re.compile(r"(?<![\w-])Q(?P<quarter>[1-4])\s*" + r"(?P<fiscal>FY\s?'?)(?P<year>\d\d)(?!\w)", re.I),
    re.compile(r"\b(?P<fiscal_before>fiscal\s+)?(?P<ordinal>first|second|third|fourth|1st|2nd|3rd|4th)\s+"
               r"(?P<fiscal_mid>fiscal\s+)?quarter(?:\s+of|,)?\s+" + _FISCAL + r"?" + _YEAR + r"(?!\w)", re.I),
]
_FISCAL_YEAR = re.compile(r"(?<![\w-])(?:FY\s?'?(?P<short>\d\d)|" + _FISCAL + _YEAR + r")(?!\w)", re.I)
_DATE = re.compile(r"\b(?P<month>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.?\s+(?P<day>\d{1,2}),?\s+"
                   r"(?P<year>(?:19|20)\d\d)\b", re.I)
_FORMS = re.compile(r"(?<![\w-])(?:Form\s+)?(10-?K|10-?Q|8-?K|20-?F|40-?F|6-?K)(?![\w-])", re.I)
_RULEBOOK = re.compile(r"\brule\s?books?\b", re.I)


@dataclass(frozen=True)
class DocumentFacets:
    """The filterable metadata of one document."""

    source: str
    doc_kind: str | None = None
    company: str | None = None
    ticker: str | None = None
    fiscal_year: int | None = None
    fiscal_quarter: str | None = None
    quarters: tuple[str, ...] = ()
    period: str | None = None
    family: str | None = None

    def matches(self, filters: Mapping[str, FilterValue]) -> bool:
        """Whether this document passes `filters`, as the store would decide (a list matches any value)."""
        return all(value_matches(getattr(self, key, None), wanted) for key, wanted in filters.items())


def value_matches(have: Any, wanted: Any) -> bool:
    """Whether a field's value (or any of its values) is the filter's value (or one of its values)."""
    have_values = set(have) if isinstance(have, list | tuple) else {have}
    wanted_values = set(wanted) if isinstance(wanted, list | tuple) else {wanted}
    return bool(have_values & wanted_values)


@dataclass(frozen=True)
class Facets:
    """What a collection holds, per document; `values(field)` gives the distinct values of a field."""

    documents: tuple[DocumentFacets, ...] = ()
    rules: frozenset[str] = frozenset()  # rule/section numbers the chunks carry, with their parents: "3.2.4", "3.2"
    vocabulary: frozenset[str] = frozenset()  # words of the documents' names, titles and companies, as written

    def values(self, name: str) -> set[Any]:
        found: set[Any] = set()
        for doc in self.documents:
            value = getattr(doc, name)
            if isinstance(value, tuple):
                found.update(value)
            elif value is not None:
                found.add(value)
        return found

    def matching(self, filters: Mapping[str, FilterValue]) -> list[DocumentFacets]:
        return [doc for doc in self.documents if doc.matches(filters)]


def collection_facets(chunks: Iterable[Chunk]) -> Facets:
    """The facets of the documents `chunks` belong to (one entry per doc_id, read from its first chunk)."""
    documents: dict[str, DocumentFacets] = {}
    rules: set[str] = set()
    words: set[str] = set()
    for chunk in chunks:
        for number in _RULE_NUMBER.findall(chunk.section or ""):
            parts = number.split(".")
            rules.update(".".join(parts[:n]) for n in range(2, len(parts) + 1))
        if chunk.doc_id in documents:
            continue
        for text in (chunk.source, chunk.title, chunk.extra.get("company"), chunk.extra.get("ticker"),
                     chunk.extra.get("family")):
            if isinstance(text, str):
                words.update(re.findall(r"[A-Za-z][A-Za-z0-9&]*", text))
        extra = chunk.extra
        year = extra.get("fiscal_year")
        documents[chunk.doc_id] = DocumentFacets(
            source=chunk.source,
            doc_kind=_text(extra.get("doc_kind")),
            company=_text(extra.get("company")),
            ticker=_text(extra.get("ticker")),
            fiscal_year=year if isinstance(year, int) and not isinstance(year, bool) else None,
            fiscal_quarter=_text(extra.get("fiscal_quarter")),
            quarters=tuple(str(q) for q in extra.get("quarters") or ()),
            period=_text(extra.get("period")),
            family=_text(extra.get("family")),
        )
    return Facets(tuple(documents[k] for k in sorted(documents)), frozenset(rules), frozenset(words))


_RULE_NUMBER = re.compile(r"\b\d{1,3}(?:\.\d{1,3})+\b")


@dataclass(frozen=True)
class Inference:
    """Which kinds of filters `infer_filters` may infer."""

    companies: bool = True
    tickers: bool = True
    periods: bool = True
    dates: bool = True
    doc_kinds: bool = True
    rulebooks: bool = False
    families: bool = False
    # Rulebook names beyond the acronym, per family (ADGM's by default).
    rulebook_names: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(RULEBOOK_NAMES))


def infer_filters(question: str, facets: Facets, inference: Inference | None = None) -> dict[str, FilterValue] | None:
    """Payload filters for what `question` names among `facets`, or None when it names nothing recognisable."""
    inference = inference or Inference()
    parts: list[dict[str, FilterValue]] = []
    if inference.companies or inference.tickers:
        parts.append(_company_filter(question, facets, inference))
    if inference.dates:
        parts.append(_date_filter(question, facets))
    if inference.periods:
        parts.append(_period_filter(question, facets))
    if inference.doc_kinds or inference.rulebooks:
        parts.append(_kind_filter(question, facets, inference))
    if inference.families:
        parts.append(_family_filter(question, facets, inference.rulebook_names))
    filters: dict[str, FilterValue] = {}
    for part in parts:
        if part and facets.matching({**filters, **part}):
            filters.update(part)
    return filters or None


def combine(inferred: Mapping[str, FilterValue] | None, given: Mapping[str, FilterValue] | None,
            facets: Facets) -> tuple[dict[str, FilterValue] | None, dict[str, FilterValue] | None]:
    """(filters to search with, inferred filters applied): the caller's filters always hold; inferred ones are
    added where they do not contradict them (some document still passes both), else dropped."""
    if not inferred:
        return (dict(given) if given else None), None
    known = {k: v for k, v in (given or {}).items() if k in DocumentFacets.__dataclass_fields__}
    if not facets.matching({**inferred, **known}):
        return (dict(given) if given else None), None
    return {**inferred, **(given or {})}, dict(inferred)


# --- companies ------------------------------------------------------------------------------------------------


def company_aliases(registrant: str) -> set[str]:
    """Ways a question may name a registrant: "AMAZON.COM, INC." → {"amazon.com", "amazon"} (lower case)."""
    words = re.sub(r"[,()]", " ", registrant).split()
    while words and words[-1].lower().strip(".") in _LEGAL_SUFFIXES:
        words.pop()
    if words and words[0].lower() == "the":
        words.pop(0)
    aliases = set()
    if words:
        name = " ".join(words).lower()
        aliases.add(name)
        if name.endswith(".com"):
            aliases.add(name.removesuffix(".com"))
    aliases.add(" ".join(registrant.split()).lower())
    return {a for a in aliases if len(a) >= 3}


def _company_filter(question: str, facets: Facets, inference: Inference) -> dict[str, FilterValue]:
    named: set[str] = set()  # companies (registrant names) the question names
    registrants = facets.values("company")
    if inference.companies:
        for registrant in registrants:
            if any(_names(question, alias) for alias in company_aliases(registrant)):
                named.add(registrant)
    if inference.tickers:
        for doc in facets.documents:
            if doc.ticker and doc.company and _names_ticker(question, doc.ticker):
                named.add(doc.company)
    if not named:
        return {}
    docs = [d for d in facets.documents if d.company in named]
    tickers = {d.ticker for d in docs}
    if None not in tickers:
        return {"ticker": _one_or_list(sorted(t for t in tickers if t))}
    # the same company may be spelled otherwise in other documents ("Apple Inc." / "APPLE INC.")
    aliases = set().union(*(company_aliases(c) for c in named))
    spellings = {r for r in registrants if company_aliases(r) & aliases}
    return {"company": _one_or_list(sorted(spellings))}


def _names(question: str, alias: str) -> bool:
    """`alias` (lower case) appears as a name: whole words, any case but all-lower ("apple" is fruit)."""
    return any(m.group(0) != m.group(0).lower() for m in _name_pattern(alias).finditer(question))


@functools.lru_cache(maxsize=4096)
def _name_pattern(alias: str) -> re.Pattern[str]:
    words = r"\s+".join(re.escape(w) for w in alias.split())
    return re.compile(r"(?<![\w.-])" + words + r"(?:['’]s)?(?![\w-])", re.I)


def _names_ticker(question: str, ticker: str) -> bool:
    prefix = r"\$" if len(ticker) <= 2 else r"\$?"  # "$GE", not the word "GE"
    return re.search(r"(?<![\w$])" + prefix + re.escape(ticker) + r"(?![\w])", question) is not None


# --- periods --------------------------------------------------------------------------------------------------


def _period_filter(question: str, facets: Facets) -> dict[str, FilterValue]:
    quarters: set[tuple[int, int, bool]] = set()  # (year, quarter, said "fiscal")
    rest = question
    for pattern in _PERIODS:
        for m in pattern.finditer(rest):
            groups = m.groupdict()
            quarter = int(groups["quarter"]) if groups.get("quarter") else _ORDINALS[groups["ordinal"].lower()]
            year = int(groups["year"])
            year = year + 2000 if year < 100 else year
            fiscal = any(groups.get(k) for k in ("fiscal", "fiscal_before", "fiscal_mid"))
            quarters.add((year, quarter, fiscal))
        rest = pattern.sub(" ", rest)
    years = sorted({_full_year(m) for m in _FISCAL_YEAR.finditer(rest)})
    if quarters and years:
        return {}  # "Q3 2023 against fiscal 2022": no single reading
    if years:
        present = facets.values("fiscal_year")
        found = [y for y in years if y in present]
        return {"fiscal_year": _one_or_list(found)} if found else {}
    if not quarters:
        return {}
    if len(quarters) == 1 and next(iter(quarters))[2]:
        year, quarter, _ = next(iter(quarters))
        return {"fiscal_year": year, "fiscal_quarter": f"Q{quarter}"}
    labels = sorted({f"{y}-Q{q}" for y, q, _ in quarters} & facets.values("quarters"))
    return {"quarters": _one_or_list(labels)} if labels else {}


def _full_year(m: re.Match[str]) -> int:
    return 2000 + int(m.group("short")) if m.group("short") else int(m.group("year"))


def _date_filter(question: str, facets: Facets) -> dict[str, FilterValue]:
    by_date = {_date_key(p): p for p in facets.values("period")}
    found = sorted({by_date[key] for m in _DATE.finditer(question) if (key := _date_key(m.group(0))) in by_date})
    return {"period": _one_or_list(found)} if found else {}


def _date_key(text: str) -> tuple[int, int, int] | None:
    m = _DATE.search(text)
    if m is None:
        return None
    return int(m.group("year")), _MONTHS[m.group("month")[:3].lower()], int(m.group("day"))


# --- kinds and rulebooks --------------------------------------------------------------------------------------


def _kind_filter(question: str, facets: Facets, inference: Inference) -> dict[str, FilterValue]:
    kinds = set()
    if inference.doc_kinds:
        kinds = {re.sub(r"^(\d+)-?", r"\1-", m.group(1).upper()) for m in _FORMS.finditer(question)}
    if inference.rulebooks and _RULEBOOK.search(question):
        kinds.add("rulebook")
    found = sorted(kinds & facets.values("doc_kind"))
    return {"doc_kind": _one_or_list(found)} if found else {}


def _family_filter(question: str, facets: Facets, names: Mapping[str, tuple[str, ...]]) -> dict[str, FilterValue]:
    found = []
    for family in sorted(facets.values("family")):
        acronym = re.search(r"(?<![\w-])" + re.escape(family) + r"(?![\w-])", question)
        if acronym or any(_names(question, name.lower()) for name in names.get(family, ())):
            found.append(family)
    return {"family": _one_or_list(found)} if found else {}


def _one_or_list(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else values


def _text(value: object) -> str | None:
    return str(value) if value not in (None, "") else None
