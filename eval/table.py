"""The readable table a run prints: one row overall, then one per segment, one column per headline metric.

Headline metrics keep the table narrow enough for a terminal: hit@1, hit at 5 (or the nearest k), recall,
nDCG and budgeted recall at the deepest k / 1000 tokens, MRR, and every answer metric. summary.json and
report.md hold all of them.
"""

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


def headline_metrics(names: Sequence[str]) -> list[str]:
    """The metrics of `names` worth a column (see the module docstring), in `names` order."""
    def at(prefix: str) -> list[str]:
        return [n for n in names if n.startswith(prefix) and n.removeprefix(prefix).isdigit()]

    hits, recalls, ndcgs = at("hit@"), at("recall@"), at("ndcg@")
    budgets = [n for n in names if n.startswith("recall@") and n.endswith("tok")]
    keep: set[str] = set(hits[:1])
    if hits:
        keep.add(min(hits, key=lambda n: abs(int(n.removeprefix("hit@")) - 5)))
    keep.update(recalls[-1:] + ndcgs[-1:])
    keep.update(["recall@1000tok"] if "recall@1000tok" in names else budgets[:1])
    keep.add("mrr")
    retrieval = {*hits, *recalls, *ndcgs, *budgets, "mrr"} | {n for n in names if n.startswith("page_hit@")}
    return [n for n in names if n in keep or n not in retrieval]


def format_table(summary: dict[str, Any]) -> str:
    names: Sequence[str] = headline_metrics(summary.get("metrics", []))
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
