"""Chunking: split a loaded document into citable chunks that know their page and section.

- Filings (10-Q/10-K/8-K): pages are kept apart (a chunk never spans pages, so citations are page-exact);
  Part/Item headings set the section ("Part I — Item 2. Management's Discussion ...").
- Regulations: one unit per numbered rule (`2.1.3`, `18.8.2`, `2.1.3.Guidance.1`), with the heading path
  (chapter › section) kept; consecutive short rules under one heading are packed together.
- Other text and Markdown: Markdown headings set the section.
Units longer than the chunk size are split by llama-index's `SentenceSplitter` on sentence boundaries.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from llama_index.core.node_parser import SentenceSplitter

from assistant.chunks import Chunk

from .loading import LoadedDocument

TokenCounter = Callable[[str], list[int]]


@dataclass
class Unit:
    text: str
    section: str | None
    heading: str | None
    page: int | None


_PART = re.compile(r"^\s*PART\s+(I{1,3}|IV)\b[\s.—–-]*(.*)$", re.I)
_ITEM = re.compile(r"^\s*Item\s+(\d{1,2}[A-C]?)\.?\s*(.{0,120})$", re.I)
# A rule number: `2.1.3`, a lettered sub-rule `3.2.4.(a)`, guidance `2.6.4.Guidance.1` / `3.2.4.(a).Guidance.1`,
# then its text; or a bare guidance heading line (`2.6.4.Guidance`).
_RULE = re.compile(
    r"^(\d+(?:\.\d+)*(?:\.\([a-zA-Z0-9]{1,4}\))*)(\.Guidance(?:\.\d+)?)?\.?[\t ]+(\S.*)?$"
    r"|^(\d+(?:\.\d+)+(?:\.\([a-zA-Z0-9]{1,4}\))*\.Guidance)\.?\s*$"
)
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def filing_units(doc: LoadedDocument) -> list[Unit]:
    part: str | None = None
    item: str | None = None
    units: list[Unit] = []
    for page in doc.pages:
        lines = page.text.splitlines()
        is_toc = sum(1 for line in lines if _ITEM.match(line)) >= 4
        buf: list[str] = []

        def flush(section: str | None, buf: list[str], page_no: int | None = page.number) -> None:
            text = "\n".join(buf).strip()
            if text:
                units.append(Unit(text, section, None, page_no))

        for line in lines:
            m_part, m_item = _PART.match(line), _ITEM.match(line)
            if not is_toc and (m_part or (m_item and _looks_like_heading(m_item.group(2)))):
                flush(_filing_section(part, item), buf)
                buf = []
                if m_part:
                    part, item = f"Part {m_part.group(1).upper()}", None
                else:
                    assert m_item is not None
                    title = m_item.group(2).strip()
                    item = f"Item {m_item.group(1).upper()}." + (f" {title}" if title else "")
            buf.append(line)
        flush(_filing_section(part, item), buf)
    return units


def _looks_like_heading(rest: str) -> bool:
    rest = rest.strip()
    return not rest or (rest[0].isupper() and not rest.endswith(",") and len(rest) < 120)


def _filing_section(part: str | None, item: str | None) -> str | None:
    if part and item:
        return f"{part} — {item}"
    return item or part


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


def _is_title(line: str) -> bool:
    """A rule line that carries only a short title ("3.3.2  Requirements") or a bare number/guidance label."""
    m = _RULE.match(line)
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


def split_units(doc: LoadedDocument) -> list[Unit]:
    if doc.doc_type == "filing":
        return filing_units(doc)
    if doc.doc_type == "regulation":
        return regulation_units(doc)
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
            if n > self.size:
                for part in self._splitter.split_text(unit.text):
                    pieces.append((part, [unit.section] if unit.section else [], unit.heading, unit.page))
                continue
            cur_text = f"{cur_text}\n{unit.text}" if cur_text else unit.text
            if unit.section and unit.section not in cur_secs:
                cur_secs.append(unit.section)
            cur_heading, cur_page, cur_tokens = unit.heading, unit.page, cur_tokens + n
        if cur_text:
            pieces.append((cur_text, cur_secs, cur_heading, cur_page))

        chunks = []
        for i, (text, sections, heading, page) in enumerate(pieces):
            extra = dict(doc.extra)
            if heading:
                extra["heading"] = heading
            if len(sections) > 1:
                extra["sections"] = sections
            section = sections[0] if len(sections) == 1 else (f"{sections[0]}–{sections[-1]}" if sections else None)
            chunks.append(Chunk(
                text=text, source=doc.source, doc_id=doc_id, chunk_index=i, page_start=page, page_end=page,
                section=section, title=doc.title, doc_type=doc.doc_type, file_hash=file_hash,
                content_hash=hashlib.sha256(text.encode()).hexdigest()[:16], extra=extra,
            ))
        return chunks


def embedding_text(chunk: Chunk) -> str:
    """What the embedder sees: where the chunk sits (title, heading, section), then its text."""
    context = [chunk.title or chunk.source]
    if chunk.extra.get("heading"):
        context.append(str(chunk.extra["heading"]))
    if chunk.section:
        context.append(chunk.section)
    return " | ".join(context) + "\n" + chunk.text
