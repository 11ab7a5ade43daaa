"""Prompt packing: the sources that fit the model's window, best first, cut only between lines.

Most tests count words (a counter is a plain function of text, so the arithmetic is easy to follow); the
last one packs a real prompt with the real SmolLM2 tokenizer and checks it, as the model's own chat template
renders it, against the model's window.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from assistant.answering import render_messages, source_header
from assistant.chunks import Chunk, ScoredChunk
from assistant.llm import LlamaCppLLM
from assistant.models import fetch
from assistant.packing import cut_to_fit, is_table_row, pack_sources
from assistant.prompts import load_prompt
from assistant.sources import source_block


def words(text: str) -> int:
    return len(text.split())


TABLE = """Apple Inc.
CONDENSED CONSOLIDATED STATEMENTS OF OPERATIONS (Unaudited)
(In millions, except number of shares, which are reflected in thousands, and per-share amounts)
Three Months Ended Nine Months Ended
Net sales:
Products: $ 60,584 (three months ended July 1, 2023) | $ 63,355 (three months ended June 25, 2022) | $ 230,901 (nine months ended July 1, 2023) | $ 245,241 (nine months ended June 25, 2022)
Services: 21,213 (three months ended July 1, 2023) | 19,604 (three months ended June 25, 2022) | 62,886 (nine months ended July 1, 2023) | 58,941 (nine months ended June 25, 2022)
Total net sales: 81,797 (three months ended July 1, 2023) | 82,959 (three months ended June 25, 2022) | 293,787 (nine months ended July 1, 2023) | 304,182 (nine months ended June 25, 2022)
Cost of sales:
Products: 39,136 (three months ended July 1, 2023) | 41,485 (three months ended June 25, 2022) | 146,696 (nine months ended July 1, 2023) | 155,084 (nine months ended June 25, 2022)
Services: 6,248 (three months ended July 1, 2023) | 5,719 (three months ended June 25, 2022) | 18,370 (nine months ended July 1, 2023) | 16,411 (nine months ended June 25, 2022)
Total cost of sales: 45,384 (three months ended July 1, 2023) | 47,204 (three months ended June 25, 2022) | 165,066 (nine months ended July 1, 2023) | 171,495 (nine months ended June 25, 2022)
Gross margin: 36,413 (three months ended July 1, 2023) | 35,755 (three months ended June 25, 2022) | 128,721 (nine months ended July 1, 2023) | 132,687 (nine months ended June 25, 2022)"""  # noqa: E501
TABLE_HEAD = TABLE.split("\n")[:4]  # company, caption, units, column headers

PROSE = (
    "Net sales decreased 1% compared to the same quarter a year ago, mainly because of lower Mac and iPad "
    "sales, partly offset by higher Services revenue. Gross margin rose to 44.5% of net sales."
)


def hit(text: str, n: int, *, score: float = 1.0, section: str | None = None) -> ScoredChunk:
    chunk = Chunk(text=text, source=f"2023 Q3 AAPL {n}.pdf", doc_id=f"doc-{n}", chunk_index=n, page_start=n,
                  section=section)
    return ScoredChunk(chunk, score, point_id=f"p{n}")


def prose(n: int, length: int) -> ScoredChunk:
    """A chunk of `length` words."""
    return hit(" ".join(f"w{n}x{i}" for i in range(length)), n)


def cost(texts: list[str], hits: list[ScoredChunk]) -> int:
    """What the shown sources cost by the packing rule: the block (tags, header line, text) and separator each."""
    return sum(words(source_block(n, h, t)) + words("\n\n")
               for n, (h, t) in enumerate(zip(hits, texts, strict=False), start=1))


def test_every_source_is_shown_whole_when_all_fit() -> None:
    hits = [prose(1, 40), hit(f"  {TABLE}\n", 2), prose(3, 40)]
    texts = pack_sources(hits, fixed_tokens=100, context_tokens=4096, answer_tokens=300, count=words)
    assert texts == [hits[0].chunk.text, TABLE, hits[2].chunk.text]


def test_the_lowest_ranked_are_dropped_first_and_the_rest_fit() -> None:
    hits = [prose(n, 100) for n in range(1, 6)]
    each = cost(["x"], hits[:1]) - 1 + 100  # one source: header + 100 words
    budget = dict(fixed_tokens=50, answer_tokens=100, margin_tokens=10)
    context = 50 + 100 + 10 + 3 * each + each // 2  # room for three and a half sources
    texts = pack_sources(hits, **budget, context_tokens=context, count=words)
    assert texts == [h.chunk.text for h in hits[:3]]
    assert 50 + 100 + 10 + cost(texts, hits) <= context


def test_a_source_that_does_not_fit_ends_the_sources_even_if_a_later_one_would() -> None:
    hits = [prose(1, 50), prose(2, 400), prose(3, 5)]
    texts = pack_sources(hits, fixed_tokens=0, context_tokens=200, answer_tokens=50, margin_tokens=0, count=words)
    assert texts == [hits[0].chunk.text]  # a prefix of the ranking: [3] is not shown in place of [2]


def test_the_header_line_is_counted() -> None:
    long_section = "Item 2. Management's Discussion and Analysis of Financial Condition and Results of Operations"
    first, second = prose(1, 20), hit(" ".join(["word"] * 20), 2, section=long_section)
    room_for_text_only = cost(["x"], [first]) - 1 + 20 + 20 + 3  # the second text fits, not with its header
    texts = pack_sources([first, second], fixed_tokens=0, context_tokens=room_for_text_only, answer_tokens=0,
                         margin_tokens=0, count=words)
    assert words(source_header(2, second)) > 3
    assert texts == [first.chunk.text]


def test_a_table_too_big_for_the_window_is_cut_between_rows_under_its_headers() -> None:
    lines = TABLE.split("\n")
    best = hit(TABLE, 1)
    fixed = 10 + 20 + 5  # fixed part, answer, margin
    least = fixed + cost(["\n".join(lines[:6])], [best])  # the heads, "Net sales:" and the first row
    whole = fixed + cost([TABLE], [best])
    for context in range(least, whole, 7):
        (text,) = pack_sources([best, prose(2, 30)], fixed_tokens=10, context_tokens=context, answer_tokens=20,
                               margin_tokens=5, count=words)
        shown = text.split("\n")
        assert shown == lines[: len(shown)], "a cut keeps whole lines, from the top"
        assert shown[:4] == TABLE_HEAD, "caption, units and column headers stay"
        assert any(is_table_row(x) for x in shown), "and at least the first row"
        assert len(shown) < len(lines)
        assert fixed + cost([text], [best]) <= context


def test_the_best_source_is_always_shown() -> None:
    hits = [prose(1, 500), prose(2, 10)]
    (text,) = pack_sources(hits, fixed_tokens=0, context_tokens=120, answer_tokens=20, margin_tokens=0, count=words)
    assert text and hits[0].chunk.text.startswith(text)  # a line of running text is cut between words
    assert cost([text], hits) <= 100


def test_a_row_is_never_cut_inside() -> None:
    row = TABLE.split("\n")[5]
    assert is_table_row(row)
    assert cut_to_fit(row, 10, words) == ""
    assert cut_to_fit(f"{row}\n{row}", words(row) + 1, words) == row
    assert cut_to_fit(PROSE, 5, words) == " ".join(PROSE.split()[:5])


def test_table_rows_are_recognised() -> None:
    rows = [x for x in TABLE.split("\n") if is_table_row(x)]
    assert len(rows) == 7
    assert is_table_row("Total net sales 81,797 82,959 293,787 304,182")
    assert is_table_row("Total | 1,496.5 | 1,202.9")
    for line in [*TABLE_HEAD, "Net sales:", PROSE, "Rule 18.8.2 applies from 2024."]:
        assert not is_table_row(line), line


def test_no_sources() -> None:
    assert pack_sources([], fixed_tokens=0, context_tokens=100, answer_tokens=10, count=words) == []


# --- with the real tokenizer ------------------------------------------------------------------------------

MODELS_DIR = Path(__file__).resolve().parents[1] / "data" / "models"


@pytest.fixture(scope="module")
def smollm() -> LlamaCppLLM:
    path = MODELS_DIR / "smollm2-135m-instruct.gguf"
    if not path.is_file():
        path = fetch("smollm2-135m-instruct", MODELS_DIR)
    return LlamaCppLLM(path, name="smollm2-135m-instruct", threads=2, context_tokens=2048, timeout_s=120)


def test_a_packed_prompt_fits_the_models_window(smollm: LlamaCppLLM) -> None:
    prompt, question, max_tokens = load_prompt("answer_v1"), "What were total net sales in Q3 2023?", 64
    hits = [hit(TABLE, 1), *(hit(f"{PROSE} (copy {n})", n) for n in range(2, 30))]
    fixed = sum(smollm.count_tokens(m["content"]) for m in render_messages(prompt, question, [], []))
    texts = pack_sources(hits, fixed_tokens=fixed, context_tokens=smollm.context_tokens, answer_tokens=max_tokens,
                         count=smollm.count_tokens)
    assert 1 < len(texts) < len(hits)
    assert texts[0] == TABLE
    messages = render_messages(prompt, question, hits, texts)
    # The whole prompt as the model reads it: its chat template (llama.cpp's /apply-template), tokenized.
    address = smollm._server.listening_address
    templated = httpx.post(f"{address}/apply-template", json={"messages": messages}, timeout=30).json()["prompt"]
    prompt_tokens = smollm.count_tokens(templated)
    assert prompt_tokens + max_tokens <= smollm.context_tokens
    assert prompt_tokens + max_tokens > smollm.context_tokens - 200, "and it uses the window"
