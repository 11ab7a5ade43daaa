"""Filing chunks: Part/Item sections, tables cut between rows with their caption, page numbers on every chunk.

The real 10-Qs are Apple's (committed under samples/) and NVIDIA's and Intel's from ../shared/corpora (skipped
when absent); they are chunked with the real MiniLM tokenizer at the default size. A small synthetic 10-K
excerpt, loaded through the same table labelling as a PDF page, runs everywhere with a whitespace tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import SAMPLES, shared_path

from assistant.chunks import Chunk, passage_text
from assistant.embedding import SentenceTransformerEmbedder
from ingest.chunking import Chunker, filing_units
from ingest.loading import LoadedDocument, Page, fix_table_headers, label_columns, load
from ingest.tables import is_table_row

SIZE = 200
AAPL_Q3 = SAMPLES / "sec-10q" / "2023 Q3 AAPL.pdf"
MDNA = "Part I — Item 2. Management’s Discussion and Analysis of Financial Condition and Results of Operations"


def words(text: str) -> list[str]:
    return text.split()


def lines_of(chunks: list[Chunk], page: int) -> set[str]:
    return {line.strip() for c in chunks if c.page_start == page for line in c.text.split("\n")}


# --- real 10-Qs ----------------------------------------------------------------------------------------------

_loaded: dict[Path, LoadedDocument] = {}


def loaded(path: Path) -> LoadedDocument:
    if path not in _loaded:
        _loaded[path] = load(path)
    return _loaded[path]


@pytest.fixture(scope="module")
def chunker(embedder: SentenceTransformerEmbedder) -> Chunker:
    return Chunker(embedder.tokenize, SIZE, 30)


@pytest.fixture(scope="module")
def aapl(chunker: Chunker) -> tuple[LoadedDocument, list[Chunk]]:
    doc = loaded(AAPL_Q3)
    return doc, chunker.chunk(doc, "aapl", "h")


def test_income_statement_row_sits_under_its_caption_on_page_4(aapl: tuple[LoadedDocument, list[Chunk]]) -> None:
    _, chunks = aapl
    hits = [c for c in chunks if "Total net sales: 81,797 (three months ended July 1, 2023)" in c.text]
    statement = [c for c in hits if c.page_start == 4]
    assert statement, [(c.page_start, c.text[:60]) for c in hits]
    for c in statement:
        assert (c.page_start, c.page_end) == (4, 4)
        assert c.section == "Part I — Item 1. Financial Statements"
        assert "CONDENSED CONSOLIDATED STATEMENTS OF OPERATIONS (Unaudited)" in c.text
        assert "(In millions, except number of shares" in c.text
        assert "Net sales:" in c.text  # the group label the row closes
    # the income statement is cut into several chunks, and every one carries the caption and units
    page4_rows = [c for c in chunks if c.page_start == 4 and any(is_table_row(x) for x in c.text.split("\n"))]
    assert len(page4_rows) > 3
    assert all("CONDENSED CONSOLIDATED STATEMENTS OF OPERATIONS" in c.text and "(In millions" in c.text
               for c in page4_rows)


def test_every_line_of_the_statement_page_lands_whole_in_a_chunk(aapl: tuple[LoadedDocument, list[Chunk]]) -> None:
    doc, chunks = aapl
    page = next(p for p in doc.pages if p.number == 4)
    whole = lines_of(chunks, 4)
    missing = [line for line in page.text.split("\n") if line.strip() and line.strip() not in whole]
    assert not missing


@pytest.mark.parametrize("path", [
    AAPL_Q3,
    pytest.param(("sec-10q", "2023 Q2 NVDA.pdf"), marks=pytest.mark.slow),
    pytest.param(("sec-10q", "2022 Q3 INTC.pdf"), marks=pytest.mark.slow),
], ids=["AAPL", "NVDA", "INTC"])
def test_no_table_row_is_split_and_no_chunk_is_too_long(path: Path | tuple[str, str], chunker: Chunker,
                                                          embedder: SentenceTransformerEmbedder) -> None:
    if isinstance(path, tuple):
        path = shared_path("corpora", path[0], "documents", path[1])
    doc = loaded(path)
    chunks = chunker.chunk(doc, path.stem, "h")
    for c in chunks:
        assert c.page_start is not None and c.page_start == c.page_end, c
        assert len(embedder.tokenize(c.text)) <= SIZE, (c.page_start, c.text[:80])
        assert len(embedder.tokenize(passage_text(c))) <= 256, c.page_start
    rows = 0
    for page in doc.pages:
        assert page.number is not None
        whole = lines_of(chunks, page.number)
        for line in page.text.split("\n"):
            if is_table_row(line):
                rows += 1
                assert line.strip() in whole, (page.number, line)
    assert rows > 150


def test_items_set_sections_and_the_contents_page_sets_none(aapl: tuple[LoadedDocument, list[Chunk]]) -> None:
    _, chunks = aapl
    by_page: dict[int, set[str | None]] = {}
    for c in chunks:
        assert c.page_start is not None
        by_page.setdefault(c.page_start, set()).add(c.section)
    assert by_page[3] == {None}  # the table of contents lists every Item with its page number
    for page in range(17, 22):
        assert by_page[page] == {MDNA}, page
    assert by_page[24] >= {  # four short Items on one page are no table of contents
        "Part II — Item 2. Unregistered Sales of Equity Securities, Use of Proceeds, and Issuer Purchases of "
        "Equity Securities",
        "Part II — Item 3. Defaults Upon Senior Securities", "Part II — Item 4. Mine Safety Disclosures",
        "Part II — Item 5. Other Information"}
    assert not any(c.text.strip() == "PART I — FINANCIAL INFORMATION" for c in chunks)  # heads Item 1's chunk


def test_balance_sheet_pieces_carry_caption_and_group(chunker: Chunker) -> None:
    doc = loaded(shared_path("corpora", "sec-10q", "documents", "2023 Q2 NVDA.pdf"))
    chunks = chunker.chunk(doc, "nvda", "h")
    piece = next(c for c in chunks if "Accounts payable: 1,929 (July 30, 2023)" in c.text)
    assert piece.page_start == 5
    assert piece.section == "Part I — Item 1. FINANCIAL STATEMENTS (UNAUDITED)"
    assert "CONDENSED CONSOLIDATED BALANCE SHEETS" in piece.text and "(In millions)" in piece.text
    assert "Current liabilities:" in piece.text
    risk = {c.section for c in chunks if c.page_start in range(36, 44)}
    assert risk == {"Part II — Item 1A. RISK FACTORS"}


def test_cross_reference_index_sets_intel_sections(chunker: Chunker) -> None:
    """Intel's 10-Q has no Item headings in its body, only a cross-reference index of printed pages."""
    doc = loaded(shared_path("corpora", "sec-10q", "documents", "2022 Q3 INTC.pdf"))
    sections = {u.page: u.section for u in filing_units(doc)}
    # printed page N is PDF page N + 2 (cover and contents come first)
    assert sections[5] == "Part I — Item 1. Financial Statements"  # printed p. 3, the income statement
    assert sections[28] == "Part I — Item 2. Management's Discussion and Analysis of Financial Condition and " \
                           "Results of Operations"
    assert sections[47] == "Part II — Item 6. Exhibits"
    assert sections[2] is None  # the contents page


