"""Time to first token and generation speed of answers with the embedded LLM, per configuration.

    QDRANT_PATH=data/eval/sec10q/index python bench/llm_bench.py ../shared/corpora/sec-10q/questions.jsonl \\
        --collection sec10q --configs qwen2.5-coder-1.5b-instruct:1500,qwen2.5-coder-0.5b-instruct:600 --queries 8

Each configuration is MODEL:CONTEXT_TOKENS (the RETRIEVAL_CONTEXT_TOKENS budget of source text). For every
question of a seeded sample the full answer pipeline runs in-process as a user's request does
(`Answerer.stream`: retrieval, prompt packing, generation): time to first token is measured from the call to
the first streamed piece, so it includes retrieval and the prompt processing that dominates it on a CPU.
The first question of each configuration is a warm-up (model load) and not counted. Prints a Markdown table
(p50/p95 TTFT, generation tokens/s, prompt tokens); commit it under bench/results/ with the machine it ran on.
Run it on an otherwise idle machine: with another process on the second core, llama.cpp on 2 threads slows
down several-fold (set LLM_THREADS=1 then).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from assistant.answering import Answer
from assistant.components import Components
from assistant.settings import Settings
from eval.questions import load_questions, sample_in_order


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("questions", type=Path)
    p.add_argument("--collection", required=True)
    p.add_argument("--configs", default="qwen2.5-coder-1.5b-instruct:1500")
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=64, help="tokens generated per answer (enough for a rate)")
    args = p.parse_args(argv)
    settings = Settings.load()
    questions = [q for q in load_questions(args.questions) if q.answerable]
    questions = sample_in_order(questions, args.queries + 1, args.seed)
    rows = []
    for config in args.configs.split(","):
        model, _, budget = config.partition(":")
        s = settings.model_copy(deep=True)
        s.llm.model, s.llm.max_tokens = model, args.max_tokens
        s.retrieval.context_tokens = int(budget or s.retrieval.context_tokens)
        components = Components(s)
        try:
            answerer = components.answerer
            llm = components.llm
            ttft, rates, prompt_tokens = [], [], []
            for i, q in enumerate(questions):
                started = time.perf_counter()
                first = None
                pieces = 0
                answer = None
                for event in answerer.stream(q.question, args.collection, llm=llm):
                    if isinstance(event, Answer):
                        answer = event
                    else:
                        first = first or time.perf_counter()
                        pieces += 1
                done = time.perf_counter()
                if i == 0 or first is None or answer is None or answer.refused:
                    continue  # warm-up, or refused before the LLM
                ttft.append(first - started)
                if pieces > 1:
                    rates.append((pieces - 1) / (done - first))
                draft = answerer.draft(q.question, args.collection, llm=llm)
                prompt_tokens.append(sum(llm.count_tokens(m["content"]) for m in draft.messages)
                                     if hasattr(llm, "count_tokens") else 0)
        finally:
            components.close()
        if not ttft:
            continue
        rows.append((model, s.retrieval.context_tokens, len(ttft), np.percentile(ttft, 50), np.percentile(ttft, 95),
                     float(np.median(rates)) if rates else float("nan"), int(np.median(prompt_tokens))))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"LLM_THREADS={settings.llm.threads}, collection {args.collection}\n")
    print("| model | source tokens (budget) | answers | TTFT p50 s | TTFT p95 s | tokens/s | prompt tokens p50 |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for m, b, n, p50, p95, rate, pt in rows:
        print(f"| {m} | {b} | {n} | {p50:.2f} | {p95:.2f} | {rate:.1f} | {pt} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
