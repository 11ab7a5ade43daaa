"""Chunking: split a loaded document into citable chunks that know their page and section.

- Filings (10-Q/10-K/8-K): pages are kept apart (a chunk never spans pages, so citations are page-exact);
  Part/Item headings set the section ("Part I — Item 2. Management's Discussion ..."), or a cross-reference
  index where the body has none. Tables are cut between rows, never inside one, and every piece repeats the
  table's caption, units and column headers (`tables.split_tables`, `tables.cut_table`).
- Regulations: one unit per numbered rule, lettered sub-rule or guidance note (`2.1.3`, `3.2.4.(a)`,
  `2.1.3.Guidance.1`, FUNDS' `PART 1.1.1.1`), with the heading path (chapter › section) kept; each is a chunk
  of its own unless `pack_rules` (CHUNK_PACK_RULES) packs consecutive short rules under one heading.
- Guidance notes with numbered paragraphs (`100)`): one unit per paragraph.
- Other text and Markdown: Markdown headings set the section.
Other units longer than the chunk size are split by llama-index's `SentenceSplitter` on sentence boundaries.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from llama_index.core.node_parser import SentenceSplitter

from assistant.chunks import Chunk
from assistant.injection import detect

from .loading import LoadedDocument
from .tables import cut_table, is_table_row, split_tables

TokenCounter = Callable[[str], list[int]]


@dataclass
class Unit:
    text: str
    section: str | None
    heading: str | None
    page: int | None
    # A table's caption and column-header lines (the unit's text starts with them), repeated atop every piece
    # the table is cut into; None for running text.
    context: list[str] | None = None


_PART = re.compile(r"^\s*PART\s+(I{1,3}|IV)\b\s*(?:[.:—–-]\s*(.*?))?\s*$", re.I)
_ITEM = re.compile(r"^\s*Item\s+(\d{1,2}(?:\.\d{2})?[A-D]?)\b\.?\s*(.{0,160}?)\s*$", re.I)
_TOC_PAGE_NO = re.compile(r"(?:\s|^)(?:Pages?\s+)?\d{1,3}(?:\s*[-–]\s*\d{1,3})?$", re.I)
# A rule number: `2.1.3`, a lettered sub-rule `3.2.4.(a)`, guidance `2.6.4.Guidance.1` / `3.2.4.(a).Guidance.1`,
# then its text; or a bare guidance heading line (`2.6.4.Guidance`). FUNDS numbers its rules `PART 1.1.1.1`.
_RULE = re.compile(
    r"^((?:PART )?\d+(?:\.\d+)*(?:\.\([a-zA-Z0-9]{1,4}\))*)(\.Guidance(?:\.\d+)?)?\.?[\t ]+(\S.*)?$"
    r"|^((?:PART )?\d+(?:\.\d+)+(?:\.\([a-zA-Z0-9]{1,4}\))*\.Guidance)\.?\s*$"
)
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def filing_units(doc: LoadedDocument) -> list[Unit]:
    """Units of a filing: per page, per Part/Item section, running text apart from tables.

    Part and Item headings set the section; a table of contents (a page listing four or more Items, or an
    Item line ending in a page number) sets none. A Part heading directly above an Item heading heads that
    Item's unit instead of standing alone. Where the body has no Item headings (Intel's layout), the
    "Form 10-Q Cross-Reference Index" that maps Items to printed pages sets the sections. Tables come as
    units of their own with their caption and column headers as context (`tables.split_tables`).
    """
    part: str | None = None
    item: str | None = None
    found_item = False
    units: list[Unit] = []
    for page in doc.pages:
        lines = page.text.splitlines()
        is_toc = _is_contents(lines)
        segments: list[tuple[str | None, list[str], int]] = []  # section, lines, how many are headings
        buf: list[str] = []
        n_heads = 0
        title_next = False  # an "Item 8." line took its title from the line below, which heads with it
        for idx, line in enumerate(lines):
            heading = None if is_toc else _heading(line, lines[idx + 1: idx + 3])
            if heading is None:
                buf.append(line)
                if title_next and line.strip():
                    n_heads, title_next = len(buf), False
                continue
            kind, value = heading
            if any(x.strip() for x in buf[n_heads:]) or not (kind == "item" and part and not item):
                segments.append((_filing_section(part, item), buf, n_heads))
                buf, n_heads = [], 0
            if kind == "part":
                part, item = value, None
            else:
                item, found_item = value, True
            buf.append(line)
            n_heads = len(buf)
            m_item = _ITEM.match(line)
            title_next = bool(kind == "item" and m_item and not m_item.group(2).lstrip(" |.:—–-").strip()
                              and not value.endswith("."))
        segments.append((_filing_section(part, item), buf, n_heads))
        for section, seg_lines, n in segments:
            blocks = split_tables(seg_lines[n:])
            if n:  # heading lines start the first block, but head no table
                first_lines, context = blocks[0] if blocks else ([], None)
                blocks[:1] = [(seg_lines[:n] + first_lines, context)]
            for block_lines, context in blocks:
                text = "\n".join(block_lines).strip()
                if text:
                    units.append(Unit(text, section, None, page.number, context))
    if not found_item:
        by_page = _cross_reference(doc)
        for unit in units:
            unit.section = by_page.get(unit.page) if unit.page is not None else None
    return units


def _is_contents(lines: list[str]) -> bool:
    """A table of contents: four or more Item lines, mostly ending in page numbers or listed back to back
    (a page that holds Items 3, 4 and 5 with "None." under each is no table of contents)."""
    at = [i for i, line in enumerate(lines) if _ITEM.match(line)]
    if len(at) < 4:
        return False
    numbered = sum(1 for i in at if _TOC_PAGE_NO.search(lines[i].rstrip()))
    gaps = sorted(b - a for a, b in itertools.pairwise(at))
    return 2 * numbered >= len(at) or gaps[len(gaps) // 2] == 1


def _heading(line: str, following: list[str]) -> tuple[str, str] | None:
    """("part", "Part II") or ("item", "Item 7A. Quantitative and ...") for a heading line, else None."""
    m_part = _PART.match(line)
    if m_part and (not m_part.group(2) or _looks_like_heading(m_part.group(2))):
        return "part", f"Part {m_part.group(1).upper()}"
    m_item = _ITEM.match(line)
    if not m_item:
        return None
    title = m_item.group(2).lstrip(" |.:—–-").strip()
    if not title:  # "Item 7." with its title on the next line
        nxt = next((x.strip() for x in following if x.strip()), "")
        title = nxt if _looks_like_heading(nxt) and not _ITEM.match(nxt) and not _PART.match(nxt) else ""
    elif not _looks_like_heading(title):
        return None
    number = m_item.group(1).upper()
    return "item", f"Item {number}{'' if '.' in number else '.'}" + (f" {title}" if title else "")


def _looks_like_heading(rest: str) -> bool:
    rest = rest.strip()
    return bool(rest) and rest[0].isupper() and not rest.endswith((",", ";")) and len(rest) < 160 and not (
        _TOC_PAGE_NO.search(rest) or is_table_row(rest))


def _filing_section(part: str | None, item: str | None) -> str | None:
    if part and item:
        return f"{part} — {item}"
    return item or part


_PAGE_REF = re.compile(r"\s+Pages?\s+(\d[\d\s,–-]*?)\s*$", re.I)
_PAGE_RANGE = re.compile(r"(\d+)(?:\s*[-–]\s*(\d+))?")
_FOOTER_PAGE_NO = re.compile(r"(?:^|\s)(\d{1,3})\s*$")


def _cross_reference(doc: LoadedDocument) -> dict[int, str]:
    """Sections by PDF page from a cross-reference index ("Item 1. Financial Statements Pages 3 - 23").

    Printed page numbers become PDF page numbers by the offset most pages' footers show. A page listed under
    several Items keeps the first. Lines below an Item without pages of its own ("Results of operations
    Pages 2, 24 - 37" under Item 2) add to it.
    """
    for page in doc.pages:
        lines = page.text.splitlines()
        if sum(1 for line in lines if _ITEM.match(line) and _PAGE_REF.search(line)) < 3:
            continue
        offset = _printed_page_offset(doc)
        by_page: dict[int, str] = {}
        part: str | None = None
        section: str | None = None
        collects = False  # the current Item lists its pages on the lines below
        for line in lines:
            ref = _PAGE_REF.search(line)
            head = _heading(line[: ref.start()] if ref else line, [])
            if head and head[0] == "part":
                part, section, collects = head[1], None, False
                continue
            if head:
                section = _filing_section(part, re.sub(r"\s*(?:Not applicable|:)$", "", head[1], flags=re.I))
                collects = ref is None
            elif not (collects and ref):
                continue
            for m in _PAGE_RANGE.finditer(ref.group(1) if ref else ""):
                first = int(m.group(1))
                for printed in range(first, int(m.group(2) or first) + 1):
                    if section:
                        by_page.setdefault(printed + offset, section)
        return by_page
    return {}


def _printed_page_offset(doc: LoadedDocument) -> int:
    """PDF page number minus printed page number, as most pages' last lines ("MD&A 24", "… 10-Q | 7") show."""
    offsets: Counter[int] = Counter()
    for page in doc.pages:
        last = next((x for x in reversed(page.text.splitlines()) if x.strip()), "")
        m = _FOOTER_PAGE_NO.search(last)
        if m and page.number is not None and 0 <= page.number - int(m.group(1)) < 50:
            offsets[page.number - int(m.group(1))] += 1
    best = offsets.most_common(1)
    return best[0][0] if best and best[0][1] >= 3 else 0


def regulation_units(doc: LoadedDocument) -> list[Unit]:
    """One unit per rule, sub-rule (`3.2.4.(a)`) or guidance note, with its chapter › section heading path.

    A rule line that is only a title ("3.3.2  Requirements", "2.6.4.Guidance") is not a unit of its own: it
    heads the next unit's text. A chapter or section heading whose number does not prefix the next rule (a
    heading missing from the text) is dropped from the path rather than mislabelling later rules.
    """
    chapter: tuple[str, str] | None = None  # (number, "3. CONDUCT OF BUSINESS")
    section: tuple[str, str] | None = None
    units: list[Unit] = []
    rule: str | None = None
    buf: list[str] = []
    title: list[str] = []  # title-only rule lines waiting for the unit they head

    def heading() -> str | None:
        return " › ".join(h[1] for h in (chapter, section) if h) or None

    def flush() -> None:
        nonlocal title
        text = "\n".join(buf).strip()
        if not text:
            return
        if len(buf) == 1 and _is_title(text):
            title.append(text)
            return
        units.append(Unit("\n".join([*title, text]), rule, heading(), None))
        title = []

    for page in doc.pages:
        for line in page.text.splitlines():
            m = _RULE.match(line.strip())
            if not m:
                buf.append(line)
                continue
            if m.group(1) and "." not in m.group(1) and not (m.group(2) or _is_chapter(m.group(3) or "")):
                buf.append(line)  # "1.<tab>the Listed Entity has failed …;": a list item, not a chapter
                continue
            flush()
            if m.group(4):  # "2.6.4.Guidance": heads the guidance notes that follow
                buf, rule = [line], m.group(4)
                continue
            number, guidance, rest = m.group(1), m.group(2) or "", (m.group(3) or "").strip()
            depth = number.count(".") + 1
            buf = []
            if not guidance and depth == 1 and rest and len(rest) < 100:
                chapter, section, rule, title = (number, f"{number}. {rest}"), None, None, []
                continue
            if not guidance and depth == 2 and rest and len(rest) < 80 and not rest.endswith("."):
                if chapter and not number.startswith(chapter[0] + "."):
                    chapter = None
                section, rule, title = (number, f"{number} {rest}"), None, []
                continue
            if section and not number.startswith(section[0] + "."):
                section = None
            if chapter and not number.startswith(chapter[0] + "."):
                chapter = None
            rule = number + guidance
            buf.append(line)
    flush()
    if title:
        units.append(Unit("\n".join(title), rule, heading(), None))
    return units


def _is_chapter(rest: str) -> bool:
    """The text after a bare number ("1.<tab>INTRODUCTION") is a chapter title, not a list item's sentence."""
    rest = rest.strip()
    return bool(rest) and rest[0].isupper() and len(rest) < 100 and not rest.endswith((".", ";", ",", ":"))


def _is_title(line: str) -> bool:
    """A rule line that carries only a short title ("3.3.2  Requirements") or a bare number/guidance label."""
    m = _RULE.match(line + "\t")  # a bare number ("1.1.1") has lost its tab to strip()
    if not m:
        return False
    if m.group(4):
        return True
    rest = (m.group(3) or "").strip()
    return len(rest) < 60 and not rest.endswith((".", ":", ";")) and not rest.startswith("[")


def text_units(doc: LoadedDocument) -> list[Unit]:
    units: list[Unit] = []
    for page in doc.pages:
        path: list[str] = []
        buf: list[str] = []
        for line in page.text.splitlines():
            m = _MD_HEADING.match(line)
            if m:
                if "\n".join(buf).strip():
                    units.append(Unit("\n".join(buf).strip(), " › ".join(path) or None, None, page.number))
                buf = []
                level = len(m.group(1))
                path = [*path[: level - 1], m.group(2)]
            buf.append(line)
        if "\n".join(buf).strip():
            units.append(Unit("\n".join(buf).strip(), " › ".join(path) or None, None, page.number))
    return units


_PARAGRAPH = re.compile(r"^(\d{1,3})\)\s+(\S.*)$")
MIN_NUMBERED_PARAGRAPHS = 20  # guidance notes number their paragraphs "11)", "12)" …


def paragraph_units(doc: LoadedDocument) -> list[Unit]:
    """Guidance notes with numbered paragraphs ("11)<tab>…"): one unit per paragraph, section "11)".

    These notes repeat their chapter title on each paragraph's number line ("11)<tab>BACKGROUND", then the
    text); that title is also kept as the unit's heading. Text before the first paragraph is a unit of its own.
    """
    units: list[Unit] = []
    heading: str | None = None
    number: str | None = None
    buf: list[str] = []

    def flush() -> None:
        text = "\n".join(buf).strip()
        if text:
            units.append(Unit(text, number, heading, None))

    for page in doc.pages:
        for line in page.text.splitlines():
            m = _PARAGRAPH.match(line.strip())
            if not m:
                buf.append(line)
                continue
            flush()
            rest = m.group(2).strip()
            if len(rest.split()) < 16 and (rest.isupper() or not rest.endswith((".", ":", ";", ","))):
                heading = rest  # "100)<tab>REGULATORY REQUIREMENTS …": the paragraph's chapter title
            number, buf = f"{m.group(1)})", [line]
    flush()
    return units


def split_units(doc: LoadedDocument) -> list[Unit]:
    if doc.doc_type == "filing":
        return filing_units(doc)
    if doc.doc_type == "regulation":
        return regulation_units(doc)
    numbered = sum(1 for p in doc.pages for line in p.text.splitlines() if _PARAGRAPH.match(line.strip()))
    if numbered >= MIN_NUMBERED_PARAGRAPHS:
        return paragraph_units(doc)
    return text_units(doc)


class Chunker:
    def __init__(self, tokenize: TokenCounter, size_tokens: int, overlap_tokens: int, pack_rules: bool = False) -> None:
        self.tokenize = tokenize
        self.size = size_tokens
        self.pack_rules = pack_rules
        self._splitter = SentenceSplitter(
            chunk_size=size_tokens, chunk_overlap=overlap_tokens, tokenizer=tokenize,
            include_metadata=False, include_prev_next_rel=False,
            # After sentences, split on lines (table rows), never on the commas inside "81,797".
            secondary_chunking_regex=r"[^\n]+\n?",
        )

    def _count(self, text: str) -> int:
        return len(self.tokenize(text))

    def chunk(self, doc: LoadedDocument, doc_id: str, file_hash: str) -> list[Chunk]:
        pieces: list[tuple[str, list[str], str | None, int | None]] = []  # text, sections, heading, page
        cur_text, cur_heading, cur_page, cur_tokens = "", None, None, 0
        cur_secs: list[str] = []
        for unit in split_units(doc):
            n = len(self.tokenize(unit.text))
            key_changed = unit.page != cur_page or unit.heading != cur_heading or (
                (unit.heading is None or not self.pack_rules) and unit.section not in cur_secs
                and bool(cur_secs or unit.section)
            )
            if cur_text and (key_changed or cur_tokens + n > self.size):
                pieces.append((cur_text, cur_secs, cur_heading, cur_page))
                cur_text, cur_secs, cur_tokens = "", [], 0
            if n > self.size and unit.context is None:
                for part in self._splitter.split_text(unit.text):
                    pieces.append((part, [unit.section] if unit.section else [], unit.heading, unit.page))
                continue
            if n > self.size:  # a table: cut between rows; its last piece may take in the notes that follow
                *parts, last = cut_table(unit.text, unit.context, self.size, self._count)
                for part in parts:
                    pieces.append((part, [unit.section] if unit.section else [], unit.heading, unit.page))
                unit, n = Unit(last, unit.section, unit.heading, unit.page), self._count(last)
            cur_text = f"{cur_text}\n{unit.text}" if cur_text else unit.text
            if unit.section and unit.section not in cur_secs:
                cur_secs.append(unit.section)
            cur_heading, cur_page, cur_tokens = unit.heading, unit.page, cur_tokens + n
        if cur_text:
            pieces.append((cur_text, cur_secs, cur_heading, cur_page))

        return self._chunks(doc, doc_id, file_hash, pieces)

    def _chunks(self, doc: LoadedDocument, doc_id: str, file_hash: str,
                pieces: list[tuple[str, list[str], str | None, int | None]]) -> list[Chunk]:
        chunks = []
        for i, (text, sections, heading, page) in enumerate(pieces):
            extra = dict(doc.extra)
            if heading:
                extra["heading"] = heading
            if len(sections) > 1:
                extra["sections"] = sections
            found = detect("\n".join(filter(None, (doc.title, heading, text))))
            if found is not None:  # instruction-like text (prompt injection): the prompt marks it as quoted text
                extra["injection"], extra["injection_text"] = list(found.kinds), found.snippet
            section = sections[0] if len(sections) == 1 else (f"{sections[0]}–{sections[-1]}" if sections else None)
            chunks.append(Chunk(
                text=text, source=doc.source, doc_id=doc_id, chunk_index=i, page_start=page, page_end=page,
                section=section, title=doc.title, doc_type=doc.doc_type, file_hash=file_hash,
                content_hash=hashlib.sha256(text.encode()).hexdigest()[:16], extra=extra,
            ))
        return chunks
