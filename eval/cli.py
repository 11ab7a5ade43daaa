"""`python -m eval` (console script `finrag-eval`): score retrieval and answers, compare runs, report.

    python -m eval run questions.jsonl [--collection NAME] [--k 1,3,5,10] [--retriever product|hybrid|dense|bm25]
                                       [--filter FIELD=VALUE ...] [--answers] [--context retrieved|evidence] [--judge]
                                       [--limit N | --sample N] [--seed S] [--out DIR] [--resume]
    python -m eval compare RUN_A RUN_B [--resamples 2000] [--seed 0]
    python -m eval report RUN_DIR
    python -m eval tatqa tatqa_dataset_dev.json --out DIR [--sample N] [--seed S]
    python -m eval feedback-export --out DIR [--collection NAME] [--since ISO] [--heldout-percent 20] [--no-text]
    python -m eval injection [--set eval/sets/injection] [--model NAME] [--prompt NAME] [--out DIR]

Settings (data dir, Qdrant, embedder, LLM) come from the environment as for the assistant.
Exit status: 0 done, 1 the assistant could not serve (e.g. unknown collection), 2 bad arguments or file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from assistant.chunks import INTEGER_FIELDS
from assistant.components import Components
from assistant.embedding import embedder_name
from assistant.errors import FinragError, InvalidFilter
from assistant.retrieval import RETRIEVAL_MODES
from assistant.settings import Settings
from assistant.store import build_filter, integer_value

from . import compare, feedback_export, fusion_tune, injection, learn, refusal_calibrate, report, rerank_train, simulate
from .judge import Judge, load_judge_prompt
from .questions import QuestionFileError, load_questions, sample_in_order
from .results import RESULTS_FILE, default_run_dir, write_json, write_run
from .runner import EVIDENCE_TOP_K, RunConfig, Runner
from .summary import build_summary
from .table import format_footer, format_table
from .tatqa import TatqaError, build_set, load_contexts

RETRIEVERS = ("product", *RETRIEVAL_MODES)
CHECKPOINT_EVERY_S = 30.0

log = logging.getLogger(__name__)


def parse_ks(text: str) -> tuple[int, ...]:
    problem = f"--k wants positive integers separated by commas, got {text!r}"
    try:
        ks = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(problem) from exc
    if not ks or any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError(problem)
    return tuple(sorted(set(ks)))


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def parse_filter(text: str) -> tuple[str, str | int]:
    """`FIELD=VALUE` of --filter: a filterable payload field and its value (an integer for integer fields)."""
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not value:
        raise argparse.ArgumentTypeError(f"--filter wants FIELD=VALUE, e.g. ticker=AAPL, got {text!r}")
    try:
        build_filter({key: value})  # the store's own rules: a filterable field, integers where it takes them
    except InvalidFilter as exc:
        raise argparse.ArgumentTypeError(f"--filter: {exc.message}") from None
    return key, integer_value(key, value) if key in INTEGER_FIELDS else value


def combine_filters(pairs: Sequence[tuple[str, str | int]] | None) -> dict[str, Any] | None:
    """--filter pairs as store filters: all fields must hold; a field given twice matches any of its values."""
    if not pairs:
        return None
    values: dict[str, list[Any]] = {}
    for key, value in pairs:
        if value not in values.setdefault(key, []):
            values[key].append(value)
    return {k: v[0] if len(v) == 1 else v for k, v in values.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finrag-eval", description="Offline evaluation of finrag.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="retrieve (and answer) every question of a JSONL file and score it")
    run.add_argument("questions", type=Path, help="question file in the shared JSONL format")
    run.add_argument("--collection", help="Qdrant collection to search (default: COLLECTION setting)")
    run.add_argument("--k", type=parse_ks, default=(1, 3, 5, 10), help="cut-offs, e.g. 1,3,5,10 (default)")
    run.add_argument("--retriever", choices=RETRIEVERS, default="product",
                     help="'product' (RETRIEVAL_MODE, default) or a baseline: hybrid, dense, bm25")
    run.add_argument("--filter", type=parse_filter, action="append", dest="filters", metavar="FIELD=VALUE",
                     help="retrieve only chunks whose payload FIELD has VALUE, for every question (repeatable; "
                     "a field given twice matches either value), e.g. --filter ticker=AAPL --filter fiscal_year=2023")
    run.add_argument("--answers", action="store_true", help="also answer with the LLM and score the answers")
    run.add_argument("--model", help="answer with this generator instead of the default: a registry name "
                     "(qwen2.5-coder-0.5b-instruct) or ollama:TAG, to compare generators on the same questions")
    run.add_argument("--context", choices=("retrieved", "evidence"), default="retrieved",
                     help="answer from retrieval over the collection (default) or from the evidence documents")
    run.add_argument("--judge", action="store_true", help="grade answers with the local LLM judge (needs --answers)")
    pick = run.add_mutually_exclusive_group()
    pick.add_argument("--limit", type=positive_int, help="only the first N questions")
    pick.add_argument("--sample", type=positive_int, help="a random sample of N questions (see --seed), in file order")
    run.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    run.add_argument("--split", choices=("all", "train", "test"), default="all",
                     help="only the reranker's training or held-out questions (eval/rerank_train.py split_of)")
    run.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=None,
                     help="rerank with the trained cross-encoder (default: product follows RERANK_ENABLED, "
                     "the baselines do not)")
    run.add_argument("--memory", action="store_true",
                     help="let feedback memory (votes in the answer database) move chunks; off by default so a run "
                     "measures the models, not the local database's feedback")
    run.add_argument("--out", type=Path, help="run folder (default: eval/runs/<timestamp>)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out: skip questions already in its results.json")
    run.add_argument("--no-report", action="store_true", help="do not write report.md and report.html")
    run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    compare.configure_parser(commands.add_parser(
        "compare", help="deltas of RUN_B against RUN_A per metric and segment, with bootstrap intervals"))
    report.configure_parser(commands.add_parser("report", help="(re)write report.md and report.html of a run"))
    fusion_tune.configure_parser(commands.add_parser(
        "tune-fusion", help="grid-search the hybrid fusion (RRF k, weights) on the train split"))
    refusal_calibrate.configure_parser(commands.add_parser(
        "calibrate-refusal", help="how often each refusal check refuses answerable and unanswerable questions"))
    rerank_train.configure_parser(commands.add_parser(
        "train-reranker", help="train the cross-encoder reranker on the train split of question files"))
    learn.configure_parser(commands.add_parser(
        "learn", help="train reranker/embedder versions from feedback, evaluate, promote or roll back"))
    simulate.configure_parser(commands.add_parser(
        "simulate", help="play users on a question set, then measure feedback memory and learned models"))
    feedback_export.configure_parser(commands.add_parser(
        "feedback-export", help="turn user feedback into golden evaluation cases and fine-tuning pairs"))
    injection.configure_parser(commands.add_parser(
        "injection", help="hostile documents: are instructions hidden in documents followed, the prompt leaked?"))
    tatqa = commands.add_parser("tatqa", help="build the TAT-QA answer set (documents + questions.jsonl)")
    tatqa.add_argument("source", type=Path, help="tatqa_dataset_dev.json (or another TAT-QA split)")
    tatqa.add_argument("--out", type=Path, required=True, help="folder for documents/ and questions.jsonl")
    tatqa.add_argument("--sample", type=positive_int, help="a random sample of N questions (see --seed)")
    tatqa.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    return parser


def load_done(out_dir: Path | None, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Records of an interrupted run in `out_dir` whose settings agree with this run's (`--resume`).

    Only what changes a question's record is compared (retriever, answers, k …); the question subset may
    differ (`--limit 50` first, then the rest): records of questions not in this run are dropped.
    """
    if out_dir is None:
        raise QuestionFileError("--resume needs --out: the folder of the run to continue")
    path = out_dir / RESULTS_FILE
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise QuestionFileError(f"cannot resume: {path} is not valid JSON ({exc.msg})") from exc
    before = data.get("settings", {})
    for key in ("questions_file", "collection", "retriever", "answers", "context", "judge", "k", "split",
                "filters"):
        if key in before and before[key] != settings.get(key):
            raise QuestionFileError(
                f"cannot resume {out_dir}: it was run with {key}={before[key]!r}, this run has {settings.get(key)!r}"
            )
    return [r for r in data.get("questions", []) if not r.get("error")]


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.judge and not args.answers:
        raise QuestionFileError("--judge grades answers: add --answers")
    if args.context == "evidence" and not args.answers:
        raise QuestionFileError("--context evidence is about answers: add --answers")
    questions = load_questions(args.questions, args.limit)
    if args.split != "all":
        questions = [q for q in questions if rerank_train.split_of(q) == args.split]
    questions = sample_in_order(questions, args.sample, args.seed)
    collection = args.collection or settings.collection
    mode = settings.retrieval.mode if args.retriever == "product" else args.retriever
    rerank = args.rerank if args.rerank is not None else (None if args.retriever == "product" else False)
    filters = combine_filters(args.filters)
    config = RunConfig(collection=collection, ks=args.k, with_answers=args.answers, context=args.context,
                       filters=filters)
    run_settings: dict[str, Any] = {
        "command": "python -m eval " + shlex.join(args.argv),
        "questions_file": str(args.questions), "collection": collection,
        "retriever": args.retriever, "retrieval_mode": mode, "filters": filters, "memory": args.memory,
        "embedder": embedder_name(settings.embedding),  # with the backend where its vectors differ
        "k": list(config.ks), "budgets": list(config.budgets), "depth": config.depth,
        "answers": config.with_answers, "context": config.context, "judge": args.judge,
        "limit": args.limit, "sample": args.sample, "seed": args.seed, "split": args.split,
    }
    if args.answers:
        run_settings.update(llm=settings.llm.model if settings.llm.backend == "llamacpp"
                            else settings.ollama.model, llm_backend=settings.llm.backend,
                            answer_top_k=settings.retrieval.top_k if args.context == "retrieved" else EVIDENCE_TOP_K,
                            min_score=settings.retrieval.min_score if args.context == "retrieved" else 0.0)
    wanted = {q.id for q in questions}
    done = [r for r in load_done(args.out, run_settings) if r["id"] in wanted] if args.resume else []
    done_ids = {r["id"] for r in done}
    todo = [q for q in questions if q.id not in done_ids]
    if done:
        print(f"resuming {args.out}: {len(done)} questions done, {len(todo)} to go", file=sys.stderr)
    out_dir = args.out or default_run_dir()
    components = Components(settings)
    last_save = time.monotonic()
    latest: list[dict[str, Any]] = done

    def save(records: list[dict[str, Any]]) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / RESULTS_FILE, {"settings": run_settings, "questions": records})

    def checkpoint(records: list[dict[str, Any]]) -> None:
        nonlocal last_save, latest
        latest = records
        if time.monotonic() - last_save >= CHECKPOINT_EVERY_S:
            save(records)
            last_save = time.monotonic()

    try:
        judge = None
        if args.judge:
            judge = Judge(components.llm, load_judge_prompt())
            run_settings["judge_prompt"] = judge.version
        retriever = components.retriever_for(mode, rerank, memory=args.memory)
        if args.retriever != "product":  # a baseline ranks alone: no filters read from the question
            retriever = dataclasses.replace(retriever, inference=None)
        run_settings["reranker"] = retriever.reranker.name if retriever.reranker is not None else None
        if retriever.fusion is not None and mode == "hybrid":
            run_settings["fusion"] = {"rrf_k": retriever.fusion.k, "dense_weight": retriever.fusion.dense_weight,
                                      "sparse_weight": retriever.fusion.sparse_weight}
        run_settings["infer_filters"] = retriever.inference is not None
        if retriever.reranker is not None:
            run_settings["rerank_depth"] = retriever.rerank_depth
        answerer = components.answerer if args.answers else None
        if answerer is not None:
            answerer.retriever = retriever
            if args.model:
                llm = components.llm_for(args.model)
                answerer.llm_factory = lambda: llm
            run_settings["prompt"] = answerer.prompt.version
            if answerer.calc_prompt is not None:
                run_settings["calc_prompt"] = answerer.calc_prompt.version
            run_settings["model"] = args.model or components.default_llm_spec
        runner = Runner(retriever, config, answerer, judge)
        started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        result = runner.run(todo, progress=not args.no_progress, done=done, on_record=checkpoint)
    except KeyboardInterrupt:
        if latest:
            save(latest)
            print(f"\ninterrupted after {len(latest)} questions; continue with the same command and --out {out_dir} "
                  "--resume", file=sys.stderr)
        return 130
    finally:
        components.close()
    run_settings["started_at"] = started_at
    summary = build_summary(result.records, settings=run_settings, seconds=result.seconds,
                            timings_ms=result.timings_ms)
    results_path, summary_path = write_run(out_dir, result.records, summary)
    print(format_table(summary))
    print()
    print(format_footer(summary))
    written = [results_path, summary_path]
    if not args.no_report:
        written.extend(report.write_report(out_dir))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def tatqa_command(args: argparse.Namespace) -> int:
    try:
        built = build_set(load_contexts(args.source), args.out, sample=args.sample, seed=args.seed)
    except TatqaError as exc:
        print(f"finrag-eval: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {built.documents} context documents to {built.documents_dir} and {built.questions} "
          f"questions to {built.questions_path}")
    print(f"next: python -m ingest {built.documents_dir} --collection tatqa")
    print(f"      python -m eval run {built.questions_path} --collection tatqa --answers --context evidence")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.command == "compare":
        return compare.compare_command(args)
    if args.command == "report":
        return report.report_command(args)
    if args.command == "tatqa":
        return tatqa_command(args)
    settings = Settings.load()
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    if args.command == "tune-fusion":
        return fusion_tune.run_command(args, settings)
    if args.command == "calibrate-refusal":
        return refusal_calibrate.run_command(args, settings)
    if args.command == "simulate":
        return simulate.run_command(args, settings)
    if args.command == "learn":
        return learn.run_command(args, settings)
    if args.command == "injection":
        return injection.run_command(args, settings)
    if args.command == "feedback-export":
        try:
            return feedback_export.run_command(args, settings)
        except FinragError as exc:
            print(f"finrag-eval: {exc.message}", file=sys.stderr)
            return 1
    if args.command == "train-reranker":
        try:
            return rerank_train.run_command(args)
        except FinragError as exc:
            print(f"finrag-eval: {exc.message}", file=sys.stderr)
            return 1
    try:
        return run_command(args, settings)
    except QuestionFileError as exc:
        print(f"finrag-eval: {exc}", file=sys.stderr)
        return 2
    except FinragError as exc:
        print(f"finrag-eval: {exc.message}", file=sys.stderr)
        return 1
