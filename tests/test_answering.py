"""The pure parts of answering: citation extraction, refusal detection, prompt building, `Answerer.finish`.

No model and no index: these run in milliseconds. The end-to-end behaviour is in test_api.py.
"""

from __future__ import annotations

import re
from typing import Any, cast

import pytest

from assistant.answering import NOT_FOUND_MARK, REFUSAL_TEXT, Answerer, is_refusal
from assistant.chunks import Chunk, ScoredChunk
from assistant.embedding import Embedder
from assistant.prompts import load_prompt
from assistant.retrieval import Retriever
from assistant.settings import LLMSettings, RetrievalSettings
from assistant.sources import ANSWER_REMINDER, SNIPPET_CHARS, build_messages, extract_citations
from assistant.store import VectorStore

PROMPT = load_prompt("answer_v3")


def hit(n: int, text: str = "", **chunk: Any) -> ScoredChunk:
    fields: dict[str, Any] = {"source": f"doc{n}.pdf", "doc_id": f"d{n}", "chunk_index": n}
    fields.update(chunk)
    return ScoredChunk(Chunk(text=text or f"Text of source {n}.", **fields), score=0.9 - n / 100,
                       point_id=f"point-{n}")


APPLE = hit(1, "Total net sales   81,797\n  82,959   (in millions)", source="2023 Q3 AAPL.pdf", page_start=4,
            section="Part I — Item 1. Financial Statements")
FEES = hit(2, "Fees must be paid in USD.", source="FEES_VER16.181223.txt", section="1.2.5")
SPREAD = hit(3, "A table over two pages.", source="2023 Q2 AAPL.pdf", page_start=10, page_end=11)


@pytest.fixture
def answerer() -> Answerer:
    # `finish` uses neither the retriever nor the LLM; they are never called here.
    retriever = Retriever(embedder=cast(Embedder, None), store=cast(VectorStore, None))
    return Answerer(retriever=retriever, llm_factory=lambda: pytest.fail("finish must not call the LLM"),
                    retrieval=RetrievalSettings(_env_file=None), llm_settings=LLMSettings(_env_file=None))


# --- extract_citations ----------------------------------------------------------------------------------


def test_extract_citations_keeps_valid_marks() -> None:
    text, cited, dropped = extract_citations("Net sales were $81,797 million [1]. Fees are paid in USD [3].", 3)
    assert text == "Net sales were $81,797 million [1]. Fees are paid in USD [3]."
    assert cited == [1, 3]
    assert dropped == []


def test_extract_citations_drops_marks_to_missing_sources() -> None:
    text, cited, dropped = extract_citations("Sales rose [2]. Margins fell [9].", 3)
    assert cited == [2]
    assert dropped == [9]
    assert "[9]" not in text
    assert text == "Sales rose [2]. Margins fell."  # no space left dangling before the full stop


def test_extract_citations_drops_zero() -> None:
    text, cited, dropped = extract_citations("See [0].", 3)
    assert (cited, dropped) == ([], [0])
    assert text == "See."


@pytest.mark.parametrize("mark", ["[1, 2]", "[1,2]", "[1; 2]", "[1][2]", "[1] [2]"])
def test_extract_citations_handles_lists_and_runs(mark: str) -> None:
    text, cited, dropped = extract_citations(f"Both sources agree {mark}.", 3)
    assert cited == [1, 2]
    assert dropped == []
    assert re.findall(r"\[(\d+)\]", text) == ["1", "2"]
    assert "," not in text.split("agree")[1]  # "[1, 2]" is rewritten as "[1][2]"


def test_extract_citations_keeps_valid_part_of_a_mixed_list() -> None:
    text, cited, dropped = extract_citations("Revenue fell [2, 7].", 3)
    assert text == "Revenue fell [2]."
    assert (cited, dropped) == ([2], [7])


def test_extract_citations_lists_each_source_once_in_order_of_first_use() -> None:
    _, cited, _ = extract_citations("A [3]. B [1]. C [3][1]. D [2].", 3)
    assert cited == [3, 1, 2]


