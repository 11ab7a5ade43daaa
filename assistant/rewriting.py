"""Follow-up questions rewritten into standalone ones, from a conversation's history.

`Rewriter(mode)`: `rewrite(question, history) -> Rewrite`, the standalone question that retrieval and the
  LLM see, and which step made it (`Rewrite.method`):
  1. "unchanged": not a follow-up. It has no opener ("and …", "what about …"), no pronoun without a referent
     in the question ("it", "its", "that quarter"), no relative period ("the previous quarter"), and it names
     a company, rule, rulebook or category of its own or is longer than a fragment of `MAX_FRAGMENT_WORDS`.
  2. "rules": the previous turn's entities (company, period, form, category, rule, rulebook, read as
     `assistant.query` reads them) are carried over. A follow-up that only names new values ("what about
     Intel?", "and in the previous quarter?") has them put in place of the old ones in the previous question;
     any other has its pronouns replaced and the entities it lacks appended. Relative periods move the
     previous period: a quarter or year label by arithmetic, a period end date to the collection's filing of
     that company for the moved fiscal quarter (`facets`), else by 13 / 52 weeks (three / twelve months from
     a calendar month end).
  3. "llm" (mode "llm", only where the rules leave a reference unresolved): the generator rewrites the
     question with prompt `rewrite_v1`. Its output is used when it is one question on one line, at most three
     times as long as its inputs, not an earlier question again, keeps a word of the follow-up and names what
     the rules carried over; else the rules' rewrite is.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Literal

from .conversations import Turn
from .errors import ComponentUnavailable
from .llm import LLM, Message, complete
from .prompts import load_prompt
from .query import _DATE, _FISCAL_YEAR, _FORMS, _MONTHS, _ORDINALS, _PERIODS, RULEBOOK_NAMES, Facets, company_aliases

log = logging.getLogger(__name__)

RewriteMode = Literal["rules", "llm", "off"]

Slot = Literal["company", "period", "form", "category", "rule", "rulebook"]
FILING_SLOTS: tuple[Slot, ...] = ("company", "period", "form")
REGULATION_SLOTS: tuple[Slot, ...] = ("category", "rule", "rulebook")


@dataclass(frozen=True)
class Rewrite:
    question: str
    method: str  # "unchanged", "rules", "llm"
    prompt_version: str | None = None  # of the LLM's prompt, when method is "llm"


_MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
                "November", "December")


@dataclass(frozen=True)
class Period:
    """A period a question names: a period end date ("the quarter ended July 1, 2023"), a quarter ("Q3 2023",
    "Q3 fiscal 2023") or a year ("2023", "fiscal 2023")."""

    year: int
    quarter: int | None = None
    fiscal: bool = False
    day: date | None = None

    def text(self) -> str:
        fy = "fiscal " if self.fiscal else ""
        if self.day is not None:
            return f"the quarter ended {_date_text(self.day)}"
        if self.quarter is not None:
            return f"Q{self.quarter} {fy}{self.year}"
        return f"{fy}{self.year}"


@dataclass(frozen=True)
class Mention:
    slot: Slot
    start: int
    end: int
    text: str
    period: Period | None = None


_RULE = re.compile(r"(?:\b(?:Rule|Section|Chapter|Part|paragraph)s?\s+\d+(?:\.\d+)*|(?<![\w.$])\d+\.\d+\.\d+(?:\.\d+)*)"
                   r"(?:\([a-z0-9]{1,4}\))*(?![\w.]*\d)", re.I)
_CATEGORY = re.compile(r"\bCategory\s+\d[A-D]?\b(?:\s+(?:firms?|Authorised\s+Persons?|licen[cs]e))?", re.I)
_RULEBOOK = re.compile(
    r"(?:\bthe\s+)?(?:(?<![\w-])(?:" + "|".join(RULEBOOK_NAMES) + r")(?![\w-])|\b(?:"
    + "|".join(re.escape(n) for names in RULEBOOK_NAMES.values() for n in names) + r")\b)"
    r"(?:\s+[Rr]ule\s?book|\s+[Mm]odule)?|(?:\bthe\s+)?\b[A-Z]{2,6}\s+[Rr]ule\s?book\b")
_YEAR = re.compile(r"(?<![\w.$,-])(?:19|20)\d\d(?![\w.-]\d|\w)")
_DATE_CONTEXT = re.compile(r"(?:the\s+)?(?:(?:three|six|nine)\s+months|(?:fiscal\s+)?quarter(?:ly\s+period)?|period)"
                           r"\s+end(?:ed|ing)\s+$", re.I)
_NAMED: tuple[tuple[re.Pattern[str], Slot], ...] = (
    (_FORMS, "form"), (_CATEGORY, "category"), (_RULE, "rule"), (_RULEBOOK, "rulebook"))
_NAME = re.compile(r"[A-Z][\w&.-]*(?:\s+(?:[A-Z][\w&.-]*|&))*")
_POSSESSIVE = re.compile(r"['’]s\b")
_NOT_NAMES = {
    "what", "which", "who", "whom", "when", "where", "why", "how", "is", "are", "was", "were", "do", "does", "did",
    "can", "could", "should", "would", "will", "may", "must", "has", "have", "had", "and", "but", "or", "also",
    "then", "so", "now", "the", "a", "an", "in", "for", "of", "on", "at", "to", "by", "with", "about", "compare",
    "compared", "same", "please", "tell", "show", "give", "list", "explain", "describe", "summarise", "summarize",
    "i", "it", "its", "they", "their", "this", "that", "these", "those", "ok", "okay", "yes", "no", "thanks",
    "company", "firm", "firms", "regulator", "rule", "rules", "rulebook", "section", "chapter", "part", "category",
    "form", "fiscal", "fy", "quarter", "year", "q1", "q2", "q3", "q4", "adgm", "fsra", "fsmr", "sec", "gaap", "ifrs",
    "usd", "aed", "us", "u.s.", "eps", "ceo", "cfo", "r&d", "net", "total", "authorised", "person", "persons",
    "fund", "funds", "bank", "insurer", "client", "clients", "professional", "retail", "market", "markets", "abu",
    "dhabi", "global", "islamic", "financial", "services", "board", "director", "directors", "guidance",
    *(name.lower() for name in _MONTH_NAMES), *_MONTHS,
}
# Words after which a capitalised name is taken for a company ("what about Intel", "did Nvidia").
_NAME_AFTER = {"about", "for", "of", "at", "by", "from", "than", "to", "with", "and", "versus", "vs", "did", "does",
               "do", "is", "was", "were", "are", "has", "had", "will", "between", "against", "compare"}


def mentions(text: str, facets: Facets | None = None) -> list[Mention]:
    """The companies, periods, forms, categories, rules and rulebooks `text` names, in order of appearance."""
    found: list[Mention] = []
    taken = [False] * len(text)

    def add(slot: Slot, start: int, end: int, period: Period | None = None) -> None:
        if not any(taken[start:end]):
            taken[start:end] = [True] * (end - start)
            found.append(Mention(slot, start, end, text[start:end], period))

    for m in _DATE.finditer(text):
        when = _parse_date(m.group(0))
        context = _DATE_CONTEXT.search(text, 0, m.start())  # "the quarter ended <date>" as a whole
        if when is not None:
            add("period", context.start() if context else m.start(), m.end(), Period(when.year, day=when))
    for pattern in _PERIODS:
        for m in pattern.finditer(text):
            g = m.groupdict()
            quarter = int(g["quarter"]) if g.get("quarter") else _ORDINALS[g["ordinal"].lower()]
            year = int(g["year"]) + (2000 if len(g["year"]) == 2 else 0)
            fiscal = any(g.get(k) for k in ("fiscal", "fiscal_before", "fiscal_mid"))
            add("period", m.start(), m.end(), Period(year, quarter, fiscal))
    for m in _FISCAL_YEAR.finditer(text):
        add("period", m.start(), m.end(), Period(_full_year(m), fiscal=True))
    for m in _YEAR.finditer(text):
        add("period", m.start(), m.end(), Period(int(m.group(0))))
    for pattern, slot in _NAMED:
        for m in pattern.finditer(text):
            add(slot, m.start(), m.end())
    for start, end in _company_spans(text, facets):
        add("company", start, end)
    return sorted(found, key=lambda x: x.start)


def _company_spans(text: str, facets: Facets | None) -> list[tuple[int, int]]:
    """Where `text` names a company: the collection's registrants and tickers however spelled, then capitalised
    names that are possessive ("Intel's"), follow a preposition or verb ("what about Intel"), or stand alone."""
    spans = []
    if facets is not None:
        aliases = {a for company in facets.values("company") for a in company_aliases(company)}
        for alias in sorted(aliases, key=len, reverse=True):
            pattern = r"(?<![\w.-])" + r"\s+".join(map(re.escape, alias.split())) + r"(?![\w-])"
            spans += [m.span() for m in re.finditer(pattern, text, re.I)
                      if m.group(0) != m.group(0).lower()]
        for ticker in facets.values("ticker"):
            spans += [m.span() for m in re.finditer(r"(?<![\w$])\$?" + re.escape(ticker) + r"(?!\w)", text)]
    for m in _NAME.finditer(text):
        words = list(re.finditer(r"\S+", m.group(0)))
        plain = [w.group(0).lower().rstrip(".,") for w in words]
        first, last = 0, len(words)
        while first < last and plain[first] in _NOT_NAMES:
            first += 1
        while last > first and plain[last - 1] in _NOT_NAMES:
            last -= 1
        if first == last:
            continue
        start, end = m.start() + words[first].start(), m.start() + words[last - 1].end()
        if text[end - 1] == "." and not re.search(r"\b(?:Inc|Corp|Co|Ltd)\.$", text[start:end]):
            end -= 1
        before = re.findall(r"[\w.]+", text[:start])
        rest = _POSSESSIVE.sub("", _strip_opener(text[:start]) + " " + text[end:])
        if (_POSSESSIVE.match(text, end) or not re.search(r"\w", rest)
                or (before and before[-1].lower() in _NAME_AFTER)):
            spans.append((start, end))
    return spans


def _parse_date(text: str) -> date | None:
    m = _DATE.search(text)
    if m is None:
        return None
    try:
        return date(int(m.group("year")), _MONTHS[m.group("month")[:3].lower()], int(m.group("day")))
    except ValueError:
        return None


def _full_year(m: re.Match[str]) -> int:
    return 2000 + int(m.group("short")) if m.group("short") else int(m.group("year"))


def _date_text(day: date) -> str:
    return f"{_MONTH_NAMES[day.month - 1]} {day.day}, {day.year}"


# --- relative periods -----------------------------------------------------------------------------------------

_BACK = r"(?:last|previous|prior|preceding)"
_RELATIVE: list[tuple[re.Pattern[str], Literal["quarter", "year"], int]] = [
    (re.compile(r"\b(?:the\s+)?same\s+(?:quarter|period|three\s+months)\s+(?:(?:of|in)\s+)?(?:the\s+)?" + _BACK +
                r"\s+(?:fiscal\s+)?year\b|\b(?:the\s+)?(?:prior|previous)[-\s]year\s+(?:quarter|period)\b|"
                r"\b(?:a|one)\s+year\s+(?:earlier|before|ago)\b|\b(?:the\s+)?" + _BACK + r"\s+(?:fiscal\s+)?year\b|"
                r"\bthe\s+year\s+before\b", re.I), "year", -1),
    (re.compile(r"\b(?:the\s+)?" + _BACK + r"\s+(?:fiscal\s+)?quarter\b|\bthe\s+quarter\s+before\b|"
                r"\b(?:a|one)\s+quarter\s+(?:earlier|before)\b", re.I), "quarter", -1),
    (re.compile(r"\b(?:the\s+)?(?:next|following)\s+(?:fiscal\s+)?quarter\b", re.I), "quarter", 1),
    (re.compile(r"\b(?:the\s+)?(?:next|following)\s+(?:fiscal\s+)?year\b", re.I), "year", 1),
]


def shift(period: Period, unit: Literal["quarter", "year"], steps: int, facets: Facets | None = None,
          company: str | None = None) -> Period | None:
    """`period` moved by `steps` quarters or years, or None when that means nothing (a year less a quarter).

    A period end date moves to the filing of the same company in `facets` for the moved fiscal quarter, or to that
    quarter's fiscal label when only the filing of `period` is there; else by 13 (52) weeks, or by three (twelve)
    months when it ends a calendar month."""
    if period.day is not None:
        moved = _shift_in_facets(period.day, unit, steps, facets, company) if facets is not None else None
        day = _shift_date(period.day, unit, steps)
        return moved or Period(day.year, day=day)
    if period.quarter is not None:
        index = period.year * 4 + period.quarter - 1 + (steps if unit == "quarter" else 4 * steps)
        return replace(period, year=index // 4, quarter=index % 4 + 1)
    return replace(period, year=period.year + steps) if unit == "year" else None


def _shift_date(day: date, unit: Literal["quarter", "year"], steps: int) -> date:
    if (day + timedelta(days=1)).day == 1:  # a calendar month end: the month end as many months away
        index = day.year * 12 + day.month + (3 if unit == "quarter" else 12) * steps
        return date(index // 12, index % 12 + 1, 1) - timedelta(days=1)
    return day + timedelta(weeks=(13 if unit == "quarter" else 52) * steps)


def _shift_in_facets(day: date, unit: Literal["quarter", "year"], steps: int, facets: Facets,
                     company: str | None) -> Period | None:
    docs = [d for d in facets.documents
            if d.period and _parse_date(d.period) == day and d.fiscal_year and d.fiscal_quarter]
    if company:
        docs = [d for d in docs if _is_company(d.company, d.ticker, company)] or docs
    if not docs:
        return None
    base = docs[0]
    label = shift(Period(base.fiscal_year or 0, int(str(base.fiscal_quarter)[1:]), True), unit, steps)
    assert label is not None
    for doc in facets.documents:
        if (doc.company == base.company and doc.fiscal_year == label.year
                and doc.fiscal_quarter == f"Q{label.quarter}" and doc.period):
            moved = _parse_date(doc.period)
            if moved is not None:
                return Period(moved.year, day=moved)
    return label


def _is_company(company: str | None, ticker: str | None, name: str) -> bool:
    plain = name.strip().lower()
    return bool(company and plain in company_aliases(company)) or (ticker or "").lower() == plain.lstrip("$")


# --- follow-ups -----------------------------------------------------------------------------------------------

_OPENER = re.compile(r"^\s*(?:(?:and|but|also|or|so|then|now|ok(?:ay)?|what|how)\s*,?\s+)*"
                     r"(?:(?:what|how)\s+about|what\s+of|what\s+if|same\s+(?:for|with)|(?:the\s+)?same\s+question\s+for|"
                     r"compared?\s+(?:to|with)|versus|vs\.?|and|but|also|or|then|now)\b\s*,?\s*", re.I)
_INTERJECTION = re.compile(r"^\s*(?:(?:thanks|thank\s+you|great|cool|got\s+it|perfect|nice|i\s+see)\b[!.,]*\s*)+",
                           re.I)
# "that quarter", "this rule", "the company's": a thing of the previous question
_THAT_THING = re.compile(r"\b(?:that|this|the\s+same)\s+(?P<what>quarter|period|year|company|firm|registrant|issuer|"
                         r"rule|provision|rulebook|figure|number|amount|metric)\b|\bthe\s+(?P<the>company|registrant|"
                         r"issuer)\b", re.I)
_PRONOUN = re.compile(r"(?:^|\b(?:does|did|do|is|was|were|are|has|had|compare|compared|about|of|to|with|than|for|"
                      r"and|versus|how|why|when)\s+)(?P<word>that|this)\b|\b(?P<it>it)\b", re.I)
_COMPANY_PRONOUN = re.compile(r"\b(?:(?P<possessive>its|their)|they|them)\b", re.I)
# Nouns a pronoun may refer to within the question itself ("what must a firm include in its report")
_ANTECEDENT = re.compile(r"\b(?:firms?|compan(?:y|ies)|persons?|funds?|entit(?:y|ies)|banks?|issuers?|applicants?|"
                         r"licensees?|institutions?|business(?:es)?|insurers?|operators?|managers?|clients?)\b", re.I)
_TOPIC = re.compile(r"^(?P<head>(?:what|which)\s+(?:is|are|was|were)|how\s+(?:much|many)\s+(?:was|were|is|are))"
                    r"\s+(?P<topic>.+?)\s*\?*\s*$", re.I)
_QUESTION_START = re.compile(r"^(?:what|which|who|whom|whose|when|where|why|how|is|are|was|were|do|does|did|can|could|"
                             r"should|would|will|may|must|has|have|had|compare|list|explain|describe|show|give|tell|"
                             r"summari[sz]e)\b", re.I)
_FILLER = re.compile(r"\b(?:in|for|the|of|at|with|on|to|a|an|and|then|instead|too|also|same|please|as|well|one|"
                     r"ones|period|figures?|numbers?|what|how|about|during|over)\b|[?.,!;:]", re.I)
_THING_SLOTS: dict[str, Slot] = {
    "quarter": "period", "period": "period", "year": "period", "rule": "rule", "provision": "rule",
    "rulebook": "rulebook", "company": "company", "firm": "company", "registrant": "company", "issuer": "company",
}
_LOWER_FIRST = {"the", "a", "an", "its", "their", "this", "that", "any", "each", "all"}
_ANCHORS = ("company", "rule", "rulebook", "category")  # what makes a question about something of its own
MAX_FRAGMENT_WORDS = 8  # a question this short that names nothing of its own is taken for a follow-up


def _strip_opener(text: str) -> str:
    return _OPENER.sub("", _INTERJECTION.sub("", text, count=1), count=1)


def _pronouns(question: str, pattern: re.Pattern[str], asked: list[Mention]) -> list[re.Match[str]]:
    """Pronouns in `question` that refer to something outside it: no company, rule or kind of firm before them."""
    return [m for m in pattern.finditer(question) if not _ANTECEDENT.search(question, 0, m.start())
            and not any(a.start < m.start() and a.slot in _ANCHORS for a in asked)]


def _is_follow_up(question: str, asked: list[Mention]) -> bool:
    anchored = any(m.slot in _ANCHORS for m in asked)
    that_thing = [m for m in _THAT_THING.finditer(question) if not (anchored and m.group("the"))]
    return bool(
        _strip_opener(question) != question
        or any(p.search(question) for p, _, _ in _RELATIVE)
        or that_thing
        or _pronouns(question, _PRONOUN, asked)
        or (not anchored and _pronouns(question, _COMPANY_PRONOUN, asked))
        or (not anchored and len(question.split()) <= MAX_FRAGMENT_WORDS)
        or _only_values(question, [m.text for m in asked])  # "Intel?", "Q2 2023?"
    )


def _only_values(question: str, values: list[str]) -> bool:
    """Whether `question` says nothing but `values` ("and Microsoft's?", "what about the previous quarter?")."""
    rest = _strip_opener(question)
    for value in values:
        rest = rest.replace(value, " ")
    return not _FILLER.sub(" ", _POSSESSIVE.sub(" ", rest)).strip()


@dataclass(frozen=True)
class _Rules:
    text: str
    resolved: bool  # False: the rules left a reference in `text` they could not resolve
    carried: tuple[str, ...]  # the companies, rules and rulebooks taken from the previous question


class Rewriter:
    """Rewrites a follow-up into a standalone question (see the module docstring).

    `mode`: "rules" (deterministic, well under a millisecond), "llm" (the rules, then the generator for what they
    leave unresolved: seconds on a CPU) or "off". `llm_factory` gives the generator (mode "llm"); `facets` gives
    what a collection holds, to move period end dates between its filings and to recognise its companies.
    """

    def __init__(self, mode: RewriteMode = "rules", *, llm_factory: Callable[[], LLM] | None = None,
                 facets: Callable[[str], Facets] | None = None, max_tokens: int = 60,
                 prompt: str = "rewrite_v1") -> None:
        if mode == "llm" and llm_factory is None:
            raise ValueError("rewriting mode 'llm' needs an llm_factory")
        self.mode = mode
        self.llm_factory = llm_factory
        self.facets = facets
        self.max_tokens = max_tokens
        self.prompt = load_prompt(prompt) if mode == "llm" else None

    def rewrite(self, question: str, history: Sequence[Turn], collection: str | None = None) -> Rewrite:
        """The standalone form of `question` asked after `history` (oldest first), in `collection`."""
        question = " ".join(question.split())
        if self.mode == "off" or not history:
            return Rewrite(question, "unchanged")
        facets = self.facets(collection) if self.facets is not None and collection else None
        asked = mentions(question, facets)
        if not _is_follow_up(question, asked):
            return Rewrite(question, "unchanged")
        before = history[-1].standalone or history[-1].question
        rules = _apply_rules(question, asked, before, mentions(before, facets), facets)
        if not rules.resolved and self.mode == "llm":
            rewritten = self._llm(question, history, rules)
            if rewritten is not None:
                return Rewrite(rewritten, "llm", self.prompt.version if self.prompt else None)
        return Rewrite(rules.text, "unchanged" if rules.text == question else "rules")

    def _llm(self, question: str, history: Sequence[Turn], rules: _Rules) -> str | None:
        """The generator's rewrite, or None when it fails or its output does not pass the checks."""
        assert self.llm_factory is not None and self.prompt is not None
        earlier = [t.standalone or t.question for t in history[-3:]]
        user = "\n".join(f"Earlier question: {q}" for q in earlier) + f"\nFollow-up: {question}\nStandalone question:"
        messages: list[Message] = [{"role": "system", "content": self.prompt.text}, {"role": "user", "content": user}]
        started = time.perf_counter()
        try:
            text = complete(self.llm_factory(), messages, max_tokens=self.max_tokens).strip()
        except ComponentUnavailable as exc:
            log.warning("the LLM could not rewrite the follow-up, the rules' rewrite is used: %s", exc)
            return None
        text = re.sub(r"^(?:standalone question\s*:\s*)?[\"'“]?|[\"'”]?$", "", text, flags=re.I).strip()
        problem = _llm_problem(text, question, earlier, rules.carried)
        log.info("LLM rewrite in %d ms: %r -> %r%s", (time.perf_counter() - started) * 1000, question, text,
                 f" (rejected: {problem}, the rules' rewrite is used)" if problem else "")
        return None if problem else text


