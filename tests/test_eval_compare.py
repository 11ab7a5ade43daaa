"""`eval compare`: the paired bootstrap on cases with known answers, pairing by id, segments, flips, the CLI."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eval.compare import compare_command, compare_runs, configure_parser, flip_metrics, paired_bootstrap
from eval.results import RESULTS_FILE, write_run


def record(qid: str, retrieval: dict[str, float] | None, answer_scores: dict[str, float] | None = None,
           segments: Sequence[str] = ("dataset=demo",)) -> dict[str, Any]:
    """A results.json record with only what compare reads filled in meaningfully."""
    return {"id": qid, "question": f"What is the value of item {qid}?", "tags": {}, "segments": list(segments),
            "answerable": True, "reference_answer": None, "evidence": [], "retrieved": [], "matched_evidence": [],
            "first_match_rank": None, "retrieval": retrieval, "answer": None, "answer_scores": answer_scores,
            "error": None, "timings_ms": {"retrieve": 5}}


def make_run(path: Path, records: Sequence[dict[str, Any]], metrics: Sequence[str],
             settings: dict[str, Any] | None = None) -> Path:
    summary = {"metrics": list(metrics), "settings": settings or {"collection": "demo"}}
    write_run(path, records, summary)
    return path


def hits(h1: float, h5: float) -> dict[str, float]:
    return {"hit@1": h1, "hit@5": h5, "mrr": h1 or h5 / 3}


def run_cli(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="finrag-eval compare")
    configure_parser(parser)
    return compare_command(parser.parse_args(argv))


def test_bootstrap_finds_a_known_difference() -> None:
    rng = np.random.default_rng(7)
    a = rng.uniform(0.2, 0.8, 200)
    b = a + 0.2 + rng.normal(0, 0.05, 200)
    delta, lo, hi = paired_bootstrap(list(a), list(b), resamples=2000, seed=0)
    assert delta == pytest.approx(float(np.mean(b - a)))
    assert 0 < lo < 0.2 < hi
    # the percentile interval of a mean is about ±1.96 standard errors
    se = float(np.std(b - a, ddof=1)) / np.sqrt(200)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_bootstrap_of_identical_runs_is_zero_and_not_significant() -> None:
    values = [0.0, 1.0, 0.5, 1.0, 0.0] * 20
    assert paired_bootstrap(values, values, resamples=500, seed=3) == (0.0, 0.0, 0.0)
    assert paired_bootstrap([1.0], [0.0], resamples=10, seed=0) == (-1.0, -1.0, -1.0)


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(1)
    a, b = list(rng.integers(0, 2, 150).astype(float)), list(rng.integers(0, 2, 150).astype(float))
    first = paired_bootstrap(a, b, resamples=1000, seed=42)
    assert paired_bootstrap(a, b, resamples=1000, seed=42) == first
    other = paired_bootstrap(a, b, resamples=1000, seed=43)
    assert other[0] == first[0] and other[1:] != first[1:]


def test_bootstrap_rejects_unpaired_or_empty_samples() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap([1.0, 0.0], [1.0], resamples=10, seed=0)
    with pytest.raises(ValueError, match="at least one pair"):
        paired_bootstrap([], [], resamples=10, seed=0)


def test_runs_are_paired_by_id_and_only_shared_metrics_compared(tmp_path: Path) -> None:
    shared = [f"q{i}" for i in range(6)]
    a = [record(q, {**hits(0.0, 1.0), "hit@10": 1.0}) for q in shared] + [record("only-a", hits(1.0, 1.0))]
    # B lists the questions in another order, drops hit@10 and adds an answer score on two questions
    b = [record("only-b", hits(1.0, 1.0))] + [
        record(q, hits(1.0, 1.0), {"token_f1": 0.5} if i < 2 else None) for i, q in enumerate(reversed(shared))
    ]
    run_a = make_run(tmp_path / "a", a, ["hit@1", "hit@5", "hit@10", "mrr"],
                     {"collection": "c", "k": [1, 5, 10], "command": "python -m eval run q.jsonl --out a"})
    run_b = make_run(tmp_path / "b", b, ["hit@1", "hit@5", "mrr", "token_f1"],
                     {"collection": "c", "k": [1, 5], "command": "python -m eval run q.jsonl --out b"})

    result = compare_runs(run_a, run_b, resamples=200, seed=0)
    assert result["questions"] == {"paired": 6, "only_a": ["only-a"], "only_b": ["only-b"]}
    assert result["metrics"] == ["hit@1", "hit@5", "mrr"]
    assert result["only_in_one_run"] == ["hit@10", "token_f1"]
    assert result["settings_changed"] == {"k": [[1, 5, 10], [1, 5]]}
    overall = result["overall"]["metrics"]
    assert overall["hit@1"] == {"n": 6, "a": 0.0, "b": 1.0, "delta": 1.0, "lo": 1.0, "hi": 1.0, "significant": True}
    assert overall["hit@5"]["delta"] == 0.0 and overall["hit@5"]["significant"] is False
    assert list(compare_runs(run_a, run_b, resamples=200, seed=0, metrics=["mrr"])["overall"]["metrics"]) == ["mrr"]


def test_answer_metrics_run_over_the_questions_both_sides_hold(tmp_path: Path) -> None:
    a = [record(f"q{i}", None, {"numeric_match": 0.0} if i < 4 else {}) for i in range(8)]
    b = [record(f"q{i}", None, {"numeric_match": 1.0} if i < 6 else {}) for i in range(8)]
    result = compare_runs(make_run(tmp_path / "a", a, ["numeric_match"]),
                          make_run(tmp_path / "b", b, ["numeric_match"]), resamples=100, seed=0)
    assert result["overall"]["metrics"]["numeric_match"]["n"] == 4
    assert result["overall"]["metrics"]["numeric_match"]["delta"] == 1.0


def test_segment_deltas(tmp_path: Path) -> None:
    a, b = [], []
    for i in range(40):
        kind = "type=table" if i % 2 else "type=text"
        a.append(record(f"q{i}", hits(0.0, 0.0), segments=["dataset=demo", kind]))
        b.append(record(f"q{i}", hits(0.0, 1.0 if kind == "type=table" else 0.0), segments=["dataset=demo", kind]))
    a.append(record("lonely", hits(1.0, 1.0), segments=["dataset=demo", "type=single"]))
    b.append(record("lonely", hits(0.0, 0.0), segments=["dataset=demo", "type=single"]))
    result = compare_runs(make_run(tmp_path / "a", a, ["hit@1", "hit@5", "mrr"]),
                          make_run(tmp_path / "b", b, ["hit@1", "hit@5", "mrr"]), resamples=300, seed=0)
    segments = result["segments"]
    assert set(segments) == {"dataset=demo", "type=table", "type=text"}  # one question is too few to compare
    assert segments["type=table"]["questions"] == 20
    assert segments["type=table"]["metrics"]["hit@5"]["delta"] == 1.0
    assert segments["type=text"]["metrics"]["hit@5"] == {
        "n": 20, "a": 0.0, "b": 0.0, "delta": 0.0, "lo": 0.0, "hi": 0.0, "significant": False}
    demo = segments["dataset=demo"]["metrics"]["hit@5"]
    assert demo["delta"] == pytest.approx((20 - 1) / 41, abs=1e-4) and demo["lo"] > 0 and demo["significant"]


def test_flips_list_regressions_and_fixes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_hit5 = [1, 1, 1, 0, 0, 1, 0]
    b_hit5 = [0, 0, 1, 1, 0, 1, 0]
    a = [record(f"q{i}", hits(0.0, float(x)), {"numeric_match": float(x)}) for i, x in enumerate(a_hit5)]
    b = [record(f"q{i}", hits(0.0, float(x)), {"numeric_match": 1.0}) for i, x in enumerate(b_hit5)]
    a[0]["question"] = "A question far longer than the printed width " + "and it goes on " * 10
    names = ["hit@1", "hit@5", "mrr", "numeric_match"]
    run_a, run_b = make_run(tmp_path / "a", a, names), make_run(tmp_path / "b", b, names)

    flips = compare_runs(run_a, run_b, resamples=50, seed=0)["flips"]
    assert list(flips) == ["hit@5", "numeric_match"]
    assert [e["id"] for e in flips["hit@5"]["regressions"]] == ["q0", "q1"]
    assert [e["id"] for e in flips["hit@5"]["fixes"]] == ["q3"]
    assert flips["hit@5"]["regressions"][1]["question"] == "What is the value of item q1?"
    assert flips["numeric_match"]["regressed"] == 0 and flips["numeric_match"]["fixed"] == 3

    assert run_cli([str(run_a), str(run_b), "--resamples", "50", "--flips", "1"]) == 0
    printed = capsys.readouterr().out
    assert "hit@5 flips: 2 regressions (1 -> 0), 1 fixes (0 -> 1)" in printed
    q0 = next(line for line in printed.splitlines() if line.startswith("  - q0  A question far longer"))
    assert q0.endswith("…") and len(q0) < 110 and "- q1" not in printed
    assert "  - ... 1 more (see --json)" in printed and "  + q3  What is the value of item q3?" in printed


def test_flip_metrics_prefer_hit_at_5() -> None:
    assert flip_metrics(["hit@1", "hit@5", "hit@10", "mrr", "refusal_accuracy"]) == ["hit@5", "refusal_accuracy"]
    assert flip_metrics(["hit@3", "hit@10", "token_f1"]) == ["hit@3"]
    assert flip_metrics(["mrr"]) == []


def test_cli_prints_a_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = [record(f"q{i}", hits(0.0, float(i % 2))) for i in range(30)]
    b = [record(f"q{i}", hits(1.0, float(i % 2))) for i in range(30)]
    names = ["hit@1", "hit@5", "mrr"]
    run_a, run_b = make_run(tmp_path / "a", a, names), make_run(tmp_path / "b", b, names)
    out = tmp_path / "cmp.json"
    assert run_cli([str(run_a), str(run_b), "--resamples", "100", "--seed", "5", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert "30 paired questions (only in A: 0, only in B: 0)" in printed
    assert "dataset=demo (30 questions): every paired question, as all" in printed
    header = next(line for line in lines if line.strip().startswith("metric"))
    assert header.split() == ["metric", "n", "A", "B", "delta", "95%", "CI", "sig"]
    hit1 = next(line for line in lines if line.strip().startswith("hit@1"))
    assert hit1.split() == ["hit@1", "30", "0.0000", "1.0000", "+1.0000", "[+1.0000,", "+1.0000]", "*"]
    hit5 = next(line for line in lines if line.strip().startswith("hit@5"))
    assert hit5.split()[-1] == "+0.0000]"  # not significant: no mark
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["seed"] == 5 and saved["overall"]["metrics"]["hit@1"]["significant"] is True
    assert saved == compare_runs(run_a, run_b, resamples=100, seed=5) | {"run_a": str(run_a), "run_b": str(run_b)}


def test_cli_exits_2_on_a_bad_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_a = make_run(tmp_path / "a", [record("q1", hits(1.0, 1.0))], ["hit@1", "hit@5", "mrr"])
    assert run_cli([str(run_a), str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope: not a run folder" in err and len(err.strip().splitlines()) == 1

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "summary.json").write_text("{}", encoding="utf-8")
    assert run_cli([str(run_a), str(partial)]) == 2
    assert f"{RESULTS_FILE}: missing" in capsys.readouterr().err

    (partial / RESULTS_FILE).write_text("{not json", encoding="utf-8")
    assert run_cli([str(run_a), str(partial)]) == 2
    assert "not readable JSON" in capsys.readouterr().err

    assert run_cli([str(run_a), str(run_a), "--metric", "ndcg@10"]) == 2
    assert "metric ndcg@10 is not in both runs" in capsys.readouterr().err
