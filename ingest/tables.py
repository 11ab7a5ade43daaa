"""Financial statement tables from PDF text: label every figure with its column's period.

PDF extraction flattens a table into lines such as

    Three Months Ended Nine Months Ended
    July 1, 2023 | June 25, 2022 | July 1, 2023 | June 25, 2022
    Total net sales 81,797 82,959 293,787 304,182

and nobody — least of all a small LLM — can tell which figure is the quarter's. We find the header block
(period groups such as "Three Months Ended", dates, or bare years) above the first row of figures, build
one label per column, and rewrite each row that has exactly one figure per column:

    Total net sales: 81,797 (three months ended July 1, 2023) | 82,959 (three months ended June 25, 2022) | ...

Rows we cannot align are left untouched, so the rewrite never loses text.
"""

from __future__ import annotations

import re

_MONTH = (r"(?:January|February|March|April|May|June|July|August|September|October|November|December|"
          r"Jan\.?|Feb\.?|Mar\.?|Apr\.?|Jun\.?|Jul\.?|Aug\.?|Sep\.?|Sept\.?|Oct\.?|Nov\.?|Dec\.?)")
_DATE = re.compile(rf"\b{_MONTH} \d{{1,2}}, \d{{4}}\b")
_PARTIAL_DATE = re.compile(rf"\b{_MONTH} \d{{1,2}},")
_YEAR = re.compile(r"\b(?:19|20)\d{2}\b")
_GROUP = re.compile(r"\b(Three|Six|Nine|Twelve) Months Ended\b", re.I)
_NUM = r"(?:\$\s*)?\(?-?\d[\d,]*(?:\.\d+)?\)?(?:\s?%)?|—|–"
# Values are separated by whitespace (mandatory), which keeps matching linear: an optional separator
# would let "81797" split into "8", "1797", ... and backtrack exponentially on long lines.
_ROW = re.compile(rf"^(?P<label>[^\d$]*[A-Za-z][^\d$]*?)\s+(?P<vals>(?:{_NUM})(?:\s+(?:{_NUM}))*)\s*$")
_MAX_ROW_CHARS = 400
_VALUE = re.compile(_NUM)
_MAX_HEADER_LINES = 6


def _row_values(line: str) -> tuple[str, list[str]] | None:
    if len(line) > _MAX_ROW_CHARS:
        return None
    m = _ROW.match(line.strip())
    if not m:
        return None
    values = [v.replace("$", "").replace(" ", "") for v in _VALUE.findall(m.group("vals"))]
    return m.group("label").strip(" :"), values


_CHANGE = re.compile(r"(?:%\s*)?\bChange\b", re.I)
_COLUMN = re.compile(rf"{_DATE.pattern}|{_CHANGE.pattern}", re.I)


