"""The parsers fuzzed by Hypothesis: whatever the input, they fail only with a reason, never crash or hang.

- `ingest.loading.load`: arbitrary bytes under every supported extension, and real PDFs (a page of Apple's 10-Q,
  a small hand-built one) with bytes flipped, inserted and cut off, read by PDFium and by pypdf in a child process
  under time and memory limits: a LoadedDocument or a one-line LoadError, nothing else.
- `ingest.chunking.Chunker` over documents made of the lines real filings and rulebooks hold (rule numbers, Part and
  Item headings, table rows, period headers) mixed with arbitrary text, with the real MiniLM tokenizer.
- `ingest.tables`: labelling, splitting and cutting tables never loses or invents a line.
- `assistant.uploads.safe_name` and `check_collection`: no path traversal, no absolute path, no NUL or control
  character, no hidden file, no Windows device name, bounded length; idempotent.
- `assistant.store.build_filter`: any JSON is a Filter or an InvalidFilter.

Generation is derandomized with a bounded number of examples, so a run takes the same inputs every time.
"""

from __future__ import annotations

import io
import re
import unicodedata
import zlib
from pathlib import Path
from typing import Any

import pytest
from conftest import SAMPLES
from crafted import assemble
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pypdf import PdfReader, PdfWriter
from qdrant_client import models

from assistant.embedding import SentenceTransformerEmbedder
from assistant.errors import InvalidCollectionName, InvalidFilter
from assistant.store import FILTERABLE_FIELDS, build_filter
from assistant.uploads import MAX_NAME, check_collection, safe_name
from ingest.chunking import Chunker
from ingest.loading import SUPPORTED, Limits, LoadedDocument, LoadError, Page, describe, load
from ingest.tables import cut_table, label_columns, label_table, split_tables

AAPL_Q3 = SAMPLES / "sec-10q" / "2023 Q3 AAPL.pdf"
FAST = settings(max_examples=150, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
# Each PDF example starts a parser process: fewer of them, each bounded by the limits below.
PDF = settings(FAST, max_examples=40)
PDF_LIMITS = Limits(max_bytes=5_000_000, timeout_s=20, memory_mb=1024)
WINDOWS_DEVICES = re.compile(r"(?:CON|PRN|AUX|NUL|COM\d|LPT\d)(?:\..*)?", re.I)


def one_line_reason(exc: LoadError) -> None:
    reason = str(exc)
    assert reason.strip() and "\n" not in reason, repr(reason)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzzed-files")


# --- load: arbitrary bytes, mutated PDFs ----------------------------------------------------------------------


def minimal_pdf(text: str = "Total net sales 81,797 81,434") -> bytes:
    """A one-page PDF written by hand: catalog, page tree, page, font, a Flate content stream."""
    content = zlib.compress(f"BT /F1 12 Tf 72 700 Td ({text}) Tj ET".encode())
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> "
               b"/Contents 5 0 R >>",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
               b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(content) + content + b"\nendstream"]
    return assemble(objects)


def income_statement() -> bytes:
    writer = PdfWriter()
    writer.add_page(PdfReader(AAPL_Q3).pages[3])
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


SEEDS = {"minimal": minimal_pdf(), "income-statement": income_statement()}


