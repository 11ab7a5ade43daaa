"""Loading: turn a file into pages of text plus document metadata. PDF, HTML/HTM, TXT, Markdown.

A file that cannot be read raises `LoadError` with a one-line reason a person can act on.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def load(path: Path) -> LoadedDocument:
    kind = SUPPORTED.get(path.suffix.lower())
    if kind is None:
        raise LoadError(f"unsupported file type {path.suffix or '(none)'!r}; supported: "
                        f"{', '.join(sorted(SUPPORTED))}")
    if path.stat().st_size == 0:
        raise LoadError("empty file")
    if kind == "pdf":
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


_FORM = re.compile(r"\bFORM\s+(10-K|10-Q|8-K|20-F|40-F|6-K)\b", re.I)
_PERIOD = re.compile(r"(?:quarterly|fiscal year|annual)?\s*period\s+ended\s+([A-Z][a-z]+\.? \d{1,2},\s*\d{4})", re.I)
_REGISTRANT = re.compile(r"\n\s*([^\n]{2,80}?)\s*\n[^\n]*\(Exact name of registrant", re.I)
_RULE_LINE = re.compile(r"^\d+(?:\.\d+)+(?:\.Guidance(?:\.\d+)?)?[\t ]", re.M)
_FAMILY = re.compile(r"^([A-Z]{2,6})(?:[ _]VER|_VER)")


def describe(doc: LoadedDocument) -> None:
    """Classify the document and fill title/company/form/period/family where the text shows them."""
    head = "\n".join(p.text for p in doc.pages[:3])[:20000]
    form = _FORM.search(head)
    if form:
        doc.doc_type = "filing"
        doc.extra["form"] = form.group(1).upper()
        period = _PERIOD.search(head)
        if period:
            doc.extra["period"] = " ".join(period.group(1).split())
        registrant = _REGISTRANT.search(head)
        if registrant:
            doc.extra["company"] = registrant.group(1).strip(" :")
        parts = [doc.extra.get("company"), f"Form {doc.extra['form']}"]
        if "period" in doc.extra:
            parts.append(f"for the period ended {doc.extra['period']}")
        doc.title = " ".join(p for p in parts if p)
        return
    body = "\n".join(p.text for p in doc.pages)
    if len(_RULE_LINE.findall(body)) >= 5:
        doc.doc_type = "regulation"
        family = _FAMILY.match(doc.path.name)
        if family:
            doc.extra["family"] = family.group(1)
