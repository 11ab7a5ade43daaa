"""Loading: turn a file into pages of text plus document metadata. PDF, HTML/HTM, TXT, Markdown.

A file that cannot be read raises `LoadError` with a one-line reason a person can act on.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .tables import label_columns, label_table

log = logging.getLogger(__name__)

SUPPORTED = {".pdf": "pdf", ".html": "html", ".htm": "html", ".txt": "text", ".md": "markdown",
             ".markdown": "markdown"}
MAX_PDF_PAGES = 2000


class LoadError(Exception):
    """The file cannot be ingested; the message says why in one line."""


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


def load(path: Path, pdf_parser: PdfParser = "pdfium") -> LoadedDocument:
    """The file's pages of text and what its first pages say about it. PDFs are read by PDFium (pypdfium2, C++:
    ~10× faster than pypdf on filings) or pypdf (`pdf_parser`); a PDF PDFium cannot open is tried with pypdf,
    whose message says why it fails."""
    kind = SUPPORTED.get(path.suffix.lower())
    if kind is None:
        raise LoadError(f"unsupported file type {path.suffix or '(none)'!r}; supported: "
                        f"{', '.join(sorted(SUPPORTED))}")
    if path.stat().st_size == 0:
        raise LoadError("empty file")
    if kind == "pdf":
        pages = _load_pdf_pdfium(path) if pdf_parser == "pdfium" else None
        if pages is None:
            pages = _load_pdf(path)
    elif kind == "html":
        pages = _load_html(path)
    else:
        pages = [Page(None, _read_text(path))]
    if not any(p.text.strip() for p in pages):
        hint = " (a scanned PDF? OCR is not supported)" if kind == "pdf" else ""
        raise LoadError(f"no extractable text{hint}")
    doc = LoadedDocument(path=path, pages=pages, title=path.stem)
    describe(doc)
    return doc


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


def _load_pdf_pdfium(path: Path) -> list[Page] | None:
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
        if n > MAX_PDF_PAGES:
            raise LoadError(f"PDF has {n} pages, more than the limit of {MAX_PDF_PAGES}")
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


def _load_pdf(path: Path) -> list[Page]:
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
            if n > MAX_PDF_PAGES:
                raise LoadError(f"PDF has {n} pages, more than the limit of {MAX_PDF_PAGES}")
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


def _load_html(path: Path) -> list[Page]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_read_text(path), "html.parser")
    for tag in soup(["script", "style", "head", "noscript"]):
        tag.decompose()
    for tag in soup.find_all(style=re.compile(r"page-break-(before|after)\s*:\s*always", re.I)):
        marker = "\f" if "before" in str(tag.get("style", "")).lower() else None
        if marker:
            tag.insert_before("\f")
        else:
            tag.insert_after("\f")
    for table in soup.find_all("table"):
        grid = []
        for tr in table.find_all("tr"):
            cells = [" ".join(td.get_text(" ").split()) for td in tr.find_all(["td", "th"])]
            grid.append(["" if c in ("$", ")", "%") else c for c in cells])
        table.replace_with("\n" + "\n".join(label_table(grid)) + "\n")
    for br in soup.find_all("br"):
        br.replace_with("\n")
    for block in soup.find_all(["p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "tr"]):
        block.insert_after("\n")
    text = soup.get_text()
    text = re.sub(r"[ \t\xa0]+", " ", text)
    text = re.sub(r"\n[^\S\f]*\n+", "\n\n", text)  # keep \f: it marks a page break
    parts = text.split("\f")
    if len(parts) == 1:
        return [Page(None, parts[0].strip())]
    return [Page(i, part.strip()) for i, part in enumerate(parts, start=1)]


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
