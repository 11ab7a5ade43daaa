"""BM25 as Qdrant sparse vectors: the lexical half of hybrid retrieval.

Documents get BM25 term-frequency weights; Qdrant's IDF modifier supplies the inverse document frequency
from the collection's own statistics at query time, so the index never needs a global re-weighting pass.
Tokens: lower-cased words stemmed by Snowball (English), English stop-words removed, while figures and rule
numbers ("81,797", "18.8.2") stay whole — on filings and rulebooks those are often what a question names.
"""

from __future__ import annotations

import re
import threading
import zlib
from collections import Counter
from dataclasses import dataclass

import snowballstemmer
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+", re.UNICODE)
_K1 = 1.2
_B = 0.75
_MAX_STEMS = 200_000  # remembered stems, about 30 MB at most
_AVG_DOC_TOKENS = 120.0  # typical chunk length after stop-word removal; fixed so vectors never change


@dataclass(frozen=True)
class SparseVector:
    indices: list[int]
    values: list[float]


class BM25Encoder:
    name = "bm25-snowball-en"

    def __init__(self) -> None:
        self._stemmer = snowballstemmer.stemmer("english")
        # Stemming in pure Python is ~0.1 ms a word, most of a chunk's encoding; a document's words repeat, so the
        # stems are remembered (bounded: cleared when full).
        self._stems: dict[str, str] = {}
        self._lock = threading.Lock()  # the stemmer keeps its word in the instance: one word at a time

    def tokens(self, text: str) -> list[str]:
        words = [t for t in _TOKEN.findall(text.lower()) if t not in ENGLISH_STOP_WORDS]
        out = []
        for w in words:
            if w[0].isdigit():
                out.append(w.rstrip(".,"))
            elif len(w) > 1:
                out.append(self._stem(w))
        return out

    def _stem(self, word: str) -> str:
        stem = self._stems.get(word)
        if stem is None:
            with self._lock:
                if len(self._stems) >= _MAX_STEMS:
                    self._stems.clear()
                stem = self._stems[word] = self._stemmer.stemWord(word)
        return stem

    @staticmethod
    def _index(token: str) -> int:
        return zlib.crc32(token.encode("utf-8")) & 0x7FFFFFFF

    def encode_document(self, text: str) -> SparseVector:
        counts = Counter(self._index(t) for t in self.tokens(text))
        length = sum(counts.values()) or 1
        norm = _K1 * (1 - _B + _B * length / _AVG_DOC_TOKENS)
        items = sorted(counts.items())
        return SparseVector([i for i, _ in items], [tf * (_K1 + 1) / (tf + norm) for _, tf in items])

    def encode_query(self, text: str) -> SparseVector:
        indices = sorted({self._index(t) for t in self.tokens(text)})
        return SparseVector(indices, [1.0] * len(indices))
