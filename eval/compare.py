"""Two runs side by side: `python -m eval compare RUN_A RUN_B`, with paired bootstrap intervals.

Questions are paired by `id` (those in both runs; the others are counted, never scored). For every metric
both runs hold per question, overall and for every segment (the question's segments in run A):
mean A, mean B, delta = B − A and a paired bootstrap interval of the delta — the paired questions are
resampled with replacement `resamples` times and the interval is the percentile interval of the resampled
mean differences. A delta is marked significant when its interval excludes 0. A question without the metric
on either side is left out of that metric, so answer metrics run over the questions they apply to.

Flips: for the main retrieval flag (`hit@5`, else the first `hit@k`) and binary answer scores, the questions
that went 1 → 0 (regressions) and 0 → 1 (fixes).

The same seed gives the same intervals, digit for digit.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .results import RESULTS_FILE, SUMMARY_FILE, write_json

DEFAULT_RESAMPLES = 2000
DEFAULT_FLIPS = 10
LEVEL = 0.95
MIN_SEGMENT_QUESTIONS = 2
DIGITS = 4
QUESTION_WIDTH = 90
# Binary answer scores worth listing flips for.
FLIP_ANSWER_METRICS = ("numeric_match", "refusal_accuracy", "judge_correct")
_HIT = re.compile(r"^hit@(\d+)$")
_BATCH_CELLS = 2_000_000  # resampled indices drawn at a time, to bound memory on large runs


class RunFolderError(ValueError):
    """A run folder that is missing, incomplete or not valid JSON; the message says which file and why."""


@dataclass(frozen=True)
class Run:
    """One run folder as `python -m eval run` wrote it."""

    path: Path
    summary: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = self.summary.get("settings") or {}
        return settings


def read_run(run_dir: Path) -> Run:
    """The run's summary.json and results.json, or RunFolderError naming what is missing or malformed."""
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: not a run folder (no such directory)")
    summary = _read_json(run_dir / SUMMARY_FILE)
    results = _read_json(run_dir / RESULTS_FILE)
    questions = results.get("questions")
    if not isinstance(questions, list) or not all(isinstance(r, dict) and "id" in r for r in questions):
        raise RunFolderError(f"{run_dir / RESULTS_FILE}: 'questions' must be a list of records with an 'id'")
    return Run(run_dir, summary, questions)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        hint = " (committed runs keep only summary.json: rerun the run to get it)" if path.name == RESULTS_FILE else ""
        raise RunFolderError(f"{path}: missing{hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFolderError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: expected a JSON object")
    return data


