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

For chunking, `split_tables` finds the tables among a page's lines with the lines that head each (caption,
units, column headers), and `cut_table` cuts a long table between rows, repeating those lines on each piece.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_MONTH = (r"(?:January|February|March|April|May|June|July|August|September|October|November|December|"
          r"Jan\.?|Feb\.?|Mar\.?|Apr\.?|Jun\.?|Jul\.?|Aug\.?|Sep\.?|Sept\.?|Oct\.?|Nov\.?|Dec\.?)")
_DATE = re.compile(rf"\b{_MONTH} \d{{1,2}}, \d{{4}}\b")
_PARTIAL_DATE = re.compile(rf"\b{_MONTH} \d{{1,2}},")
_YEAR = re.compile(r"\b(?:19|20)\d{2}\b")
_GROUP = re.compile(r"\b(?:(?:Three|Six|Nine|Twelve) Months|(?:Fiscal )?Years?) Ended\b", re.I)
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
    groups = [g.group(0).lower().replace("years", "year") for g in _GROUP.finditer(text)]
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


# --- Tables inside page text: which lines form a table, and which lines head it ------------------------------

_LABELLED_CELL = re.compile(rf"^(?:[^|]*?: )?(?:{_NUM}|\$\s?\S+) \([^()]*\)$")


def is_table_row(line: str) -> bool:
    """A row of figures: a labelled row (`Total net sales: 81,797 (three months ended …) | …`), cells joined
    by " | " of which two or more are figures, or a PDF line that ends in two or more figures. Dates and bare
    years are no figures, so column headers ("July 1, 2023 | June 25, 2022", "2023 2022") are no rows."""
    s = line.strip()
    if not s:
        return False
    if is_labelled_row(s):
        return True
    plain = _DATE.sub(" ", s).replace("$", " ")
    cells = plain.split(" | ")
    if len(cells) > 1:
        return sum(1 for c in cells if _is_body_figure(c)) >= 2
    words = plain.split()
    if len(words) >= 2 and all(_is_figure(w) for w in words):  # figures without a label ("$ 0.25 $ 1.68")
        return sum(1 for w in words if _is_body_figure(w)) >= 2
    parsed = _row_values(plain)
    return bool(parsed and parsed[0] and sum(1 for v in parsed[1] if _is_body_figure(v)) >= 2)


def is_labelled_row(line: str) -> bool:
    """A row whose figures carry their column's label: `Total net sales: 81,797 (three months ended …) | …`."""
    cells = line.strip().split(" | ")
    return ": " in cells[0] and all(_LABELLED_CELL.match(c) for c in cells)


def is_column_header(line: str) -> bool:
    """A line of column headers: period groups, dates or bare years ("Three Months Ended", "2023 2022")."""
    s = line.strip()
    return bool(s) and _is_header_line(s) and not is_table_row(s)


def _is_prose(line: str) -> bool:
    """A line of running text: a sentence's end or a long line. Short lines are captions, labels, headers."""
    s = line.strip()
    if _is_header_line(s):
        return False
    if s.endswith(".") and len(s) > 30:
        return True
    return len(s) > 80 and not (s.startswith("(") and s.endswith(")")) and not s.isupper()


def is_group_label(line: str) -> bool:
    """A label that groups the rows below it: "Cost of sales:", "Current liabilities:", "ASSETS"."""
    s = line.strip()
    return bool(s) and len(s) <= 80 and not is_table_row(s) and not _is_header_line(s) and (
        s.endswith(":") or (s.isupper() and any(ch.isalpha() for ch in s)))


def row_label(line: str) -> str:
    """The row's name ("Total net sales" in "Total net sales: 81,797 (…) | …"), or "" when it has none."""
    s = line.strip()
    if ": " in s.split(" | ")[0]:
        return s.split(": ", 1)[0]
    parsed = _row_values(s)
    return parsed[0] if parsed else ""


