"""The run folder: `results.json` (every question) and `summary.json` (the metrics), written as UTF-8 JSON.

    results.json  {"settings": {...}, "questions": [record, ...]}   one record per question, see runner.py
    summary.json  {"hit@1": ..., "recall@1": ..., "mrr": ..., "segments": {...}, "counts": {...},
                   "timing": {...}, "settings": {...}}              see summary.py
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"
SUMMARY_FILE = "summary.json"
DEFAULT_RUNS_DIR = Path("eval/runs")


def default_run_dir(root: Path = DEFAULT_RUNS_DIR) -> Path:
    """A fresh folder under `root` named for the local time, e.g. eval/runs/20240131-142501."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, n = root / stamp, 1
    while candidate.exists():
        n += 1
        candidate = root / f"{stamp}-{n}"
    return candidate


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def write_run(
    out_dir: Path, records: Sequence[dict[str, Any]], summary: dict[str, Any]
) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path, summary_path = out_dir / RESULTS_FILE, out_dir / SUMMARY_FILE
    write_json(results_path, {"settings": summary.get("settings", {}), "questions": list(records)})
    write_json(summary_path, summary)
    return results_path, summary_path


def read_summary(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    return data
