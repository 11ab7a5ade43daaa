"""Loading: turn a file into pages of text plus document metadata. PDF, HTML/HTM, TXT, Markdown.

A file that cannot be read raises `LoadError` with a one-line reason a person can act on, whatever is wrong with
it: corrupt, encrypted, truncated, or hostile. `Limits` bound what one file may cost: its size, its pages, and,
when a time or memory limit is set, the parse runs in a child process (forked from a clean forkserver) that is
killed past the time limit and cannot grow past the memory limit, so a PDF crafted to be slow or a decompression
bomb fails alone instead of hanging or exhausting the ingest.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import re
import resource
import signal
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .tables import label_columns, label_table

if TYPE_CHECKING:
    from assistant.settings import IngestSettings

log = logging.getLogger(__name__)

SUPPORTED = {".pdf": "pdf", ".html": "html", ".htm": "html", ".txt": "text", ".md": "markdown",
             ".markdown": "markdown"}
MAX_PDF_PAGES = 2000


class LoadError(Exception):
    """The file cannot be ingested; the message says why in one line."""


@dataclass(frozen=True)
class Limits:
    """What loading one file may cost. Past a limit the file fails with a LoadError naming the setting.

    `max_bytes`: file size; `max_pages`: pages of a PDF; `timeout_s` / `memory_mb`: when either is set, the file
    is parsed in a child process that is killed after `timeout_s` seconds and whose address space is capped at
    `memory_mb` (None: no limit; without both, parsing runs in the calling process).
    """

    max_bytes: int | None = None
    max_pages: int = MAX_PDF_PAGES
    timeout_s: float | None = None
    memory_mb: int | None = None

    @classmethod
    def of(cls, settings: IngestSettings) -> Limits:
        return cls(max_bytes=int(settings.max_mb * 1_000_000), max_pages=settings.max_pdf_pages,
                   timeout_s=settings.parse_timeout_s or None, memory_mb=settings.parse_memory_mb or None)

    @property
    def isolated(self) -> bool:
        return bool(self.timeout_s or self.memory_mb)


@dataclass
class Page:
    number: int | None  # 1-based for PDFs and paged HTML; None for plain text
    text: str


@dataclass
class LoadedDocument:
    path: Path
    pages: list[Page]
    title: str
    doc_type: str = "document"  # "filing" | "regulation" | "document"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.path.name

    @property
    def page_count(self) -> int | None:
        numbered = [p.number for p in self.pages if p.number is not None]
        return max(numbered) if numbered else None


PdfParser = Literal["pdfium", "pypdf"]


def load(path: Path, pdf_parser: PdfParser = "pdfium", limits: Limits | None = None) -> LoadedDocument:
    """The file's pages of text and what its first pages say about it. PDFs are read by PDFium (pypdfium2, C++:
    ~10× faster than pypdf on filings) or pypdf (`pdf_parser`); a PDF PDFium cannot open is tried with pypdf,
    whose message says why it fails. Raises LoadError, with the reason, for any file that cannot be loaded
    within `limits` (none by default)."""
    limits = limits or Limits()
    kind = SUPPORTED.get(path.suffix.lower())
    if kind is None:
        raise LoadError(f"unsupported file type {path.suffix or '(none)'!r}; supported: "
                        f"{', '.join(sorted(SUPPORTED))}")
    size = path.stat().st_size
    if size == 0:
        raise LoadError("empty file")
    if limits.max_bytes is not None and size > limits.max_bytes:
        raise LoadError(f"the file is {size / 1e6:.1f} MB, more than the {limits.max_bytes / 1e6:g} MB limit "
                        "(INGEST_MAX_MB)")
    if limits.isolated:
        return _load_in_child(path, pdf_parser, limits)
    try:
        return _load(path, kind, pdf_parser, limits.max_pages)
    except MemoryError:
        raise LoadError("parsing ran out of memory (INGEST_PARSE_MEMORY_MB bounds it in a child process)") from None


def _load(path: Path, kind: str, pdf_parser: PdfParser, max_pages: int) -> LoadedDocument:
    try:
        if kind == "pdf":
            pages = _load_pdf_pdfium(path, max_pages) if pdf_parser == "pdfium" else None
            if pages is None:
                pages = _load_pdf(path, max_pages)
        elif kind == "html":
            pages = _load_html(path)
        else:
            pages = [Page(None, _read_text(path))]
        if not any(p.text.strip() for p in pages):
            hint = " (a scanned PDF? OCR is not supported)" if kind == "pdf" else ""
            raise LoadError(f"no extractable text{hint}")
        doc = LoadedDocument(path=path, pages=pages, title=path.stem)
        describe(doc)
    except (LoadError, OSError, MemoryError):
        raise
    except RecursionError:
        raise LoadError(f"the {kind} is nested too deeply to parse (RecursionError)") from None
    except Exception as exc:  # a parser's bug on a hostile file fails that file, not the run
        log.warning("%s: unexpected parser error", path, exc_info=True)
        raise LoadError(f"cannot parse this {kind} file: {exc} ({type(exc).__name__})") from exc
    return doc


# --- the parse in a child process ------------------------------------------------------------------------------

_CONTEXT: multiprocessing.context.ForkServerContext | None = None


def _context() -> multiprocessing.context.ForkServerContext:
    """Children forked from a forkserver: cheap to start (the parsers are imported once, in the server) and safe
    from any process, threads, torch and open stores included."""
    global _CONTEXT
    if _CONTEXT is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        _CONTEXT = context
    return _CONTEXT


def _load_in_child(path: Path, pdf_parser: PdfParser, limits: Limits) -> LoadedDocument:
    kind = SUPPORTED[path.suffix.lower()]
    receiver, sender = _context().Pipe(duplex=False)
    child = _context().Process(target=_child, args=(sender, path, kind, pdf_parser, limits), daemon=True,
                               name=f"finrag-parse {path.name[:60]}")
    child.start()
    sender.close()
    try:
        if not receiver.poll(limits.timeout_s):
            raise LoadError(f"parsing took longer than {limits.timeout_s:g} s (INGEST_PARSE_TIMEOUT_S): a file "
                            "crafted to be slow, or raise the limit")
        try:
            ok, value = receiver.recv()
        except EOFError:  # the child died without a word: killed, or a crash in a parser's C code
            child.join(5)
            raise LoadError(_died(child.exitcode, limits)) from None
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receiver.close()
    if not ok:
        raise LoadError(value)
    document: LoadedDocument = value
    return document


def _child(sender: Connection, path: Path, kind: str, pdf_parser: PdfParser, limits: Limits) -> None:
    """The child's side: load, send the document or the reason back."""
    if limits.timeout_s:  # ends the child even if its parent is gone (killed mid-ingest) and cannot kill it
        signal.alarm(math.ceil(limits.timeout_s) + 5)
    if limits.memory_mb:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = limits.memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    try:
        try:
            sender.send((True, _load(path, kind, pdf_parser, limits.max_pages)))
        except LoadError as exc:
            sender.send((False, str(exc)))
        except OSError as exc:
            sender.send((False, f"cannot read file: {exc.strerror or exc}"))
        except MemoryError:
            sender.send((False, _memory_message(limits)))
    finally:
        sender.close()


