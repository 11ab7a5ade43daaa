"""Play users on a development set, then measure what their feedback taught the product.

    python -m eval simulate ../shared/corpora/adgm/obliqa_dev.jsonl --collection adgm --out DIR
        [--learn 1000] [--repeat 300] [--unseen 300] [--cited 5] [--p-mark 0.7] [--p-correct 0.2]
        [--p-noise 0.05] [--train reranker,embedder] [--dev FILE[@COLLECTION[:LIMIT]] ...] [--seed 0]

1. Split: questions are split by gold passage (`eval/rerank_train.py` `split_of`). The simulation asks
   `--learn` questions of the `train` side; learned models are judged on `--unseen` questions of the `test`
   side, whose gold passages no simulated user ever saw.
2. Users ask through the product's retrieval (feedback memory on, as served) and see the first `--cited`
   sources as the answer's citations. The answer is recorded in the answer log as the app records one; the
   text is not generated (the 1.5B model needs about a minute an answer on this CPU: 1,000 answers would
   take a day), so ratings judge the evidence, which is what retrieval learning uses. Each user rates the
   answer through `POST /v1/feedback` (the real API, in-process): up when a cited source holds the gold
   passage (eval/matching.py), else down with reason `wrong_evidence`; with `--p-mark` they also mark each
   citation useful or not, with `--p-correct` a down vote carries a correction (the gold passages' text), and
   with `--p-noise` the user gets it wrong (the rating and marks flipped). Twenty users in three segments.
3. Feedback memory: recall@5 and MRR with and without memory, at each `--thresholds` value, on (a) `--repeat`
   of the asked questions asked again, (b) `--paraphrases`: asked questions reworded (by the LLM, committed
   in eval/sets/), (c) same-rule: every other `train`-side question about the same gold passage as an asked
   one (ObliQA's questions about one rule ask different things, they are not paraphrases), and (d) the
   unseen questions (memory must not hurt them).
4. Learning: `python -m eval learn train --kind K` for each `--train` kind on the feedback, with the unseen
   ADGM questions and each `--dev` file as development sets; before/after tables and seconds.

Everything lands in DIR: the simulation's database (`sim.db`), learned versions (`data/models/learned`),
`report.md` and `report.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from assistant.answering import Answer
from assistant.components import Components
from assistant.records import AnswerLog
from assistant.retrieval import Retriever
from assistant.settings import Settings
from assistant.sources import make_citation

from . import learn
from .matching import match_ranks
from .questions import Question, load_questions, sample_in_order
from .rerank_train import split_of

log = logging.getLogger(__name__)

SEGMENTS = ("compliance", "legal", "risk")
USERS = [(f"sim-user-{i:02d}", SEGMENTS[i % len(SEGMENTS)]) for i in range(20)]
SIM_ANSWER = "(simulation: retrieval only, no generated text)"


def gold_key(q: Question) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((e.source, e.section or (e.text or "")[:80]) for e in q.evidence))


def plan(questions: Sequence[Question], n_learn: int, n_repeat: int, n_unseen: int, seed: int
         ) -> dict[str, list[Question]]:
    """learn / repeat / paraphrase / unseen question lists (see the module docs)."""
    rng = random.Random(seed)
    train = [q for q in questions if q.evidence and split_of(q) == "train"]
    test = [q for q in questions if q.evidence and split_of(q) == "test"]
    groups: dict[tuple[tuple[str, str], ...], list[Question]] = defaultdict(list)
    for q in train:
        groups[gold_key(q)].append(q)
    keys = list(groups)
    rng.shuffle(keys)
    learn_qs: list[Question] = []
    paraphrases: list[Question] = []
    for key in keys:  # one question of each gold passage is asked; its siblings are the paraphrases
        if len(learn_qs) >= n_learn:
            break
        first, *rest = groups[key]
        learn_qs.append(first)
        paraphrases += rest
    return {
        "learn": learn_qs,
        "repeat": sample_in_order(learn_qs, n_repeat, seed),
        "same-rule": paraphrases,
        "unseen": sample_in_order(test, n_unseen, seed),
    }


def paraphrases_of(path: Path, asked: Sequence[Question]) -> list[Question]:
    """The questions of a paraphrase file (each line a question with `paraphrase_of`: the id it rewords) whose
    original was asked."""
    ids = {q.id for q in asked}
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            data = json.loads(line)
            if data.get("paraphrase_of") in ids:
                keep.append(Question.model_validate(data))
    return keep


def rank_quality(retriever: Retriever, questions: Sequence[Question], collection: str, k: int = 5,
                 progress: bool = False, desc: str = "") -> dict[str, float]:
    """recall@k (share of gold evidence items in the top k), hit@k and MRR over `questions`."""
    recalls, hits, rr = [], [], []
    for q in tqdm(questions, desc=desc, unit="q", disable=not progress):
        first, recall = learn.evidence_rank(q, retriever.search(q.question, collection, max(k, 10)).hits, k)
        recalls.append(recall)
        hits.append(1.0 if first and first <= k else 0.0)
        rr.append(1 / first if first else 0.0)
    n = len(questions) or 1
    return {"questions": len(questions), f"recall@{k}": round(sum(recalls) / n, 4),
            f"hit@{k}": round(sum(hits) / n, 4), "mrr@10": round(sum(rr) / n, 4)}


class Users:
    """Simulated users: they judge cited sources against the gold passages, sometimes wrongly."""

    def __init__(self, client: Any, rng: random.Random, p_mark: float, p_correct: float, p_noise: float) -> None:
        self.client = client
        self.rng = rng
        self.p_mark, self.p_correct, self.p_noise = p_mark, p_correct, p_noise
        self.counts: dict[str, int] = dict.fromkeys(("up", "down", "marked", "corrected", "noisy"), 0)

    def rate(self, q: Question, answer_id: str, cited: Sequence[Any]) -> None:
        ranks = match_ranks(q.evidence, [h.chunk for h in cited])
        useful = [bool(m) for m in ranks]
        noisy = self.rng.random() < self.p_noise
        if noisy:
            useful = [not u for u in useful]
        good = any(useful)
        user, segment = self.rng.choice(USERS)
        body: dict[str, Any] = {"answer_id": answer_id, "rating": "up" if good else "down", "user_id": user,
                                "segment": segment}
        if not good:
            body["reason"] = "wrong_evidence"
            quoted = [e.text for e in q.evidence if e.text]
            if quoted and self.rng.random() < self.p_correct:  # the user pastes the rules that answer it
                body["correction"] = "\n\n".join(quoted)
        if cited and self.rng.random() < self.p_mark:
            body["citations"] = [{"n": i + 1, "useful": u} for i, u in enumerate(useful)]
        response = self.client.post("/v1/feedback", json=body)
        if response.status_code not in (200, 201):
            raise RuntimeError(f"feedback refused: {response.status_code} {response.text}")
        self.counts[body["rating"]] += 1
        self.counts["marked"] += "citations" in body
        self.counts["corrected"] += "correction" in body
        self.counts["noisy"] += noisy


def ask_and_rate(components: Components, users: Users, questions: Sequence[Question], collection: str,
                 cited: int, progress: bool) -> None:
    retriever = components.retriever_for(components.settings.retrieval.mode)  # as served: memory on
    answer_log = AnswerLog(components.engine, components.embedder.name)
    for q in tqdm(questions, desc="users asking and rating", unit="q", disable=not progress):
        started = time.perf_counter()
        found = retriever.search(q.question, collection, 10)
        shown = found.hits[:cited]
        answer = Answer(SIM_ANSWER, [make_citation(i + 1, h) for i, h in enumerate(shown)], found.hits, False,
                        "simulation", "none", memory=[e.as_record() for e in found.memory])
        answer_id = answer_log.record(answer, question=q.question, collection=collection, filters=None,
                                      latency_ms=int((time.perf_counter() - started) * 1000),
                                      versions=components.versions_for(collection))
        users.rate(q, answer_id, shown)


MEMORY_SETS = ("repeat", "paraphrase", "same-rule", "unseen")


def measure_memory(components: Components, sets: dict[str, list[Question]], collection: str,
                   thresholds: Sequence[float], progress: bool) -> dict[str, Any]:
    """{threshold: {set: {"without": metrics, "with": metrics}}} for the sets that exist."""
    mode = components.settings.retrieval.mode
    without = components.retriever_for(mode, rerank=False, memory=False)
    with_memory = components.retriever_for(mode, rerank=False, memory=True)
    memory = with_memory.memory
    if memory is None:
        raise RuntimeError("feedback memory is off (MEMORY_ENABLED=false)")
    names = [n for n in MEMORY_SETS if sets.get(n)]
    base = {n: rank_quality(without, sets[n], collection, progress=progress, desc=f"{n} without memory")
            for n in names}
    out: dict[str, Any] = {}
    for t in thresholds:
        memory.threshold = t
        out[str(t)] = {n: {"without": base[n], "with": rank_quality(with_memory, sets[n], collection,
                                                                     progress=progress, desc=f"{n} memory@{t}")}
                       for n in names}
    memory.threshold = components.settings.memory.threshold
    return out


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("questions", type=Path, help="question file (JSONL) with gold evidence, e.g. ObliQA dev")
    parser.add_argument("--collection", required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for the database, versions and report")
    parser.add_argument("--learn", type=int, default=1000, help="questions the users ask and rate")
    parser.add_argument("--repeat", type=int, default=300, help="asked questions asked again")
    parser.add_argument("--unseen", type=int, default=300, help="held-out (test side) questions")
    parser.add_argument("--cited", type=int, default=5, help="sources shown as citations")
    parser.add_argument("--p-mark", type=float, default=0.7)
    parser.add_argument("--p-correct", type=float, default=0.2)
    parser.add_argument("--p-noise", type=float, default=0.05)
    parser.add_argument("--train", default="reranker,embedder", help="kinds to learn, comma-separated ('' = none)")
    parser.add_argument("--dev", action="append", default=[], metavar="FILE[@COLLECTION[:LIMIT]]")
    parser.add_argument("--epochs", type=int, help="learning passes (default: reranker 1, embedder 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--paraphrases", type=Path,
                        help="reworded asked questions (JSONL with `paraphrase_of`), "
                        "e.g. eval/sets/obliqa-dev-paraphrases.jsonl")
    parser.add_argument("--thresholds", default="0.8",
                        help="memory similarity thresholds to measure, comma-separated (calibration)")
    parser.add_argument("--skip-asking", action="store_true", help="reuse the feedback already in DIR/sim.db")
    parser.add_argument("--no-progress", action="store_true")


def simulation_settings(base: Settings, out: Path) -> Settings:
    """The base settings with the simulation's own database and learned-model registry under `out`."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    store = base.store.model_copy(update={"path": base.qdrant_path.resolve()})
    rerank = base.rerank.model_copy(update={"model": str(base.reranker_path.resolve())})
    return base.model_copy(update={"data_dir": data, "database_url": f"sqlite:///{(out / 'sim.db').resolve()}",
                                   "store": store, "rerank": rerank})