def test_extract_citations_without_marks() -> None:
    assert extract_citations("  No marks here.  ", 3) == ("No marks here.", [], [])


# --- is_refusal -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", [NOT_FOUND_MARK, "NOT_FOUND.", "Not found", "not found", "NOT FOUND", "", "  \n", "[1]", "[1][2]."]
)
def test_is_refusal_recognises_not_found_and_empty(raw: str) -> None:
    assert is_refusal(raw)


@pytest.mark.parametrize(
    "raw", ["Total net sales were $81,797 million [1].", "Fees are paid in USD [1].", "81,797 [1]"]
)
def test_is_refusal_accepts_answers(raw: str) -> None:
    assert not is_refusal(raw)


@pytest.mark.parametrize("raw", [
    "A Regulatory Filing not found in the Regulator's records by its due date is late; Rule 1.2.7 sets the fee [1].",
    "The amount of goodwill was not foundational to the result [2].",
])
def test_is_refusal_ignores_not_found_inside_an_answer(raw: str) -> None:
    # A cited answer that merely uses the words "not found" is an answer, not the NOT_FOUND reply.
    assert not is_refusal(raw)


# --- build_messages ---------------------------------------------------------------------------------------


def test_build_messages_numbers_sources_with_headers() -> None:
    messages = build_messages(PROMPT, "  What were net sales?  ", [APPLE, FEES, SPREAD], max_chars=6000)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == PROMPT.text
    user = messages[1]["content"]
    headers = re.findall(r"^\[\d+\] \(.*\)$", user, flags=re.M)
    assert len(headers) == 3
    # file name first, then pages, then section (a title, if the chunk has one, may sit between them)
    assert re.fullmatch(r"\[1\] \(2023 Q3 AAPL\.pdf, (.+, )?p\. 4, Part I — Item 1\. Financial Statements\)",
                        headers[0])
    assert re.fullmatch(r"\[2\] \(FEES_VER16\.181223\.txt, (.+, )?1\.2\.5\)", headers[1])
    assert re.fullmatch(r"\[3\] \(2023 Q2 AAPL\.pdf, (.+, )?pp\. 10-11\)", headers[2])
    assert f"{headers[0]}\nTotal net sales" in user
    assert f"{headers[1]}\nFees must be paid in USD." in user
    assert user.startswith("Sources:")
    assert user.endswith("Question: What were net sales?\n\n" + ANSWER_REMINDER)


def test_build_messages_shows_a_title_that_says_more_than_the_file_name() -> None:
    titled = hit(1, "Total net sales 81,797", source="2023 Q3 AAPL.pdf", page_start=4,
                 title="Apple Inc. Form 10-Q for the period ended July 1, 2023")
    plain = hit(2, "Fees in USD.", source="FEES_VER16.181223.txt", title="FEES_VER16.181223", section="1.2.5")
    user = build_messages(PROMPT, "q?", [titled, plain], max_chars=6000)[1]["content"]
    assert "[1] (2023 Q3 AAPL.pdf, Apple Inc. Form 10-Q for the period ended July 1, 2023, p. 4)" in user
    assert "[2] (FEES_VER16.181223.txt, 1.2.5)" in user


def test_build_messages_respects_max_chars() -> None:
    hits = [hit(n, f"{n}" * 900) for n in range(1, 6)]  # 5 sources of 900 characters each
    user = build_messages(PROMPT, "q?", hits, max_chars=2100)[1]["content"]
    headers = re.findall(r"^\[(\d+)\] \(", user, flags=re.M)
    assert headers == ["1", "2", "3"]  # 900 + 900 + 300: the third is cut, the rest left out
    assert "1" * 900 in user and "2" * 900 in user
    assert "3" * 300 in user and "3" * 301 not in user
    assert "4" * 10 not in user and "5" * 10 not in user


def test_build_messages_always_shows_the_best_source() -> None:
    user = build_messages(PROMPT, "q?", [hit(1, "x" * 3000), hit(2, "y" * 50)], max_chars=500)[1]["content"]
    assert "x" * 500 in user and "x" * 501 not in user
    assert "[2] (" not in user  # only 0 characters of room were left


