"""Answer scores of one question: numbers stated, token F1, cited sources, refusals (see eval/README.md).

- `numeric_match`: 1.0 when the answer states every distinct number of the reference (see `numbers.py`);
  `numeric_recall`: the share of them it states. Both absent when the reference has no number.
- `token_f1`: SQuAD-style F1 of answer and reference tokens (lowercased, punctuation and the articles
  a/an/the removed, split on whitespace; citation marks `[n]` removed first). A refusal scores 0.0.
- `citation_precision`: for an answer that was given (not refused) to a question with evidence and that
  cites at least one source, the share of its distinct cited chunks that match an evidence item
  (`matching.matches`). A citation pointing to no retrieved chunk counts as not matching.
- `citation_hit`: for an answer given to a question with evidence, 1.0 when at least one cited chunk matches
  an evidence item (0.0 when none does or it cites nothing): "the answer cites a gold rule".
- `unsupported_numbers`: for an answer given, how many of its figures no cited source states or gives by
  simple arithmetic (`assistant.grounding`); `grounded_numbers`: 1.0 when there are none.
- `refusal_accuracy`: for a question marked `"answerable": false`, 1.0 when the assistant refused.
  `over_refusal`: for an answerable question, 1.0 when it refused.
Scores that do not apply to a question are left out of its dict, so means run over the questions they
apply to. `judge_correct` and `judge_faithful` come from `judge.py` into the same dict.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

from assistant.answering import Answer
from assistant.numbers import numbers_found

from .matching import matches
from .questions import Question

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_CITATION = re.compile(r"\[\d+(?:\s*[,;]\s*\d+)*\]")

ANSWER_METRICS = (
    "numeric_match", "numeric_recall", "token_f1", "citation_precision", "citation_hit", "grounded_numbers",
    "unsupported_numbers", "refusal_accuracy", "over_refusal", "judge_correct", "judge_faithful",
)


def normalize(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, squeeze whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall after `normalize`; 1.0 when both sides are empty."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def citation_precision(question: Question, answer: Answer) -> float | None:
    """Share of the distinct cited chunks that match an evidence item; None where it does not apply."""
    cited = sorted({c.n for c in answer.citations})
    if answer.refused or not question.evidence or not cited:
        return None
    good = 0
    for n in cited:
        if 1 <= n <= len(answer.retrieved):
            chunk = answer.retrieved[n - 1].chunk
            good += any(matches(item, chunk) for item in question.evidence)
    return good / len(cited)


def citation_hit(question: Question, answer: Answer) -> float | None:
    """1 when the answer cites at least one chunk that matches an evidence item (0 when it cites none);
    None for refusals and questions without evidence."""
    if answer.refused or not question.evidence:
        return None
    for c in answer.citations:
        if 1 <= c.n <= len(answer.retrieved):
            chunk = answer.retrieved[c.n - 1].chunk
            if any(matches(item, chunk) for item in question.evidence):
                return 1.0
    return 0.0


def answer_scores(question: Question, answer: Answer) -> dict[str, float]:
    """The answer metrics that apply to this question (see the module docstring)."""
    scores: dict[str, float] = {}
    reference = question.reference_answer
    if question.answerable and reference and reference.strip():
        text = "" if answer.refused else _CITATION.sub(" ", answer.answer)
        found, wanted = numbers_found(reference, text)
        if wanted:
            scores["numeric_match"] = float(found == wanted)
            scores["numeric_recall"] = found / wanted
        scores["token_f1"] = token_f1(text, reference)
    precision = citation_precision(question, answer)
    if precision is not None:
        scores["citation_precision"] = precision
    hit = citation_hit(question, answer)
    if hit is not None:
        scores["citation_hit"] = hit
    if not answer.refused:
        scores["unsupported_numbers"] = float(len(answer.unsupported_numbers))
        scores["grounded_numbers"] = float(not answer.unsupported_numbers)
    if question.answerable:
        scores["over_refusal"] = float(answer.refused)
    else:
        scores["refusal_accuracy"] = float(answer.refused)
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
        "unsupported_numbers": list(answer.unsupported_numbers),
        "calculation": answer.calculation,
        "timings_ms": dict(answer.timings_ms),
    }
