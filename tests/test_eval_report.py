"""`eval report`: report.md and a self-contained report.html from a hand-built run folder."""

from __future__ import annotations

import argparse
import base64
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from eval.report import REPORT_HTML, REPORT_MD, configure_parser, report_command, segment_metrics, write_report
from eval.results import write_run

RETRIEVAL = ["hit@1", "hit@5", "hit@10", "recall@1", "recall@5", "recall@10", "ndcg@10", "recall@1000tok", "mrr"]
SCRIPT = "Is <script>alert('x')</script> a fee?"


def record(qid: str, first: int | None, *, answered: bool, segments: Sequence[str],
           evidence: bool = True, question: str | None = None) -> dict[str, Any]:
    retrieval = None
    if evidence:
        retrieval = {f"{m}@{k}": float(first is not None and first <= k)
                     for m in ("hit", "recall") for k in (1, 5, 10)}
        retrieval |= {"ndcg@10": 1.0 / first if first and first <= 10 else 0.0,
                      "recall@1000tok": float(first is not None), "mrr": 1.0 / first if first else 0.0}
    numeric = float(first == 1)
    return {
        "id": qid, "question": question or f"What was the fee in case {qid}?", "tags": {},
        "segments": list(segments), "answerable": True, "reference_answer": "USD 5,000" if answered else None,
        "evidence": [{"source": "FEES.txt"}] if evidence else [],
        "retrieved": [{"rank": 1, "point_id": "p", "source": "FEES.txt", "page_start": 3, "page_end": 4,
                       "section": "1.2.1", "score": 0.5, "matches": [0] if first == 1 else [], "tokens": 120}],
        "matched_evidence": [0] if first else [], "first_match_rank": first if evidence else None,
        "retrieval": retrieval,
        "answer": {"text": f"The fee is USD {'5,000' if numeric else '7'} [1].", "refused": False,
                   "model": "scripted", "citations": []} if answered else None,
        "answer_scores": {"numeric_match": numeric, "token_f1": 0.5 + numeric / 2} if answered else None,
        "error": None,
        "timings_ms": {"retrieve": 40 + len(qid), **({"answer": 900 + 10 * len(qid)} if answered else {})},
    }