def question_scores(record: dict[str, Any]) -> dict[str, float]:
    """The question's metric values: its retrieval metrics and answer scores, in one flat dict."""
    scores: dict[str, float] = {}
    for part in ("retrieval", "answer_scores"):
        for name, value in (record.get(part) or {}).items():
            if isinstance(value, int | float):
                scores[name] = float(value)
    return scores


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, resamples: int, seed: int, level: float = LEVEL
) -> tuple[float, float, float]:
    """(delta, lo, hi): mean(b) − mean(a) and its percentile bootstrap interval over paired resamples."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    if not a:
        raise ValueError("the bootstrap needs at least one pair")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError("resamples must be positive and level within (0, 1)")
    diffs = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    n = len(diffs)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    batch = max(1, _BATCH_CELLS // n)
    for start in range(0, resamples, batch):
        rows = min(batch, resamples - start)
        means[start:start + rows] = diffs[rng.integers(0, n, size=(rows, n))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(diffs.mean()), float(lo), float(hi)


def compare_runs(
    run_a: Path, run_b: Path, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
    metrics: Sequence[str] | None = None, level: float = LEVEL,
) -> dict[str, Any]:
    """The full comparison of two run folders, as a JSON-ready dict (see the module docstring)."""
    a, b = read_run(run_a), read_run(run_b)
    by_id_b = {r["id"]: r for r in b.records}
    ids_a = {r["id"] for r in a.records}
    pairs = [(r, by_id_b[r["id"]]) for r in a.records if r["id"] in by_id_b]
    scores = [(r_a["id"], question_scores(r_a), question_scores(r_b)) for r_a, r_b in pairs]

    in_a = _ordered_names(a.summary.get("metrics") or [], a.records)
    in_b = set(_ordered_names(b.summary.get("metrics") or [], b.records))
    common = [m for m in in_a if m in in_b]
    if metrics:
        unknown = [m for m in metrics if m not in common]
        if unknown:
            raise RunFolderError(f"metric {', '.join(unknown)} is not in both runs (compared: {', '.join(common)})")
        names = list(dict.fromkeys(metrics))
    else:
        names = common

    def block(members: Sequence[int]) -> dict[str, Any]:
        out: dict[str, Any] = {"questions": len(members), "metrics": {}}
        for name in names:
            both = [(scores[i][1][name], scores[i][2][name]) for i in members
                    if name in scores[i][1] and name in scores[i][2]]
            if not both:
                continue
            va, vb = [x for x, _ in both], [y for _, y in both]
            delta, lo, hi = paired_bootstrap(va, vb, resamples=resamples, seed=seed, level=level)
            out["metrics"][name] = {
                "n": len(both), "a": _round(float(np.mean(va))), "b": _round(float(np.mean(vb))),
                "delta": _round(delta), "lo": _round(lo), "hi": _round(hi), "significant": lo > 0 or hi < 0,
            }
        return out

    segments: dict[str, list[int]] = {}
    for i, (r_a, _) in enumerate(pairs):
        for segment in r_a.get("segments") or []:
            segments.setdefault(segment, []).append(i)
    return {
        "run_a": str(run_a), "run_b": str(run_b),
        "resamples": resamples, "seed": seed, "level": level,
        "questions": {
            "paired": len(pairs),
            "only_a": [r["id"] for r in a.records if r["id"] not in by_id_b],
            "only_b": [r["id"] for r in b.records if r["id"] not in ids_a],
        },
        "metrics": names,
        "only_in_one_run": sorted(set(in_a) ^ in_b),
        "settings_changed": _settings_changed(a.settings, b.settings),
        "overall": block(range(len(pairs))),
        "segments": {name: block(members) for name, members in sorted(segments.items())
                     if len(members) >= MIN_SEGMENT_QUESTIONS},
        "flips": {name: _flips(name, pairs, scores) for name in flip_metrics(common)},
    }


def flip_metrics(names: Sequence[str]) -> list[str]:
    """The metrics whose 1 → 0 and 0 → 1 flips are listed: the main hit@k, then binary answer scores."""
    hits = [n for n in names if _HIT.match(n)]
    main = ["hit@5"] if "hit@5" in hits else hits[:1]
    return main + [n for n in FLIP_ANSWER_METRICS if n in names]


def _flips(name: str, pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]],
           scores: Sequence[tuple[str, dict[str, float], dict[str, float]]]) -> dict[str, Any]:
    regressions, fixes = [], []
    for (r_a, _), (qid, s_a, s_b) in zip(pairs, scores, strict=True):
        if name not in s_a or name not in s_b:
            continue
        entry = {"id": qid, "question": r_a.get("question", "")}
        if s_a[name] == 1.0 and s_b[name] == 0.0:
            regressions.append(entry)
        elif s_a[name] == 0.0 and s_b[name] == 1.0:
            fixes.append(entry)
    return {"regressed": len(regressions), "fixed": len(fixes), "regressions": regressions, "fixes": fixes}


def _ordered_names(summary_names: Sequence[str], records: Sequence[dict[str, Any]]) -> list[str]:
    """Metrics some question holds: in the summary's order, then any the summary does not list."""
    held: dict[str, None] = {}
    for record in records:
        held.update(dict.fromkeys(question_scores(record)))
    return [n for n in summary_names if n in held] + [n for n in held if n not in summary_names]


