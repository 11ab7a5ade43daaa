"""The question set: JSON Lines in the shared evaluation format (see ../shared/README.md).

One question per line:

    {"id": "…", "question": "…", "reference_answer": "… or null",
     "evidence": [{"source": "COBS_VER15.150823.txt", "page": 12, "section": "18.8.2", "text": "…"}],
     "tags": {"dataset": "obliqa", "type": "single-passage"}, "answerable": true}

Unknown fields are ignored, blank lines skipped; a malformed line raises `QuestionFileError` naming the
file and the line number.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

T = TypeVar("T")
TagValue = Any  # str, int and bool in practice; any JSON value is accepted


class QuestionFileError(ValueError):
    """A question file that cannot be read; the message names the file and the line."""


class Evidence(BaseModel):
    """Where the answer lies. Only `source` is required; it may be a glob (`*AAPL*.pdf`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    source: str = Field(min_length=1)
    page: int | None = Field(default=None, ge=1)
    section: str | None = None
    text: str | None = None

    @field_validator("section", mode="before")
    @classmethod
    def _section_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class Question(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    question: str = Field(min_length=1)
    reference_answer: str | None = None
    evidence: list[Evidence] = Field(default_factory=list)
    tags: dict[str, TagValue] = Field(default_factory=dict)
    answerable: bool = True

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("evidence", mode="before")
    @classmethod
    def _no_evidence(cls, value: object) -> object:
        return [] if value is None else value

    @field_validator("tags", mode="before")
    @classmethod
    def _no_tags(cls, value: object) -> object:
        return {} if value is None else value

    @field_validator("answerable", mode="before")
    @classmethod
    def _answerable_default(cls, value: object) -> object:
        return True if value is None else value

    def segments(self) -> list[str]:
        """Segment names this question belongs to: `tagname=value` for every tag."""
        return [f"{key}={format_tag_value(value)}" for key, value in sorted(self.tags.items())]


def format_tag_value(value: TagValue) -> str:
    """Tag values as JSON writes them, strings unquoted: `true`, `1`, `single-passage`."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)


def parse_line(line: str, where: str) -> Question:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise QuestionFileError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(data, dict):
        raise QuestionFileError(f"{where}: expected a JSON object, got {type(data).__name__}")
    try:
        return Question.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'question'}: {err['msg']}" for err in exc.errors()
        )
        raise QuestionFileError(f"{where}: {problems}") from exc


def iter_questions(path: Path) -> Iterator[Question]:
    """Questions in file order; raises `QuestionFileError` at the first bad line or repeated id."""
    seen: dict[str, int] = {}
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise QuestionFileError(f"cannot read question file {path}: {exc.strerror}") from exc
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            question = parse_line(line, where)
            if question.id in seen:
                raise QuestionFileError(
                    f"{where}: question id {question.id!r} already used on line {seen[question.id]}"
                )
            seen[question.id] = number
            yield question


def sample_in_order(items: Sequence[T], k: int | None, seed: int) -> list[T]:
    """A seeded random sample of `k` items kept in their order (all of them when `k` is None or too big)."""
    if k is None or k >= len(items):
        return list(items)
    keep = set(random.Random(seed).sample(range(len(items)), k))
    return [item for i, item in enumerate(items) if i in keep]


def load_questions(path: Path, limit: int | None = None) -> list[Question]:
    """The first `limit` questions of a file (all of them when `limit` is None)."""
    questions: list[Question] = []
    for question in iter_questions(path):
        if limit is not None and len(questions) >= limit:
            break
        questions.append(question)
    if not questions:
        raise QuestionFileError(f"{path}: no questions in the file")
    return questions
