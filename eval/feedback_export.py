"""`python -m eval feedback-export`: users' votes, corrections and citation marks → golden evaluation cases
(the shared question format) and fine-tuning pairs.

    python -m eval feedback-export --out DIR [--collection NAME] [--since ISO] [--heldout-percent 20] [--no-text]

Reads the feedback log joined with the answers it rates (`assistant/db.py`); `build_cases` turns those votes into
cases without touching a database, so the rules below are tested on plain values:

- votes on the same (collection, normalized question) merge into one case; the question is what retrieval saw
  (the standalone question when a follow-up was rewritten);
- evidence: the chunks cited by up-voted answers and those marked useful; negative evidence: those marked not
  useful, and every chunk cited by a `wrong_evidence` down vote that marks none useful. An explicit mark beats
  an implicit one; between two of a kind the most recent wins;
- reference answer: the most recent correction, else the most recent up-voted (not refused) answer, else null;
- an up-voted refusal with nothing else to go on is an `"answerable": false` case; a case with no reference,
  no evidence and no negatives is skipped ("nothing to learn");
- held-out split by a hash of the smallest evidence point id (paraphrases supported by the same chunk share a
  side), or of the normalized question when there is no evidence.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from assistant.components import Components
from assistant.db import answers, connect, feedback
from assistant.settings import Settings
from assistant.store import VectorStore

log = logging.getLogger(__name__)

TRAIN_FILE, HELDOUT_FILE = "golden-train.jsonl", "golden-heldout.jsonl"
SFT_FILE, PREFERENCES_FILE, MANIFEST_FILE = "sft.jsonl", "preferences.jsonl", "manifest.json"
NOTHING_TO_LEARN = "nothing to learn"
UNKNOWN_RATING = "unknown rating"  # counted in votes, not cases


@dataclass(frozen=True)
class Vote:
    """One feedback row with the answer it rates."""

    feedback_id: int
    answer_id: str
    at: datetime  # when the vote was last set: updated_at, else created_at (UTC)
    collection: str
    question: str  # what retrieval saw: the standalone question when rewritten, else the question asked
    answer: str
    rating: str  # up | down
    refused: bool = False
    model: str = ""
    prompt_version: str = ""
    citations: Sequence[Mapping[str, Any]] = ()  # [{n, point_id, source, pages, section, score}]
    marks: Sequence[Mapping[str, Any]] = ()  # [{n, point_id, source, section, pages, useful}]
    reason: str | None = None
    correction: str | None = None
    segment: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Vote:
        return cls(
            feedback_id=row["feedback_id"], answer_id=row["answer_id"],
            at=as_utc(row["updated_at"] or row["created_at"]), collection=row["collection"],
            question=row["standalone_question"] or row["question"], answer=row["answer"], rating=row["rating"],
            refused=bool(row["refused"]), model=row["model"], prompt_version=row["prompt_version"],
            citations=row["citations"] or [], marks=row["citation_marks"] or [], reason=row["reason"],
            correction=(row["correction"] or "").strip() or None, segment=row["segment"],
        )


@dataclass(frozen=True)
class ChunkRef:
    """A chunk a vote speaks about; `key` is its point id (or source|section|pages when none is known)."""

    key: str
    point_id: str | None
    source: str
    pages: tuple[int, ...] = ()
    section: str | None = None

    def item(self, text: str | None) -> dict[str, Any]:
        """The evidence item of the shared format (plus `point_id`, which the loader ignores)."""
        item: dict[str, Any] = {"source": self.source}
        if self.pages:
            item["page"] = self.pages[0]
        if self.section:
            item["section"] = self.section
        if text:
            item["text"] = text
        if self.point_id:
            item["point_id"] = self.point_id
        return item


@dataclass
class Case:
    id: str
    collection: str
    question: str
    normalized: str
    reference_answer: str | None
    reference_source: str | None  # correction | upvoted
    evidence: list[ChunkRef]
    negatives: list[ChunkRef]
    answerable: bool
    segment: str
    verdict: str  # up | down | corrected | mixed
    votes: dict[str, int]
    answer_ids: list[str]
    split: str = "train"  # train | heldout

    def record(self, texts: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The case as a line of the question file; `texts`: chunk text by point id (this case's collection)."""
        texts = texts or {}
        record: dict[str, Any] = {
            "id": self.id, "question": self.question, "reference_answer": self.reference_answer,
            "evidence": [r.item(texts.get(r.point_id or "")) for r in self.evidence],
            "negative_evidence": [r.item(texts.get(r.point_id or "")) for r in self.negatives],
            "tags": {"dataset": "feedback", "collection": self.collection, "segment": self.segment,
                     "verdict": self.verdict},
            "votes": self.votes, "answer_ids": self.answer_ids,
        }
        if not self.answerable:
            record["answerable"] = False
        return record


