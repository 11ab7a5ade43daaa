"""BM25 as Qdrant sparse vectors: the lexical half of hybrid retrieval.

Documents get BM25 term-frequency weights; Qdrant's IDF modifier supplies the inverse document frequency
from the collection's own statistics at query time, so the index never needs a global re-weighting pass.
Tokens: lower-cased words stemmed by Snowball (English), English stop-words removed, while figures and rule
numbers ("81,797", "18.8.2") stay whole — on filings and rulebooks those are often what a question names.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass

import snowballstemmer
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+", re.UNICODE)
_K1 = 1.2
_B = 0.75
_AVG_DOC_TOKENS = 120.0  # typical chunk length after stop-word removal; fixed so vectors never change


@dataclass(frozen=True)
class SparseVector:
    indices: list[int]
    values: list[float]


class BM25Encoder:
    name = "bm25-snowball-en"

    def __init__(self) -> None:
        self._stemmer = snowballstemmer.stemmer("english")

    def tokens(self, text: str) -> list[str]:
        words = [t for t in _TOKEN.findall(text.lower()) if t not in ENGLISH_STOP_WORDS]
        out = []
        for w in words:
            if w[0].isdigit():
                out.append(w.rstrip(".,"))
            elif len(w) > 1:
                out.append(self._stemmer.stemWord(w))
        return out

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
