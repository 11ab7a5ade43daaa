"""Document metadata: what `describe` reads from filings and rulebooks, and how the store indexes and filters it.

Real first pages from ../shared/corpora (skipped when absent), synthetic covers for the rules real files do
not exercise, and a real embedded Qdrant for the filters.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from conftest import shared_path
from qdrant_client import QdrantClient, models
from qdrant_client.common import client_warnings

from assistant.chunks import FILTERABLE_FIELDS, Chunk
from assistant.errors import InvalidFilter
from assistant.store import DENSE, SPARSE, QdrantStore, build_filter
from ingest.loading import LoadedDocument, Page, describe, load

SEC = ("corpora", "sec-10q", "documents")
ADGM = ("corpora", "adgm", "documents")


def described(name: str, *pages: str) -> LoadedDocument:
    doc = LoadedDocument(path=Path(name), pages=[Page(i, t) for i, t in enumerate(pages, 1)], title=Path(name).stem)
    describe(doc)
    return doc


def cover(form: str, period_line: str, registrant: str = "Globex Corporation", symbol: str = "GLBX") -> str:
    return (
        "UNITED STATES\nSECURITIES AND EXCHANGE COMMISSION\nWashington, D.C. 20549\n"
        f"FORM {form}\n☒ REPORT PURSUANT TO SECTION 13 OR 15(d) OF THE SECURITIES EXCHANGE ACT OF 1934\n"
        f"{period_line}\nor\nCommission File Number: 001-12345\n{registrant}\n"
        "(Exact name of registrant as specified in its charter)\nDelaware 12-3456789\n"
        "Securities registered pursuant to Section 12(b) of the Act:\n"
        "Title of each class Trading Symbol(s) Name of each exchange on which registered\n"
        f"Common Stock, $0.01 par value per share {symbol} New York Stock Exchange\n"
    )


RULES = "\n".join(f"1.{i}.1\tA Person must do thing {i}." for i in range(1, 8))

# --- filings: real covers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def apple() -> LoadedDocument:
    return load(shared_path(*SEC, "2023 Q3 AAPL.pdf"))


@pytest.fixture(scope="module")
def nvidia() -> LoadedDocument:
    return load(shared_path(*SEC, "2023 Q1 NVDA.pdf"))


def test_apple_10q_cover_gives_company_ticker_and_fiscal_quarter(apple: LoadedDocument) -> None:
    assert apple.doc_type == "filing"
    assert {k: apple.extra[k] for k in ("form", "doc_kind", "company", "ticker", "period")} == {
        "form": "10-Q", "doc_kind": "10-Q", "company": "Apple Inc.", "ticker": "AAPL", "period": "July 1, 2023"}
    # Apple's fiscal year ends in September: the quarter ended July 1, 2023 is Q3 of fiscal 2023, which is
    # mostly April-June, calendar Q2.
    assert (apple.extra["fiscal_year"], apple.extra["fiscal_quarter"]) == (2023, "Q3")
    assert apple.extra["quarters"] == ["2023-Q2", "2023-Q3"]
    assert apple.title == "Apple Inc. Form 10-Q for the period ended July 1, 2023"


def test_the_document_wins_over_the_file_name_and_both_labels_are_kept(nvidia: LoadedDocument) -> None:
    # "2023 Q1 NVDA.pdf" ends April 30, 2023: NVIDIA's first quarter of fiscal 2024 (its year ends in January).
    assert (nvidia.extra["company"], nvidia.extra["ticker"]) == ("NVIDIA CORPORATION", "NVDA")
    assert (nvidia.extra["fiscal_year"], nvidia.extra["fiscal_quarter"]) == (2024, "Q1")
    assert nvidia.extra["quarters"] == ["2023-Q1", "2024-Q1"]  # the file's (and calendar) label, and the fiscal one


def test_filing_metadata_reaches_every_chunk_payload(apple: LoadedDocument) -> None:
    from ingest.chunking import Chunker

    chunks = Chunker(lambda text: [0] * len(text.split()), 300, 30).chunk(apple, "aapl-q3", "hash")  # a word a token
    assert len(chunks) > 10
    for chunk in chunks:
        payload = chunk.payload()
        assert (payload["ticker"], payload["fiscal_year"], payload["fiscal_quarter"], payload["doc_kind"]) == (
            "AAPL", 2023, "Q3", "10-Q")
        assert payload["quarters"] == ["2023-Q2", "2023-Q3"]


# --- filings: synthetic covers ----------------------------------------------------------------------------------


def test_10k_cover_gives_fiscal_year_and_no_quarter() -> None:
    doc = described("globex-10k.pdf", cover("10-K", "For the fiscal year ended September 30, 2023"))
    assert doc.extra == {"form": "10-K", "doc_kind": "10-K", "period": "September 30, 2023",
                         "company": "Globex Corporation", "ticker": "GLBX", "fiscal_year": 2023}
    assert doc.title == "Globex Corporation Form 10-K for the period ended September 30, 2023"


@pytest.mark.parametrize(("year_end", "fiscal_year"), [
    ("January 29, 2023", 2023),  # named for the year it ends in (NVIDIA's fiscal 2023)
    ("January 1, 2023", 2022),  # a 52/53-week year ending in the first week of January belongs to December
])
def test_10k_fiscal_year_is_the_year_it_ends_in(year_end: str, fiscal_year: int) -> None:
    doc = described("x.pdf", cover("10-K", f"For the fiscal year ended {year_end}"))
    assert doc.extra["fiscal_year"] == fiscal_year


def test_10q_quarter_counts_from_the_stated_fiscal_year_end() -> None:
    body = "The Company's fiscal year is the 52- or 53-week period that ends on the last Saturday of September."
    doc = described("acme.pdf", cover("10-Q", "For the quarterly period ended December 31, 2022"), body)
    assert (doc.extra["fiscal_year"], doc.extra["fiscal_quarter"]) == (2023, "Q1")
    assert doc.extra["quarters"] == ["2022-Q4", "2023-Q1"]


def test_10q_without_a_stated_year_end_takes_the_file_name_then_the_calendar() -> None:
    page = cover("10-Q", "For the quarterly period ended December 31, 2022")
    named = described("2023 Q1 GLBX.pdf", page)
    assert (named.extra["fiscal_year"], named.extra["fiscal_quarter"]) == (2023, "Q1")
    assert named.extra["quarters"] == ["2022-Q4", "2023-Q1"]
    unnamed = described("globex.pdf", page)
    assert (unnamed.extra["fiscal_year"], unnamed.extra["fiscal_quarter"]) == (2022, "Q4")
    assert unnamed.extra["quarters"] == ["2022-Q4"]


def test_a_running_header_names_the_quarter_but_a_mention_of_another_filing_does_not() -> None:
    first = cover("10-Q", "For the quarterly period ended October 1, 2022")
    mention = "As described in our Q1 2022 Form 10-Q, we changed our segments."
    doc = described("intel.pdf", first, mention, mention)
    assert (doc.extra["fiscal_year"], doc.extra["fiscal_quarter"]) == (2022, "Q3")  # calendar, not Q1
    header = "Globex Corporation | Q4 2023 Form 10-Q | {}"
    doc = described("globex.pdf", first, *(header.format(n) for n in range(2, 6)))
    assert (doc.extra["fiscal_year"], doc.extra["fiscal_quarter"]) == (2023, "Q4")


def test_ticker_falls_back_to_the_file_name() -> None:
    page = cover("10-Q", "For the quarterly period ended June 30, 2024").replace("Trading Symbol(s)", "")
    assert described("2024 Q2 GLBX.pdf", page).extra["ticker"] == "GLBX"
    assert described("glbx-20240630.htm", page).extra["ticker"] == "GLBX"
    assert "ticker" not in described("globex quarterly report.pdf", page).extra


def test_microsoft_style_cover_without_exact_name_line() -> None:
    page = ("FORM 10-Q\n \nFor the Quarterly Period Ended September 30, 2022\n \nOR\nCommission File Number "
            "001-37845\n \nMICROSOFT CORPORATION\n \nWASHINGTON 91-1144442\nTitle of each class  Trading Symbol  "
            "Name of exchange on which registered\n \nCommon stock, $0.00000625 par value per share  MSFT  NASDAQ\n")
    doc = described("2022 Q3 MSFT.pdf", page)
    assert (doc.extra["company"], doc.extra["ticker"], doc.extra["period"]) == (
        "MICROSOFT CORPORATION", "MSFT", "September 30, 2022")


# --- regulations ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "text", "doc_type", "kind", "family"), [
    ("COBS_VER15.150823.txt", RULES, "regulation", "rulebook", "COBS"),
    ("GPM VER03.120623.txt", RULES, "regulation", "rulebook", "GPM"),
    ("Guidance - Private Credit Funds_VER01.040523.txt", RULES, "regulation", "guidance", None),
    ("API - Guidance Note_Final 14 October 2019 Eng.txt", "Some guidance prose.", "document", "guidance", None),
    ("Draft Guidance - FSRA Guiding Principles for Virtual Assets Regulation and Supervision (IA).txt", RULES,
     "regulation", "guidance", None),
    ("UAE_CRS_Notes.txt", RULES, "regulation", "guidance", None),
    # FUNDS numbers its rules "PART 2.2.1.4": no rule lines, but the name says rulebook
    ("FUNDS_VER08.040723.txt", "PART 2.2.1.4\tCommercial activities.", "document", "rulebook", "FUNDS"),
    ("BRR Regulations (December 2018).txt", "Plain prose regulations.", "document", "document", None),
    ("notes.md", "Meeting notes.", "document", "document", None),
])
def test_regulatory_kind_and_family_from_the_file_name(name: str, text: str, doc_type: str, kind: str,
                                                       family: str | None) -> None:
    doc = described(name, text)
    assert (doc.doc_type, doc.extra["doc_kind"], doc.extra.get("family")) == (doc_type, kind, family)


def test_real_adgm_rulebook_and_guidance() -> None:
    cobs = load(shared_path(*ADGM, "COBS_VER15.150823.txt"))
    assert (cobs.doc_type, cobs.extra) == ("regulation", {"family": "COBS", "doc_kind": "rulebook"})
    guidance = load(shared_path(*ADGM, "Guidance - Private Credit Funds_VER01.040523.txt"))
    assert guidance.extra == {"doc_kind": "guidance"}


# --- filters in the store ---------------------------------------------------------------------------------------


def condition(flt: models.Filter | None, key: str) -> Any:
    assert flt is not None and isinstance(flt.must, list)
    [found] = [c for c in flt.must if isinstance(c, models.FieldCondition) and c.key == key]
    return found.match


def test_build_filter_on_the_new_fields() -> None:
    flt = build_filter({"ticker": ["AAPL", "NVDA"], "fiscal_year": "2023", "fiscal_quarter": "Q3",
                        "quarters": "2023-Q3", "doc_kind": "10-Q"})
    assert condition(flt, "ticker") == models.MatchAny(any=["AAPL", "NVDA"])
    assert condition(flt, "fiscal_year") == models.MatchValue(value=2023)  # a digit string becomes an integer
    assert condition(flt, "quarters") == models.MatchValue(value="2023-Q3")
    assert condition(build_filter({"fiscal_year": ["2022", 2023]}), "fiscal_year") == models.MatchAny(any=[2022, 2023])
    with pytest.raises(InvalidFilter, match="integers"):
        build_filter({"fiscal_year": "FY2023"})
    with pytest.raises(InvalidFilter, match="cannot filter on 'fiscal_period'"):
        build_filter({"fiscal_period": "Q3"})


class RecordingClient(QdrantClient):
    """The real embedded client, noting which payload indexes it was asked for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.indexes: dict[str, Any] = {}

    def create_payload_index(self, collection_name: str, field_name: str, field_schema: Any = None,
                             **kwargs: Any) -> models.UpdateResult:
        self.indexes[field_name] = field_schema
        return super().create_payload_index(collection_name, field_name, field_schema, **kwargs)


