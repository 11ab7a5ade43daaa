"""The summary of a run: mean of every metric overall and per segment, counts, timing and settings.

Every metric is the mean over the questions it applies to: retrieval metrics over the questions whose
record holds that score (questions with evidence; `page_hit@k` only those with paged evidence), answer
metrics over the questions whose record holds that score (see `answers.py`).
A segment is `tagname=value` for every tag value seen; its entry has the same metric keys.
Timing gives, per stage, the mean, median (p50) and 95th percentile (p95) in milliseconds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from .answers import ANSWER_METRICS
from .metrics import mean

DIGITS = 4
PERCENTILES = (50, 95)


def metric_names(records: Sequence[dict[str, Any]]) -> list[str]:
    """Metric keys in a stable order: retrieval metrics as the runner wrote them, then answer metrics.

    A retrieval key that only some records hold (`page_hit@k`) takes its place after the key that precedes
    it in those records, so the order does not depend on which question comes first.
    """
    names: list[str] = []
    for record in records:
        previous: str | None = None
        for name in record.get("retrieval") or {}:
            if name not in names:
                names.insert(names.index(previous) + 1 if previous is not None else 0, name)
            previous = name
    present: list[str] = []
    for record in records:
        present += [name for name in record.get("answer_scores") or {} if name not in present]
    known = [name for name in ANSWER_METRICS if name in present]
    return names + known + [name for name in present if name not in known]


def percentile(values: Sequence[float], p: float) -> float:
    """The `p`-th percentile, interpolated linearly (numpy's default, which the report uses too)."""
    if not values:
        raise ValueError("percentile of no values")
    return float(np.percentile(values, p))


def stage_timings(records: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """Per-question milliseconds of every stage (`retrieve`, `answer`, `judge`), from the records' `timings_ms`."""
    stages: dict[str, list[float]] = {}
    for record in records:
        for stage, ms in (record.get("timings_ms") or {}).items():
            if isinstance(ms, int | float):
                stages.setdefault(stage, []).append(float(ms))
    return stages


def aggregate(records: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Means of `names` over `records`, with how many questions each part covers."""
    values: dict[str, list[float]] = defaultdict(list)
    for record in records:
        for part in ("retrieval", "answer_scores"):
            for name, value in (record.get(part) or {}).items():
                values[name].append(value)
    out: dict[str, Any] = {
        "questions": len(records),
        "retrieval_scored": sum(1 for r in records if r.get("retrieval") is not None),
    }
    if any(r.get("answer") is not None for r in records):
        out["answered"] = sum(1 for r in records if r.get("answer") is not None)
    for name in names:
        m = mean(values.get(name, []))
        out[name] = round(m, DIGITS) if m is not None else None
    return out


def segment_records(records: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    segments: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        for name in record.get("segments", []):
            segments[name].append(record)
    return dict(sorted(segments.items()))


def build_summary(
    records: Sequence[dict[str, Any]], *, settings: dict[str, Any], seconds: float,
    timings_ms: dict[str, list[float]],
) -> dict[str, Any]:
    names = metric_names(records)
    overall = aggregate(records, names)
    counts = {
        "questions": len(records),
        "retrieval_scored": overall["retrieval_scored"],
        "no_evidence": sum(1 for r in records if r.get("retrieval") is None),
        "with_reference": sum(1 for r in records if r.get("reference_answer")),
        "unanswerable": sum(1 for r in records if not r.get("answerable", True)),
        "answered": sum(1 for r in records if r.get("answer") is not None),
        "errors": sum(1 for r in records if r.get("error")),
    }
    timing: dict[str, Any] = {"total_s": round(seconds, 3)}
    for stage, values in timings_ms.items():
        if values:
            timing[f"{stage}_ms_mean"] = round(sum(values) / len(values), 1)
            for p in PERCENTILES:
                timing[f"{stage}_ms_p{p}"] = round(percentile(values, p), 1)
    summary: dict[str, Any] = {name: overall[name] for name in names}
    summary["metrics"] = names
    summary["segments"] = {
        name: aggregate(group, names) for name, group in segment_records(records).items()
    }
    summary["counts"] = counts
    summary["timing"] = timing
    summary["settings"] = settings
    return summary
