"""Evidence matching (eval/matching.py) and the question format (eval/questions.py) on hand-made cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assistant.chunks import Chunk
from eval.matching import (
    MIN_CHUNK_PAIRS,
    TEXT_OVERLAP,
    coverage,
    match_ranks,
    matches,
    text_matches,
    tokens,
    word_pairs,
)
from eval.questions import Evidence, QuestionFileError, load_questions

RULE = (
    "A PFP Operator offering an exit facility on a Private Financing Platform must provide the following "
    "information to its PFP Clients: (a) information concerning the operation of, and restriction of "
    "access to, the exit facility feature; (b) a statement that any Specified Investment acquired through "
    "the exit facility remains subject to the restrictions concerning Exempt Offers from the ADGM."
)


def chunk(text: str = RULE, source: str = "COBS_VER15.150823.txt", page_start: int | None = None,
          page_end: int | None = None, section: str | None = None, index: int = 0) -> Chunk:
    return Chunk(text=text, source=source, doc_id=source, chunk_index=index, page_start=page_start,
                 page_end=page_end, section=section)


def test_tokens_are_distinct_lowercase_alphanumerics_of_two_chars_or_more() -> None:
    assert tokens("The (a) ADGM's 18.8.2 rule, the RULE") == {"the", "adgm", "18", "rule"}
    assert word_pairs("Paid (a) in FULL, paid in") == {"paid in", "in full", "full paid"}


@pytest.mark.parametrize(("pattern", "source", "expected"), [
    ("2023 Q3 AAPL.pdf", "2023 Q3 AAPL.pdf", True),
    ("*AAPL*.pdf", "2023 Q3 AAPL.pdf", True),
    ("*AAPL*.pdf", "2023 Q3 aapl.pdf", False),  # case-sensitive
    ("*AAPL*.pdf", "2023 Q3 AAPL.txt", False),
    ("2023 Q? AAPL.pdf", "2023 Q1 AAPL.pdf", True),
    ("COBS_VER15.150823.txt", "COBS_VER15.150823.txt.bak", False),
])
def test_source_is_a_case_sensitive_glob_on_the_file_name(pattern: str, source: str, expected: bool) -> None:
    assert matches(Evidence(source=pattern), chunk(source=source)) is expected


@pytest.mark.parametrize(("start", "end", "expected"), [
    (12, 12, True), (10, 14, True), (12, None, True), (13, 15, False), (9, 11, False), (None, None, False),
])
def test_page_range_must_cover_the_evidence_page(start: int | None, end: int | None, expected: bool) -> None:
    evidence = Evidence(source="*.pdf", page=12)
    assert matches(evidence, chunk(source="a.pdf", page_start=start, page_end=end)) is expected


def test_unpaged_evidence_matches_chunks_with_or_without_pages() -> None:
    evidence = Evidence(source="*.pdf")
    assert matches(evidence, chunk(source="a.pdf", page_start=3, page_end=4))
    assert matches(evidence, chunk(source="a.pdf"))


def test_chunk_holding_the_whole_passage_and_more_matches() -> None:
    bigger = "1.1 Other rules about fees and dates come first here. " + RULE + " Then 18.8.3 follows on."
    assert matches(Evidence(source="COBS*", text=RULE), chunk(text=bigger))


def test_chunk_that_is_part_of_a_long_passage_matches() -> None:
    part = RULE[: len(RULE) // 3]  # a third of the rule: too little of the evidence, all of the chunk
    assert coverage(word_pairs(RULE), word_pairs(part)) < TEXT_OVERLAP
    assert len(word_pairs(part)) >= MIN_CHUNK_PAIRS
    assert matches(Evidence(source="COBS*", text=RULE), chunk(text=part))


def test_tiny_chunk_does_not_match_as_part_of_a_passage() -> None:
    assert not text_matches(Evidence(source="x", text=RULE), chunk(text="PFP Operator exit facility"))


def test_unrelated_text_in_the_right_file_does_not_match() -> None:
    other = ("The Regulator may require a Person to pay a supplementary fee where it expects to incur "
             "substantial additional costs in considering an application or notification.")
    assert not matches(Evidence(source="COBS*", text=RULE), chunk(text=other))


def test_same_words_in_another_order_do_not_match() -> None:
    # A long chunk of the same rulebook holds most single words of a short rule; word pairs tell them apart.
    shuffled = " ".join(sorted(RULE.split()))
    assert coverage(tokens(RULE), tokens(shuffled)) == 1.0
    assert not text_matches(Evidence(source="x", text=RULE), chunk(text=shuffled))


def test_text_threshold_is_inclusive_at_exactly_sixty_percent() -> None:
    evidence = Evidence(source="x", text="alpha bravo charlie delta echo foxtrot")  # 5 pairs
    tail = " zulu yankee xray whiskey victor uniform tango sierra romeo"
    assert text_matches(evidence, chunk(text="alpha bravo charlie delta" + tail))  # 3 of 5 pairs
    assert not text_matches(evidence, chunk(text="alpha bravo charlie" + tail))  # 2 of 5


def test_one_word_evidence_needs_that_word() -> None:
    assert text_matches(Evidence(source="x", text="Supplementary"), chunk(text="a supplementary fee"))
    assert not text_matches(Evidence(source="x", text="Supplementary"), chunk(text="an annual fee"))
    assert text_matches(Evidence(source="x", text="(a)"), chunk(text="anything"))  # no word: silent


def test_text_comparison_ignores_case_and_punctuation() -> None:
    assert text_matches(Evidence(source="x", text=RULE.upper()), chunk(text=RULE.replace(",", " ; ")))


def test_right_text_in_the_wrong_file_or_page_does_not_match() -> None:
    assert not matches(Evidence(source="AML*", text=RULE), chunk())
    assert not matches(Evidence(source="*.pdf", page=2, text=RULE), chunk(source="a.pdf", page_start=3))


def test_section_decides_only_without_page_and_text() -> None:
    evidence = Evidence(source="COBS*", section="18.8.2")
    assert matches(evidence, chunk(text="18.8.2 A PFP Operator offering ..."))
    assert matches(evidence, chunk(text="intro\n18.8.2.(a) information", index=1))
    assert matches(evidence, chunk(text="no number here", section="Chapter 18 > 18.8.2"))
    assert not matches(evidence, chunk(text="18.8.20 Another rule"))
    assert not matches(evidence, chunk(text="As Rule 18.8.2 says"))  # a reference, not the rule
    assert not matches(evidence, chunk(text="x", section="1.18.8.2"))
    # with text given, the section is informative only
    assert matches(Evidence(source="COBS*", section="99.9.9", text=RULE), chunk())


def test_match_ranks_lists_every_evidence_a_chunk_matches_in_rank_order() -> None:
    evidence = [Evidence(source="*AAPL*.pdf"), Evidence(source="2023 Q3 AAPL.pdf", page=5),
                Evidence(source="*MSFT*.pdf")]
    chunks = [chunk(source="2023 Q1 NVDA.pdf", page_start=5), chunk(source="2023 Q3 AAPL.pdf", page_start=4,
              page_end=6), chunk(source="2023 Q1 AAPL.pdf", page_start=5)]
    assert match_ranks(evidence, chunks) == [[], [0, 1], [0]]
    assert match_ranks(evidence, []) == []
    assert match_ranks([], chunks) == [[], [], []]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_questions_load_in_the_shared_format_ignoring_unknown_fields(tmp_path: Path) -> None:
    rows = [
        {"id": "q1", "question": "Fee?", "reference_answer": None, "evidence": [
            {"source": "*AAPL*.pdf", "page": 3, "section": 18, "text": "x", "note": "ignored"}],
         "tags": {"dataset": "sec10q", "n_source_docs": 4, "table": True}, "extra": {"a": 1}},
        {"id": 7, "question": "No evidence", "evidence": [], "tags": {}, "answerable": False},
    ]
    path = write_lines(tmp_path / "q.jsonl", [json.dumps(r) for r in rows] + ["   "])
    first, second = load_questions(path)
    assert first.evidence[0] == Evidence(source="*AAPL*.pdf", page=3, section="18", text="x")
    assert first.segments() == ["dataset=sec10q", "n_source_docs=4", "table=true"]
    assert first.answerable and first.reference_answer is None
    assert second.id == "7" and not second.answerable and second.evidence == []
    assert len(load_questions(path, limit=1)) == 1


@pytest.mark.parametrize(("line", "message"), [
    ('{"id": "q", "question": "x"', "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"id": "q"}', "question"),
    ('{"id": "q", "question": "x", "evidence": [{"page": 2}]}', "evidence.0.source"),
    ('{"id": "q", "question": "x", "evidence": [{"source": "a", "page": 0}]}', "evidence.0.page"),
])
def test_malformed_line_is_reported_with_its_line_number(tmp_path: Path, line: str, message: str) -> None:
    good = json.dumps({"id": "ok", "question": "fine"})
    path = write_lines(tmp_path / "bad.jsonl", [good, "", line])
    with pytest.raises(QuestionFileError, match=rf"bad\.jsonl:3: .*{message}"):
        load_questions(path)


def test_repeated_id_and_empty_file_are_errors(tmp_path: Path) -> None:
    line = json.dumps({"id": "same", "question": "x"})
    with pytest.raises(QuestionFileError, match=r":2: question id 'same' already used on line 1"):
        load_questions(write_lines(tmp_path / "dup.jsonl", [line, line]))
    with pytest.raises(QuestionFileError, match="no questions"):
        load_questions(write_lines(tmp_path / "empty.jsonl", [""]))


def test_shared_question_files_load_unchanged() -> None:
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
    files = [shared / "sec-10q" / "questions.jsonl", shared / "adgm" / "obliqa_dev.jsonl"]
    if not all(f.is_file() for f in files):
        pytest.skip(f"shared question files not found under {shared}")
    sec, obliqa = (load_questions(f) for f in files)
    assert len(sec) == 195 and sec[0].evidence[0].source == "*AAPL*.pdf"
    assert len(obliqa) == 2788 and all(q.evidence and q.evidence[0].text for q in obliqa)