def _memory_message(limits: Limits) -> str:
    return (f"parsing it needs more than {limits.memory_mb} MB of memory (INGEST_PARSE_MEMORY_MB): a decompression "
            "bomb, or raise the limit")


def _died(exitcode: int | None, limits: Limits) -> str:
    if exitcode is not None and exitcode < 0:
        how = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else f"signal {-exitcode}"
    else:
        how = f"exit code {exitcode}"
    if limits.memory_mb:  # C code (PDFium) aborts where Python would raise MemoryError
        return f"the parser crashed on this file ({how}); most likely {_memory_message(limits)}"
    return f"the parser crashed on this file ({how})"


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if b"\x00" in raw[:4096]:
        raise LoadError("binary content in a text file")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


# pypdf refuses arrays of more than 100,000 elements (a guard against hostile files); real 10-Qs (Microsoft's)
# hold bigger ones. Memory stays bounded at this limit; beyond it the file fails with a clear message.
PDF_MAX_ARRAY_ELEMENTS = 5_000_000


def _load_pdf_pdfium(path: Path, max_pages: int = MAX_PDF_PAGES) -> list[Page] | None:
    """Pages of text by PDFium, cleaned as pypdf's are; None when PDFium cannot open the file (pypdf then says why:
    encrypted, corrupt...)."""
    import pypdfium2 as pdfium

    try:
        document = pdfium.PdfDocument(path)
    except pdfium.PdfiumError as exc:
        log.info("%s: PDFium cannot open it (%s); trying pypdf", path.name, exc)
        return None
    try:
        n = len(document)
        if n > max_pages:
            raise LoadError(f"PDF has {n} pages, more than the limit of {max_pages} (INGEST_MAX_PDF_PAGES)")
        pages = []
        for i in range(n):
            try:
                page = document[i]
                textpage = page.get_textpage()
                text = textpage.get_text_bounded()
                textpage.close()
                page.close()
            except pdfium.PdfiumError as exc:
                log.warning("%s: page %d unreadable (%s); skipped", path.name, i + 1, exc)
                text = ""
            text = _PDFIUM_SPACE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
            pages.append(Page(i + 1, label_columns(fix_table_headers(text))))
        return pages
    finally:
        document.close()


