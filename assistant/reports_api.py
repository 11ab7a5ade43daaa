"""Evaluation reports over HTTP, for the web UI's "Evaluation & feedback" page.

    GET /v1/eval/reports                     every run under EVAL_RESULTS_DIR (summary.json), newest first
    GET /v1/eval/reports/{name}              one run: its summary (with segments) and report.md
    GET /v1/eval/reports/{name}/report.html  the run's HTML report

A run is a folder of `python -m eval run --out DIR` (summary.json, report.md, report.html). Only folders found by
listing EVAL_RESULTS_DIR are ever read: a name from the request is matched against that listing, never joined
into a path.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from .auth import admin_only
from .errors import NotFound

log = logging.getLogger(__name__)

router = APIRouter(tags=["evaluation"], dependencies=[Depends(admin_only)])  # operators' views: admin keys only


class UnknownReport(NotFound):
    code = "unknown_report"


class ReportOut(BaseModel):
    name: str = Field(description="The run's folder name.")
    started_at: str | None = Field(description="When the run started (ISO 8601), if it recorded it.")
    command: str | None
    questions_file: str | None
    collection: str | None
    retriever: str | None
    questions: int | None
    metrics: dict[str, float] = Field(description="Overall metrics: recall@k, mrr, ndcg@k, and for runs with "
                                      "answers citation_precision, numeric_match, over_refusal, refusal_accuracy …")
    has_html: bool


class ReportDetail(ReportOut):
    segments: dict[str, dict[str, Any]] = Field(description="The same metrics per segment (dataset, kind …).")
    timing: dict[str, Any]
    report_md: str | None = Field(description="The run's Markdown report.")


def _runs(root: Path) -> dict[str, Path]:
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / "summary.json").is_file()}


def _summary(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("unreadable %s: %s", folder / "summary.json", exc)
        return {}
    return data if isinstance(data, dict) else {}


def _report(name: str, folder: Path, summary: dict[str, Any]) -> ReportOut:
    settings = summary.get("settings") or {}
    counts = summary.get("counts") or {}
    metrics = {k: float(v) for k, v in summary.items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    return ReportOut(name=name, started_at=settings.get("started_at"), command=settings.get("command"),
                     questions_file=settings.get("questions_file"), collection=settings.get("collection"),
                     retriever=settings.get("retriever"), questions=counts.get("questions"), metrics=metrics,
                     has_html=(folder / "report.html").is_file())


def _folder(request: Request, name: str) -> Path:
    folder = _runs(request.app.state.settings.eval_results).get(name)
    if folder is None:
        raise UnknownReport(f"no evaluation report named {name!r}; GET /v1/eval/reports lists them")
    return folder


@router.get("/v1/eval/reports", response_model=list[ReportOut])
def list_reports(request: Request) -> list[ReportOut]:
    """Every evaluation run under EVAL_RESULTS_DIR, newest first (runs without a start time last, by name)."""
    reports = [_report(name, folder, _summary(folder))
               for name, folder in _runs(request.app.state.settings.eval_results).items()]
    dated = sorted((r for r in reports if r.started_at), key=lambda r: r.started_at or "", reverse=True)
    return dated + [r for r in reports if not r.started_at]


@router.get("/v1/eval/reports/{name}", response_model=ReportDetail)
def get_report(name: str, request: Request) -> ReportDetail:
    """One run: overall and per-segment metrics, timing, and its Markdown report."""
    folder = _folder(request, name)
    summary = _summary(folder)
    md = folder / "report.md"
    return ReportDetail(**_report(name, folder, summary).model_dump(), segments=summary.get("segments") or {},
                        timing=summary.get("timing") or {},
                        report_md=md.read_text(encoding="utf-8") if md.is_file() else None)


@router.get("/v1/eval/reports/{name}/report.html", response_class=FileResponse)
def get_report_html(name: str, request: Request) -> FileResponse:
    """The run's HTML report (with its charts)."""
    html = _folder(request, name) / "report.html"
    if not html.is_file():
        raise UnknownReport(f"the evaluation report {name!r} has no report.html")
    return FileResponse(html, media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": "sandbox allow-same-origin"})