def _settings_changed(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list[Any]]:
    ignored = {"started_at", "command"}  # always differ
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b))
            if k not in ignored and a.get(k) != b.get(k)}


def _round(value: float) -> float:
    return round(value, DIGITS)


# -- the printed comparison -------------------------------------------------------------------------------

def format_comparison(comparison: dict[str, Any], *, flips: int = DEFAULT_FLIPS) -> str:
    q = comparison["questions"]
    level = round(comparison["level"] * 100)
    lines = [
        f"A: {comparison['run_a']}",
        f"B: {comparison['run_b']}",
        f"{q['paired']} paired questions (only in A: {len(q['only_a'])}, only in B: {len(q['only_b'])}); "
        f"{level}% paired bootstrap CI, {comparison['resamples']} resamples, seed {comparison['seed']}; "
        f"* = the CI excludes 0",
    ]
    for key, (old, new) in comparison["settings_changed"].items():
        lines.append(f"setting {key}: {_text(old)} -> {_text(new)}")
    if comparison["only_in_one_run"]:
        lines.append(f"not compared (in one run only): {', '.join(comparison['only_in_one_run'])}")
    blocks = [("all", comparison["overall"]), *comparison["segments"].items()]
    for name, block in blocks:
        if name != "all" and block["questions"] == q["paired"]:
            lines += ["", f"{name} ({block['questions']} questions): every paired question, as all"]
            continue
        lines += ["", f"{name} ({block['questions']} questions)", _metric_table(block["metrics"], level)]
    for name, flip in comparison["flips"].items():
        lines += ["", f"{name} flips: {flip['regressed']} regressions (1 -> 0), {flip['fixed']} fixes (0 -> 1)"]
        for label, entries in (("-", flip["regressions"]), ("+", flip["fixes"])):
            lines += [f"  {label} {e['id']}  {_truncate(e['question'])}" for e in entries[:flips]]
            if len(entries) > flips:
                lines.append(f"  {label} ... {len(entries) - flips} more (see --json)")
    return "\n".join(lines)


def _metric_table(metrics: dict[str, dict[str, Any]], level: int) -> str:
    header = ["metric", "n", "A", "B", "delta", f"{level}% CI", "sig"]
    rows = [[name, str(m["n"]), f"{m['a']:.4f}", f"{m['b']:.4f}", f"{m['delta']:+.4f}",
             f"[{m['lo']:+.4f}, {m['hi']:+.4f}]", "*" if m["significant"] else ""]
            for name, m in metrics.items()]
    if not rows:
        return "  (no metric scored on both sides)"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        right = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  " + "  ".join([cells[0].ljust(widths[0]), *right]).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _truncate(text: str, width: int = QUESTION_WIDTH) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# -- command line -----------------------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text}")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", type=Path, help="baseline run folder (holds results.json and summary.json)")
    parser.add_argument("run_b", type=Path, help="run folder compared with it; delta = B - A")
    parser.add_argument("--resamples", type=_positive_int, default=DEFAULT_RESAMPLES,
                        help=f"bootstrap resamples (default {DEFAULT_RESAMPLES})")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--metric", dest="metrics", action="append", metavar="NAME",
                        help="compare only this metric (repeatable; default: every metric both runs have)")
    parser.add_argument("--flips", type=_count, default=DEFAULT_FLIPS,
                        help=f"flipped questions listed per direction (default {DEFAULT_FLIPS}; counts always)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the full comparison to OUT as JSON")


def compare_command(args: argparse.Namespace) -> int:
    """Run `eval compare`: print the comparison; 2 with a one-line message for a bad run folder or metric."""
    try:
        comparison = compare_runs(args.run_a, args.run_b, resamples=args.resamples, seed=args.seed,
                                  metrics=args.metrics)
    except RunFolderError as exc:
        print(f"finrag-eval compare: {exc}", file=sys.stderr)
        return 2
    print(format_comparison(comparison, flips=args.flips))
    if args.json:
        write_json(args.json, comparison)
        print(f"wrote {args.json}")
    return 0
