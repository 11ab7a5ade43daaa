"""Reword the questions the feedback simulation asks again, with the embedded LLM: its paraphrase set.

    .venv/bin/python -m eval.paraphrase eval/sets/obliqa-dev-paraphrases.jsonl [THREADS]   # resumable

The committed eval/sets/obliqa-dev-paraphrases.jsonl was made by this script (Qwen2.5-Coder-1.5B-Instruct,
greedy) for the 300 "repeat" questions of `eval simulate` (learn 1000, repeat 300, unseen 300, seed 0); the
first 272 are committed (about 45 minutes on one CPU thread beside other work). A rewording identical to its
question is skipped. Each line is the original question (id, evidence, tags) with the reworded text, its
original's id in `paraphrase_of` and the model in `tags.paraphrased_by`.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from assistant.llm import LlamaCppLLM
from assistant.models import fetch
from assistant.settings import Settings

from .questions import load_questions
from .simulate import plan

OBLIQA = Path("../shared/corpora/adgm/obliqa_dev.jsonl")
MODEL = "qwen2.5-coder-1.5b-instruct"
SYSTEM = ("You rewrite questions about financial regulations. Rewrite the user's question so it asks exactly the "
          "same thing in different words: change the sentence structure and wording, keep every defined term, rule "
          "number and name. Reply with the rewritten question only.")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    threads = int(argv[1]) if len(argv) > 1 else 2
    sets = plan(load_questions(OBLIQA), 1000, 300, 300, 0)
    llm = LlamaCppLLM(fetch(MODEL, Settings.load().models_dir), name=MODEL, threads=threads, context_tokens=1024)
    done = {json.loads(line)["paraphrase_of"] for line in out.read_text().splitlines()} if out.exists() else set()
    with out.open("a", encoding="utf-8") as fh:
        for q in sets["repeat"]:
            if q.id in done:
                continue
            reply = "".join(llm.stream([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q.question}],
                                       max_tokens=90, temperature=0.0)).strip()
            text = re.sub(r"^(rewritten question:|question:)\s*", "", reply, flags=re.I).strip().strip('"')
            if not text or text.lower() == q.question.lower():
                continue
            record = q.model_dump()
            record.update(id=f"{q.id}-para", question=text, paraphrase_of=q.id,
                          tags={**(record.get("tags") or {}), "dataset": "obliqa-paraphrase", "paraphrased_by": MODEL})
            fh.write(json.dumps(record) + "\n")
            fh.flush()
    llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