@dataclass
class Built:
    cases: list[Case]
    skipped: Counter[str] = field(default_factory=Counter)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; the log writes UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _trimmed(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch).startswith("P")


def normalize(question: str) -> str:
    """Lower case, whitespace collapsed, surrounding punctuation stripped: the de-duplication key."""
    text = " ".join(question.lower().split())
    start, end = 0, len(text)
    while start < end and _trimmed(text[start]):
        start += 1
    while end > start and _trimmed(text[end - 1]):
        end -= 1
    return text[start:end]


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def case_id(collection: str, normalized: str) -> str:
    return "fb-" + _hash(f"{collection}\x1f{normalized}")[:12]


def split_of(evidence: Sequence[ChunkRef], normalized: str, heldout_percent: float) -> str:
    """`heldout` or `train`, by a hash of the smallest evidence key, else of the normalized question."""
    key = min(r.key for r in evidence) if evidence else normalized
    return "heldout" if int(_hash(key)[:8], 16) % 100 < heldout_percent else "train"


def _ref(data: Mapping[str, Any], fallback: Mapping[str, Any] | None = None) -> ChunkRef | None:
    def get(name: str) -> Any:  # the mark's own value, else its citation's
        value = data.get(name)
        if value in (None, "", []) and fallback is not None:
            return fallback.get(name)
        return value

    source = get("source")
    if not source:
        return None
    pages = tuple(p for p in (get("pages") or []) if isinstance(p, int) and not isinstance(p, bool) and p >= 1)
    section = get("section")
    point_id = str(get("point_id")) if get("point_id") else None
    key = point_id or f"{source}|{section or ''}|{','.join(map(str, pages))}"
    return ChunkRef(key, point_id, str(source), pages, str(section) if section is not None else None)


def _marks(vote: Vote) -> list[tuple[ChunkRef, bool]]:
    """The vote's citation marks as (chunk, useful); a mark without a point id borrows its citation's (by n)."""
    by_n = {c.get("n"): c for c in vote.citations}
    out = []
    for mark in vote.marks:
        useful = mark.get("useful")
        ref = _ref(mark, by_n.get(mark.get("n")))
        if isinstance(useful, bool) and ref is not None:
            out.append((ref, useful))
    return out


def _judge(votes: Sequence[Vote]) -> tuple[list[ChunkRef], list[ChunkRef]]:
    """(evidence, negatives) of votes in time order: explicit marks beat implicit ones, the latest of a kind wins."""
    refs: dict[str, ChunkRef] = {}
    explicit: dict[str, bool] = {}
    implicit: dict[str, bool] = {}
    for vote in votes:
        marks = _marks(vote)
        for ref, useful in marks:
            refs.setdefault(ref.key, ref)
            explicit[ref.key] = useful
        cited = [r for r in (_ref(c) for c in vote.citations) if r is not None]
        if vote.rating == "up" and not vote.refused:
            verdict: bool | None = True
        elif vote.rating == "down" and vote.reason == "wrong_evidence" and not any(u for _, u in marks):
            verdict = False
        else:
            verdict = None
        if verdict is not None:
            for ref in cited:
                refs.setdefault(ref.key, ref)
                implicit[ref.key] = verdict
    judged = {**implicit, **explicit}
    return ([refs[k] for k in sorted(judged) if judged[k]], [refs[k] for k in sorted(judged) if not judged[k]])


def _case(collection: str, normalized: str, votes: Sequence[Vote], heldout_percent: float) -> Case:
    latest = votes[-1]
    evidence, negatives = _judge(votes)
    corrections = [v for v in votes if v.correction]
    upvoted = [v for v in votes if v.rating == "up" and not v.refused and v.answer.strip()]
    if corrections:
        reference, source = corrections[-1].correction, "correction"
    elif upvoted:
        reference, source = upvoted[-1].answer, "upvoted"
    else:
        reference, source = None, None
    up = sum(v.rating == "up" for v in votes)
    down = sum(v.rating == "down" for v in votes)
    verdict = "corrected" if corrections else "mixed" if up and down else "up" if up else "down"
    refusal_upheld = any(v.rating == "up" and v.refused for v in votes)
    return Case(
        id=case_id(collection, normalized), collection=collection, question=latest.question, normalized=normalized,
        reference_answer=reference, reference_source=source, evidence=evidence, negatives=negatives,
        answerable=not (refusal_upheld and reference is None and not evidence),
        segment=latest.segment or "none", verdict=verdict, votes={"up": up, "down": down},
        answer_ids=list(dict.fromkeys(v.answer_id for v in votes)),
        split=split_of(evidence, normalized, heldout_percent),
    )