# PDFium writes CRLF line ends and, for some layouts, NULs and soft hyphens (U+FFFE/U+0002) pypdf drops.
_PDFIUM_SPACE = re.compile("[\x00\x02\ufffe]")


def _load_pdf(path: Path, max_pages: int = MAX_PDF_PAGES) -> list[Page]:
    from pypdf import PdfReader, apply_configuration
    from pypdf.errors import PdfReadError, PyPdfError

    try:
        with warnings.catch_warnings(), apply_configuration(array_maximum_element_count=PDF_MAX_ARRAY_ELEMENTS):
            warnings.simplefilter("ignore")
            reader = PdfReader(path)
            if reader.is_encrypted:
                try:
                    ok = reader.decrypt("")
                except Exception as exc:  # pypdf raises several types for unsupported crypto
                    raise LoadError(f"encrypted PDF that cannot be opened ({exc})") from exc
                if not ok:
                    raise LoadError("encrypted PDF: a password is required")
            n = len(reader.pages)
            if n > max_pages:
                raise LoadError(f"PDF has {n} pages, more than the limit of {max_pages} (INGEST_MAX_PDF_PAGES)")
            pages = []
            for i, page in enumerate(reader.pages, start=1):
                try:
                    text = page.extract_text() or ""
                except (PyPdfError, ValueError, KeyError, TypeError) as exc:
                    log.warning("%s: page %d unreadable (%s); skipped", path.name, i, exc)
                    text = ""
                pages.append(Page(i, label_columns(fix_table_headers(text))))
    except LoadError:
        raise
    except (PdfReadError, PyPdfError) as exc:
        raise LoadError(f"pypdf cannot read this PDF: {exc} ({type(exc).__name__})") from exc
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise LoadError(f"corrupt or unreadable PDF: {exc} ({type(exc).__name__})") from exc
    return pages


_DATE_SPLIT = re.compile(r"\b((?:January|February|March|April|May|June|July|August|September|October|November|"
                         r"December|Jan\.|Feb\.|Mar\.|Apr\.|Jun\.|Jul\.|Aug\.|Sep\.|Sept\.|Oct\.|Nov\.|Dec\.)"
                         r" \d{1,2},)\s*\n\s*(\d{4})\b")
_DATE_RUN = re.compile(r"(\b[A-Z][a-z]+\.? \d{1,2}, \d{4})[ \t]*\n(?=[ \t]*[A-Z][a-z]+\.? \d{1,2}, \d{4}\b)")


def fix_table_headers(text: str) -> str:
    """Repair column headers that PDF extraction breaks over lines ("July 1,\\n2023\\nJune 25,\\n2022").

    The result is one header row ("July 1, 2023 | June 25, 2022"), which readers and small LLMs can
    align with the figure columns below it.
    """
    text = _DATE_SPLIT.sub(r"\1 \2", text)
    previous = None
    while previous != text:
        previous = text
        text = _DATE_RUN.sub(r"\1 | ", text)
    return text


