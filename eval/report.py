"""The report of a run: `report.md` and a self-contained `report.html` (plots inline as PNG) in the run folder.

    python -m eval report RUN_DIR      # (re)write RUN_DIR/report.md and RUN_DIR/report.html

The report is built once as a list of sections of blocks (tables, text, plots) and rendered twice;
Markdown leaves the plots out. Everything comes from summary.json and results.json: the settings, the
metrics overall, by k and per segment, counts, latency, the questions retrieval or answers missed, and the
command that reproduces the run. Metrics the run does not hold are left out.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import plots
from .compare import Run, RunFolderError, question_scores, read_run
from .summary import stage_timings

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
WORST = 15
TEXT_WIDTH = 120
MAX_PLOT_SEGMENTS = 40
NUMERIC_MISS = ("numeric_match",)
_AT_K = re.compile(r"^([a-z_]+)@(\d+)$")
_AT_BUDGET = re.compile(r"^([a-z_]+)@(\d+)tok$")


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    align: str = ""  # "l" or "r" per column; by default the first column is text and the others numbers

    def aligns(self) -> str:
        return self.align or "l" + "r" * (len(self.header) - 1)


@dataclass
class Text:
    text: str
    code: bool = False  # a command line, shown verbatim


@dataclass
class Plot:
    title: str
    png: bytes


Block = Table | Text | Plot


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


def write_report(run_dir: Path) -> tuple[Path, Path]:
    """Write report.md and report.html into the run folder; RunFolderError when the folder is not a run."""
    run = read_run(run_dir)
    title, subtitle, sections = build_report(run)
    md_path, html_path = run_dir / REPORT_MD, run_dir / REPORT_HTML
    md_path.write_text(render_markdown(title, subtitle, sections), encoding="utf-8")
    html_path.write_text(render_html(title, subtitle, sections), encoding="utf-8")
    return md_path, html_path


# -- content ------------------------------------------------------------------------------------------------

def build_report(run: Run) -> tuple[str, str, list[Section]]:
    summary, settings, records = run.summary, run.settings, run.records
    names: list[str] = [n for n in summary.get("metrics", []) if n in summary]
    answer_names = [n for n in names if any(n in (r.get("answer_scores") or {}) for r in records)]
    counts: dict[str, Any] = summary.get("counts") or {}
    questions_file = settings.get("questions_file")
    title = f"Evaluation report: {Path(questions_file).name if questions_file else run.path.name}"
    subtitle = " · ".join(part for part in (
        f"collection {settings['collection']}" if settings.get("collection") else "",
        f"retriever {_retriever(settings)}" if _retriever(settings) else "",
        f"{len(records)} questions",
        str(settings.get("started_at") or ""),
    ) if part)
    sections = [
        Section("Settings", [Table(["setting", "value"], [[k, _value(v)] for k, v in settings.items()
                                                          if k != "command"], "ll")]),
        _overall(summary, names, records),
        _by_k(summary, names),
        _segments(summary, names, answer_names),
        Section("Counts", [Table(["count", "questions"], [[k, _value(v)] for k, v in counts.items()])]),
        _timing(summary, records),
        _misses(records, names, settings),
        _reproduce(settings, run.path),
    ]
    return title, subtitle, [s for s in sections if s.blocks]


def _retriever(settings: dict[str, Any]) -> str:
    name, mode = settings.get("retriever"), settings.get("retrieval_mode")
    return f"{name} ({mode})" if name and mode else str(name or mode or "")


def _overall(summary: dict[str, Any], names: Sequence[str], records: Sequence[dict[str, Any]]) -> Section:
    held = [question_scores(r) for r in records]
    rows = [[n, _value(summary.get(n)), str(sum(1 for s in held if n in s))] for n in names]
    return Section("Overall", [Table(["metric", "mean", "questions"], rows)] if rows else [])


def metrics_by_k(names: Sequence[str], pattern: re.Pattern[str] = _AT_K) -> tuple[list[str], list[int]]:
    """Metric families measured at cut-offs (`hit`, `recall`, `ndcg` …) and the cut-offs, from `name@k` names
    (or token budgets, from `name@Ntok` names with `pattern=_AT_BUDGET`)."""
    families: list[str] = []
    ks: set[int] = set()
    for name in names:
        found = pattern.match(name)
        if found:
            families += [found.group(1)] if found.group(1) not in families else []
            ks.add(int(found.group(2)))
    return families, sorted(ks)


def _by_k(summary: dict[str, Any], names: Sequence[str]) -> Section:
    families, ks = metrics_by_k(names)
    blocks: list[Block] = []
    if families:
        rows = [[str(k), *(_value(summary.get(f"{f}@{k}")) for f in families)] for k in ks]
        blocks.append(Table(["k", *(f"{f}@k" for f in families)], rows))
        plot = _plot_by_k(summary, families, ks)
        blocks += [plot] if plot else [Text("No question was scored for retrieval.")]
    families, budgets = metrics_by_k(names, _AT_BUDGET)
    if families:
        blocks.append(Text("Within a budget of retrieved tokens (chunks in rank order while they fit):"))
        rows = [[str(n), *(_value(summary.get(f"{f}@{n}tok")) for f in families)] for n in budgets]
        blocks.append(Table(["tokens", *families], rows))
    return Section("Retrieval by k", blocks)


def segment_metrics(names: Sequence[str], answer_names: Sequence[str]) -> list[str]:
    """The per-segment columns: hit@5 (else the first hit@k), recall@10 (else the deepest recall@k), mrr,
    ndcg@10 (else the deepest), recall@1000tok (else the first budget), then the answer metrics."""
    def pick(preferred: str, family: str, pattern: re.Pattern[str], last: bool) -> list[str]:
        if preferred in names:
            return [preferred]
        found = [n for n in names if (m := pattern.match(n)) and m.group(1) == family]
        return found[-1:] if last else found[:1]

    main = [*pick("hit@5", "hit", _AT_K, False), *pick("recall@10", "recall", _AT_K, True),
            *(["mrr"] if "mrr" in names else []), *pick("ndcg@10", "ndcg", _AT_K, True),
            *pick("recall@1000tok", "recall", _AT_BUDGET, False)]
    return main + [n for n in answer_names if n not in main]


def _segments(summary: dict[str, Any], names: Sequence[str], answer_names: Sequence[str]) -> Section:
    segments: dict[str, dict[str, Any]] = summary.get("segments") or {}
    columns = segment_metrics(names, answer_names)
    if not segments:
        return Section("Segments")
    rows = [[name, _value(seg.get("questions")), *(_value(seg.get(c)) for c in columns)]
            for name, seg in segments.items()]
    blocks: list[Block] = [Table(["segment", "questions", *columns], rows)]
    plot = _plot_segments(segments, [c for c in columns if c.startswith(("hit@", "recall@"))][:2])
    blocks += [plot] if plot else []
    return Section("Segments", blocks)


def _timing(summary: dict[str, Any], records: Sequence[dict[str, Any]]) -> Section:
    blocks: list[Block] = []
    total = (summary.get("timing") or {}).get("total_s")
    if total is not None:
        blocks.append(Text(f"Total run time: {total:.1f} s for {len(records)} questions."))
    stages = stage_timings(records)
    rows = []
    for stage, values in stages.items():
        p50, p95 = np.percentile(values, [50, 95])
        rows.append([stage, str(len(values)), f"{np.mean(values):.0f}", f"{p50:.0f}", f"{p95:.0f}",
                     f"{max(values):.0f}"])
    if rows:
        blocks.append(Table(["stage", "questions", "mean ms", "p50 ms", "p95 ms", "max ms"], rows))
        blocks.append(_plot_latency(stages))
    return Section("Timing", blocks)


def _misses(records: Sequence[dict[str, Any]], names: Sequence[str], settings: dict[str, Any]) -> Section:
    _, ks = metrics_by_k(names)
    depth = max(ks) if ks else settings.get("depth")
    blocks: list[Block] = []

    def missed(record: dict[str, Any]) -> bool:
        rank = record.get("first_match_rank")
        return record.get("retrieval") is not None and (rank is None or (depth is not None and rank > depth))

    retrieval = sorted((r for r in records if missed(r)), key=lambda r: -(r.get("first_match_rank") or 10**9))
    if retrieval:
        blocks.append(Text(f"Retrieval misses, no matching chunk within the first {depth}: "
                           f"{_shown(len(retrieval))}."))
        rows = [[str(r["id"]), _short(r.get("question")), _rank(r), _top_hit(r)] for r in retrieval[:WORST]]
        blocks.append(Table(["id", "question", "first match rank", "top retrieved"], rows, "llrl"))
    numeric = next((n for n in NUMERIC_MISS if n in names), None)
    if numeric:
        wrong = [r for r in records if (r.get("answer_scores") or {}).get(numeric) == 0]
        if wrong:
            blocks.append(Text(f"Answer misses, {numeric} = 0: {_shown(len(wrong))}."))
            rows = [[str(r["id"]), _short(r.get("question")), _short((r.get("answer") or {}).get("text")),
                     _rank(r)] for r in wrong[:WORST]]
            blocks.append(Table(["id", "question", "answer", "first match rank"], rows, "lllr"))
    for metric, bad, what in (("refusal_accuracy", 0, "answered although the question is unanswerable"),
                              ("over_refusal", 1, "refused although the question is answerable")):
        missed_refusal = [r for r in records if (r.get("answer_scores") or {}).get(metric) == bad]
        if missed_refusal:
            blocks.append(Text(f"Refusal misses, {what}: {_shown(len(missed_refusal))}."))
            rows = [[str(r["id"]), _short(r.get("question")), _short((r.get("answer") or {}).get("text"))]
                    for r in missed_refusal[:WORST]]
            blocks.append(Table(["id", "question", "answer"], rows, "lll"))
    return Section("Worst questions", blocks)


def _shown(n: int) -> str:
    return f"{n} question{'s' if n != 1 else ''}" + (f", the first {WORST} shown" if n > WORST else "")


def _rank(record: dict[str, Any]) -> str:
    """The first matching rank; "none" when retrieval missed, "-" when the question has no evidence."""
    if record.get("retrieval") is None:
        return "-"
    return str(record.get("first_match_rank") or "none")


def _top_hit(record: dict[str, Any]) -> str:
    retrieved = record.get("retrieved") or []
    if not retrieved:
        return "-"
    top = retrieved[0]
    pages = top.get("page_start")
    if pages is not None and top.get("page_end") not in (None, pages):
        pages = f"{pages}-{top['page_end']}"
    where = f" p.{pages}" if pages is not None else ""
    section = f" §{top['section']}" if top.get("section") else ""
    return f"{top.get('source', '?')}{where}{section}"


def _reproduce(settings: dict[str, Any], run_dir: Path) -> Section:
    command = settings.get("command")
    if isinstance(command, list):
        command = shlex.join(str(c) for c in command)
    blocks: list[Block] = []
    if command:
        blocks += [Text("The run's command line (the other settings above came from the environment):"),
                   Text(str(command), code=True)]
    elif settings.get("questions_file"):
        parts = ["python", "-m", "eval", "run", str(settings["questions_file"])]
        if settings.get("collection"):
            parts += ["--collection", str(settings["collection"])]
        if settings.get("k"):
            parts += ["--k", ",".join(str(k) for k in settings["k"])]
        parts += ["--answers"] if settings.get("answers") else []
        parts += ["--limit", str(settings["limit"])] if settings.get("limit") else []
        blocks += [Text("Rebuilt from the settings (environment variables such as RETRIEVAL_MODE are not "
                        "recorded; set them as for the original run):"), Text(shlex.join(parts), code=True)]
    regenerate = shlex.join(["python", "-m", "eval", "report", str(run_dir)])
    blocks += [Text("Regenerate this report:"), Text(regenerate, code=True)]
    return Section("Reproduce", blocks)


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else str(value)


def _short(text: Any, width: int = TEXT_WIDTH) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


# -- plots ------------------------------------------------------------------------------------------------

def _plot_by_k(summary: dict[str, Any], families: Sequence[str], ks: Sequence[int]) -> Plot | None:
    png = plots.metric_by_k(summary, families, ks)
    return Plot("Retrieval metrics by k", png) if png else None


def _plot_segments(segments: dict[str, dict[str, Any]], metrics: Sequence[str]) -> Plot | None:
    png = plots.segment_bars(segments, metrics, MAX_PLOT_SEGMENTS)
    title = "Per segment" + (f" (first {MAX_PLOT_SEGMENTS} segments)" if len(segments) > MAX_PLOT_SEGMENTS else "")
    return Plot(title, png) if png else None


def _plot_latency(stages: dict[str, list[float]]) -> Plot:
    return Plot("Latency per question", plots.latency_histograms(stages))


# -- rendering ----------------------------------------------------------------------------------------------

def render_markdown(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    out = [f"# {_md(title)}", ""]
    out += [_md(subtitle), ""] if subtitle else []
    out += ["Plots: see report.html beside this file.", ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                out += [*_md_table(block), ""]
            elif isinstance(block, Text):
                out += ["```bash", block.text, "```", ""] if block.code else [_md(block.text), ""]
    return "\n".join(out).rstrip() + "\n"


def _md(text: str) -> str:
    return " ".join(text.split("\n")).replace("|", "\\|").replace("<", "&lt;")


def _md_table(table: Table) -> list[str]:
    rule = [":--" if a == "l" else "--:" for a in table.aligns()]
    return ["| " + " | ".join(_md(c) for c in row) + " |" for row in [table.header, rule, *table.rows]]


CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; vertical-align: top; }
th { background: #f4f4f4; } td.r { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
pre { background: #f4f4f4; padding: 0.6em; overflow-x: auto; }
figure { margin: 0.5em 0 1.5em; } figcaption { color: #666; font-size: 0.9em; } img { max-width: 100%; }
"""


def render_html(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    e = html.escape
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
           f"<style>{CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    out += [f'<p class="sub">{e(subtitle)}</p>'] if subtitle else []
    for section in sections:
        out.append(f"<section><h2>{e(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                out.append(_html_table(block))
            elif isinstance(block, Text):
                out.append(f"<pre><code>{e(block.text)}</code></pre>" if block.code else f"<p>{e(block.text)}</p>")
            else:
                data = base64.b64encode(block.png).decode("ascii")
                out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(block.title)}">'
                           f"<figcaption>{e(block.title)}</figcaption></figure>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    rows = "".join(
        "<tr>" + "".join(f'<td class="{a}">{html.escape(c)}</td>' for a, c in zip(table.aligns(), row, strict=True))
        + "</tr>"
        for row in table.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


# -- command line -------------------------------------------------------------------------------------------

def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="run folder written by `eval run` (results.json, summary.json)")


def report_command(args: argparse.Namespace) -> int:
    """Run `eval report`: write the two report files; 2 with a one-line message for a bad run folder."""
    try:
        md_path, html_path = write_report(args.run_dir)
    except RunFolderError as exc:
        print(f"finrag-eval report: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {md_path} and {html_path}")
    return 0
