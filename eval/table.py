"""The readable table a run prints: one row overall, then one per segment, one column per metric."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MIN_WIDTH = 6


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_table(summary: dict[str, Any]) -> str:
    names: Sequence[str] = summary.get("metrics", [])
    header = ["segment", "n", "scored", *names]
    overall = {**summary, "questions": summary["counts"]["questions"],
               "retrieval_scored": summary["counts"]["retrieval_scored"]}
    rows = [_row("all", overall, names)]
    rows += [_row(name, seg, names) for name, seg in summary.get("segments", {}).items()]
    widths = [max(MIN_WIDTH, len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    out = [line(header), line(["-" * w for w in widths])]
    out.append(line(rows[0]))
    out += [line(r) for r in rows[1:]]
    return "\n".join(out)


def _row(name: str, values: dict[str, Any], names: Sequence[str]) -> list[str]:
    return [name, _cell(values.get("questions")), _cell(values.get("retrieval_scored")),
            *(_cell(values.get(n)) for n in names)]


def format_footer(summary: dict[str, Any]) -> str:
    counts, settings, timing = summary["counts"], summary["settings"], summary["timing"]
    parts = [
        f"{counts['questions']} questions, {counts['retrieval_scored']} with evidence "
        f"({counts['no_evidence']} without, skipped for retrieval metrics)",
        f"collection {settings.get('collection')!r}, embedder {settings.get('embedder')!r}, "
        f"k={','.join(str(k) for k in settings.get('k', []))}, {timing['total_s']:.1f}s",
    ]
    if counts.get("answered"):
        parts.append(f"{counts['answered']} answered with {settings.get('llm')!r}, {counts['errors']} errors")
    return "\n".join(parts)