def split_tables(lines: list[str]) -> list[tuple[list[str], list[str] | None]]:
    """Cut a page's lines into blocks of running text and tables, in order, losing no line.

    A table is a run of rows with the short lines among them (group labels, notes markers); running text
    ends it. Each table comes as `(lines, context)`: its context is the lines that head it — caption, units
    and column headers above its first row, and a lead-in sentence that ends in ":" ("… were as follows (in
    millions):") — and its lines start with them. Text blocks come as `(lines, None)`. Column headers
    after rows start a new table, headed by them and the short lines above them.
    """
    kinds = ["row" if is_table_row(x) else "prose" if _is_prose(x) else "short" if x.strip() else "blank"
             for x in lines]
    spans: list[tuple[int, int, int]] = []  # (start with its context, first row, end) per table
    i, n = 0, len(lines)
    while i < n:
        if kinds[i] != "row":
            i += 1
            continue
        floor = spans[-1][2] if spans else 0
        top = i  # walk up over the short lines that head the table
        while top > floor and kinds[top - 1] in ("short", "blank"):
            top -= 1
        lead = top  # and over the sentence above that leads into the table, and the headings above that
        if top > floor and kinds[top - 1] == "prose":
            k = top - 1
            while k > floor and kinds[k - 1] == "prose" and top - k < 3 and not _ends(lines[k - 1], (".", ":")):
                k -= 1
            sentence = " ".join(lines[k:top])
            continued = top < i and not _ends(sentence, (".", ":"))  # "… as follows (in" + "millions):"
            full = f"{sentence} {lines[top]}" if continued else sentence
            if _ends(full, ":") or _LEAD_IN.search(full):
                lead = k
                while lead > floor and kinds[lead - 1] == "short" and k - lead < 2:
                    lead -= 1
            elif continued:  # the short line ends the paragraph above; it does not head the table
                top = lead = top + 1
        last_row, j = i, i + 1
        while j < n and kinds[j] != "prose":
            if kinds[j] == "row":
                last_row = j
            elif _is_header_line(lines[j]):  # column headers again: a new table starts after the last row
                break
            j += 1
        end = n if j == n else last_row + 1  # short lines before the text that follows head that text
        spans.append((lead, i, end))
        i = end
    blocks: list[tuple[list[str], list[str] | None]] = []
    pos = 0
    for start, first, end in spans:
        if start > pos:
            blocks.append((lines[pos:start], None))
        context = [x for x in lines[start:first] if x.strip() and not _RUNNING_HEAD.match(x)]
        while len(context) > 1 and is_group_label(context[-1]):
            context.pop()  # "Net sales:" groups the first rows; it does not head the table
        blocks.append((lines[start:end], context))
        pos = end
    if pos < n:
        blocks.append((lines[pos:], None))
    return blocks


_RUNNING_HEAD = re.compile(r"^\s*table of contents\s*$", re.I)
_LEAD_IN = re.compile(r"\b(?:following|table|below|as follows)\b", re.I)


def _ends(line: str, suffix: str | tuple[str, ...]) -> bool:
    return line.rstrip().endswith(suffix)


def cut_table(text: str, context: list[str] | None, size: int, count: Callable[[str], int]) -> list[str]:
    """Cut a table (its lines, as `split_tables` gives them) into pieces of at most `size` tokens, between
    rows, never inside one. Every piece after the first starts with the table's context — caption, units and
    column headers, trimmed to a third of `size` (running text first, then from the top; column headers are
    left out when every row names its columns' periods) — and the group label its first rows sit under
    ("Cost of sales:", closed by a "Total …" row). A row longer than the room left is cut between its cells,
    each part named by the row's label."""
    heads = set(context or [])
    repeat = list(context or [])
    rows = [x for x in text.split("\n") if is_table_row(x)]
    if rows and all(is_labelled_row(x) for x in rows):
        repeat = [x for x in repeat if not is_column_header(x)]
    while repeat and sum(count(x) for x in repeat) > size // 3:
        repeat.pop(next((i for i, x in enumerate(repeat) if len(x.strip()) > 80), 0))
    pieces: list[str] = []
    group: str | None = None

    def head(line: str) -> list[str]:
        return [*repeat, *([group] if group and not is_group_label(line) else [])]

    cur: list[str] = []
    n_head = used = 0
    for line in text.split("\n"):
        if not line.strip():
            continue
        n = count(line)
        if len(cur) > n_head and used + n > size:
            pieces.append("\n".join(cur))
            cur = head(line)
            n_head, used = len(cur), sum(count(x) for x in cur)
        if used + n > size:
            pieces += ["\n".join([*cur, part]) for part in _cut_row(line, size - used, count)]
            cur = head(line)
            n_head, used = len(cur), sum(count(x) for x in cur)
        else:
            cur.append(line)
            used += n
        if is_group_label(line) and line not in heads:
            group = line.strip()
        elif row_label(line).lower().startswith(("total", "subtotal")):
            group = None
    if len(cur) > n_head:
        pieces.append("\n".join(cur))
    return pieces


def _cut_row(line: str, room: int, count: Callable[[str], int]) -> list[str]:
    """A row too long for one piece, cut between its " | " cells (words, if it has none); every part after
    the first is named by the row's label."""
    cells, sep = line.strip().split(" | "), " | "
    if len(cells) == 1:
        cells, sep = line.split(), " "
    label = row_label(line)
    name = f"{label}: " if label and sep == " | " else ""
    parts: list[str] = []
    cur = ""
    for cell in cells:
        candidate = f"{cur}{sep}{cell}" if cur else (name + cell if parts else cell)
        if cur and count(candidate) > room:
            parts.append(cur)
            candidate = name + cell
        cur = candidate
    if cur:
        parts.append(cur)
    return parts
