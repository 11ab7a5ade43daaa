"""Backup and restore of the data directory's state.

    python -m assistant.backup create [--out FILE] [--with-models]   a consistent archive of DATA_DIR's state
    python -m assistant.backup verify FILE                            check an archive without restoring it
    python -m assistant.backup restore FILE [--force]                 put an archive's state back, atomically

An archive is a tar file (gzip-compressed unless its name ends in `.tar`) of parts, each under its own prefix, so
that it restores into whatever paths the restoring settings name:

    database/finrag.db   the SQLite database, copied with SQLite's online backup API: one consistent snapshot,
                         taken while the server goes on answering and recording votes (writers are not blocked)
    index/...            the embedded index (DATA_DIR/qdrant-edge, or QDRANT_PATH), copied while holding the lock
                         the server and the ingest CLI take: while one of them has the index open, `create` refuses
                         and says to stop it (an open index changes under a copy; Qdrant Edge has no snapshot call)
    uploads/...          files uploaded through the API (DATA_DIR/uploads; half-received hidden files left out)
    models/...           what was trained here: learned versions (models/learned), a trained reranker. Model weights
                         and caches (*.gguf, onnx/, static/) only with --with-models: they are fetched or rebuilt again
    MANIFEST.json        written last: format, finrag version, schema revision, counts, every file's size and sha256

Not in an archive, and said so on the console and in the manifest's `not_included`: a PostgreSQL database
(DATABASE_URL: use pg_dump / pg_restore), a Qdrant server's collections (QDRANT_URL: use Qdrant's snapshots), and
anything else found in DATA_DIR (e.g. evaluation indexes).

`restore` (assistant.restore) checks every file against the manifest, the database and the index before it
renames anything into place, atomically part by part; a data directory that holds any of the parts is only replaced
with --force, and the index lock must be free (server stopped).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sqlite3
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from tqdm import tqdm

from . import __version__
from .errors import FinragError, IndexLocked
from .settings import Settings

log = logging.getLogger(__name__)

FORMAT, FORMAT_VERSION = "finrag-backup", 1
MANIFEST = "MANIFEST.json"
PARTS = ("database", "index", "uploads", "models")
WEIGHTS = ("onnx", "static")  # model caches under DATA_DIR/models, rebuilt on demand; *.gguf are fetched again
_BLOCK = 1 << 20


class BackupError(FinragError):
    """An archive that cannot be made or restored; the message says why and what to do."""

    status_code = 409
    code = "backup_refused"


@dataclass
class Targets:
    """Where each part lives for `settings` (None: not on this machine's disk)."""

    database: Path | None  # the SQLite file
    index: Path | None  # the embedded index's directory
    engine: str  # "edge" | "local" | "server"
    uploads: Path
    models: Path
    notes: list[str] = field(default_factory=list)  # what is not covered, and how to back it up instead

    @classmethod
    def of(cls, settings: Settings) -> Targets:
        notes = []
        url = sa.make_url(settings.db_url)
        database = Path(url.database).resolve() if url.get_backend_name() == "sqlite" and url.database else None
        if database is None:
            notes.append(f"database: {url.get_backend_name()} at {url.render_as_string(hide_password=True)} is NOT in "
                         "this backup; back it up with its own tools (PostgreSQL: pg_dump --format=custom, restored "
                         "with pg_restore --clean)")
        index: Path | None = settings.qdrant_path.resolve()
        engine: str = settings.store.engine
        if settings.store.url:
            index, engine = None, "server"
            notes.append(f"index: the Qdrant server at {settings.store.url} is NOT in this backup; take a snapshot "
                         "of each collection (POST /collections/NAME/snapshots, restored with PUT "
                         "/collections/NAME/snapshots/recover) or re-ingest")
        return cls(database, index, engine, settings.data_dir.resolve() / "uploads", settings.models_dir.resolve(),
                   notes)


# --- create ---------------------------------------------------------------------------------------------------


class _Writer:
    """Adds files to the tar, hashing them as they go; `files` is the manifest's list."""

    def __init__(self, tar: tarfile.TarFile, bar: tqdm[Any]) -> None:
        self.tar, self.bar = tar, bar
        self.files: dict[str, dict[str, Any]] = {}

    def add(self, path: Path, name: str) -> None:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = os.fstat(fh.fileno()).st_size, int(path.stat().st_mtime), 0o644
            bar = self.bar

            class Reader:  # what tarfile reads the file through: exactly `size` bytes, hashed
                def read(self, n: int = -1) -> bytes:
                    data = fh.read(n)
                    digest.update(data)
                    bar.update(len(data))
                    return data

            self.tar.addfile(info, Reader())
        self.files[name] = {"size": info.size, "sha256": digest.hexdigest()}

    def add_tree(self, root: Path, prefix: str, skip: Any = lambda _rel: False) -> None:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and not path.is_symlink() and not skip(rel):
                self.add(path, f"{prefix}/{rel.as_posix()}")


def _tree_bytes(root: Path, skip: Any = lambda _rel: False) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not skip(p.relative_to(root)))