def build_cases(votes: Iterable[Vote], heldout_percent: float = 20) -> Built:
    """Votes → golden cases, merged by (collection, normalized question), in order of their first vote."""
    groups: dict[tuple[str, str], list[Vote]] = defaultdict(list)
    skipped: Counter[str] = Counter()
    for vote in sorted(votes, key=lambda v: (v.at, v.feedback_id)):
        if vote.rating not in ("up", "down"):
            skipped[UNKNOWN_RATING] += 1
            continue
        groups[(vote.collection, normalize(vote.question))].append(vote)
    cases = []
    for (collection, normalized), group in groups.items():
        case = _case(collection, normalized, group, heldout_percent)
        if case.answerable and case.reference_answer is None and not case.evidence and not case.negatives:
            skipped[NOTHING_TO_LEARN] += 1
        else:
            cases.append(case)
    return Built(cases, skipped)


def sft_examples(cases: Iterable[Case]) -> list[dict[str, Any]]:
    """Chat-format supervised examples: one per case with a reference answer."""
    return [
        {"messages": [{"role": "user", "content": c.question}, {"role": "assistant", "content": c.reference_answer}],
         "source": c.reference_source, "answer_ids": c.answer_ids, "case_id": c.id, "split": c.split}
        for c in cases if c.reference_answer is not None
    ]


def preference_pairs(votes: Iterable[Vote], cases: Iterable[Case]) -> list[dict[str, Any]]:
    """DPO-style pairs: one per correction, the correction chosen over the answer it corrects."""
    by_key = {(c.collection, c.normalized): c for c in cases}
    pairs = []
    for v in sorted(votes, key=lambda v: (v.at, v.feedback_id)):
        case = by_key.get((v.collection, normalize(v.question)))
        if not v.correction or case is None or v.correction == v.answer.strip():
            continue
        pairs.append({"prompt": v.question, "chosen": v.correction, "rejected": v.answer, "answer_id": v.answer_id,
                      "model": v.model, "prompt_version": v.prompt_version, "case_id": case.id, "split": case.split})
    return pairs


def read_votes(engine: sa.Engine, collection: str | None = None, since: datetime | None = None,
               tenant: str | None = None) -> list[Vote]:
    """Every vote (joined with its answer), optionally of one collection, of one tenant, and set at or after
    `since`."""
    a, f = answers.c, feedback.c
    query = (
        sa.select(f.id.label("feedback_id"), f.answer_id, f.created_at, f.updated_at, f.rating, f.reason,
                  f.correction, f.citation_marks, f.segment, a.collection, a.question, a.standalone_question,
                  a.answer, a.refused, a.model, a.prompt_version, a.citations)
        .select_from(feedback.join(answers, f.answer_id == a.id))
        .order_by(f.id)
    )
    if collection is not None:
        query = query.where(a.collection == collection)
    if tenant is not None:
        query = query.where(f.tenant == tenant)
    if since is not None:  # compared in UTC: what SQLite stores (without a zone), PostgreSQL converts to
        query = query.where(sa.func.coalesce(f.updated_at, f.created_at) >= as_utc(since))
    with engine.connect() as conn:
        return [Vote.from_row(dict(row)) for row in conn.execute(query).mappings()]


def fetch_texts(store: VectorStore, cases: Iterable[Case]) -> dict[str, dict[str, str]]:
    """Chunk text by collection and point id, for every chunk the cases name that is still in the index."""
    wanted: dict[str, set[str]] = defaultdict(set)
    for case in cases:
        wanted[case.collection].update(r.point_id for r in [*case.evidence, *case.negatives] if r.point_id)
    existing = set(store.collections())
    texts: dict[str, dict[str, str]] = {}
    for collection, ids in wanted.items():
        if collection not in existing:
            log.warning("collection %s is not in the index: its evidence is exported without text", collection)
            continue
        chunks = store.get_chunks(collection, sorted(ids))
        texts[collection] = {pid: chunk.text for pid, chunk in chunks.items()}
    return texts


