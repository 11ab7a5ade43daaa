"""`python -m eval run QUESTIONS.jsonl` (console script `finrag-eval`): score retrieval, and answers.

    python -m eval run questions.jsonl [--collection NAME] [--k 1,3,5,10] [--answers] [--limit N]
                                       [--out DIR]

Settings (data dir, Qdrant, embedder, LLM) come from the environment as for the assistant.
Exit status: 0 done, 1 the assistant could not serve (e.g. unknown collection), 2 bad arguments or file.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from assistant.components import Components
from assistant.errors import FinragError
from assistant.settings import Settings

from .questions import QuestionFileError, load_questions
from .results import default_run_dir, write_run
from .runner import RunConfig, Runner
from .summary import build_summary
from .table import format_footer, format_table

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finrag-eval", description="Offline evaluation of finrag.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="retrieve (and answer) every question of a JSONL file and score it")
    run.add_argument("questions", type=Path, help="question file in the shared JSONL format")
    run.add_argument("--collection", help="Qdrant collection to search (default: COLLECTION setting)")
    run.add_argument("--k", type=parse_ks, default=(1, 3, 5, 10), help="cut-offs, e.g. 1,3,5,10 (default)")
    run.add_argument("--answers", action="store_true", help="also answer with the LLM and score the answers")
    run.add_argument("--limit", type=positive_int, help="only the first N questions")
    run.add_argument("--out", type=Path, help="run folder (default: eval/runs/<timestamp>)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    questions = load_questions(args.questions, args.limit)
    collection = args.collection or settings.collection
    config = RunConfig(collection=collection, ks=args.k, with_answers=args.answers)
    components = Components(settings)
    try:
        answerer = components.answerer if args.answers else None
        runner = Runner(components.retriever, config, answerer)
        result = runner.run(questions, progress=not args.no_progress)
        run_settings: dict[str, Any] = {
            "questions_file": str(args.questions), "collection": collection,
            "embedder": getattr(components.embedder, "name", settings.embedding.model),
            "k": list(config.ks), "depth": config.depth, "answers": config.with_answers, "limit": args.limit,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - result.seconds)),
        }
        if args.answers:
            run_settings.update(llm=settings.llm.model if settings.llm.backend == "llamacpp"
                                else settings.ollama.model, llm_backend=settings.llm.backend,
                                answer_top_k=settings.retrieval.top_k)
    finally:
        components.close()
    summary = build_summary(result.records, settings=run_settings, seconds=result.seconds,
                            timings_ms=result.timings_ms)
    out_dir = args.out or default_run_dir()
    results_path, summary_path = write_run(out_dir, result.records, summary)
    print(format_table(summary))
    print()
    print(format_footer(summary))
    print(f"wrote {results_path} and {summary_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.load()
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return run_command(args, settings)
    except QuestionFileError as exc:
        print(f"finrag-eval: {exc}", file=sys.stderr)
        return 2
    except FinragError as exc:
        print(f"finrag-eval: {exc.message}", file=sys.stderr)
        return 1
