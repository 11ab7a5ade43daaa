"""The document view: a document's text as the loader reads it, as one self-contained HTML page (inline CSS, no
scripts), with an anchor where each indexed chunk starts so that a citation can link to its place.

- `id="p-<point id>"` on the block that starts where the chunk's first words are found in the text (`locate`:
  searched in chunk order, from the previous chunk's place and the chunk's first page on; a chunk whose words
  are not found is anchored where the search stood). `:target` is highlighted.
- `id="section-<slug>"` on a label before each section's first chunk; a list of sections heads the page.
- `id="page-<n>"` on a marker where each numbered page (PDFs) starts.

All document text is HTML-escaped: a document's `<script>` is shown, never run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from .chunks import Chunk

_WORD = re.compile(r"\w+")
_LONG, _SHORT = 6, 3  # words matched: a long match is looked for within _NEAR, a short one within _CLOSE
_NEAR, _CLOSE = 12_000, 3_000  # characters past where the search stands


@dataclass(frozen=True)
class ViewedDocument:
    title: str
    source: str
    doc_type: str
    pages: Sequence[tuple[int | None, str]]  # (page number or None, text)
    chunks: Sequence[tuple[str, Chunk]]  # (point id, chunk)
    file_href: str = "file"  # the original file, relative to the view's URL


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:80] or "section"


def _pattern(words: Sequence[str]) -> re.Pattern[str]:
    return re.compile(r"\b" + r"\W+".join(re.escape(w) for w in words))


def locate(text: str, chunk_text: str, lo: int) -> int | None:
    """Where `chunk_text` starts in `text` at or after `lo`, or None. Words are compared, not punctuation or
    spacing. The chunk's text may open with lines the chunker added (a table's repeated caption) or relabelled
    (table rows as "Label: value (period)"), so the words from each of its first lines on are tried: the
    nearest place where six of them follow each other, else where three do (all, for a shorter chunk) close by."""
    lines = [line for line in chunk_text.splitlines() if _WORD.search(line)][:8]
    starts = [_WORD.findall(" ".join(lines[i:])[:400]) for i in range(len(lines))]
    if not starts:
        return None
    for count, reach in ((_LONG, _NEAR), (min(_SHORT, len(starts[0])), _CLOSE)):  # a chunk of 1-2 words: them
        found = [m.start() for words in starts if len(words) >= count
                 and (m := _pattern(words[:count]).search(text, lo, lo + reach))]
        if found:
            return min(found)
    return None


def place(text: str, page_starts: dict[int, int], chunks: Sequence[Chunk]) -> list[int]:
    """The offset in `text` where each chunk (in chunk order) starts; never before the previous chunk's."""
    offsets: list[int] = []
    opening: list[str] = []  # the previous chunk's first lines
    for chunk in chunks:
        lines = chunk.text.splitlines()
        repeated = next((i for i, line in enumerate(lines) if i >= len(opening) or line != opening[i]), len(lines))
        own = "\n".join(lines[repeated:]) or chunk.text  # without the caption a table's parts repeat
        opening = lines[:8]
        after = offsets[-1] + 1 if offsets else 0
        lo = max(after, page_starts.get(chunk.page_start or 0, 0))
        found = locate(text, own, lo)
        if found is None and lo > after:
            found = locate(text, own, after)
        offsets.append(found if found is not None else min(lo, len(text)))
    return offsets


