"""`--judge`: a local LLM grades each answer for correctness (against the reference) and faithfulness
(every claim supported by the sources the answer cites).

The judge's instructions are the versioned text file `eval/prompts/judge_v1.txt`; its version
(`judge_v1@<sha8>`) is written into the run's settings. The judge is the product's own LLM (settings
`LLM_*`), so everything stays offline; a small model is a weak judge, so read judge scores as a trend
between runs of the same judge, never as ground truth. Scores, added to a record's `answer_scores`:

- `judge_correct`: 1.0 when the judge says the answer gives the reference's facts and figures; only for
  questions with a reference answer that were answered (not refused).
- `judge_faithful`: 1.0 when the judge finds every claim of the answer in the cited sources (the shown
  sources when the answer cites none); for every answered question.
A reply the judge does not format as asked leaves that score out and is counted in `judge_unparsed`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from assistant.answering import Answer
from assistant.llm import LLM, Message, complete
from assistant.prompts import Prompt

from .questions import Question

PROMPTS_DIR = Path(__file__).parent / "prompts"
JUDGE_PROMPT = "judge_v1"
MAX_SOURCE_CHARS = 4000
_VERDICT = re.compile(r"^\s*\**(CORRECT|SUPPORTED)\**\s*:\s*\**\s*(yes|no|n/?a)\b", re.IGNORECASE | re.MULTILINE)


def load_judge_prompt(name: str = JUDGE_PROMPT) -> Prompt:
    return Prompt(name=name, text=(PROMPTS_DIR / f"{name}.txt").read_text(encoding="utf-8").strip())


def parse_verdict(reply: str) -> dict[str, bool | None]:
    """{"correct": True/False/None, "supported": ...}: None where the reply gives no (or an n/a) verdict."""
    verdict: dict[str, bool | None] = {"correct": None, "supported": None}
    for key, value in _VERDICT.findall(reply):
        name = "correct" if key.upper() == "CORRECT" else "supported"
        if verdict[name] is None:
            verdict[name] = None if value.lower().replace("/", "") == "na" else value.lower() == "yes"
    return verdict


def judge_messages(prompt: Prompt, question: Question, answer: Answer) -> list[Message]:
    cited = [c.n for c in answer.citations] or list(range(1, len(answer.retrieved) + 1))
    blocks, used = [], 0
    for n in cited:
        if n > len(answer.retrieved) or used >= MAX_SOURCE_CHARS:
            continue
        text = answer.retrieved[n - 1].chunk.text.strip()[: MAX_SOURCE_CHARS - used]
        used += len(text)
        blocks.append(f"[{n}] {text}")
    user = (f"QUESTION: {question.question.strip()}\n\nREFERENCE: {(question.reference_answer or 'none').strip()}"
            f"\n\nSOURCES:\n" + ("\n\n".join(blocks) or "(none)") + f"\n\nANSWER: {answer.answer.strip()}")
    return [{"role": "system", "content": prompt.text}, {"role": "user", "content": user}]


@dataclass
class Judge:
    llm: LLM
    prompt: Prompt

    @property
    def version(self) -> str:
        return self.prompt.version

    def grade(self, question: Question, answer: Answer) -> tuple[dict[str, float], str | None]:
        """(scores to add to the record's answer_scores, the judge's raw reply or None when not asked)."""
        if answer.refused:
            return {}, None
        reply = complete(self.llm, judge_messages(self.prompt, question, answer), max_tokens=16, temperature=0.0)
        verdict = parse_verdict(reply)
        scores: dict[str, float] = {}
        if question.reference_answer and verdict["correct"] is not None:
            scores["judge_correct"] = float(verdict["correct"])
        if verdict["supported"] is not None:
            scores["judge_faithful"] = float(verdict["supported"])
        return scores, reply
