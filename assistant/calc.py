"""Arithmetic done by the product, not the model: a safe evaluator for the calculations the model writes.

Small models read figures well and compute them badly, so for questions that need a change, growth, ratio,
margin, average or sum the model writes the calculation over figures it quotes from the sources
(`CALC: (5,000 - 4,000) / 4,000 * 100`) and `evaluate` computes it. The expression is parsed with `ast`
and walked over a whitelist (numbers, + - * /, unary minus, parentheses); names, calls, attributes, powers
and everything else are refused, so no text from a model is ever executed.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable

from .errors import BadRequest

MAX_CHARS = 300  # a calculation over quoted figures is short; longer text is not one
MAX_NODES = 60

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_PERCENT_OF = re.compile(r"(\d(?:[\d.]*\d)?)\s*%")


class CalculationError(BadRequest):
    code = "bad_calculation"


def normalize(expression: str) -> str:
    """The expression as Python arithmetic: thousands separators, currency signs and × ÷ − written out."""
    text = expression.strip().rstrip("=").strip()
    text = text.replace("×", "*").replace("÷", "/").replace("−", "-").replace("–", "-")
    text = re.sub(r"(?<=[\d)\s])[xX](?=[\s\d(])", "*", text)
    text = re.sub(r"[$€£]", "", text)
    text = _THOUSANDS.sub("", text)
    return _PERCENT_OF.sub(r"(\1/100)", text)


def evaluate(expression: str) -> float:
    """The value of an arithmetic expression, or CalculationError saying why it is not one."""
    if len(expression) > MAX_CHARS:
        raise CalculationError(f"the calculation is longer than {MAX_CHARS} characters")
    text = normalize(expression)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise CalculationError(f"not an arithmetic expression: {expression!r}") from exc
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalculationError("the calculation is too long")
    value = _value(tree.body, expression)
    if not math.isfinite(value):
        raise CalculationError(f"the calculation has no finite value: {expression!r}")
    return value


def _value(node: ast.AST, expression: str) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left, expression), _value(node.right, expression)
        if isinstance(node.op, ast.Div) and right == 0:
            raise CalculationError(f"division by zero in {expression!r}")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand, expression))
    raise CalculationError(f"only numbers, + - * / and parentheses are allowed: {expression!r}")


def format_value(value: float, decimals: int = 2) -> str:
    """`1234.5` -> "1,234.50"; whole numbers keep no decimals ("1,235")."""
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.{decimals}f}"


def pretty(expression: str) -> str:
    """The expression as people write it: `(5,000 − 4,000) / 4,000 × 100`."""
    text = " ".join(expression.strip().rstrip("=").split())
    return text.replace("*", "×").replace(" - ", " − ")