def render(doc: ViewedDocument) -> str:
    text_parts: list[str] = []
    page_starts: dict[int, int] = {}
    offset = 0
    for number, page_text in doc.pages:
        if number is not None:
            page_starts.setdefault(number, offset)
        text_parts.append(page_text)
        offset += len(page_text) + 1
    text = "\n".join(text_parts)
    chunks = sorted(doc.chunks, key=lambda pc: pc[1].chunk_index)
    offsets = place(text, page_starts, [c for _, c in chunks])

    # events at offsets: page markers (0) before chunk starts (1), in document order
    events = [(o, 0, f'<h2 class="page" id="page-{n}">Page {n}</h2>') for n, o in sorted(page_starts.items())]
    sections: list[tuple[str, str]] = []  # (anchor, section) of each section's first chunk
    seen: set[str] = set()
    anchors: set[str] = set()
    previous = -1
    for (point_id, chunk), at in zip(chunks, offsets, strict=True):
        label = ""
        if chunk.section and chunk.section not in seen:
            seen.add(chunk.section)
            anchor, n = slug(chunk.section), 1
            while anchor in anchors:  # two sections with one slug: -2, -3 …
                n += 1
                anchor = f"{slug(chunk.section)}-{n}"
            anchors.add(anchor)
            sections.append((anchor, chunk.section))
            label = f'<h3 class="section" id="section-{escape(anchor)}">{escape(chunk.section)}</h3>'
        if at == previous and not label:  # the same place as the chunk before: one block, both ids
            events.append((at, 1, f'<span class="anchor" id="p-{escape(point_id)}"></span>'))
        else:
            close = "</div>" if previous >= 0 else ""
            events.append((at, 1, f'{close}{label}<div class="chunk" id="p-{escape(point_id)}">'))
        previous = at
    events.sort(key=lambda e: (e[0], e[1]))

    body, cut = [], 0
    for at, _, markup in events:
        body.append(escape(text[cut:at]))
        body.append(markup)
        cut = at
    body.append(escape(text[cut:]))
    if previous >= 0:
        body.append("</div>")
    return _page(doc, "".join(body), sections)


def _page(doc: ViewedDocument, body: str, sections: Sequence[tuple[str, str]]) -> str:
    numbered = [n for n, _ in doc.pages if n is not None]
    meta = [escape(doc.source), escape(doc.doc_type)]
    if numbered:
        meta.append(f"{max(numbered)} pages")
    meta.append(f"{len(doc.chunks)} chunks")
    toc = ""
    if sections:
        items = "".join(f'<li><a href="#section-{escape(a)}">{escape(s)}</a></li>' for a, s in sections)
        toc = f"<details><summary>Sections ({len(sections)})</summary><ol>{items}</ol></details>"
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(doc.source)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{escape(doc.title or doc.source)}</h1>"
        f'<p class="meta">{" · ".join(meta)} · <a href="{escape(doc.file_href)}">original file</a></p>{toc}</header>'
        f'<main class="text">{body}</main></body></html>\n'
    )


_CSS = """
:root { color-scheme: light dark; --ink: #1f2328; --muted: #59636e; --paper: #ffffff; --rule: #d1d9e0;
  --mark: #fff8c5; --mark-edge: #d4a72c; --link: #0969da; }
@media (prefers-color-scheme: dark) { :root { --ink: #e6edf3; --muted: #9198a1; --paper: #0d1117;
  --rule: #3d444d; --mark: #3b2e00; --mark-edge: #bb8009; --link: #4493f8; } }
body { margin: 0; background: var(--paper); color: var(--ink);
  font: 17px/1.65 Charter, "Iowan Old Style", Georgia, "Times New Roman", serif; }
header, main { max-width: 46rem; margin: 0 auto; padding: 0 1.5rem; }
header { padding-top: 1.5rem; border-bottom: 1px solid var(--rule); padding-bottom: 1rem; }
h1 { font: 600 1.5rem/1.3 system-ui, sans-serif; margin: 0 0 .25rem; overflow-wrap: anywhere; }
.meta, summary { font: .85rem/1.5 system-ui, sans-serif; color: var(--muted); }
details ol { font: .85rem/1.5 system-ui, sans-serif; max-height: 40vh; overflow: auto; }
a { color: var(--link); }
main.text { white-space: pre-wrap; overflow-wrap: anywhere; padding-bottom: 4rem; }
.page, .section { white-space: normal; font-family: system-ui, sans-serif; }
.page { font-size: .75rem; font-weight: 600; letter-spacing: .06em; text-transform: uppercase; color: var(--muted);
  border-top: 1px dashed var(--rule); margin: 2rem 0 .5rem; padding-top: .25rem; }
.section { font-size: .85rem; font-weight: 600; color: var(--muted); margin: 1.25rem 0 .25rem; }
.chunk { border-left: 3px solid transparent; margin-left: -1rem; padding-left: calc(1rem - 3px);
  scroll-margin-top: 3rem; }
.chunk:target, .chunk:has(> .anchor:target), .section:target { background: var(--mark);
  border-left-color: var(--mark-edge); }
"""
