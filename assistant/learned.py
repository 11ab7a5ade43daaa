"""Learned model versions: what `python -m assistant.learn` trained, which version serves, and their history.

    DATA_DIR/models/learned/
        registry.json                 {"reranker": {...}, "embedder": {...}}: promoted version, history
        reranker-0001/                a sentence-transformers CrossEncoder + manifest.json
        embedder-0001/                a SentenceTransformer + manifest.json
        ...

A version's `manifest.json` records its kind, the model it started from, the training data (feedback rows,
triples, sha256), the configuration, seconds, and the evaluation of the candidate against the version serving
when it was trained. An embedder version also names the collections re-embedded with it: a collection is
switched to its new vectors only when its re-embedded copy is complete (`collections` in the registry maps
the collection name users see to the physical collection that serves it).

Writes are atomic (temporary file + rename) under a lock file, so a serving app that reloads never reads a
half-written registry.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from .errors import FinragError

Kind = Literal["reranker", "embedder"]
KINDS: tuple[Kind, ...] = ("reranker", "embedder")
MANIFEST = "manifest.json"
REGISTRY = "registry.json"
_VERSION = re.compile(r"(reranker|embedder)-(\d{4})")
_REEMBEDDED = re.compile(r".+--embedder-\d{4}")


def physical_name(collection: str, version: str) -> str:
    """The physical collection holding `collection` re-embedded by the learned embedder `version`."""
    return f"{collection}--{version}"


def is_reembedded(physical: str) -> bool:
    """Whether a physical collection is a learned embedder's copy of another (not one users name)."""
    return bool(_REEMBEDDED.fullmatch(physical))


class UnknownVersion(FinragError):
    status_code = 404
    code = "unknown_version"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


@dataclass(frozen=True)
class Served:
    """What serves now: promoted versions (None: the shipped model) and the collections' physical names."""

    reranker: str | None = None
    embedder: str | None = None
    collections: dict[str, str] | None = None  # collection -> physical collection embedded by `embedder`

    def physical(self, collection: str) -> str:
        return (self.collections or {}).get(collection, collection)


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = root

    # --- reading -----------------------------------------------------------------------------------------

    def read(self) -> dict[str, Any]:
        path = self.root / REGISTRY
        data = json.loads(path.read_text()) if path.exists() else {}
        for kind in KINDS:
            data.setdefault(kind, {"promoted": None, "history": []})
        data["embedder"].setdefault("collections", {})
        return data

    def served(self) -> Served:
        data = self.read()
        collections = dict(data["embedder"].get("collections") or {})
        return Served(data["reranker"]["promoted"], data["embedder"]["promoted"], collections or None)

    def versions(self, kind: Kind | None = None) -> list[str]:
        if not self.root.exists():
            return []
        found = [p.name for p in self.root.iterdir() if _VERSION.fullmatch(p.name) and (p / MANIFEST).exists()]
        return sorted(v for v in found if kind is None or v.startswith(kind))

    def path(self, version: str) -> Path:
        path = self.root / version
        if not _VERSION.fullmatch(version) or not (path / MANIFEST).exists():
            known = ", ".join(self.versions()) or "none yet"
            raise UnknownVersion(f"no learned model version {version!r} (versions: {known})")
        return path

    def manifest(self, version: str) -> dict[str, Any]:
        data = json.loads((self.path(version) / MANIFEST).read_text())
        return data if isinstance(data, dict) else {}

    @staticmethod
    def kind_of(version: str) -> Kind:
        match = _VERSION.fullmatch(version)
        if match is None:
            raise UnknownVersion(f"{version!r} is not a learned model version (e.g. reranker-0001)")
        return "reranker" if match.group(1) == "reranker" else "embedder"

    # --- writing -----------------------------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        import portalocker

        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a+") as fh:
            portalocker.lock(fh, portalocker.LOCK_EX)
            try:
                yield
            finally:
                portalocker.unlock(fh)

    def new_version(self, kind: Kind) -> str:
        """The next free version name of `kind` (its folder is created empty)."""
        with self.locked():
            taken = [int(m.group(2)) for p in self.root.iterdir() if (m := _VERSION.fullmatch(p.name))
                     and m.group(1) == kind]
            version = f"{kind}-{max(taken, default=0) + 1:04d}"
            (self.root / version).mkdir()
            return version

    def write_manifest(self, version: str, manifest: dict[str, Any]) -> None:
        write_json(self.root / version / MANIFEST, manifest)

    def promote(self, version: str, *, action: str = "promote", collections: dict[str, str] | None = None) -> None:
        """Serve `version` from now on (an embedder version with the collections re-embedded by it)."""
        kind = self.kind_of(version)
        self.path(version)
        with self.locked():
            data = self.read()
            entry = data[kind]
            previous = entry["promoted"]
            entry["promoted"] = version
            if kind == "embedder":
                entry["collections"] = dict(collections or {})
            entry["history"].append({"version": version, "action": action, "previous": previous, "at": now()})
            write_json(self.root / REGISTRY, data)

    def demote(self, kind: Kind) -> None:
        """Serve the shipped model of `kind` again."""
        with self.locked():
            data = self.read()
            entry = data[kind]
            entry["history"].append({"version": None, "action": "rollback", "previous": entry["promoted"],
                                     "at": now()})
            entry["promoted"] = None
            if kind == "embedder":
                entry["collections"] = {}
            write_json(self.root / REGISTRY, data)

    def history(self, kind: Kind) -> list[dict[str, Any]]:
        return list(self.read()[kind]["history"])
