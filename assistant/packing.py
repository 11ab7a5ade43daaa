"""Prompt packing: as many ranked sources as the model's context window holds, counted in its tokens.

The window holds the fixed part of the prompt (system prompt, question, reminder, chat template), the
sources, and the answer still to be generated. `pack_sources` spends what is left on the sources in rank
order:

- a source is shown whole or not at all, and the lowest-ranked go first: the result is a prefix of the
  ranking (`texts[i]` shows `hits[i]`, as `answering.source_texts` returns);
- the best source is always shown; when even it does not fit, it is cut at a line boundary, keeping its
  first lines. A table row is one line (`ingest.tables` writes a row per line, and `cut_table` starts every
  table piece with the table's caption, units and column headers), so no row is ever cut and the rows kept
  stay under their headers. Only a line of running text is cut inside, between words, and only when not
  even the first line fits;
- each source costs its whole block (`sources.source_block`: the `<source>` tags, its header line and its
  text, quoted) and the blank line that separates it from the next.

Counting is the model's (`LlamaCppLLM.count_tokens`: its own tokenizer; `OllamaLLM.count_tokens`: an
estimate). Counting the pieces apart can differ by a token or two at each join from counting the whole
prompt; `margin_tokens` absorbs that and the chat template's tokens.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence

from .chunks import ScoredChunk
from .sources import source_block

log = logging.getLogger(__name__)

Counter = Callable[[str], int]

_SEPARATOR = "\n\n"  # between source blocks in the user message
# A row of figures as ingest.tables writes them: cells joined by " | " (labelled rows included), or a line
# that ends in two or more figures ("Total net sales 81,797 82,959").
_FIGURE = r"\(?-?\$?\s?\d[\d,]*(?:\.\d+)?\)?%?"
_ENDS_IN_FIGURES = re.compile(rf"(?:\s+{_FIGURE}){{2,}}\s*$")


def is_table_row(line: str) -> bool:
    """Whether a line is (or may be) a table row, which is never cut inside."""
    s = line.strip()
    return " | " in s or bool(_ENDS_IN_FIGURES.search(s))


def pack_sources(
    hits: Sequence[ScoredChunk],
    *,
    fixed_tokens: int,
    context_tokens: int,
    answer_tokens: int,
    count: Counter,
    margin_tokens: int = 32,
) -> list[str]:
    """The text to show for each source that fits, best first: `texts[i]` shows `hits[i]`.

    fixed_tokens: what the prompt costs without sources, e.g. the tokens of
        `render_messages(prompt, question, [], [])`.
    context_tokens: the model's window (`llm.context_tokens`).
    answer_tokens: tokens kept free for the answer (LLM_MAX_TOKENS).
    count: the model's token counter (`llm.count_tokens`).
    margin_tokens: kept free besides, for the chat template and for joins counted apart.
    """
    if not hits:
        return []
    room = context_tokens - answer_tokens - fixed_tokens - margin_tokens
    separator = count(_SEPARATOR)
    texts: list[str] = []
    for n, hit in enumerate(hits, start=1):
        text = hit.chunk.text.strip()
        cost = count(source_block(n, hit, text)) + separator
        if cost > room:
            break
        texts.append(text)
        room -= cost
    if not texts:  # not even the best source fits whole: show as much of it as there is room for
        header = count(source_block(1, hits[0], "")) + separator
        texts.append(cut_to_fit(hits[0].chunk.text.strip(), room - header, count))
        log.info("packing: the best source was cut to %d of %d characters to fit %d tokens of context",
                 len(texts[0]), len(hits[0].chunk.text.strip()), context_tokens)
    if len(texts) < len(hits):
        log.debug("packing: %d of %d sources fit %d tokens of context", len(texts), len(hits), context_tokens)
    return texts


def cut_to_fit(text: str, room: int, count: Counter) -> str:
    """The longest run of `text`'s first lines that costs at most `room` tokens.

    When not even the first line fits, a line of running text is cut after its last word that fits; a table
    row is not cut, and "" is returned.
    """
    lines = text.split("\n")
    if count(text) <= room:
        return text
    # Costs grow with the lines kept: find the most that fit by bisection.
    lo, hi = 0, len(lines)  # lines[:lo] fit; lines[:hi] do not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count("\n".join(lines[:mid])) <= room:
            lo = mid
        else:
            hi = mid
    if lo:
        return "\n".join(lines[:lo]).rstrip()
    first = lines[0]
    if is_table_row(first):
        return ""
    words = first.split(" ")
    lo, hi = 0, len(words)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count(" ".join(words[:mid])) <= room:
            lo = mid
        else:
            hi = mid
    return " ".join(words[:lo]).rstrip()