def run_command(args: argparse.Namespace, base: Settings) -> int:
    from fastapi.testclient import TestClient

    from assistant.app import create_app

    progress = not args.no_progress
    args.out.mkdir(parents=True, exist_ok=True)
    settings = simulation_settings(base, args.out)
    questions = load_questions(args.questions)
    sets = plan(questions, args.learn, args.repeat, args.unseen, args.seed)
    report: dict[str, Any] = {"questions": str(args.questions), "collection": args.collection,
                              "sizes": {k: len(v) for k, v in sets.items()},
                              "options": {k: v for k, v in vars(args).items() if k not in ("handler",)
                                          and not isinstance(v, Path)}}
    components = Components(settings)
    try:
        if not args.skip_asking:
            app = create_app(settings, components, preload=False)
            with TestClient(app) as client:
                users = Users(client, random.Random(args.seed), args.p_mark, args.p_correct, args.p_noise)
                t = time.perf_counter()
                ask_and_rate(components, users, sets["learn"], args.collection, args.cited, progress)
                report["feedback"] = {**users.counts, "seconds": round(time.perf_counter() - t, 1)}
        if args.paraphrases:
            sets["paraphrase"] = paraphrases_of(args.paraphrases, sets["learn"])
            report["sizes"]["paraphrase"] = len(sets["paraphrase"])
        report["memory"] = measure_memory(components, sets, args.collection,
                                          [float(t) for t in args.thresholds.split(",") if t], progress)
        _write(args.out, report)
        kinds = [k for k in args.train.split(",") if k]
        unseen_file = args.out / "unseen.jsonl"
        unseen_file.write_text("".join(q.model_dump_json() + "\n" for q in sets["unseen"]))
        report["learning"] = {}
        for kind in kinds:
            learn_args = argparse.Namespace(
                learn_command="train", kind=kind, collection=args.collection, promote=True, min_gain=0.0,
                max_dev_drop=0.01, epochs=args.epochs, threads=args.threads, max_length=160,
                no_progress=not progress,
            )
            dev = [learn.DevSet(unseen_file, args.collection)] + [
                learn.DevSet.parse(d, settings.collection) for d in args.dev]
            registry = components.registry
            t = time.perf_counter()
            before = set(registry.versions(kind))
            learn._train(components, registry, learn_args, dev)
            version = sorted(set(registry.versions(kind)) - before)[-1]
            manifest = registry.manifest(version)
            report["learning"][kind] = {"version": version, "seconds": round(time.perf_counter() - t, 1),
                                        "evaluation": manifest.get("evaluation"), "data": manifest.get("data"),
                                        "manifest_seconds": manifest.get("seconds")}
            components.reload_models()
            _write(args.out, report)
    finally:
        components.close()
    _write(args.out, report)
    print((args.out / "report.md").read_text())
    return 0


