"""Query-side filters (`assistant.query`) and the eval harness's `--filter`.

The facets below are what `ingest.loading.describe` reads from the 20 sec-10q filings in ../shared (see
test_metadata.py for the reading itself) and from a few ADGM files.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED

from assistant.chunks import Chunk
from assistant.components import Components
from assistant.query import Facets, Inference, collection_facets, company_aliases, infer_filters
from assistant.settings import Settings
from eval.cli import main

COMPANIES = {"AAPL": "Apple Inc.", "AMZN": "AMAZON.COM, INC.", "INTC": "INTEL CORPORATION",
             "MSFT": "MICROSOFT CORPORATION", "NVDA": "NVIDIA CORPORATION"}
# source: (period, fiscal year, fiscal quarter, quarters)
FILINGS = {
    "2022 Q3 AAPL.pdf": ("June 25, 2022", 2022, "Q3", ["2022-Q2", "2022-Q3"]),
    "2023 Q1 AAPL.pdf": ("December 31, 2022", 2023, "Q1", ["2022-Q4", "2023-Q1"]),
    "2023 Q2 AAPL.pdf": ("April 1, 2023", 2023, "Q2", ["2023-Q1", "2023-Q2"]),
    "2023 Q3 AAPL.pdf": ("July 1, 2023", 2023, "Q3", ["2023-Q2", "2023-Q3"]),
    "2022 Q3 AMZN.pdf": ("September 30, 2022", 2022, "Q3", ["2022-Q3"]),
    "2023 Q1 AMZN.pdf": ("March 31, 2023", 2023, "Q1", ["2023-Q1"]),
    "2023 Q2 AMZN.pdf": ("June 30, 2023", 2023, "Q2", ["2023-Q2"]),
    "2023 Q3 AMZN.pdf": ("September 30, 2023", 2023, "Q3", ["2023-Q3"]),
    "2022 Q3 INTC.pdf": ("October 1, 2022", 2022, "Q3", ["2022-Q3"]),
    "2023 Q1 INTC.pdf": ("April 1, 2023", 2023, "Q1", ["2023-Q1"]),
    "2023 Q2 INTC.pdf": ("July 1, 2023", 2023, "Q2", ["2023-Q2"]),
    "2023 Q3 INTC.pdf": ("September 30, 2023", 2023, "Q3", ["2023-Q3"]),
    "2022 Q3 MSFT.pdf": ("September 30, 2022", 2023, "Q1", ["2022-Q3", "2023-Q1"]),
    "2023 Q1 MSFT.pdf": ("December 31, 2022", 2023, "Q2", ["2022-Q4", "2023-Q1", "2023-Q2"]),
    "2023 Q2 MSFT.pdf": ("March 31, 2023", 2023, "Q3", ["2023-Q1", "2023-Q2", "2023-Q3"]),
    "2023 Q3 MSFT.pdf": ("September 30, 2023", 2024, "Q1", ["2023-Q3", "2024-Q1"]),
    "2022 Q3 NVDA.pdf": ("October 30, 2022", 2023, "Q3", ["2022-Q3", "2023-Q3"]),
    "2023 Q1 NVDA.pdf": ("April 30, 2023", 2024, "Q1", ["2023-Q1", "2024-Q1"]),
    "2023 Q2 NVDA.pdf": ("July 30, 2023", 2024, "Q2", ["2023-Q2", "2024-Q2"]),
    "2023 Q3 NVDA.pdf": ("October 29, 2023", 2024, "Q3", ["2023-Q3", "2024-Q3"]),
}
REGULATIONS = {
    "COBS_VER15.150823.txt": {"doc_kind": "rulebook", "family": "COBS"},
    "AML_VER09.211223.txt": {"doc_kind": "rulebook", "family": "AML"},
    "Guidance - Private Credit Funds_VER01.040523.txt": {"doc_kind": "guidance"},
    "FSMR (Consolidated_December 2023).txt": {"doc_kind": "document"},
}


def chunks() -> Iterator[Chunk]:
    for source, (period, year, quarter, quarters) in FILINGS.items():
        ticker = source.split()[2].removesuffix(".pdf")
        extra = {"form": "10-Q", "doc_kind": "10-Q", "period": period, "company": COMPANIES[ticker],
                 "ticker": ticker, "fiscal_year": year, "fiscal_quarter": quarter, "quarters": quarters}
        for i in range(3):  # several chunks per document: facets are per document
            yield Chunk(text=f"{source} {i}", source=source, doc_id=source, chunk_index=i, doc_type="filing",
                        extra=extra)
    for source, extra in REGULATIONS.items():
        yield Chunk(text=source, source=source, doc_id=source, chunk_index=0, doc_type="regulation", extra=extra)


@pytest.fixture(scope="module")
def facets() -> Facets:
    return collection_facets(chunks())


def sources(facets: Facets, filters: dict[str, Any] | None) -> list[str]:
    assert filters is not None
    return sorted(d.source for d in facets.matching(filters))


def test_facets_are_per_document(facets: Facets) -> None:
    assert len(facets.documents) == len(FILINGS) + len(REGULATIONS)
    assert facets.values("ticker") == set(COMPANIES)
    assert facets.values("fiscal_year") == {2022, 2023, 2024}
    assert facets.values("family") == {"COBS", "AML"}
    assert facets.values("doc_kind") == {"10-Q", "rulebook", "guidance", "document"}
    assert "2024-Q3" in facets.values("quarters")
    nvda = next(d for d in facets.documents if d.source == "2023 Q1 NVDA.pdf")
    assert (nvda.fiscal_year, nvda.quarters, nvda.company) == (2024, ("2023-Q1", "2024-Q1"), "NVIDIA CORPORATION")


def test_company_aliases_drop_legal_suffixes() -> None:
    assert company_aliases("AMAZON.COM, INC.") == {"amazon.com, inc.", "amazon.com", "amazon"}
    assert company_aliases("NVIDIA CORPORATION") == {"nvidia corporation", "nvidia"}
    assert company_aliases("The Goldman Sachs Group, Inc.") >= {"goldman sachs"}


@pytest.mark.parametrize(("question", "expected", "documents"), [
    ("What percentage of Apple's total revenue did the Services segment contribute in Q3 2023?",
     {"ticker": "AAPL", "quarters": "2023-Q3"}, ["2023 Q3 AAPL.pdf"]),
    # the file is labelled 2023 Q1, NVIDIA calls the quarter Q1 of fiscal 2024: "quarters" knows both
    ("How did NVIDIA's operating expenses compare to its revenues in Q1 2023?",
     {"ticker": "NVDA", "quarters": "2023-Q1"}, ["2023 Q1 NVDA.pdf"]),
    ("For Q3 2023, what proportion of Nvidia's revenue was generated by its data center business?",
     {"ticker": "NVDA", "quarters": "2023-Q3"}, ["2022 Q3 NVDA.pdf", "2023 Q3 NVDA.pdf"]),
    ("In the first quarter of 2023, how much did Apple spend on research and development?",
     {"ticker": "AAPL", "quarters": "2023-Q1"}, ["2023 Q1 AAPL.pdf", "2023 Q2 AAPL.pdf"]),
    ("In Amazon's Q2 2023 10-Q, how does the discussion on employee compensation relate to expenses?",
     {"ticker": "AMZN", "quarters": "2023-Q2", "doc_kind": "10-Q"}, ["2023 Q2 AMZN.pdf"]),
    ("What was Apple’s total net sales in the quarter ended July 1, 2023?",
     {"ticker": "AAPL", "period": "July 1, 2023"}, ["2023 Q3 AAPL.pdf"]),
    ("What was NVIDIA's revenue in the third quarter of fiscal year 2024?",
     {"ticker": "NVDA", "fiscal_year": 2024, "fiscal_quarter": "Q3"}, ["2023 Q3 NVDA.pdf"]),
    ("How did Microsoft's cloud revenue grow in FY2024?", {"ticker": "MSFT", "fiscal_year": 2024},
     ["2023 Q3 MSFT.pdf"]),
    ("Compare the gross margins of Apple and Intel in Q2 2023.",
     {"ticker": ["AAPL", "INTC"], "quarters": "2023-Q2"}, ["2023 Q2 AAPL.pdf", "2023 Q2 INTC.pdf", "2023 Q3 AAPL.pdf"]),
    ("How has AMZN's operating cash flow developed?", {"ticker": "AMZN"},
     ["2022 Q3 AMZN.pdf", "2023 Q1 AMZN.pdf", "2023 Q2 AMZN.pdf", "2023 Q3 AMZN.pdf"]),
    ("Which filings cover 2023 Q3 and Q2 2023 for Intel?", {"ticker": "INTC", "quarters": ["2023-Q2", "2023-Q3"]},
     ["2023 Q2 INTC.pdf", "2023 Q3 INTC.pdf"]),
    # the collection holds no Q4 2021, and Q4 2022 (Apple's and Microsoft's) for no Amazon filing: the period is
    # dropped, the company kept
    ("What were Amazon's sales in Q4 2021?", {"ticker": "AMZN"},
     ["2022 Q3 AMZN.pdf", "2023 Q1 AMZN.pdf", "2023 Q2 AMZN.pdf", "2023 Q3 AMZN.pdf"]),
    ("What were Amazon's sales in Q4 2022?", {"ticker": "AMZN"},
     ["2022 Q3 AMZN.pdf", "2023 Q1 AMZN.pdf", "2023 Q2 AMZN.pdf", "2023 Q3 AMZN.pdf"]),
    ("What were sales in Q4 2022?", {"quarters": "2022-Q4"}, ["2023 Q1 AAPL.pdf", "2023 Q1 MSFT.pdf"]),
])
def test_realistic_questions(facets: Facets, question: str, expected: dict[str, Any], documents: list[str]) -> None:
    filters = infer_filters(question, facets)
    assert filters == expected
    assert sources(facets, filters) == documents


@pytest.mark.parametrize(("question", "expected"), [
    ("What legal proceedings or contingencies are disclosed in these 10-Qs?", None),  # every document is a 10-Q
    ("Which risk factors are new this quarter?", None),
    ("How did revenue change in 2023?", None),  # a bare year is no period
    ("What was the revenue in the third quarter?", None),  # nor a quarter without its year
    ("Is an apple a day enough for the auditors?", None),  # lower case is not a name
    ("Does Applebee's report franchise revenue?", None),
    ("What disclosures must a PFP Operator make under COBS about its exit facility?", None),  # families: off
    ("Compare Q3 2023 with fiscal 2022 for Apple", {"ticker": "AAPL"}),  # two readings of the period: none
])
def test_questions_without_entities(facets: Facets, question: str, expected: dict[str, Any] | None) -> None:
    assert infer_filters(question, facets) == expected


def test_each_kind_of_inference_can_be_switched_off(facets: Facets) -> None:
    question = "In Apple's Q3 2023 10-Q (AAPL), what were net sales for the quarter ended July 1, 2023?"
    assert infer_filters(question, facets) == {"ticker": "AAPL", "period": "July 1, 2023", "quarters": "2023-Q3",
                                               "doc_kind": "10-Q"}
    assert infer_filters(question, facets, Inference(companies=False)) == {
        "ticker": "AAPL", "period": "July 1, 2023", "quarters": "2023-Q3", "doc_kind": "10-Q"}  # the ticker says it
    assert "ticker" not in (infer_filters(question, facets, Inference(companies=False, tickers=False)) or {})
    assert infer_filters(question, facets, Inference(dates=False, periods=False, doc_kinds=False)) == {"ticker": "AAPL"}
    assert infer_filters(question, facets, Inference(
        companies=False, tickers=False, dates=False, doc_kinds=False)) == {"quarters": "2023-Q3"}
    assert infer_filters(question, facets, Inference(
        companies=False, tickers=False, periods=False, dates=False, doc_kinds=False)) is None


def test_families_and_rulebooks_when_switched_on(facets: Facets) -> None:
    on = Inference(families=True, rulebooks=True)
    assert infer_filters("What must a PFP Operator disclose under COBS?", facets, on) == {"family": "COBS"}
    assert infer_filters("Which rules of the Conduct of Business Rulebook apply?", facets, on) == {
        "doc_kind": "rulebook", "family": "COBS"}
    assert infer_filters("Compare COBS and the AML Rulebook on client records", facets, on) == {
        "doc_kind": "rulebook", "family": ["AML", "COBS"]}
    assert infer_filters("Which rulebook defines a Fund Manager?", facets, on) == {"doc_kind": "rulebook"}
    assert infer_filters("What does the PRU rulebook say?", facets, on) == {"doc_kind": "rulebook"}  # no PRU here


def test_a_company_without_ticker_is_filtered_by_every_spelling() -> None:
    def doc(source: str, company: str) -> Chunk:
        return Chunk(text="", source=source, doc_id=source, chunk_index=0, extra={"company": company})

    facets = collection_facets([doc("a.pdf", "Globex Holdings Ltd"), doc("b.pdf", "GLOBEX HOLDINGS LTD."),
                                doc("c.pdf", "Initech Corp")])
    assert infer_filters("What did Globex report on debt?", facets) == {
        "company": ["GLOBEX HOLDINGS LTD.", "Globex Holdings Ltd"]}
    assert infer_filters("globex debt", facets) is None


def test_every_sec10q_question_keeps_its_evidence(facets: Facets) -> None:
    path = SHARED / "corpora" / "sec-10q" / "questions.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared corpora are not available on this machine)")
    questions = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    narrowed = 0
    for q in questions:
        filters = infer_filters(q["question"], facets)
        assert filters is not None, q["question"]
        passing = set(sources(facets, filters))
        evidence = {s for e in q["evidence"] for s in FILINGS if fnmatch.fnmatch(s, e["source"])}
        assert evidence and evidence <= passing, (q["question"], filters)
        narrowed += len(passing) < 5
    assert narrowed > 80  # a company and a period leave one or two of a company's four filings


# --- eval run --filter ------------------------------------------------------------------------------------------

COLLECTION = "filtered"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("filterdata")
    components = Components(Settings(data_dir=data, collection=COLLECTION, _env_file=None))  # type: ignore[call-arg]
    docs = [("2023 Q3 AAPL.pdf", "AAPL", 2023), ("2023 Q3 NVDA.pdf", "NVDA", 2024), ("2022 Q3 NVDA.pdf", "NVDA", 2023)]
    try:
        texts, stored = [], []
        for source, ticker, year in docs:
            for i, line in enumerate(["Total net sales for the quarter were up.", "Research and development rose.",
                                      "Cash used in financing activities fell."]):
                texts.append(line)
                stored.append(Chunk(text=line, source=source, doc_id=source, chunk_index=i, doc_type="filing",
                                    file_hash="t", extra={"ticker": ticker, "fiscal_year": year}))
        components.store.ensure_collection(COLLECTION, components.embedder.dim)
        components.store.upsert(COLLECTION, stored, components.embedder.embed_batch(texts))
    finally:
        components.close()
    return data


@pytest.fixture
def questions(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("QDRANT_URL", "QDRANT_PATH", "COLLECTION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"id": "q1", "question": "How did net sales change?", "reference_answer": None,
                                "evidence": [{"source": "2023 Q3 NVDA.pdf"}], "tags": {}}) + "\n", encoding="utf-8")
    return path


def run(questions: Path, out: Path, *extra: str) -> dict[str, Any]:
    assert main(["run", str(questions), "--collection", COLLECTION, "--k", "9", "--out", str(out), "--no-report",
                 "--no-progress", *extra]) == 0
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def test_eval_filter_restricts_every_retrieval(questions: Path, tmp_path: Path) -> None:
    unfiltered = run(questions, tmp_path / "all")
    assert {c["source"] for c in unfiltered["questions"][0]["retrieved"]} == {
        "2023 Q3 AAPL.pdf", "2023 Q3 NVDA.pdf", "2022 Q3 NVDA.pdf"}

    nvda = run(questions, tmp_path / "nvda", "--filter", "ticker=NVDA")
    assert {c["source"] for c in nvda["questions"][0]["retrieved"]} == {"2023 Q3 NVDA.pdf", "2022 Q3 NVDA.pdf"}
    assert nvda["settings"]["filters"] == {"ticker": "NVDA"}

    both = run(questions, tmp_path / "both", "--filter", "ticker=NVDA", "--filter", "ticker=AAPL",
               "--filter", "fiscal_year=2024")
    assert both["settings"]["filters"] == {"ticker": ["NVDA", "AAPL"], "fiscal_year": 2024}
    assert {c["source"] for c in both["questions"][0]["retrieved"]} == {"2023 Q3 NVDA.pdf"}
    summary = json.loads((tmp_path / "both" / "summary.json").read_text(encoding="utf-8"))
    assert summary["settings"]["filters"] == {"ticker": ["NVDA", "AAPL"], "fiscal_year": 2024}


def test_eval_filter_resume_needs_the_same_filters(questions: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    run(questions, out, "--filter", "ticker=NVDA")
    assert main(["run", str(questions), "--collection", COLLECTION, "--out", str(out), "--resume", "--k", "9",
                 "--no-progress", "--no-report", "--filter", "ticker=AAPL"]) == 2
    assert "it was run with filters={'ticker': 'NVDA'}" in capsys.readouterr().err


@pytest.mark.parametrize(("argument", "message"), [
    ("sector=tech", "cannot filter on 'sector'"),
    ("fiscal_year=FY2023", "fiscal_year takes an integer"),
    ("ticker", "wants FIELD=VALUE"),
])
def test_eval_filter_refuses_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str], argument: str,
                                           message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(tmp_path / "q.jsonl"), "--filter", argument])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
