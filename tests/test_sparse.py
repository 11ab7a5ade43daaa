"""The BM25 sparse encoder: Snowball stems, scikit-learn's English stop-words, figures and rule numbers whole,
BM25 term-frequency saturation and length normalisation on documents, binary query vectors."""

from __future__ import annotations

import pytest

from assistant.sparse import BM25Encoder


@pytest.fixture(scope="module")
def bm25() -> BM25Encoder:
    return BM25Encoder()


def test_tokens_are_stemmed_without_stop_words(bm25: BM25Encoder) -> None:
    assert bm25.tokens("The Authorised Persons are notifying the Regulator of the notifications") == [
        "authoris", "person", "notifi", "regul", "notif",
    ]


def test_figures_and_rule_numbers_stay_whole(bm25: BM25Encoder) -> None:
    assert bm25.tokens("Total net sales were 81,797 under Rule 18.8.2.") == ["total", "net", "sale", "81,797", "rule",
                                                                             "18.8.2"]


def test_query_and_document_share_term_ids(bm25: BM25Encoder) -> None:
    doc = bm25.encode_document("An application fee is payable to the Regulator.")
    query = bm25.encode_query("Which fees are payable?")
    shared = set(doc.indices) & set(query.indices)
    assert len(shared) == 2  # "fee" (stemmed from "fees") and "payabl"
    assert query.values == [1.0] * len(query.indices)
    assert doc.indices == sorted(doc.indices)


def test_document_weights_saturate_and_normalise_by_length(bm25: BM25Encoder) -> None:
    once = bm25.encode_document("capital")
    thrice = bm25.encode_document("capital capital capital")
    assert once.indices == thrice.indices
    assert once.values[0] < thrice.values[0] < 3 * once.values[0]  # saturation (k1)
    short = bm25.encode_document("capital requirement")
    long = bm25.encode_document("capital requirement " + " ".join(f"word{i}" for i in range(200)))
    idx = short.indices.index(bm25._index("capit"))
    assert long.values[long.indices.index(bm25._index("capit"))] < short.values[idx]  # length normalisation (b)


def test_stop_words_only_give_an_empty_query(bm25: BM25Encoder) -> None:
    assert bm25.encode_query("what is the").indices == []


def test_stems_are_the_stemmers_from_any_thread() -> None:
    # stems are remembered and the stemmer (which keeps its word in the instance) is used one word at a time
    from concurrent.futures import ThreadPoolExecutor

    import snowballstemmer

    words = [f"{w}{suffix}" for w in ("regulat", "authoris", "disclos", "report", "account") for suffix in
             ("e", "ed", "ing", "ions", "ation", "ations", "ingly")]
    reference = snowballstemmer.stemmer("english")
    encoder = BM25Encoder()
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            stems = list(pool.map(lambda w: encoder.tokens(w), words * 20))
    assert [s[0] for s in stems] == [reference.stemWord(w) for w in words * 20]
