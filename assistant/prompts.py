"""Prompts live in versioned text files beside this module; their version is recorded with every answer."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PROMPTS_DIR = Path(__file__).parent / "prompts"


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str

    @property
    def version(self) -> str:
        """File name plus a content hash, so an edited prompt never hides behind an old name."""
        return f"{self.name}@{hashlib.sha256(self.text.encode()).hexdigest()[:8]}"


@cache
def load_prompt(name: str) -> Prompt:
    path = PROMPTS_DIR / f"{name}.txt"
    return Prompt(name=name, text=path.read_text(encoding="utf-8").strip())