def _skip_upload(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)  # an upload still being received is a hidden file


def _model_skipper(with_models: bool) -> Any:
    def skip(rel: Path) -> bool:
        if any(part.startswith(".") for part in rel.parts):  # a fetch in progress
            return True
        return not with_models and (rel.parts[0] in WEIGHTS or rel.suffix == ".gguf")
    return skip


def _index_skip(rel: Path) -> bool:
    return rel.name == ".lock"


@contextmanager
def _index_held(index: Path, engine: str) -> Iterator[dict[str, int]]:
    """The index locked against the server and ingest for the copy: yields its collections' point counts (Edge)."""
    from .edge_store import EdgeStore

    stop = (f"the embedded index at {index} is open in another process (the assistant, or an ingest): stop it and "
            "run the backup again (the copy must not change while it is read)")
    if engine == "edge":
        try:
            store = EdgeStore.open(index)
        except IndexLocked:
            raise BackupError(stop) from None
        try:
            counts = {name: store.count(name) for name in store.collections()}
            store.release_shards()  # flushed and closed; the lock is kept while the files are copied
            yield counts
        finally:
            store.close()
        return
    import portalocker

    with (index / ".lock").open("a+") as fh:
        try:
            portalocker.lock(fh, portalocker.LOCK_EX | portalocker.LOCK_NB)
        except portalocker.exceptions.LockException:
            raise BackupError(stop) from None
        yield {}