# --- Answerer.finish --------------------------------------------------------------------------------------


def test_finish_keeps_cited_sources(answerer: Answerer) -> None:
    answer = answerer.finish("Total net sales were $81,797 million [1].", [APPLE, FEES], "m", {"generate": 5})
    assert not answer.refused
    assert answer.warnings == []
    assert answer.answer == "Total net sales were $81,797 million [1]."
    [c] = answer.citations
    assert (c.n, c.point_id, c.source, c.pages, c.section) == (
        1, "point-1", "2023 Q3 AAPL.pdf", [4], "Part I — Item 1. Financial Statements"
    )
    assert c.snippet == "Total net sales 81,797 82,959 (in millions)"  # whitespace collapsed
    assert c.score == round(APPLE.score, 4)
    assert answer.model == "m" and answer.prompt_version == PROMPT.version
    assert answer.retrieved == [APPLE, FEES]
    assert answer.timings_ms == {"generate": 5}


def test_finish_warns_when_no_source_is_cited(answerer: Answerer) -> None:
    answer = answerer.finish("Net sales fell in the quarter.", [APPLE], "m", {})
    assert not answer.refused
    assert answer.citations == []
    assert len(answer.warnings) == 1
    assert "cites no source" in answer.warnings[0]


def test_finish_attributes_uncited_figures_to_the_source_printing_them(answerer: Answerer) -> None:
    answer = answerer.finish("Total net sales were $81,797 million. Fees are due in USD.", [FEES, APPLE], "m", {})
    assert answer.answer == "Total net sales were $81,797 million [2]. Fees are due in USD."
    assert [(c.n, c.source) for c in answer.citations] == [(2, APPLE.chunk.source)]
    assert any("added where the answer's figures appear verbatim" in w for w in answer.warnings)


def test_finish_keeps_citations_to_sources_the_model_saw(answerer: Answerer) -> None:
    answer = answerer.finish("Fees are due in USD [1]. Sales were 81,797 [2].", [FEES, APPLE], "m", {}, shown=1)
    assert [c.n for c in answer.citations] == [1]
    assert "[2]" not in answer.answer and any("do not exist" in w for w in answer.warnings)


def test_finish_warns_about_dropped_citations(answerer: Answerer) -> None:
    answer = answerer.finish("Fees are paid in USD [2][5].", [APPLE, FEES], "m", {})
    assert [c.n for c in answer.citations] == [2]
    assert answer.citations[0].source == "FEES_VER16.181223.txt"
    assert any("[5]" in w for w in answer.warnings)
    assert not any("cites no source" in w for w in answer.warnings)


def test_finish_only_dropped_citations_warns_twice(answerer: Answerer) -> None:
    answer = answerer.finish("Fees are paid in USD [4].", [APPLE, FEES], "m", {})
    # the citation to a source that does not exist goes; the source holding the sentence's words is cited
    assert [c.n for c in answer.citations] == [2]
    assert answer.answer == "Fees are paid in USD [2]."
    assert len(answer.warnings) == 2 and "removed citations" in " ".join(answer.warnings)
    unmatched = answerer.finish("Directors meet quarterly [4].", [APPLE, FEES], "m", {})
    assert unmatched.citations == [] and unmatched.answer == "Directors meet quarterly."
    assert len(unmatched.warnings) == 2  # removed citations; cites no source


@pytest.mark.parametrize("raw", ["NOT_FOUND", "", "Not found."])
def test_finish_refusal(answerer: Answerer, raw: str) -> None:
    answer = answerer.finish(raw, [APPLE], "m", {})
    assert answer.refused
    assert answer.answer == REFUSAL_TEXT
    assert answer.citations == [] and answer.warnings == []
    assert answer.retrieved == [APPLE]  # kept for the answer log


def test_finish_snippet_is_bounded(answerer: Answerer) -> None:
    long = hit(1, "word " * 500)
    [c] = answerer.finish("It says so [1].", [long], "m", {}).citations
    assert len(c.snippet) == SNIPPET_CHARS
    assert c.pages == []  # a text file has no pages