# --- a synthetic 10-K excerpt, as PDF text ---------------------------------------------------------------------

CONTENTS = """\
TABLE OF CONTENTS
Part I
Item 1. Business 1
Item 1A. Risk Factors 5
Part II
Item 7. Management's Discussion and Analysis of Financial Condition and Results of Operations 20
Item 7A. Quantitative and Qualitative Disclosures About Market Risk 30
Item 8. Financial Statements and Supplementary Data 31
Item 9A. Controls and Procedures 60"""

MDNA_PAGE = """\
PART II — OTHER INFORMATION
Item 7. Management's Discussion and Analysis of Financial Condition and Results of Operations
The following discussion should be read together with Part I, Item 1A of this Form 10-K, under the heading
Part I, Item 1A "Risk Factors", and with the consolidated financial statements in Item 8.
Item 7A. Quantitative and Qualitative Disclosures About Market Risk
There have been no material changes to the Company's market risk during 2023.
Example Corp. | 2023 Form 10-K | 20"""

STATEMENT_PAGE = """\
Item 8.
Financial Statements and Supplementary Data
Example Corp.
CONSOLIDATED STATEMENTS OF OPERATIONS
(In millions, except per share amounts)
Years ended
December 31,
2023
December 31,
2022
Net sales:
Products 60,584 63,355
Services 21,213 19,604
Total net sales 81,797 82,959
Cost of sales:
Products 39,136 41,485
Services 6,248 5,589
Total cost of sales 45,384 47,074
Gross margin 36,413 35,885
Operating expenses:
Research and development 7,442 6,797
Selling, general and administrative 5,973 6,012
Total operating expenses 13,415 12,809
Operating income 22,998 23,076
Net income 19,881 19,442
See accompanying Notes to Consolidated Financial Statements.
Item 9A. Controls and Procedures
Management evaluated the effectiveness of the Company's disclosure controls and procedures as of the end of
the period covered by this report and concluded that they were effective."""


def synthetic_10k() -> LoadedDocument:
    pages = [Page(i, label_columns(fix_table_headers(text)))
             for i, text in enumerate([CONTENTS, MDNA_PAGE, STATEMENT_PAGE], start=1)]
    return LoadedDocument(path=Path("example-10k.pdf"), pages=pages, title="Example Corp. Form 10-K",
                          doc_type="filing")


def chunk(doc: LoadedDocument, size: int, tokenize: Callable[[str], list[str]] = words) -> list[Chunk]:
    return Chunker(tokenize, size, 10).chunk(doc, "ex", "h")  # type: ignore[arg-type]