def _labels(header: list[str], n: int) -> list[str] | None:
    text = " ".join(header)
    groups = [g.group(0).lower() for g in _GROUP.finditer(text)]
    if _CHANGE.search(text):  # "July 1, 2023 | June 25, 2022 Change" under each period group
        columns = [m.group(0) for m in _COLUMN.finditer(text)]
        if len(columns) != n:
            return None
        per = n // len(groups) if groups and n % len(groups) == 0 else 0
        out = []
        for i, col in enumerate(columns):
            group = groups[i // per] if per else ""
            out.append(f"{group.replace(' ended', '')} change" if _CHANGE.fullmatch(col) else f"{group} {col}")
        return [label.strip() for label in out]
    dates = _DATE.findall(text)
    if len(dates) < n:
        years = _YEAR.findall(text)
        if len(years) != n:
            return None
        partial = _PARTIAL_DATE.findall(text)
        per = n // len(groups) if groups and n % len(groups) == 0 else 0
        if len(partial) == n:
            days = partial
        elif per and len(partial) == len(groups):
            days = [partial[i // per] for i in range(n)]
        else:
            days = partial * n if len(partial) == 1 else [""] * n
        prefix = [groups[i // per] if per else "" for i in range(n)]
        return [" ".join(x for x in (prefix[i], days[i], years[i]) if x) for i in range(n)]
    dates = dates[-n:]
    if groups and n % len(groups) == 0:
        per = n // len(groups)
        return [f"{groups[i // per]} {dates[i]}" for i in range(n)]
    return dates if len(dates) == n else None


def _is_header_line(line: str) -> bool:
    if len(line) > 110 or line.rstrip().endswith((".", ":")):
        return False  # prose that mentions a date ("... for the periods ended July 1, 2023:") is no header
    return bool(_GROUP.search(line) or _DATE.search(line) or _PARTIAL_DATE.search(line)
                or re.fullmatch(r"[\s\d|]*(?:19|20)\d{2}[\s\d|]*", line))


def label_columns(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    header: list[str] = []
    labels: list[str] | None = None
    for line in lines:
        parsed = _row_values(line) if not _is_header_line(line) else None
        if parsed and parsed[0] and len(parsed[1]) >= 2:
            if header:
                labels = _labels(header, len(parsed[1])) or labels
                header = []
            name, values = parsed
            if labels and len(values) == len(labels):
                out.append(f"{name}: " + " | ".join(f"{v} ({lab})" for v, lab in zip(values, labels, strict=True)))
                continue
        elif _is_header_line(line):
            header = [*header[-(_MAX_HEADER_LINES - 1):], line]
        out.append(line)
    return "\n".join(out)


# --- HTML tables: the cells are known, so columns are labelled from the header rows directly ---------------

_FIGURE = re.compile(rf"^(?:{_NUM})$")


def _is_figure(cell: str) -> bool:
    return bool(_FIGURE.match(cell.replace(" ", "")))


def _is_body_figure(cell: str) -> bool:
    """A figure that is no bare year: "2019" above a column is a header."""
    return _is_figure(cell) and not re.fullmatch(r"(?:19|20)\d{2}", cell.strip())


def label_table(grid: list[list[str]]) -> list[str]:
    """Rows of an HTML table as text lines, every figure labelled with its column header.

    Header rows are the rows without figures above a row of figures: the block at the top, and any block
    inside the table that names columns again (a second period's sub-table). Within a block, a row with one
    filled cell beyond the first column (e.g. "Years Ended September 30,") is a caption for all columns; rows
    with several name columns by position. A body row whose figures sit under labelled columns becomes
    `Total sales: $1,496.5 (Years Ended September 30, 2019) | $1,202.9 (… 2018)`; other rows (section labels
    such as "Assets", notes, rows that do not fit) are written as their cells joined by " | ", so nothing is
    lost.
    """
    rows = [[" ".join(c.split()) for c in row] for row in grid]
    width = max((len(r) for r in rows), default=0)
    labels: list[str] = [""] * width
    pending: list[list[str]] = []
    seen_body = False
    out: list[str] = []
    for row in rows:
        if not any(_is_body_figure(c) for c in row[1:]):
            if any(row):
                out.append(" | ".join(c for c in row if c))
                pending.append(row)
            continue
        if pending and (not seen_body or any(_filled_beyond_first(r) > 1 for r in pending)):
            labels = _header_labels(pending, width)
        pending, seen_body = [], True
        name, cells = row[0], row[1:]
        filled = [(j, c) for j, c in enumerate(cells, start=1) if c]
        if name and filled and all(labels[j] for j, _ in filled):
            out.append(f"{name.rstrip(' :')}: " + " | ".join(f"{c} ({labels[j]})" for j, c in filled))
        else:
            out.append(" | ".join(c for c in row if c))
    return out


def _filled_beyond_first(row: list[str]) -> int:
    return sum(1 for c in row[1:] if c)


def _header_labels(header: list[list[str]], width: int) -> list[str]:
    """One label per column from a block of header rows: captions first, then the column's own cells."""
    captions = [c for row in header if _filled_beyond_first(row) == 1 for c in row[1:] if c]
    columns: list[list[str]] = [[] for _ in range(width)]
    for row in header:
        if _filled_beyond_first(row) > 1:
            for j, cell in enumerate(row[1:], start=1):
                if cell:
                    columns[j].append(cell)
    caption = " ".join(captions)
    return [" ".join(x for x in (caption, " ".join(col)) if x) for col in columns]