def _llm_problem(text: str, question: str, earlier: list[str], carried: Sequence[str]) -> str | None:
    """Why the LLM's rewrite of `question` cannot be used, or None when it can."""
    limit = 3 * (len(question) + len(earlier[-1]))
    words = {w.lower() for w in re.findall(r"[A-Za-z]{2,}", question)} - _STOPWORDS
    dropped = [c for c in carried if c.lower() not in text.lower()]
    if not text:
        return "it is empty"
    if "\n" in text or "?" in text.rstrip("?"):
        return "it is not one question on one line"
    if len(text) > limit:
        return f"it is longer than {limit} characters"
    if text.rstrip("?").lower() in {q.rstrip("?").lower() for q in earlier} and text != question:
        return "it repeats an earlier question"
    if words and not words & {w.lower() for w in re.findall(r"[A-Za-z]{2,}", text)}:
        return "it keeps none of the follow-up's words"
    return f"it leaves out {dropped}" if dropped else None


_STOPWORDS = {"it", "is", "in", "of", "to", "do", "an", "or", "on", "at", "as", "be", "by", "and", "the", "what",
              "about", "how", "why", "which", "who", "when", "where", "does", "did", "was", "were", "are", "its",
              "their", "they", "them", "that", "this", "for", "with", "then", "also"}