def test_synthetic_10k_items_and_contents() -> None:
    chunks = chunk(synthetic_10k(), 200)
    sections = {(c.page_start, c.section) for c in chunks}
    assert {s for p, s in sections if p == 1} == {None}
    assert {s for p, s in sections if p == 2} == {
        "Part II — Item 7. Management's Discussion and Analysis of Financial Condition and Results of Operations",
        "Part II — Item 7A. Quantitative and Qualitative Disclosures About Market Risk"}
    # "Item 8." carries its title on the next line; a Part stays in force across pages
    assert {s for p, s in sections if p == 3} == {
        "Part II — Item 8. Financial Statements and Supplementary Data", "Part II — Item 9A. Controls and Procedures"}
    item7 = next(c for c in chunks if c.section and "Item 7." in c.section)
    assert item7.text.startswith("PART II — OTHER INFORMATION\nItem 7.")  # the Part heading heads the Item
    assert "Part I, Item 1A \"Risk Factors\"" in item7.text  # a reference in the text is no heading


def test_synthetic_table_is_cut_between_rows_under_its_caption() -> None:
    doc = synthetic_10k()
    statement = doc.pages[2].text
    assert "Total net sales: 81,797 (year ended December 31, 2023)" in statement  # labelled as the loader does
    chunks = [c for c in chunk(doc, 60) if c.page_start == 3]
    table = [c for c in chunks if any(is_table_row(x) for x in c.text.split("\n"))]
    assert len(table) >= 3
    for c in table:
        assert len(c.text.split()) <= 60
        assert "CONSOLIDATED STATEMENTS OF OPERATIONS\n(In millions, except per share amounts)" in c.text
    whole = lines_of(chunks, 3)
    assert all(line.strip() in whole for line in statement.split("\n") if is_table_row(line))
    # a piece that starts inside a group repeats the group's label; "Total …" closes it
    opex = next(c for c in table if "Selling, general and administrative:" in c.text)
    assert "Operating expenses:" in opex.text
    after_total = next(c for c in table if "Operating income:" in c.text)
    assert "Total operating expenses:" not in after_total.text and "Operating expenses:" not in after_total.text


def test_a_row_longer_than_a_chunk_is_cut_between_its_cells_under_its_label() -> None:
    row = "Total net sales 81,797 82,959 293,787 304,182 1,000 2,000"
    page = label_columns("CONSOLIDATED SALES\n(In millions)\n2023 2022 2021 2020 2019 2018\n" + row)
    doc = LoadedDocument(path=Path("x.pdf"), pages=[Page(1, page)], title="X", doc_type="filing")
    pieces = [c.text for c in chunk(doc, 16)]
    cut = [p for p in pieces if "Total net sales:" in p]
    assert len(cut) >= 2
    assert all(len(p.split()) <= 16 for p in pieces)
    for p in cut:
        assert p.startswith("CONSOLIDATED SALES\n(In millions)")
    cells = " | ".join(p.split("\n")[-1].removeprefix("Total net sales: ") for p in cut)
    assert all(v in cells for v in ("81,797 (2023)", "82,959 (2022)", "2,000 (2018)"))


def test_cross_reference_index_maps_items_to_printed_pages() -> None:
    index = "\n".join([
        "Form 10-Q Cross-Reference Index",
        "Part I - Financial Information",
        "Item 1. Financial Statements Pages 1 - 2",
        "Item 2. Management's Discussion and Analysis of Financial Condition and Results of Operations:",
        "Results of operations Pages 3",
        "Item 4. Controls and Procedures Page 4",
        "Part II - Other Information",
        "Item 1. Legal Proceedings Pages 2",
        "Item 6. Exhibits Page 4",
        "Signatures Page 4"])
    footers = ["Cover", "Financial Statements 1", "Financial Statements 2", "MD&A 3", "Other Key Information 4"]
    pages = [Page(i, f"Some text on this page.\n{footer}") for i, footer in enumerate(footers, start=1)]
    pages.append(Page(6, index))
    doc = LoadedDocument(path=Path("x.pdf"), pages=pages, title="X", doc_type="filing")
    sections = {u.page: u.section for u in filing_units(doc)}
    assert sections == {
        1: None,
        2: "Part I — Item 1. Financial Statements",
        3: "Part I — Item 1. Financial Statements",  # also Legal Proceedings' page: the first Item keeps it
        4: "Part I — Item 2. Management's Discussion and Analysis of Financial Condition and Results of Operations",
        5: "Part I — Item 4. Controls and Procedures",
        6: None,
    }


def test_a_part_heading_heads_the_item_below_it_across_blank_lines() -> None:
    """HTML filings put blank lines between blocks: "PART I" and "Item 2." still make one heading."""
    text = ("PART I — FINANCIAL INFORMATION\n\nItem 2. Management's Discussion and Analysis\n\n"
            "Widget revenue grew because of strong demand.")
    doc = LoadedDocument(path=Path("x.htm"), pages=[Page(1, text)], title="X", doc_type="filing")
    assert [(u.section, u.text) for u in filing_units(doc)] == [
        ("Part I — Item 2. Management's Discussion and Analysis", text)]