def filing(doc: str, i: int, **extra: object) -> Chunk:
    return Chunk(text=f"{doc} {i}", source=f"{doc}.pdf", doc_id=doc, chunk_index=i, doc_type="filing",
                 file_hash="v1", extra={"doc_kind": "10-Q", **extra})


def test_embedded_store_indexes_every_field_and_filters_on_metadata(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # qdrant-client warns once per process that local mode ignores payload indexes; forget earlier warnings
    monkeypatch.setattr(client_warnings, "SEEN_MESSAGES", set())
    client = RecordingClient(path=str(tmp_path / "qdrant"))
    store = QdrantStore(client, embedded=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # that warning stays quiet
        store.ensure_collection("filings", 2)
    assert set(client.indexes) == set(FILTERABLE_FIELDS)
    assert client.indexes["fiscal_year"] == models.PayloadSchemaType.INTEGER
    assert {client.indexes[k] for k in FILTERABLE_FIELDS if k != "fiscal_year"} == {models.PayloadSchemaType.KEYWORD}

    chunks = [
        filing("aapl-q3", 0, ticker="AAPL", fiscal_year=2023, fiscal_quarter="Q3", quarters=["2023-Q2", "2023-Q3"]),
        filing("aapl-q1", 0, ticker="AAPL", fiscal_year=2023, fiscal_quarter="Q1", quarters=["2022-Q4", "2023-Q1"]),
        filing("nvda-q1", 0, ticker="NVDA", fiscal_year=2024, fiscal_quarter="Q1", quarters=["2023-Q1", "2024-Q1"]),
        filing("nvda-q3", 0, ticker="NVDA", fiscal_year=2023, fiscal_quarter="Q3", quarters=["2022-Q3", "2023-Q3"]),
    ]
    store.upsert("filings", chunks, [[1.0, 0.0]] * len(chunks))

    def docs(filters: dict[str, Any]) -> set[str]:
        return {h.chunk.doc_id for h in store.search("filings", [1.0, 0.0], 10, filters)}

    assert docs({"ticker": "AAPL", "fiscal_year": 2023}) == {"aapl-q3", "aapl-q1"}
    assert docs({"ticker": "AAPL", "fiscal_year": "2023", "fiscal_quarter": "Q3"}) == {"aapl-q3"}
    assert docs({"quarters": "2023-Q1"}) == {"aapl-q1", "nvda-q1"}  # any item of the list payload
    assert docs({"ticker": ["AAPL", "NVDA"], "quarters": "2023-Q3"}) == {"aapl-q3", "nvda-q3"}
    assert docs({"fiscal_year": [2024]}) == {"nvda-q1"}
    assert docs({"doc_kind": "10-K"}) == set()
    hit = store.search("filings", [1.0, 0.0], 1, {"ticker": "NVDA", "fiscal_year": 2024})[0].chunk
    assert hit.extra["fiscal_year"] == 2024 and hit.extra["quarters"] == ["2023-Q1", "2024-Q1"]
    store.close()


def test_a_collection_from_before_gets_the_missing_indexes(tmp_path: Path) -> None:
    client = RecordingClient(":memory:")
    client.create_collection(
        "old", vectors_config={DENSE: models.VectorParams(size=2, distance=models.Distance.COSINE)},
        sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
    )
    QdrantStore(client, embedded=True).ensure_collection("old", 2)
    assert set(client.indexes) == set(FILTERABLE_FIELDS)