@st.composite
def mutated_pdfs(draw: st.DrawFn) -> bytes:
    """A real PDF with some bytes replaced, some inserted, and maybe its end cut off."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 8))):
        at = draw(st.integers(0, len(data) - 1))
        data[at:at + 1] = draw(st.binary(min_size=0, max_size=4))
    if draw(st.booleans()):
        del data[draw(st.integers(8, len(data))):]
    return bytes(data)


def loaded_or_reason(path: Path, parser: Any = "pdfium", limits: Limits | None = None) -> LoadedDocument | None:
    """What every file must come to: a document with text, or a LoadError with a one-line reason."""
    try:
        doc = load(path, parser, limits)
    except LoadError as exc:
        one_line_reason(exc)
        return None
    assert any(p.text.strip() for p in doc.pages)
    return doc


@FAST
@given(data=st.binary(max_size=4096), suffix=st.sampled_from(sorted(SUPPORTED)))
def test_arbitrary_bytes_load_or_fail_with_a_reason(folder: Path, data: bytes, suffix: str) -> None:
    path = folder / f"arbitrary{suffix}"
    path.write_bytes(data)
    loaded_or_reason(path, limits=PDF_LIMITS if suffix == ".pdf" else None)


@PDF
@given(data=mutated_pdfs(), parser=st.sampled_from(["pdfium", "pypdf"]))
def test_mutated_pdfs_load_or_fail_with_a_reason(folder: Path, data: bytes, parser: str) -> None:
    path = folder / "mutated.pdf"
    path.write_bytes(data)
    loaded_or_reason(path, parser, PDF_LIMITS)


def test_the_pdf_seeds_load() -> None:
    """The mutations start from PDFs that load, so they reach deep into the parsers."""
    for name, data in SEEDS.items():
        assert data.startswith(b"%PDF-"), name
    doc = loaded_or_reason_from_bytes(SEEDS["minimal"])
    assert doc is not None and "81,797" in doc.pages[0].text


def loaded_or_reason_from_bytes(data: bytes) -> LoadedDocument | None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed.pdf"
        path.write_bytes(data)
        return loaded_or_reason(path, "pdfium", PDF_LIMITS)


TAGS = ["table", "tr", "td", "th", "p", "div", "span", "br", "script", "style", "b", "li", "h1", "head"]


@st.composite
def html_documents(draw: st.DrawFn) -> str:
    """HTML of nested tags (tables, page breaks, scripts) and text, often malformed: unclosed tags, stray ends."""
    parts = []
    for _ in range(draw(st.integers(0, 60))):
        tag = draw(st.sampled_from(TAGS))
        kind = draw(st.sampled_from(["open", "close", "text", "break", "figure"]))
        if kind == "open":
            parts.append(f"<{tag}>")
        elif kind == "close":
            parts.append(f"</{tag}>")
        elif kind == "break":
            parts.append('<div style="page-break-before: always"></div>')
        elif kind == "figure":
            parts.append(draw(st.sampled_from(["$", "81,797", "(1,234)", "—", "%", "July 1, 2023", "2022"])))
        else:
            parts.append(draw(st.text(max_size=40)))
    return "".join(parts)


@FAST
@given(html=html_documents())
def test_html_loads_or_fails_with_a_reason(folder: Path, html: str) -> None:
    path = folder / "page.html"
    path.write_text(html, encoding="utf-8")
    loaded_or_reason(path)


@pytest.mark.parametrize(("html", "reason"), [
    ("<div>" * 100_000 + "text" + "</div>" * 100_000, "HTML nested more than 512 elements deep"),
    ("<div><p><li>" * 30_000 + "text", "HTML nested more than 512 elements deep (unclosed tags?)"),
    ("<table><tr><td>" * 9 + "1,234" + "</td></tr></table>" * 9, "HTML tables nested 9 deep, more than 8"),
])
def test_deeply_nested_html_fails_with_a_reason(folder: Path, html: str, reason: str) -> None:
    """Read in a few seconds and refused: these took hours (bs4's tree edits cost the depth of the tree)."""
    path = folder / "nested.html"
    path.write_text(html, encoding="utf-8")
    with pytest.raises(LoadError, match=re.escape(reason)):
        load(path)


@pytest.mark.timeout(120)
def test_a_long_flat_page_is_read_in_linear_time(folder: Path) -> None:
    """100,000 paragraphs: about 3 s (inserting a line break after each took minutes)."""
    path = folder / "flat.html"
    path.write_text("<p>Net sales rose.</p>" * 100_000, encoding="utf-8")
    [page] = load(path).pages
    assert page.text.count("Net sales rose.") == 100_000


def test_page_breaks_tables_and_scripts_of_html_filings(folder: Path) -> None:
    path = folder / "filing.html"
    path.write_text(
        "<html><head><title>x</title></head><body><p>Cover page</p><script>alert(1)</script>"
        '<div style="page-break-after: always"></div>'
        "<table><tr><td></td><td>July 1, 2023</td><td>June 25, 2022</td></tr>"
        "<tr><td>Total net sales</td><td>$</td><td>81,797</td><td>$</td><td>82,959</td></tr></table>"
        "<p>Notes<br>follow</p></body></html>", encoding="utf-8")
    cover, statements = load(path).pages
    assert cover.text == "Cover page" and "alert" not in cover.text
    assert "Total net sales" in statements.text and "81,797" in statements.text
    assert statements.text.endswith("Notes\nfollow")


# --- chunking: lines of filings and rulebooks, and arbitrary text ---------------------------------------------

FILING_LINES = [
    "UNITED STATES SECURITIES AND EXCHANGE COMMISSION", "FORM 10-Q", "PART I — FINANCIAL INFORMATION",
    "Item 1. Financial Statements", "Item 2. Management's Discussion and Analysis", "Table of Contents",
    "Three Months Ended Nine Months Ended", "July 1, 2023 | June 25, 2022 | July 1, 2023 | June 25, 2022",
    "July 1,", "2023", "Total net sales 81,797 82,959 293,787 304,182", "Net sales:", "Products $ 60,584 $ 63,355",
    "Total cost of sales (46,914) (47,074)", "(in millions, except per-share amounts)",
    "Apple Inc. | Q3 2023 Form 10-Q | 4",
    "1.2.1\tThe Regulator may disclose Confidential Information.", "1.2.1.Guidance.1", "(a)\tto a person", "CHAPTER 2",
    "2.\tCONFIDENTIALITY", "# Heading", "## Sub-heading", "100) A numbered paragraph of guidance.", "Guidance", "",
    "x" * 500, "word " * 300,
]


@st.composite
def documents(draw: st.DrawFn) -> LoadedDocument:
    line = st.one_of(st.sampled_from(FILING_LINES), st.text(max_size=120))
    pages = [Page(number, "\n".join(draw(st.lists(line, max_size=40))))
             for number in range(1, draw(st.integers(1, 4)) + 1)]
    name = draw(st.sampled_from(["2023 Q3 AAPL.pdf", "CONF_VER03.18042019.txt", "notes.md", "Guidance.txt"]))
    if draw(st.booleans()):
        pages = [Page(None, "\n\n".join(p.text for p in pages))]
    doc = LoadedDocument(path=Path(name), pages=pages, title=Path(name).stem)
    describe(doc)
    doc.doc_type = draw(st.sampled_from([doc.doc_type, "filing", "regulation", "document"]))
    return doc


@pytest.fixture(scope="module")
def chunkers(embedder: SentenceTransformerEmbedder) -> dict[str, Chunker]:
    return {"small": Chunker(embedder.tokenize, 48, 8), "packed": Chunker(embedder.tokenize, 120, 20, pack_rules=True)}


@FAST
@given(doc=documents(), kind=st.sampled_from(["small", "packed"]))
def test_any_document_chunks(chunkers: dict[str, Chunker], doc: LoadedDocument, kind: str) -> None:
    chunks = chunkers[kind].chunk(doc, "doc", "hash")
    numbers = {p.number for p in doc.pages}
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.text.strip(), c
        assert c.page_start in numbers | {None} and c.page_start == c.page_end  # rules are not paged
    words = {w for p in doc.pages for w in p.text.split()}
    assert not chunks or words, "chunks out of no text"


# --- tables ------------------------------------------------------------------------------------------------------

table_line = st.one_of(st.sampled_from(FILING_LINES[6:16]), st.text(alphabet=" $,.()%—-0123456789abcXYZ|:\t",
                                                                     max_size=80))


@FAST
@given(lines=st.lists(table_line, max_size=30))
def test_tables_lose_no_line(lines: list[str]) -> None:
    text = "\n".join(lines)
    labelled = label_columns(text)
    assert len(labelled.split("\n")) == len(text.split("\n"))
    blocks = split_tables(lines)
    assert [x for block, _ in blocks for x in block] == lines
    for block, context in blocks:
        if context is not None:
            assert all(x in block for x in context)
            pieces = cut_table("\n".join(block), context, 40, lambda s: len(s.split()))
            kept = {w for piece in pieces for w in piece.split()}
            assert {w for x in block for w in x.split() if w != "|"} <= kept | {"|"}


@FAST
@given(grid=st.lists(st.lists(st.one_of(st.sampled_from(["", "$", "81,797", "(1,234)", "2023", "July 1, 2023",
                                                         "Three Months Ended", "Total net sales"]),
                                        st.text(max_size=20)), max_size=8), max_size=12))
def test_html_tables_label_any_grid(grid: list[list[str]]) -> None:
    rows = label_table(grid)
    assert all(isinstance(row, str) and "\n" not in row for row in rows)


# --- upload names and collection names ---------------------------------------------------------------------------

names = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(["..", ".", "/", "\\", "\x00", "etc", "passwd", "C:", "CON", "nul", ".pdf", " ",
                              "\u202e", "\u200d", "e\u0301", "\ud7ff", "report", ".txt", "a" * 120]),
             max_size=12).map("".join),
)


