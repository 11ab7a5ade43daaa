"""Answer scores of one question: numbers stated, token F1 against the reference, refusal correctness.

- `numeric_recall`: share of the reference's distinct numbers the answer states (see `numbers.py`);
  `numeric_exact`: 1.0 when it states all of them. Both absent when the reference has no number.
- `token_f1`: SQuAD-style F1 of answer and reference tokens (lowercased, punctuation and the articles
  a/an/the removed, split on whitespace). A refusal scores 0.0 against a reference.
- `refusal_correct`: for a question marked `"answerable": false`, 1.0 when the assistant refused.
  `false_refusal`: for an answerable question, 1.0 when it refused.
Scores that do not apply to a question are left out of its dict, so means run over the questions they
apply to.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

from assistant.answering import Answer

from .numbers import numbers_found
from .questions import Question

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_CITATION = re.compile(r"\[\d+(?:\s*[,;]\s*\d+)*\]")

ANSWER_METRICS = ("token_f1", "numeric_recall", "numeric_exact", "refusal_correct", "false_refusal")


def normalize(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, squeeze whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def answer_scores(question: Question, answer: Answer) -> dict[str, float]:
    """The answer metrics that apply to this question (see the module docstring)."""
    scores: dict[str, float] = {}
    if not question.answerable:
        scores["refusal_correct"] = float(answer.refused)
        return scores
    scores["false_refusal"] = float(answer.refused)
    reference = question.reference_answer
    if not reference or not reference.strip():
        return scores
    text = "" if answer.refused else _CITATION.sub(" ", answer.answer)
    scores["token_f1"] = token_f1(text, reference)
    found, wanted = numbers_found(reference, text)
    if wanted:
        scores["numeric_recall"] = found / wanted
        scores["numeric_exact"] = float(found == wanted)
    return scores


def answer_record(answer: Answer) -> dict[str, Any]:
    """What results.json keeps of an answer."""
    return {
        "text": answer.answer,
        "refused": answer.refused,
        "model": answer.model,
        "prompt_version": answer.prompt_version,
        "citations": [
            {"n": c.n, "source": c.source, "pages": c.pages, "section": c.section, "score": c.score}
            for c in answer.citations
        ],
        "warnings": list(answer.warnings),
        "timings_ms": dict(answer.timings_ms),
    }