def _sqlite_snapshot(source: Path, dest: Path) -> dict[str, Any]:
    """`source` copied to `dest` by SQLite's online backup (one step: one consistent snapshot); its revision, counts."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst)
    finally:
        src.close()
    try:
        tables = {r[0] for r in dst.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        revision = dst.execute("SELECT version_num FROM alembic_version").fetchone()[0] \
            if "alembic_version" in tables else None
        counts = {t: dst.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
                  for t in ("documents", "answers", "feedback", "conversations") if t in tables}
    finally:
        dst.close()
    return {"revision": revision, "rows": counts}


def create(settings: Settings, out: Path, *, with_models: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write the archive of `settings`' data to `out` (written beside it under a temporary name, then renamed);
    returns its manifest. Raises BackupError when the embedded index is held by another process."""
    started = time.perf_counter()
    targets = Targets.of(settings)
    for note in targets.notes:
        print(f"NOTE {note}", file=sys.stderr)
    manifest: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "finrag_version": __version__,
        "created_at": datetime.now(UTC).isoformat(), "data_dir": str(settings.data_dir.resolve()),
        "parts": {}, "not_included": list(targets.notes), "with_models": with_models,
    }
    skip_models = _model_skipper(with_models)
    total = sum((targets.database.stat().st_size if targets.database and targets.database.exists() else 0,
                 _tree_bytes(targets.index, _index_skip) if targets.index and targets.index.is_dir() else 0,
                 _tree_bytes(targets.uploads, _skip_upload) if targets.uploads.is_dir() else 0,
                 _tree_bytes(targets.models, skip_models) if targets.models.is_dir() else 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    try:
        _write(partial, "w" if out.name.endswith(".tar") else "w:gz", settings, targets, manifest, total,
               with_models, progress)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, out)
    size = out.stat().st_size
    for note in manifest["not_included"][len(targets.notes):]:
        print(f"NOTE {note}", file=sys.stderr)
    print(f"wrote {out}: {len(manifest['files'])} files ({total / 1e6:.1f} MB, archive {size / 1e6:.1f} MB) of "
          f"{', '.join(manifest['parts']) or 'nothing (DATA_DIR is empty)'} in {time.perf_counter() - started:.1f} s")
    return manifest


def _write(partial: Path, mode: str, settings: Settings, targets: Targets, manifest: dict[str, Any], total: int,
           with_models: bool, progress: bool) -> None:
    """The archive's parts, then its manifest, into `partial`."""
    skip_models = _model_skipper(with_models)
    with tempfile.TemporaryDirectory(prefix=".finrag-backup-", dir=partial.parent) as tmp, \
            tqdm(total=total, unit="B", unit_scale=True, desc="backup", disable=not progress) as bar, \
            tarfile.open(partial, mode) as tar:  # type: ignore[call-overload]
        writer = _Writer(tar, bar)
        if targets.database is not None and targets.database.exists():
            bar.set_postfix_str("database")
            snapshot = Path(tmp) / "finrag.db"
            manifest["parts"]["database"] = _sqlite_snapshot(targets.database, snapshot)
            writer.add(snapshot, "database/finrag.db")
        if targets.index is not None and targets.index.is_dir():
            bar.set_postfix_str("index")
            with _index_held(targets.index, targets.engine) as counts:
                writer.add_tree(targets.index, "index", _index_skip)
            manifest["parts"]["index"] = {"engine": targets.engine, "collections": counts}
        if targets.uploads.is_dir():
            bar.set_postfix_str("uploads")
            writer.add_tree(targets.uploads, "uploads", _skip_upload)
            manifest["parts"]["uploads"] = {}
        if targets.models.is_dir():
            bar.set_postfix_str("models")
            writer.add_tree(targets.models, "models", skip_models)
            manifest["parts"]["models"] = {"entries": sorted({n.split("/")[1] for n in writer.files
                                                              if n.startswith("models/")})}
        manifest["not_included"] += _elsewhere(settings, targets)
        manifest["files"] = writer.files
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime = len(data), int(time.time())
        tar.addfile(info, _Bytes(data))


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.at + n
        piece, self.at = self.data[self.at:end], min(end, len(self.data))
        return piece


def _elsewhere(settings: Settings, targets: Targets) -> list[str]:
    """What DATA_DIR holds beside the parts, said rather than silently left out."""
    data_dir = settings.data_dir.resolve()
    if not data_dir.is_dir():
        return []
    covered = {p for p in (targets.database, targets.index, targets.uploads, targets.models) if p is not None}
    covered |= {targets.database.with_name(targets.database.name + s) for s in ("-wal", "-shm")} \
        if targets.database else set()
    return [f"{p} is not in the backup (not a part of finrag's state it knows)"
            for p in sorted(data_dir.iterdir()) if p not in covered and not p.name.startswith(".")]


# --- command line ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m assistant.backup", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("create", help="archive DATA_DIR's state")
    make.add_argument("--out", type=Path, help="archive to write (default: finrag-backup-<UTC time>.tar.gz here)")
    make.add_argument("--with-models", action="store_true", help="also model weights and caches (*.gguf, onnx/, "
                      "static/): large, and fetched or rebuilt when missing")
    check = commands.add_parser("verify", help="check an archive without restoring it")
    check.add_argument("archive", type=Path)
    put = commands.add_parser("restore", help="replace DATA_DIR's state by an archive's")
    put.add_argument("archive", type=Path)
    put.add_argument("--force", action="store_true", help="replace a data directory that holds data")
    for sub in (make, check, put):
        sub.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    from .restore import restore, verify  # restore imports this module's format

    settings = settings or Settings.load()
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "create":
            out = args.out or Path(f"finrag-backup-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.tar.gz")
            create(settings, out, with_models=args.with_models, progress=not args.quiet)
        elif args.command == "verify":
            manifest = verify(args.archive, settings, progress=not args.quiet)
            print(f"{args.archive}: complete and intact ({len(manifest['files'])} files of "
                  f"{', '.join(manifest['parts'])}, made {manifest['created_at']} by finrag "
                  f"{manifest['finrag_version']})")
        else:
            restore(args.archive, settings, force=args.force, progress=not args.quiet)
    except FinragError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())

