"""Questions that need a calculation: the model quotes figures and writes the formula, the product computes.

The model's reply (prompt `calc_v1`) has this shape:

    FIGURE: revenue, three months ended July 1, 2023 = 81,797 [1]
    FIGURE: revenue, three months ended June 25, 2022 = 82,959 [1]
    CALC: (81,797 - 82,959) / 82,959 * 100
    ANSWER: Revenue changed by RESULT% from the prior-year quarter.

`parse` reads it, `assistant.calc.evaluate` computes CALC, and `render` writes the answer users see,
with the working and the citations of the figures it used:

    Revenue changed by -1.40% from the prior-year quarter [1].
    Calculation: (81,797 − 82,959) / 82,959 × 100 = -1.40, from revenue, three months ended July 1, 2023
    = 81,797 [1]; revenue, three months ended June 25, 2022 = 82,959 [1].
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .calc import CalculationError, evaluate, format_value, pretty
from .numbers import Number
from .sources import CITE

_CALC_QUESTION = re.compile(
    r"\b(?:change[sd]?|increase[sd]?|decrease[sd]?|growth|grow|grew|decline[sd]?|difference|differ|ratio|"
    r"margin|percentage|proportion|average|mean|sum|combined|CAGR|how much (?:more|less|higher|lower))\b",
    re.IGNORECASE,
)
_LINE = re.compile(r"^\s*\**(FIGURE|CALC|ANSWER)\**\s*:\s*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)
_FIGURE = re.compile(r"^(?P<label>.*?)\s*=\s*(?P<number>[^=\[]*?)\s*(?P<cites>(?:\[\d+(?:\s*[,;]\s*\d+)*\]\s*)*)$")
RESULT = re.compile(r"\bRESULT\b")


def needs_calculation(question: str) -> bool:
    """Does the question ask for a change, growth, ratio, margin, average, sum or difference?"""
    return _CALC_QUESTION.search(question) is not None


@dataclass(frozen=True)
class Figure:
    label: str
    number: str  # as quoted
    cites: list[int]


@dataclass
class CalcReply:
    figures: list[Figure] = field(default_factory=list)
    expression: str | None = None
    sentence: str | None = None

    @property
    def cites(self) -> list[int]:
        out: list[int] = []
        for f in self.figures:
            out.extend(n for n in f.cites if n not in out)
        return out


def parse(raw: str) -> CalcReply:
    reply = CalcReply()
    for kind, value in _LINE.findall(raw):
        kind = kind.upper()
        if kind == "FIGURE":
            m = _FIGURE.match(value)
            if m:
                cites = [int(x) for group in CITE.findall(m.group("cites")) for x in re.split(r"\s*[,;]\s*", group)]
                reply.figures.append(Figure(m.group("label").strip(), m.group("number").strip(), cites))
        elif kind == "CALC" and reply.expression is None:
            reply.expression = value.split("=")[0].strip() or None
        elif kind == "ANSWER" and reply.sentence is None:
            reply.sentence = value
    return reply


@dataclass(frozen=True)
class Worked:
    text: str  # the answer users see (citations still to be checked)
    value: float | None  # the computed result, None when the calculation could not be evaluated
    expression: str | None
    error: str | None = None


def numbers_of(expression: str) -> list[str]:
    """The numbers a calculation uses, as written: `(1,250 - 1,000) / 1,000 * 100` -> 1,250, 1,000, 1,000, 100."""
    return re.findall(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?", expression)


def is_constant(number: Number) -> bool:
    """A formula's own number (× 100, ÷ 2), not a figure to find in a source: a whole number up to 100."""
    return number.decimals == 0 and abs(number.value) <= 100


def render(reply: CalcReply, cites: list[int] | None = None) -> Worked | None:
    """The answer with the computed value and its working, or None when the reply is not in the format.

    `cites`: the sources the calculation's numbers come from, when the reply names none itself."""
    if reply.expression is None and reply.sentence is None:
        return None
    marks = "".join(f"[{n}]" for n in (reply.cites or cites or []))
    sources = "; ".join(f"{f.label} = {f.number} {''.join(f'[{n}]' for n in f.cites)}".rstrip()
                        for f in reply.figures)
    if reply.expression is None:  # the model answered without a calculation
        return Worked(_with_marks(reply.sentence or "", marks), None, None)
    try:
        value = evaluate(reply.expression)
    except CalculationError as exc:
        sentence = RESULT.sub("(not computed)", reply.sentence or "")
        return Worked(_with_marks(sentence, marks), None, reply.expression, exc.message)
    shown = format_value(value)
    sentence = reply.sentence or "The result is RESULT."
    sentence = RESULT.sub(shown, sentence) if RESULT.search(sentence) else f"{sentence.rstrip('.')}: {shown}."
    working = f"Calculation: {pretty(reply.expression)} = {shown}"
    if sources:
        working += f", from {sources}"
    elif marks:
        working += f" {marks}"
    return Worked(f"{_with_marks(sentence, marks)}\n\n{working}.", value, reply.expression)


def _with_marks(sentence: str, marks: str) -> str:
    """The sentence with the figures' citations, unless it cites sources itself."""
    sentence = sentence.strip()
    if not marks or CITE.search(sentence):
        return sentence
    if sentence.endswith((".", "!", "?")):
        return f"{sentence[:-1]} {marks}{sentence[-1]}"
    return f"{sentence} {marks}."