def _write(out: Path, report: dict[str, Any]) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(render(report))


def render(report: dict[str, Any]) -> str:
    lines = [f"# Feedback simulation: {report['questions']} ({report['collection']})", ""]
    lines.append("Sizes: " + ", ".join(f"{k} {v}" for k, v in report["sizes"].items()))
    if "feedback" in report:
        lines.append("Feedback: " + ", ".join(f"{k} {v}" for k, v in report["feedback"].items()))
    lines += ["", "## Feedback memory", "", "| threshold | questions | n | recall@5 without | recall@5 with | Δ | "
              "MRR@10 without | MRR@10 with |", "|--:|---|--:|--:|--:|--:|--:|--:|"]
    for threshold, by_set in report.get("memory", {}).items():
        for name, m in by_set.items():
            a, b = m["without"], m["with"]
            lines.append(f"| {threshold} | {name} | {a['questions']} | {a['recall@5']:.3f} | {b['recall@5']:.3f} | "
                         f"{b['recall@5'] - a['recall@5']:+.3f} | {a['mrr@10']:.3f} | {b['mrr@10']:.3f} |")
    for kind, info in report.get("learning", {}).items():
        ev = info.get("evaluation") or {}
        lines += ["", f"## Learned {kind}: {info['version']} ({info['seconds']:.0f} s)", "",
                  f"Promoted: {ev.get('better')} — {ev.get('reason')}", "",
                  "| set | model | questions | MRR | hit@1 | hit@5 | recall@10 |", "|---|---|--:|--:|--:|--:|--:|"]
        metrics = ev.get("metrics", {})
        sets = sorted({s for m in metrics.values() for s in m})
        for s in sets:
            for model, m in metrics.items():
                if s in m:
                    x = m[s]
                    lines.append(f"| {s} | {model} | {x['questions']} | {x['mrr']:.3f} | {x['hit@1']:.3f} | "
                                 f"{x['hit@5']:.3f} | {x['recall@10']:.3f} |")
    return "\n".join(lines) + "\n"

