"""TAT-QA as an answer set: one HTML document per table + paragraphs context, questions in the shared format.

    python -m eval tatqa ../shared/corpora/tatqa/tatqa_dataset_dev.json --out data/eval/tatqa [--sample N]

writes `OUT/documents/tatqa-<table uid>.html` (the table as an HTML table, then the paragraphs) and
`OUT/questions.jsonl`. Each question's evidence is its context document, so `python -m eval run
OUT/questions.jsonl --answers --context evidence` gives the model exactly the table and paragraphs of
the question, as TAT-QA intends, and the same file also scores retrieval over all contexts.

The reference answer is TAT-QA's answer with its scale: spans joined by ", ", numbers written as given,
then "%" for percent or the scale word (`"$1,496.5"` in millions becomes `"$1,496.5 million"`).
Tags: `dataset=tatqa`, `answer_type` (span, multi-span, arithmetic, count), `answer_from` (table, text,
table-text) and `scale`. Data: TAT-QA (Zhu et al., ACL 2021), CC BY 4.0.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .questions import sample_in_order

DOCUMENTS_DIR = "documents"
QUESTIONS_FILE = "questions.jsonl"


class TatqaError(ValueError):
    """The TAT-QA file cannot be read or has an unexpected shape."""


@dataclass(frozen=True)
class TatqaSet:
    documents: int
    questions: int
    questions_path: Path
    documents_dir: Path


def document_name(context: dict[str, Any]) -> str:
    return f"tatqa-{context['table']['uid']}.html"


def context_html(context: dict[str, Any]) -> str:
    """The context as a small HTML page: a title, the table, the paragraphs in their order."""
    rows = []
    for row in context["table"]["table"]:
        cells = "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row)
        rows.append(f"<tr>{cells}</tr>")
    paragraphs = sorted(context.get("paragraphs", []), key=lambda p: p.get("order", 0))
    body = "\n".join(f"<p>{html.escape(p['text'])}</p>" for p in paragraphs)
    title = f"TAT-QA context {context['table']['uid']}"
    return (f"<html><head><title>{html.escape(title)}</title></head><body>\n<table>\n" + "\n".join(rows)
            + f"\n</table>\n{body}\n</body></html>\n")


def _number_text(value: float) -> str:
    return f"{value:,.2f}".rstrip("0").rstrip(".") if value != int(value) else f"{int(value):,}"


def reference_answer(question: dict[str, Any]) -> str:
    """TAT-QA's answer as text with its scale (see the module docstring)."""
    answer = question["answer"]
    parts = answer if isinstance(answer, list) else [answer]
    texts = [_number_text(p) if isinstance(p, int | float) and not isinstance(p, bool) else str(p) for p in parts]
    text = ", ".join(t.strip() for t in texts)
    scale = (question.get("scale") or "").strip()
    if scale == "percent":
        return text if text.endswith("%") else f"{text}%"
    return f"{text} {scale}" if scale else text


def question_record(question: dict[str, Any], source: str) -> dict[str, Any]:
    return {
        "id": f"tatqa-{question['uid']}",
        "question": question["question"],
        "reference_answer": reference_answer(question),
        "evidence": [{"source": source}],
        "tags": {
            "dataset": "tatqa",
            "answer_type": question.get("answer_type") or "unknown",
            "answer_from": question.get("answer_from") or "unknown",
            "scale": question.get("scale") or "none",
        },
    }


def load_contexts(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TatqaError(f"cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise TatqaError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, list) or not all(isinstance(c, dict) and "table" in c and "questions" in c for c in data):
        raise TatqaError(f"{path}: expected a list of TAT-QA contexts with 'table' and 'questions'")
    return data


def build_set(
    contexts: Sequence[dict[str, Any]], out_dir: Path, *, sample: int | None = None, seed: int = 0
) -> TatqaSet:
    """Write the documents of every context and the questions (all, or a seeded sample in file order)."""
    documents_dir = out_dir / DOCUMENTS_DIR
    documents_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for context in contexts:
        name = document_name(context)
        (documents_dir / name).write_text(context_html(context), encoding="utf-8")
        records.extend(question_record(q, name) for q in sorted(context["questions"], key=lambda q: q["order"]))
    records = sample_in_order(records, sample, seed)
    questions_path = out_dir / QUESTIONS_FILE
    with questions_path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return TatqaSet(len(contexts), len(records), questions_path, documents_dir)