def _apply_rules(question: str, asked: list[Mention], before: str, had: list[Mention],
                 facets: Facets | None) -> _Rules:
    company = next((m.text for m in had if m.slot == "company"), None)
    base = next((m.period for m in had if m.period is not None), None)
    relative: list[tuple[int, int, Period | None]] = []  # relative periods, resolved where the base allows
    for pattern, unit, steps in _RELATIVE:
        for m in pattern.finditer(question):
            if not any(s <= m.start() < e for s, e, _ in relative):
                relative.append((m.start(), m.end(), shift(base, unit, steps, facets, company) if base else None))
    resolved = all(p is not None for _, _, p in relative)
    if _only_values(question, [question[s:e] for s, e, _ in relative] + [m.text for m in asked]):
        # only new values ("what about Intel?", "and the previous quarter?"): put them in the previous question
        new = [(m.slot, m.text, m.period) for m in asked]
        new += [("period", p.text() if p else question[s:e], p) for s, e, p in relative]
        return _substitute(before, had, new, resolved)
    text = question
    for s, e, p in sorted(relative, reverse=True):
        text = text[:s] + (p.text() if p else question[s:e]) + text[e:]
    return _carry_over(text, before, had, facets, resolved)


def _substitute(before: str, had: list[Mention], new: list[tuple[Slot, str, Period | None]], resolved: bool) -> _Rules:
    edits: list[tuple[int, int, str]] = []
    extra: list[str] = []
    replaced: set[Slot] = set()
    for slot, value, period in new:
        if slot in replaced:
            continue
        replaced.add(slot)
        old = [m for m in had if m.slot == slot]
        if not old or (slot == "period" and period is None):  # nothing to replace, or "last year" unresolved
            extra.append(_phrase(slot, value))
            continue
        m = old[0]
        resolved &= len(old) == 1
        if m.period is not None and m.period.day is not None and period is not None and period.day is not None:
            printed = _DATE.search(m.text)  # keep the words before the date ("the three months ended")
            value = m.text[: printed.start() if printed else 0] + _date_text(period.day)
        elif slot == "category" and len(value.split()) == 2:  # "Category 3C firm" -> "Category 4 firm"
            value = " ".join([value, *m.text.split()[2:]])
        edits.append((m.start, m.end, value))
    text = before
    for start, end, value in sorted(edits, reverse=True):
        text = text[:start] + value + text[end:]
    carried = tuple(m.text for m in had if m.slot in ("company", "rule", "rulebook") and m.slot not in replaced)
    return _Rules(_append(text, extra), resolved, carried)