def _write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> str:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def write_export(out: Path, votes: Sequence[Vote], built: Built, texts: Mapping[str, Mapping[str, str]] | None,
                 options: Mapping[str, Any]) -> dict[str, Any]:
    """Write the golden files, the training pairs and the manifest into `out`; returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    records = {name: [c.record((texts or {}).get(c.collection)) for c in built.cases if c.split == side]
               for name, side in ((TRAIN_FILE, "train"), (HELDOUT_FILE, "heldout"))}
    sft, pairs = sft_examples(built.cases), preference_pairs(votes, built.cases)
    digests = {name: _write_jsonl(out / name, lines) for name, lines in
               [*records.items(), (SFT_FILE, sft), (PREFERENCES_FILE, pairs)]}
    chunks = [r for c in built.cases for r in [*c.evidence, *c.negatives]]
    without_text = sum(1 for line in [*records[TRAIN_FILE], *records[HELDOUT_FILE]]
                       for item in [*line["evidence"], *line["negative_evidence"]] if "text" not in item)
    manifest = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": dict(options),
        "counts": {
            "feedback_rows": len(votes), "answers": len({v.answer_id for v in votes}), "cases": len(built.cases),
            "train": len(records[TRAIN_FILE]), "heldout": len(records[HELDOUT_FILE]),
            "unanswerable": sum(not c.answerable for c in built.cases),
            "skipped": dict(sorted(built.skipped.items())), "sft": len(sft), "preferences": len(pairs),
            "evidence_items": len(chunks), "evidence_without_text": without_text,
        },
        "sha256": digests,
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def summary(manifest: Mapping[str, Any], out: Path) -> str:
    n, opts = manifest["counts"], manifest["options"]
    scope = ", ".join(f"{k} {opts[k]}" for k in ("collection", "since") if opts.get(k))
    if not n["feedback_rows"]:
        return (f"no feedback in the database{f' ({scope})' if scope else ''}: wrote empty {TRAIN_FILE}, "
                f"{HELDOUT_FILE}, {SFT_FILE} and {PREFERENCES_FILE}, and {MANIFEST_FILE}, to {out}")
    skipped = "; ".join(f"{k}: {v}" for k, v in n["skipped"].items()) or "none"
    text = ("without chunk text (--no-text)" if not opts["text"]
            else f"with chunk text ({n['evidence_without_text']} items no longer in the index)")
    return (f"read {n['feedback_rows']} votes on {n['answers']} answers{f' ({scope})' if scope else ''} → "
            f"{n['cases']} cases: {n['train']} train, {n['heldout']} held out ({opts['heldout_percent']}%), "
            f"{n['unanswerable']} unanswerable; skipped {skipped}; evidence {text}; {n['sft']} SFT examples and "
            f"{n['preferences']} preference pairs. Wrote {TRAIN_FILE}, {HELDOUT_FILE}, {SFT_FILE}, "
            f"{PREFERENCES_FILE} and {MANIFEST_FILE} to {out}.")


def iso_datetime(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since wants an ISO date or date-time (2024-05-01 or 2024-05-01T12:00:00+00:00), got {text!r}"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def percent(text: str) -> int:
    value = int(text) if text.strip().isdigit() else -1
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"--heldout-percent wants a whole number from 0 to 100, got {text!r}")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder for the golden files, pairs and manifest")
    parser.add_argument("--collection", metavar="NAME",
                        help="only feedback on answers from this collection (default: all)")
    parser.add_argument("--since", type=iso_datetime, metavar="ISO",
                        help="only votes set at or after this ISO date/time (UTC unless it names a zone)")
    parser.add_argument("--tenant", metavar="NAME",
                        help="only one tenant's feedback (default: all): keeps a tenant's questions out of "
                        "evaluation sets and models built for others")
    parser.add_argument("--heldout-percent", type=percent, default=20, metavar="PCT",
                        help="share of cases (grouped by evidence) in golden-heldout.jsonl (default 20)")
    parser.add_argument("--no-text", action="store_true",
                        help="do not open the index: evidence names source, page and section only")


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    """The subcommand: read the feedback log, build the cases, fetch chunk text from the index (unless
    --no-text), write the export. FinragError (e.g. an index in use) is left to the caller."""
    if args.out.exists() and not args.out.is_dir():
        print(f"finrag-eval: --out {args.out} is a file; name a folder", file=sys.stderr)
        return 2
    sqlite_file = settings.db_url.removeprefix("sqlite:///") if settings.db_url.startswith("sqlite:///") else None
    votes: list[Vote] = []
    if sqlite_file is None or Path(sqlite_file).exists():  # no database yet: nothing to export (and none created)
        try:
            engine = connect(settings.db_url)
            try:
                votes = read_votes(engine, args.collection, args.since, args.tenant)
            finally:
                engine.dispose()
        except sa.exc.SQLAlchemyError as exc:
            print(f"finrag-eval: cannot read the feedback log: {exc}", file=sys.stderr)
            return 1
    built = build_cases(votes, args.heldout_percent)
    texts: dict[str, dict[str, str]] = {}
    if not args.no_text and built.cases:
        components = Components(settings)
        try:
            texts = fetch_texts(components.store, built.cases)
        finally:
            components.close()
    options = {"collection": args.collection, "tenant": args.tenant,
               "since": args.since.isoformat() if args.since else None,
               "heldout_percent": args.heldout_percent, "text": not args.no_text}
    manifest = write_export(args.out, votes, built, texts, options)
    print(summary(manifest, args.out))
    return 0