@FAST
@given(raw=names)
def test_safe_names_stay_in_their_folder(folder: Path, raw: str) -> None:
    name = safe_name(raw)
    assert safe_name(name) == name  # idempotent: a stored name is its own safe name
    if not name:
        return
    assert not set(name) & {"/", "\\", "\x00"}
    assert not any(unicodedata.category(ch).startswith("C") for ch in name)
    assert not name.startswith((".", " ")) and not name.endswith((".", " ")) and ".." not in name
    assert not WINDOWS_DEVICES.fullmatch(name)
    assert len(name) <= MAX_NAME and len(name.encode()) <= 240
    assert unicodedata.normalize("NFC", name) == name
    assert (folder / name).resolve().parent == folder.resolve()


@pytest.mark.parametrize(("raw", "safe"), [
    ("../../etc/passwd", "passwd"), ("C:\\Windows\\system32\\evil.pdf", "evil.pdf"), ("/abs/report.pdf", "report.pdf"),
    ("..", ""), (".env", "env"), ("a\x00b.txt", "ab.txt"), ("CON.pdf", "_CON.pdf"), ("lpt1", "_lpt1"),
    ("report.pdf.", "report.pdf"), ("e\u0301t\u00e9.md", "\u00e9t\u00e9.md"),
])
def test_hostile_upload_names(raw: str, safe: str) -> None:
    assert safe_name(raw) == safe


@FAST
@given(raw=st.text(max_size=80))
def test_collection_names_are_checked(raw: str) -> None:
    try:
        name = check_collection(raw)
    except InvalidCollectionName as exc:
        assert "invalid collection name" in exc.message
        return
    assert name == raw and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name) and "--" not in name


# --- filters -------------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
filters = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(FILTERABLE_FIELDS) | st.text(max_size=12), json_values, max_size=5),
)


@FAST
@given(value=filters)
def test_any_json_is_a_filter_or_invalid(value: Any) -> None:
    try:
        built = build_filter(value)
    except InvalidFilter as exc:
        assert exc.message and "\n" not in exc.message
        return
    assert built is None or isinstance(built, models.Filter)
    if built is not None:
        assert len(built.must or []) == len(value)