# Real filings nest elements a few dozen deep, and tables in tables two or three deep. A file nested deeper (crafted,
# or thousands of unclosed tags) fails: a table's cells hold the text of the tables within, so its text grows with
# the square of their depth.
MAX_HTML_DEPTH = 512
MAX_HTML_TABLE_DEPTH = 8
_SKIPPED = frozenset({"script", "style", "head", "noscript"})
_BLOCKS = frozenset({"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "tr"})
_PAGE_BREAK = re.compile(r"page-break-(before|after)\s*:\s*always", re.I)


def _load_html(path: Path) -> list[Page]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_read_text(path), "html.parser")
    depth, tables = _nesting(soup, MAX_HTML_DEPTH)
    if depth > MAX_HTML_DEPTH:
        raise LoadError(f"HTML nested more than {MAX_HTML_DEPTH} elements deep (unclosed tags?): too deep to read")
    if tables > MAX_HTML_TABLE_DEPTH:  # a table's rows take in those of the tables in its cells: text grows as n²
        raise LoadError(f"HTML tables nested {tables} deep, more than {MAX_HTML_TABLE_DEPTH} (unclosed tables?)")
    text = _html_text(soup)
    text = re.sub(r"[ \t\xa0]+", " ", text)
    text = re.sub(r"\n[^\S\f]*\n+", "\n\n", text)  # keep \f: it marks a page break
    parts = text.split("\f")
    if len(parts) == 1:
        return [Page(None, parts[0].strip())]
    return [Page(i, part.strip()) for i, part in enumerate(parts, start=1)]


def _html_text(root: Any) -> str:
    """The text of a parsed page: scripts, styles and the head left out, a line break after each block and `<br>`,
    a form feed at each CSS page break, each table as labelled rows (`label_table`). One pass over the tree, without
    recursion and without editing it (each of bs4's edits costs the length of the parent's children: a page of
    100,000 paragraphs took minutes)."""
    from bs4 import CData, NavigableString, Tag

    out: list[str] = []
    stack: list[Iterator[Any]] = [iter(root.contents)]
    closing: list[str] = [""]  # what follows each open element's text
    while stack:
        node = next(stack[-1], None)
        if node is None:
            stack.pop()
            out.append(closing.pop())
            continue
        if not isinstance(node, Tag):
            if type(node) in (NavigableString, CData):  # not comments, doctypes, script text
                out.append(node)
            continue
        if node.name in _SKIPPED:
            continue
        style = str(node.get("style") or "")
        broken = _PAGE_BREAK.search(style)
        before = broken is not None and "before" in style.lower()
        if before:
            out.append("\f")
        after = ("\n" if node.name in _BLOCKS else "") + ("\f" if broken and not before else "")
        if node.name == "table":
            out += ["\n" + "\n".join(label_table(_grid(node))) + "\n", after]
        elif node.name == "br":
            out += ["\n", after]
        else:
            stack.append(iter(node.contents))
            closing.append(after)
    return "".join(out)


def _grid(table: Any) -> list[list[str]]:
    """A table's cells, row by row, each as one line of text (`$`, `)` and `%` cells emptied)."""
    grid = []
    for tr in _descendants(table, ("tr",)):
        cells = [" ".join(_words(td)) for td in _descendants(tr, ("td", "th"))]
        grid.append(["" if c in ("$", ")", "%") else c for c in cells])
    return grid


def _descendants(node: Any, names: tuple[str, ...]) -> list[Any]:
    """The elements named `names` under `node`, in document order, none from a script, style or the head."""
    from bs4 import Tag

    found = []
    stack = [iter(node.contents)]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
        elif isinstance(child, Tag) and child.name not in _SKIPPED:
            if child.name in names:
                found.append(child)
            stack.append(iter(child.contents))
    return found


def _words(node: Any) -> list[str]:
    """The words of an element's text, scripts and styles left out."""
    from bs4 import CData, NavigableString, Tag

    words: list[str] = []
    stack = [iter(node.contents)]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
        elif isinstance(child, Tag):
            if child.name not in _SKIPPED:
                stack.append(iter(child.contents))
        elif type(child) in (NavigableString, CData):
            words += child.split()
    return words


def _nesting(root: Any, limit: int) -> tuple[int, int]:
    """How deep elements, and tables within tables, nest under `root` (a bs4 Tag), counted without recursion; stops
    once elements nest past `limit`."""
    from bs4 import Tag

    deepest = tables = 0
    stack = [(root, 0, 0)]
    while stack and deepest <= limit:
        tag, depth, in_tables = stack.pop()
        deepest, tables = max(deepest, depth), max(tables, in_tables)
        stack.extend((child, depth + 1, in_tables + (child.name == "table"))
                     for child in tag.contents if isinstance(child, Tag))
    return deepest, tables


_MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
                "November", "December")
