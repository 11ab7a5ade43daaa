"""Verify and restore a backup archive (assistant.backup makes them; `python -m assistant.backup verify | restore`).

`restore` extracts into a staging folder beside DATA_DIR, checking every file against the manifest (a corrupt,
truncated or altered archive is refused and nothing is touched; holes of preallocated index files stay holes),
checks the database (`PRAGMA integrity_check`, a schema revision this finrag knows) and opens the index to count its
points; only then is each part renamed into place, what it replaces moved aside first and deleted at the end (put
back if a rename fails). A data directory holding any of the parts is replaced only with `force`; the index lock must
be free (the server and ingest stopped). Model weights beside a restored `models/` entry are left alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import __version__
from .backup import FORMAT, FORMAT_VERSION, MANIFEST, PARTS, BackupError, Targets
from .settings import Settings

_BLOCK = 1 << 20


def _member_path(name: str) -> Path:
    path = Path(name)
    if path.is_absolute() or ".." in path.parts or (path.parts[0] not in PARTS and name != MANIFEST):
        raise BackupError(f"the archive holds {name!r}, which no finrag backup holds: refusing it")
    return path


def _extract(archive: Path, staging: Path, progress: bool) -> dict[str, Any]:
    """Every member of `archive` into `staging`, each checked against the manifest; returns the manifest."""
    seen: dict[str, dict[str, Any]] = {}
    manifest: dict[str, Any] | None = None
    try:
        with tarfile.open(archive, "r|*") as tar, tqdm(unit="B", unit_scale=True, desc="restore",
                                                       disable=not progress) as bar:
            for member in tar:
                path = _member_path(member.name)
                if member.isdir():
                    continue
                if not member.isfile():
                    raise BackupError(f"the archive holds {member.name!r}, which is not a plain file: refusing it")
                source = tar.extractfile(member)
                assert source is not None
                if member.name == MANIFEST:
                    manifest = json.loads(source.read())
                    continue
                digest = hashlib.sha256()
                (staging / path).parent.mkdir(parents=True, exist_ok=True)
                with (staging / path).open("wb") as out:
                    while block := source.read(_BLOCK):
                        digest.update(block)
                        if block.count(0) == len(block):  # a hole of a preallocated index file stays a hole
                            out.seek(len(block), os.SEEK_CUR)
                        else:
                            out.write(block)
                        bar.update(len(block))
                    out.truncate()
                seen[member.name] = {"size": member.size, "sha256": digest.hexdigest()}
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise BackupError(f"{archive} is not a readable finrag backup ({type(exc).__name__}: {exc}); "
                          "it may be truncated or corrupt") from None
    if manifest is None or manifest.get("format") != FORMAT:
        raise BackupError(f"{archive} has no finrag manifest ({MANIFEST}): it is not a complete finrag backup")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BackupError(f"{archive} is a version {manifest.get('format_version')} backup; this finrag reads "
                          f"version {FORMAT_VERSION}")
    listed = manifest.get("files") or {}
    bad = sorted(n for n in listed.keys() | seen.keys() if listed.get(n) != seen.get(n))
    if bad:
        raise BackupError(f"{archive} does not match its manifest ({len(bad)} files missing, extra or altered, "
                          f"e.g. {bad[:3]}): it is corrupt; nothing was restored")
    return manifest


def _check_staged(staging: Path, manifest: dict[str, Any], settings: Settings) -> None:
    """The staged database and index are usable by this finrag, with the counts the manifest recorded."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from .db import MIGRATIONS

    parts = manifest["parts"]
    if "database" in parts:
        db = sqlite3.connect(staging / "database" / "finrag.db")
        try:
            check = db.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            db.close()
        if check != "ok":
            raise BackupError(f"the archived database fails SQLite's integrity check: {check}")
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        known = {s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()}
        revision = parts["database"].get("revision")
        if revision is not None and revision not in known:
            raise BackupError(f"the archived database is at schema revision {revision}, which this finrag "
                              f"({__version__}) does not know: restore it with the finrag that made it, or a newer one")
    if "index" in parts:
        engine, targets = parts["index"]["engine"], Targets.of(settings)
        if targets.engine != engine:
            raise BackupError(f"the archive holds a {engine} index but these settings use {targets.engine} "
                              f"(QDRANT_ENGINE / QDRANT_URL): restore with QDRANT_ENGINE={engine}")
        if engine == "edge":
            from .edge_store import EdgeStore

            store = EdgeStore.open(staging / "index")
            try:
                counts = {name: store.count(name) for name in store.collections()}
            finally:
                store.close()
            if counts != parts["index"]["collections"]:
                raise BackupError(f"the archived index holds {counts}, its manifest says "
                                  f"{parts['index']['collections']}")