def summarize(records: Sequence[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """summary.json as `eval run` writes it, computed here so the test does not lean on summary.py."""
    def means(group: Sequence[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"questions": len(group),
                               "retrieval_scored": sum(r["retrieval"] is not None for r in group)}
        for name in names:
            values = [(r["retrieval"] or {}).get(name, (r["answer_scores"] or {}).get(name)) for r in group]
            present = [v for v in values if v is not None]
            out[name] = round(sum(present) / len(present), 4) if present else None
        return out

    names = [n for n in RETRIEVAL if any(r["retrieval"] for r in records)]
    names += [n for n in ("numeric_match", "token_f1") if any(r["answer_scores"] for r in records)]
    segments = sorted({s for r in records for s in r["segments"]})
    overall = means(records)
    return {
        **{n: overall[n] for n in names}, "metrics": names,
        "segments": {s: means([r for r in records if s in r["segments"]]) for s in segments},
        "counts": {"questions": len(records), "retrieval_scored": overall["retrieval_scored"],
                   "no_evidence": len(records) - overall["retrieval_scored"],
                   "answered": sum(r["answer"] is not None for r in records), "errors": 0},
        "timing": {"total_s": 12.5, "retrieve_ms_mean": 45.0}, "settings": settings,
    }


def make_run(path: Path, *, answered: bool, evidence: bool = True, command: str | None = None) -> Path:
    firsts = [1, 1, 2, None, 7, 1, None, 3, 12, 1]
    records = [record(f"q{i}", first, answered=answered, evidence=evidence,
                      segments=["dataset=fees", "type=table" if i % 2 else "type=text"],
                      question=SCRIPT if i == 3 else None) for i, first in enumerate(firsts)]
    records.append(record("lonely", None, answered=answered, evidence=False, segments=["dataset=fees"]))
    settings: dict[str, Any] = {"questions_file": "../shared/corpora/adgm/fees.jsonl", "collection": "adgm",
                                "retriever": "hybrid", "k": [1, 5, 10], "depth": 10, "answers": answered,
                                "limit": None, "started_at": "2026-11-25T18:11:05+0000"}
    if command:
        settings["command"] = command
    write_run(path, records, summarize(records, settings))
    return path


def images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)]


def md_table(md: str, header: str) -> list[str]:
    """The rows of the Markdown table whose header line starts with `header`."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_report_of_a_run_with_answers(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", answered=True, command="python -m eval run fees.jsonl --answers")
    md_path, html_path = write_report(run)
    assert (md_path, html_path) == (run / REPORT_MD, run / REPORT_HTML)
    md = md_path.read_text(encoding="utf-8")

    assert md.startswith("# Evaluation report: fees.jsonl\n\n"
                         "collection adgm · retriever hybrid · 11 questions · 2026-11-25T18:11:05+0000\n")
    assert "| k | hit@k | recall@k | ndcg@k |" in md
    assert md_table(md, "| k | hit@k") == ["| 1 | 0.400 | 0.400 | - |", "| 5 | 0.600 | 0.600 | - |",
                                     "| 10 | 0.700 | 0.700 | 0.498 |"]
    assert md_table(md, "| segment |")[0].startswith("| dataset=fees | 11 | 0.600 | 0.700 | 0.506 | 0.498 | 0.800 |")
    columns = "| segment | questions | hit@5 | recall@10 | mrr | ndcg@10 | recall@1000tok | numeric_match | token_f1 |"
    assert columns in md
    assert "| hit@5 | 0.600 | 10 |" in md and "| numeric_match | 0.364 | 11 |" in md
    assert "| retrieve | 11 |" in md and "| answer | 11 |" in md and "Total run time: 12.5 s" in md

    misses = md_table(md, "| id | question | first match rank |")
    assert [row.split(" | ")[0] for row in misses] == ["| q3", "| q6", "| q8"]  # none first; 12 is beyond k=10
    assert misses[2].startswith("| q8 | What was the fee in case q8? | 12 |")
    assert misses[0] == "| q3 | Is &lt;script>alert('x')&lt;/script> a fee? | none | FEES.txt p.3-4 §1.2.1 |"
    answer_misses = md_table(md, "| id | question | answer |")
    assert len(answer_misses) == 7 and answer_misses[0].startswith("| q2 | What was the fee in case q2? | The fee")
    assert "```bash\npython -m eval run fees.jsonl --answers\n```" in md
    assert f"python -m eval report {run}" in md

    page = html_path.read_text(encoding="utf-8")
    pngs = images(page)
    assert len(pngs) == 3 and all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)  # by k, segments, latency
    assert "<script>" not in page and "Is &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; a fee?" in page
    assert "<th>recall@1000tok</th>" in page and "<style>" in page and 'src="http' not in page


def test_report_of_a_retrieval_only_run(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", answered=False)
    md_path, html_path = write_report(run)
    md = md_path.read_text(encoding="utf-8")
    assert "| segment | questions | hit@5 | recall@10 | mrr | ndcg@10 | recall@1000tok |\n" in md
    assert "numeric_match" not in md and "Answer misses" not in md and "| answer |" not in md
    assert "Retrieval misses, no matching chunk within the first 10: 3 questions." in md
    assert "| tokens | recall |\n| :-- | --: |\n| 1000 | 0.800 |" in md
    # no recorded command: rebuilt from the settings
    assert "python -m eval run ../shared/corpora/adgm/fees.jsonl --collection adgm --k 1,5,10\n" in md
    assert len(images(html_path.read_text(encoding="utf-8"))) == 3


def test_segment_columns_fall_back_to_the_cut_offs_the_run_has() -> None:
    names = ["hit@1", "hit@3", "recall@1", "recall@3", "ndcg@1", "ndcg@3", "recall@500tok", "recall@2000tok", "mrr"]
    assert segment_metrics(names, ["token_f1"]) == ["hit@1", "recall@3", "mrr", "ndcg@3", "recall@500tok", "token_f1"]
    assert segment_metrics(["hit@5", "hit@10", "recall@10", "mrr"], []) == ["hit@5", "recall@10", "mrr"]
    assert segment_metrics(["numeric_match"], ["numeric_match"]) == ["numeric_match"]


def test_report_without_retrieval_scored_questions(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", answered=True, evidence=False)
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["counts"]["retrieval_scored"] == 0 and "hit@5" not in summary["metrics"]
    summary["metrics"] = ["hit@5", *summary["metrics"]]  # a summary that lists the metric with no value
    summary["hit@5"] = None
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")

    md_path, html_path = write_report(run)
    md = md_path.read_text(encoding="utf-8")
    assert "| k | hit@k |\n| :-- | --: |\n| 5 | - |" in md and "No question was scored for retrieval." in md
    assert "Retrieval misses" not in md and "Answer misses, numeric_match = 0" in md
    assert len(images(html_path.read_text(encoding="utf-8"))) == 1  # latency only: nothing to plot by k or segment


def test_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="finrag-eval report")
    configure_parser(parser)
    assert report_command(parser.parse_args([str(tmp_path / "missing")])) == 2
    assert "missing: not a run folder" in capsys.readouterr().err
    run = make_run(tmp_path / "run", answered=False)
    assert report_command(parser.parse_args([str(run)])) == 0
    assert f"wrote {run / REPORT_MD} and {run / REPORT_HTML}" in capsys.readouterr().out


def test_report_lists_refusal_misses(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", answered=True)
    data = json.loads((run / "results.json").read_text(encoding="utf-8"))
    data["questions"][0]["answer_scores"] = {"refusal_accuracy": 0.0}
    data["questions"][1]["answer_scores"] = {"over_refusal": 1.0, "numeric_match": 0.0}
    (run / "results.json").write_text(json.dumps(data), encoding="utf-8")
    md = write_report(run)[0].read_text(encoding="utf-8")
    assert "Refusal misses, answered although the question is unanswerable: 1 question." in md
    assert "Refusal misses, refused although the question is answerable: 1 question." in md