_MONTHS = {name.lower()[:3]: number for number, name in enumerate(_MONTH_NAMES, start=1)}
_MONTH = "(" + "|".join(_MONTH_NAMES) + ")"
_FORM = re.compile(r"\bFORM\s+(10-K|10-Q|8-K|20-F|40-F|6-K)\b", re.I)
_ANNUAL_FORMS = {"10-K", "20-F", "40-F"}
_PERIOD = re.compile(r"\b(?:period|fiscal\s+year)\s+ended:?\s+([A-Z][a-z]+\.? \d{1,2},\s*\d{4})", re.I)
_REGISTRANT = re.compile(r"\n\s*([^\n]{2,80}?)\s*\n[^\n]*\(Exact name of registrant", re.I)
_AFTER_FILE_NUMBER = re.compile(r"Commission\s+File\s+Number:?\s*[0-9-]+[ \t]*\n\s*([^\n(]{2,80}?)[ \t]*\n", re.I)
_TRADING_SYMBOL = re.compile(r"Trading\s+Symbol", re.I)
_TICKER_ROW = re.compile(r"(?<![\w.$])([A-Z]{1,5}(?:\.[A-Z]{1,2})?)\s+(?:The\s+)?(?:Nasdaq|NASDAQ|New\s+York\s+Stock"
                         r"\s+Exchange|NYSE|Cboe|CBOE|Chicago\s+Stock)")
_NAME_TICKER = re.compile(r"(?<![A-Za-z])([A-Z]{2,5})(?![A-Za-z])")
_NAME_NOT_TICKER = {"FY", "FORM", "VER", "SEC", "ADGM", "FSRA", "DRAFT", "FINAL"}
_EDGAR_NAME = re.compile(r"^([a-z]{1,5})-\d{8}")  # aapl-20230701.htm
_NAME_QUARTER = re.compile(r"(?<![0-9])((?:19|20)\d\d)[ _-]?Q([1-4])(?![0-9])", re.I)  # "2023 Q3 AAPL.pdf"
_QUARTER_HEADER = re.compile(r"\bQ([1-4])\s+(?:FY\s?)?((?:19|20)\d\d)\s+Form\s+10-Q\b", re.I)  # "Q3 2023 Form 10-Q"
_FY_END_DATE = re.compile(r"(?:\bfiscal\s+year\s+end(?:ed|ing|s)?(?:\s+on)?|\bForm\s+10-K\s+for\s+the\s+(?:fiscal\s+)?"
                          r"year\s+ended)\s+" + _MONTH + r"\s+(\d{1,2})\b", re.I)
_FY_END_RULE = re.compile(r"\bfiscal\s+year\b[^.]{0,80}?\bends?\s+on\s+the\s+last\s+\w+\s+(?:of|in)\s+" + _MONTH, re.I)
_RULE_LINE = re.compile(r"^(?:PART )?\d+(?:\.\d+)+(?:\.Guidance(?:\.\d+)?)?[\t ]", re.M)
_FAMILY = re.compile(r"^([A-Z]{2,6})(?:[ _]VER|_VER)")
_GUIDANCE = re.compile(r"guidance|guiding", re.I)
_GUIDANCE_IN_RULES = re.compile(r"guide|(?<![A-Za-z])notes?(?![A-Za-z])", re.I)