def verify(archive: Path, settings: Settings, *, progress: bool = True) -> dict[str, Any]:
    """Check `archive` completely (files, database, index) without restoring it; returns its manifest."""
    with tempfile.TemporaryDirectory(prefix=".finrag-verify-") as tmp:
        manifest = _extract(archive, Path(tmp), progress)
        _check_staged(Path(tmp), manifest, settings)
    return manifest


def _units(staging: Path, manifest: dict[str, Any], targets: Targets) -> list[tuple[Path, Path]]:
    """(staged, target) pairs, each moved into place by one rename."""
    units = []
    parts = manifest["parts"]
    if "database" in parts:
        if targets.database is None:
            raise BackupError("the archive holds a SQLite database but DATABASE_URL names another database: unset "
                              "it to restore into SQLite, or restore that database with its own tools")
        units.append((staging / "database" / "finrag.db", targets.database))
    if "index" in parts:
        assert targets.index is not None  # _check_staged refused a server
        units.append((staging / "index", targets.index))
    if "uploads" in parts:
        units.append((staging / "uploads", targets.uploads))
    if "models" in parts:  # entry by entry: model weights beside them stay where they are
        units += [(staging / "models" / e, targets.models / e) for e in parts["models"]["entries"]]
    return units


def _occupied(target: Path) -> bool:
    if target.is_dir():
        return any(p.name != ".lock" for p in target.iterdir())
    return target.exists()


def restore(archive: Path, settings: Settings, *, force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Put the state in `archive` in place of `settings`' (see the module's docstring); returns its manifest."""
    started = time.perf_counter()
    targets = Targets.of(settings)
    data_dir = settings.data_dir.resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.restore-", dir=data_dir.parent))
    try:
        manifest = _extract(archive, staging, progress)
        _check_staged(staging, manifest, settings)
        units = _units(staging, manifest, targets)
        occupied = [str(t) for _, t in units if _occupied(t)]
        if occupied and not force:
            raise BackupError(f"{', '.join(occupied)} already exist: restoring would replace them. Run again with "
                              "--force (what is replaced is deleted once the restore succeeds)")
        with _target_index_free(targets):
            _swap(units)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for note in manifest.get("not_included", []):
        print(f"NOTE not restored (not in the backup): {note}", file=sys.stderr)
    print(f"restored {archive} ({len(manifest['files'])} files of {', '.join(manifest['parts']) or 'nothing'}, "
          f"made {manifest['created_at']}) in {time.perf_counter() - started:.1f} s")
    return manifest


@contextmanager
def _target_index_free(targets: Targets) -> Iterator[None]:
    """Hold the lock of the index being replaced: refuse while the server or an ingest has it open."""
    lock = targets.index / ".lock" if targets.index is not None and targets.index.is_dir() else None
    if lock is None:
        yield
        return
    import portalocker

    with lock.open("a+") as fh:
        try:
            portalocker.lock(fh, portalocker.LOCK_EX | portalocker.LOCK_NB)
        except portalocker.exceptions.LockException:
            raise BackupError(f"the index at {targets.index} is open in another process (the assistant, or an "
                              "ingest): stop it before restoring") from None
        yield


def _swap(units: list[tuple[Path, Path]]) -> None:
    """Each staged path renamed onto its target, the target moved aside first; all put back if one fails."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    moved: list[tuple[Path, Path]] = []  # (aside, original)
    placed: list[Path] = []
    try:
        for staged, target in units:
            target.parent.mkdir(parents=True, exist_ok=True)
            olds = [target] + ([target.with_name(target.name + s) for s in ("-wal", "-shm")]
                               if staged.is_file() else [])
            for old in olds:  # a database's WAL belongs to the database it replaces
                if old.exists():
                    aside = old.with_name(f".{old.name}.replaced-{stamp}")
                    os.replace(old, aside)
                    moved.append((aside, old))
            os.replace(staged, target)
            placed.append(target)
    except BaseException:
        for target in placed:
            _remove(target)
        for aside, original in reversed(moved):
            os.replace(aside, original)
        raise
    for aside, _ in moved:
        _remove(aside)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        with suppress(FileNotFoundError):
            path.unlink()
