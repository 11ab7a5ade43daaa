"""Numbers in answers: find them in text, and decide whether an answer states a reference's numbers.

`find_numbers("$81,797 million")` gives one `Number(value=81797.0, scale=1e6, percent=False, ...)`.
Understood forms: `$1,577.00`, `81,797`, `3.2%`, `3.2 percent`, `(265)` and `-265` (negative),
followed by an optional scale word (thousand, million, billion, trillion and k/m/mn/bn).
Not counted as numbers: years written alone (`2022`), dates (`June 25, 2022`), quarter and form names
(`Q3`, `10-Q`), list markers (`1. ` at a line start), citation marks (`[2]`), and the `SOURCE(S):`
lines and file names of the sec-10q references.

Two numbers agree (`same_number`) when their magnitudes agree, both times their scale or, where one
of them has no scale word, as written (tables say "in millions" once), within `REL_TOL` relative or
within half a unit of the last digit of the less precise of the two (only for numbers written with at
least two significant digits): `3.2%` states `3.24%`, and `81.8 billion` states `$81,797 million`.
A percentage is never stated by a number with a scale word.
Signs are ignored: prose says "a decrease of $265 million" for a table's `(265)`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

REL_TOL = 0.005  # 0.5 % relative

SCALES = {
    "thousand": 1e3, "k": 1e3, "million": 1e6, "mn": 1e6, "m": 1e6,
    "billion": 1e9, "bn": 1e9, "b": 1e9, "trillion": 1e12, "tn": 1e12,
}
_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
_NOISE = re.compile(
    rf"\b{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?"  # June 25, 2022
    r"|^\s*SOURCE\(?S?\)?:.*$"  # sec-10q reference footers
    r"|^[ \t]*\d{1,2}[.)][ \t]"  # list markers "1. " and "2) "
    r"|\S+\.(?:pdf|txt|html?)\b"  # file names
    r"|\b\d{2,4}\s+Q[1-4]\b|\bQ[1-4](?:\s+\d{2,4})?\b|\bFY\s?\d{2,4}\b|\b10-[QK]\b|\b8-K\b"
    r"|\[\d+(?:\s*[,;]\s*\d+)*\]",  # citation marks
    re.IGNORECASE | re.MULTILINE,
)
_NUMBER = re.compile(
    r"(?<![\w.,])(?P<cur>[$€£])?(?P<open>\()?(?P<sign>[-−–])?\s?(?P<cur2>[$€£])?\s?"
    r"(?P<digits>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?P<close>\))?"
    r"(?:\s?(?P<pct>%|percent\b|per\scent\b))?"
    r"(?:\s?(?P<scale>thousand|million|billion|trillion|mn|bn|tn)\b|(?P<short>[kmb])\b)?",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Number:
    value: float  # as written, signed: "(265)" is -265.0
    scale: float  # from a scale word; 1.0 without one
    percent: bool
    text: str  # the matched text
    decimals: int  # digits after the decimal point, as written
    sig_digits: int

    @property
    def scaled(self) -> float:
        return self.value * self.scale


def find_numbers(text: str) -> list[Number]:
    """Numbers of `text` in order, without dates, years, quarter names and citation marks."""
    cleaned = _NOISE.sub(" ", text)
    found: list[Number] = []
    for m in _NUMBER.finditer(cleaned):
        digits = m.group("digits").replace(",", "")
        negative = bool(m.group("sign")) or bool(m.group("open") and m.group("close"))
        scale_word = m.group("scale") or m.group("short")
        has_marks = any(m.group(g) for g in ("cur", "cur2", "pct")) or scale_word or "," in m.group("digits")
        if not has_marks and "." not in digits and len(digits) == 4 and 1900 <= int(digits) <= 2100:
            continue  # a year
        value = float(digits)
        scale = SCALES[scale_word.lower()] if scale_word else 1.0
        whole, _, frac = digits.partition(".")
        significant = (whole.lstrip("0") + frac) if whole.lstrip("0") else frac.lstrip("0")
        found.append(Number(
            value=-value if negative else value, scale=scale, percent=bool(m.group("pct")),
            text=m.group(0).strip(), decimals=len(frac), sig_digits=len(significant),
        ))
    return found


def _half_unit(n: Number, scale: float) -> float:
    """Half a unit of the last written digit, for numbers precise enough to be roundings."""
    return 0.5 * 10.0 ** (-n.decimals) * scale if n.sig_digits >= 2 else 0.0


def _agree(reference: Number, answer: Number, ref_scale: float, ans_scale: float) -> bool:
    ref, got = abs(reference.value) * ref_scale, abs(answer.value) * ans_scale
    diff = abs(got - ref)
    if diff <= REL_TOL * ref:
        return True
    rounding = max(_half_unit(reference, ref_scale), _half_unit(answer, ans_scale))
    return diff <= rounding * (1 + 1e-9)


def same_number(reference: Number, answer: Number) -> bool:
    """True when `answer` states `reference` (see the module docstring for the tolerance)."""
    if reference.percent and answer.scale != 1.0:
        return False
    if reference.value == 0.0 or answer.value == 0.0:
        return reference.value == answer.value
    if _agree(reference, answer, reference.scale, answer.scale):
        return True
    one_unscaled = reference.scale == 1.0 or answer.scale == 1.0  # "81,797" in a table "in millions"
    return one_unscaled and _agree(reference, answer, 1.0, 1.0)


def numbers_found(reference: str, answer: str) -> tuple[int, int]:
    """(how many of the reference's distinct numbers the answer states, how many there are)."""
    wanted = _distinct(find_numbers(reference))
    stated = find_numbers(answer)
    found = sum(1 for ref in wanted if any(same_number(ref, got) for got in stated))
    return found, len(wanted)


def _distinct(numbers: Sequence[Number]) -> list[Number]:
    seen: set[tuple[float, float, bool]] = set()
    out: list[Number] = []
    for n in numbers:
        key = (abs(n.value), n.scale, n.percent)
        if key not in seen:
            seen.add(key)
            out.append(n)
    return out