def describe(doc: LoadedDocument) -> None:
    """Classify the document and fill the metadata its chunks are filtered by, where the text shows it.

    Every document gets `doc_kind`: the form of a filing ("10-Q", "10-K", "8-K" ...), else "guidance" when
    the file name says Guidance/Guiding (or Guide/Notes for a numbered-rule text), "rulebook" for other
    numbered-rule texts (with `family`, e.g. COBS, from names like COBS_VER15.150823.txt), else "document".
    Filings also get `form`, `period` (as printed), `company` (the registrant), `ticker` (the cover's
    trading-symbol table, else an upper-case token of the file name) and a fiscal period, see
    `_describe_fiscal_period`.
    """
    head = "\n".join(p.text for p in doc.pages[:3])[:20000]
    form = _FORM.search(head)
    if form:
        doc.doc_type = "filing"
        doc.extra["form"] = doc.extra["doc_kind"] = form.group(1).upper()
        period = _PERIOD.search(head)
        if period:
            doc.extra["period"] = " ".join(period.group(1).split())
        registrant = _REGISTRANT.search(head) or _AFTER_FILE_NUMBER.search(head)
        if registrant:
            doc.extra["company"] = registrant.group(1).strip(" :")
        ticker = _ticker(head, doc.path.stem)
        if ticker:
            doc.extra["ticker"] = ticker
        _describe_fiscal_period(doc)
        parts = [doc.extra.get("company"), f"Form {doc.extra['form']}"]
        if "period" in doc.extra:
            parts.append(f"for the period ended {doc.extra['period']}")
        doc.title = " ".join(p for p in parts if p)
        return
    body = "\n".join(p.text for p in doc.pages)
    family = _FAMILY.match(doc.path.name)
    rules = len(_RULE_LINE.findall(body)) >= 5
    if rules:
        doc.doc_type = "regulation"
    if family and (rules or not _GUIDANCE.search(doc.path.stem)):
        doc.extra["family"] = family.group(1)  # the name says rulebook even where rule lines read otherwise
    name = doc.path.stem
    if _GUIDANCE.search(name) or (rules and _GUIDANCE_IN_RULES.search(name)):
        doc.extra["doc_kind"] = "guidance"
    else:
        doc.extra["doc_kind"] = "rulebook" if rules or family else "document"


def _ticker(head: str, stem: str) -> str | None:
    """The first class's symbol in the cover's "Trading Symbol(s)" table, else one from the file name."""
    table = _TRADING_SYMBOL.search(head)
    if table:
        row = _TICKER_ROW.search(head, table.end(), table.end() + 800)
        if row:
            return row.group(1)
    edgar = _EDGAR_NAME.match(stem)
    if edgar:
        return edgar.group(1).upper()
    tokens = [t for t in _NAME_TICKER.findall(stem) if t not in _NAME_NOT_TICKER]
    return tokens[0] if len(tokens) == 1 else None