def _carry_over(text: str, before: str, had: list[Mention], facets: Facets | None, resolved: bool) -> _Rules:
    asked = mentions(text, facets)
    anchored = any(m.slot in _ANCHORS for m in asked)
    company = next((m.text for m in had if m.slot == "company"), None)
    first = {m.slot: m.text for m in reversed(had)}
    topic = _TOPIC.match(before)
    carried: list[str] = []
    edits: list[tuple[int, int, str]] = []
    for m in _THAT_THING.finditer(text):
        what = (m.group("what") or m.group("the")).lower()
        slot = _THING_SLOTS.get(what)
        value = first.get(slot) if slot else topic.group("topic") if topic else None
        if slot == "company" and (anchored or company is None):
            continue  # "the company" of a question that names one, or of a rulebook question
        if value is None:
            resolved = False
            continue
        edits.append((*m.span(), value))
        if slot in ("company", "rule", "rulebook"):
            carried.append(value)
    for m in _pronouns(text, _PRONOUN, asked):
        if topic is None:
            resolved = False
        elif not any(s <= m.start() < e for s, e, _ in edits):
            edits.append((*m.span("word" if m.group("word") else "it"), topic.group("topic")))
    for m in _pronouns(text, _COMPANY_PRONOUN, asked):
        if company is None or anchored:
            resolved &= anchored
        else:
            edits.append((*m.span(), company + ("'s" if m.group("possessive") else "")))
            carried.append(company)
    for start, end, value in sorted(edits, reverse=True):
        text = text[:start] + value + text[end:]
    text = _strip_opener(text)
    if not _QUESTION_START.match(text):  # a noun phrase ("the fee for a Category 3A firm?"): ask for it
        head = topic.group("head").capitalize() if topic and topic.group("head").lower().startswith("what") else (
            "What is")
        first_word = text.split(maxsplit=1)[0] if text.split() else ""
        text = f"{head} {text[:1].lower() + text[1:] if first_word.lower() in _LOWER_FIRST else text}"
        # one that names nothing ("and the six months?") may change the earlier question in ways rules miss
        resolved &= any(m.slot in _ANCHORS for m in mentions(text, facets))
    elif len(text.split()) <= 2:  # "why?", "how come?"
        resolved = False
    names = {m.slot for m in mentions(text, facets)}
    keep = (REGULATION_SLOTS if names & set(REGULATION_SLOTS) else FILING_SLOTS if names & set(FILING_SLOTS)
            else (*FILING_SLOTS, *REGULATION_SLOTS))
    extra: dict[Slot, str] = {}
    for slot in keep:
        if slot in first and slot not in names and not (slot == "rule" and "rulebook" in names):
            extra[slot] = _phrase(slot, first[slot])
            if slot in ("company", "rule", "rulebook"):
                carried.append(first[slot])
    if "rule" in extra and "rulebook" in extra:  # "under Rule 1.2.5 of the Fees Rules"
        extra["rule"] += " of " + extra.pop("rulebook").removeprefix("under ")
    return _Rules(_append(text, list(extra.values())), resolved, tuple(carried))


def _phrase(slot: Slot, value: str) -> str:
    """`value` of `slot` as a phrase to append to a question."""
    if slot == "company":
        return f"for {value}"
    if slot == "period":
        if _DATE.fullmatch(value.strip()):
            return f"for the period ended {value}"
        return value if re.match(r"(?:last|next|a|one|in|for|during)\b", value, re.I) else f"in {value}"
    if slot == "form":
        return f"in the {value.removeprefix('Form ')}"
    if slot == "category":
        return f"for a {value}"
    value = value if value.lower().startswith("the ") or slot == "rule" else f"the {value}"
    return f"under {value}" + (" rulebook" if re.fullmatch(r"the [A-Z]+", value) else "")


def _append(text: str, phrases: list[str]) -> str:
    text = text.strip()
    if phrases:
        question = text.endswith("?") or _QUESTION_START.match(text)
        text = f"{text.rstrip('?. ')} {' '.join(phrases)}{'?' if question else ''}"
    return text[:1].upper() + text[1:]
