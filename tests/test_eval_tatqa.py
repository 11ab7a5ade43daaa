"""The TAT-QA answer set builder and the LLM judge's verdict parsing (no models needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.cli import main
from eval.judge import load_judge_prompt, parse_verdict
from eval.questions import load_questions
from eval.tatqa import TatqaError, build_set, load_contexts, reference_answer

CONTEXT = {
    "table": {"uid": "t-1", "table": [["", "", "Years Ended September 30,", ""], ["", "2019", "2018", "2017"],
                                      ["Total sales", "$1,496.5", "$1,202.9", "$1,107.7"]]},
    "paragraphs": [{"uid": "p2", "order": 2, "text": "The table below presents sales <in millions>:"},
                   {"uid": "p1", "order": 1, "text": "Substantially all of our contracts are fixed-price."}],
    "questions": [
        {"uid": "q2", "order": 2, "question": "What is the change in total sales from 2018 to 2019?",
         "answer": 293.6, "answer_type": "arithmetic", "answer_from": "table", "scale": "million"},
        {"uid": "q1", "order": 1, "question": "What is the amount of total sales in 2019?",
         "answer": ["$1,496.5"], "answer_type": "span", "answer_from": "table", "scale": "million"},
        {"uid": "q3", "order": 3, "question": "What is the percentage change?", "answer": -12.35,
         "answer_type": "arithmetic", "answer_from": "table", "scale": "percent"},
    ],
}


@pytest.mark.parametrize(("question", "expected"), [
    ({"answer": ["$1,496.5"], "scale": "million"}, "$1,496.5 million"),
    ({"answer": 293.6, "scale": "million"}, "293.6 million"),
    ({"answer": -12.35, "scale": "percent"}, "-12.35%"),
    ({"answer": ["3.2%"], "scale": "percent"}, "3.2%"),
    ({"answer": 4, "scale": ""}, "4"),
    ({"answer": 1577.0, "scale": "thousand"}, "1,577 thousand"),
    ({"answer": ["fixed-price", "cost-plus"], "scale": ""}, "fixed-price, cost-plus"),
])
def test_reference_answer_keeps_the_scale(question: dict[str, object], expected: str) -> None:
    assert reference_answer(question) == expected


def test_build_set_writes_documents_and_questions_in_the_shared_format(tmp_path: Path) -> None:
    source = tmp_path / "dev.json"
    source.write_text(json.dumps([CONTEXT]), encoding="utf-8")
    built = build_set(load_contexts(source), tmp_path / "set")
    assert (built.documents, built.questions) == (1, 3)
    page = (built.documents_dir / "tatqa-t-1.html").read_text(encoding="utf-8")
    assert "<td>$1,496.5</td>" in page and "&lt;in millions&gt;" in page
    assert page.index("fixed-price") < page.index("sales &lt;in")  # paragraphs in their order
    questions = load_questions(built.questions_path)
    assert [q.id for q in questions] == ["tatqa-q1", "tatqa-q2", "tatqa-q3"]
    assert questions[0].evidence[0].source == "tatqa-t-1.html"
    assert questions[1].tags == {"dataset": "tatqa", "answer_type": "arithmetic", "answer_from": "table",
                                 "scale": "million"}


def test_build_set_samples_deterministically(tmp_path: Path) -> None:
    contexts = [dict(CONTEXT, table={**CONTEXT["table"], "uid": f"t-{i}"},  # type: ignore[dict-item]
                     questions=[dict(q, uid=f"{q['uid']}-{i}") for q in CONTEXT["questions"]])  # type: ignore[attr-defined]
                for i in range(10)]
    first = build_set(contexts, tmp_path / "a", sample=7, seed=3).questions_path.read_text(encoding="utf-8")
    again = build_set(contexts, tmp_path / "b", sample=7, seed=3).questions_path.read_text(encoding="utf-8")
    other = build_set(contexts, tmp_path / "c", sample=7, seed=4).questions_path.read_text(encoding="utf-8")
    assert first == again != other and len(first.splitlines()) == 7


def test_tatqa_command_reports_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}', encoding="utf-8")
    assert main(["tatqa", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "expected a list of TAT-QA contexts" in capsys.readouterr().err
    with pytest.raises(TatqaError, match="cannot read"):
        load_contexts(tmp_path / "missing.json")


@pytest.mark.parametrize(("reply", "correct", "supported"), [
    ("CORRECT: yes\nSUPPORTED: no", True, False),
    ("**CORRECT:** No\n**SUPPORTED:** Yes", False, True),
    ("CORRECT: n/a\nSUPPORTED: yes", None, True),
    ("The answer looks right.", None, None),
    ("SUPPORTED: yes", None, True),
])
def test_judge_verdicts_are_parsed_strictly(reply: str, correct: bool | None, supported: bool | None) -> None:
    assert parse_verdict(reply) == {"correct": correct, "supported": supported}


def test_judge_prompt_is_versioned() -> None:
    prompt = load_judge_prompt()
    assert prompt.version.startswith("judge_v1@") and "SUPPORTED" in prompt.text