def _describe_fiscal_period(doc: LoadedDocument) -> None:
    """Set `fiscal_year` (int) and, for a 10-Q, `fiscal_quarter` ("Q3") and `quarters` of a filing.

    The period is the company's own fiscal one, decided in this order:
    1. a running header that names it ("Apple Inc. | Q3 2023 Form 10-Q");
    2. the period end on the cover ("quarterly period ended July 1, 2023") placed in the fiscal year whose end
       the document states ("fiscal year ended September 24, 2022", "Form 10-K for the year ended June 30,
       2022", "fiscal year ... ends on the last Saturday of September"); a year is named for the calendar year
       it ends in (NVIDIA's fiscal 2024 ends January 28, 2024), and an end in a month's first week counts as
       the month before (52/53-week years: Apple's Q3 FY2023 ends July 1, 2023);
    3. the file name ("2023 Q3 AAPL.pdf");
    4. the period end with a calendar fiscal year (ending in December).
    The document wins over the file name: "2023 Q1 NVDA.pdf" ends April 30, 2023, NVIDIA's Q1 of fiscal 2024.

    Quarter names in questions follow no single rule ("NVIDIA's Q1 2023" means that same filing), so
    `quarters` lists every "YYYY-Qn" the quarter is known by: its fiscal label, the calendar quarter holding
    most of it ("2023-Q1" for February-April 2023) and the file name's label. Annual reports get only
    `fiscal_year`, from the fiscal year end on their cover.
    """
    form = doc.extra["form"]
    end = _month_of_period_end(doc.extra.get("period", ""))
    if form in _ANNUAL_FORMS:
        if end:
            doc.extra["fiscal_year"] = end[0]
        return
    if form != "10-Q":
        return
    text = "\n".join(p.text for p in doc.pages)
    named = _NAME_QUARTER.search(doc.path.stem)
    by_name = (int(named.group(1)), int(named.group(2))) if named else None
    header = _running_quarter_header(doc)
    year_end = _fiscal_year_end_month(text)
    if header and (end is None or header[0] in (end[0], end[0] + 1)):
        fiscal = header
    elif end and year_end:
        fiscal = _fiscal_quarter(end, year_end)
    elif by_name:
        fiscal = by_name
    elif end:
        fiscal = _fiscal_quarter(end, 12)
    else:
        return
    if by_name and by_name != fiscal:
        log.debug("%s: fiscal period %d Q%d from the document, not %d Q%d as the file name says",
                  doc.path.name, *fiscal, *by_name)
    doc.extra["fiscal_year"], doc.extra["fiscal_quarter"] = fiscal[0], f"Q{fiscal[1]}"
    labels = {fiscal, *([by_name] if by_name else []), *([_calendar_quarter(end)] if end else [])}
    doc.extra["quarters"] = [f"{y}-Q{q}" for y, q in sorted(labels)]


def _running_quarter_header(doc: LoadedDocument) -> tuple[int, int] | None:
    """(year, quarter) a running page header names ("Q3 2023 Form 10-Q") on three pages or more.

    A mention on a page or two is another filing ("as reported in our Q1 2022 Form 10-Q").
    """
    pages: Counter[tuple[int, int]] = Counter()
    for page in doc.pages:
        pages.update({(int(m.group(2)), int(m.group(1))) for m in _QUARTER_HEADER.finditer(page.text)})
    top = pages.most_common(1)
    return top[0][0] if top and top[0][1] >= 3 else None


def _month_of_period_end(text: str) -> tuple[int, int] | None:
    """(year, month) a printed period end closes: "July 1, 2023" closes June 2023 (52/53-week calendars)."""
    match = re.match(r"([A-Za-z]+)\.? (\d{1,2}),\s*(\d{4})", text)
    month = _MONTHS.get(match.group(1).lower()[:3]) if match else None
    if match is None or month is None:
        return None
    year, day = int(match.group(3)), int(match.group(2))
    if day <= 7:
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return year, month


def _fiscal_year_end_month(text: str) -> int | None:
    """The month the company's fiscal year ends in, as the document states it (most stated), else None."""
    votes: Counter[int] = Counter()
    for match in _FY_END_DATE.finditer(text):
        month, day = _MONTHS[match.group(1).lower()[:3]], int(match.group(2))
        votes[(month - 2) % 12 + 1 if day <= 7 else month] += 1
    for match in _FY_END_RULE.finditer(text):
        votes[_MONTHS[match.group(1).lower()[:3]]] += 1
    return votes.most_common(1)[0][0] if votes else None


def _fiscal_quarter(end: tuple[int, int], year_end_month: int) -> tuple[int, int]:
    """(fiscal year, quarter) of a quarter closing in `end` = (year, month)."""
    year, month = end
    fiscal_year = year if month <= year_end_month else year + 1
    return fiscal_year, (month - year_end_month - 1) % 12 // 3 + 1


def _calendar_quarter(end: tuple[int, int]) -> tuple[int, int]:
    """(year, quarter) of the calendar quarter holding most of the three months closing in `end`."""
    year, month = end
    year, middle = (year, month - 1) if month > 1 else (year - 1, 12)
    return year, (middle - 1) // 3 + 1
