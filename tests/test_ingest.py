"""Ingest end to end: real PDFs, HTML, Markdown and rulebook text through `Ingestor` and `python -m ingest`.

What is indexed is read back from the real embedded Qdrant (`scroll_chunks`) and the real SQLite registry.
Per-test ingests use small files so the module stays fast; the full sample corpus is the shared
`sample_index` (read only).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import SAMPLE_COLLECTION, SAMPLES, SampleIndex, make_settings

from assistant.chunks import Chunk
from assistant.components import Components
from assistant.db import documents
from assistant.edge_store import EdgeStore
from assistant.embedding import SentenceTransformerEmbedder
from ingest.cli import main
from ingest.loading import fix_table_headers
from ingest.pipeline import Ingestor, doc_id_for
from ingest.tables import label_columns, label_table

AAPL_Q3 = "2023 Q3 AAPL.pdf"
CONF = SAMPLES / "adgm" / "CONF_VER03.18042019.txt"
NEW_RULE = (
    "1.4\tPublication\n"
    "1.4.1\tThe Regulator shall publish an annual statement on the handling of Confidential Information, "
    "listing the number of requests for assistance received from Non-ADGM Regulators."
)


# --- helpers ---------------------------------------------------------------------------------------------


def chunks_of(components: Components, collection: str) -> list[Chunk]:
    return [chunk for _, chunk in components.store.scroll_chunks(collection)]


def registry(components: Components, collection: str) -> dict[str, dict[str, object]]:
    with components.engine.connect() as conn:
        rows = conn.execute(sa.select(documents).where(documents.c.collection == collection)).mappings().all()
    return {row["id"]: dict(row) for row in rows}


def first_chapter(dest: Path) -> Path:
    """A small copy of the ADGM confidentiality rulebook: its first chapter (seven numbered rules)."""
    lines = CONF.read_text(encoding="utf-8").splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("2.\t"))
    dest.write_text("\n".join(lines[:end]) + "\n", encoding="utf-8")
    return dest


class CountingEmbedder:
    """Delegates to the real embedder and counts the texts it is asked to embed."""

    def __init__(self, inner: SentenceTransformerEmbedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.texts = 0

    def embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        self.texts += len(texts)
        return self.inner.embed_batch(texts)

    def tokenize(self, text: str) -> list[int]:
        return self.inner.tokenize(text)


# --- what the sample corpus turns into --------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_chunks(sample_index: SampleIndex) -> list[Chunk]:
    return chunks_of(sample_index.components, SAMPLE_COLLECTION)


def test_sample_report_counts_every_file(sample_index: SampleIndex, sample_chunks: list[Chunk]) -> None:
    report = sample_index.report
    assert (report.files, report.indexed, report.unchanged, report.failed) == (4, 4, 0, [])
    assert sorted(Path(p).name for p in report.ignored) == ["LICENSE", "LICENSE"]
    assert report.chunks == report.embedded == len(sample_chunks)
    rows = registry(sample_index.components, SAMPLE_COLLECTION)
    assert sorted(str(r["source"]) for r in rows.values()) == [
        "2023 Q2 AAPL.pdf", AAPL_Q3, "CONF_VER03.18042019.txt", "FEES_VER16.181223.txt"]
    per_doc = Counter(c.doc_id for c in sample_chunks)
    assert per_doc == {doc_id: row["chunks"] for doc_id, row in rows.items()}
    assert rows[doc_id_for(SAMPLE_COLLECTION, SAMPLES / "sec-10q" / AAPL_Q3)]["pages"] == 29


def test_filing_chunks_carry_page_section_title_and_filing_facts(sample_chunks: list[Chunk]) -> None:
    aapl = [c for c in sample_chunks if c.source == AAPL_Q3]
    assert len(aapl) > 50
    for c in aapl:
        assert c.page_start is not None and 1 <= c.page_start <= 29, c
        assert c.page_end == c.page_start  # a filing chunk never spans pages
        assert "Apple Inc." in (c.title or "") and "10-Q" in (c.title or "")
        assert c.doc_type == "filing"
        assert (c.extra["company"], c.extra["form"], c.extra["period"]) == ("Apple Inc.", "10-Q", "July 1, 2023")
    assert {c.page_start for c in aapl} >= set(range(1, 29))  # every page with text is indexed
    sales = [c for c in aapl if c.page_start == 4 and "Total net sales" in c.text]
    assert sales and all("Item 1" in (c.section or "") for c in sales)
    assert any("Item 2" in (c.section or "") and "Management" in (c.section or "") for c in aapl)
    q2 = {c.extra.get("period") for c in sample_chunks if c.source == "2023 Q2 AAPL.pdf"}
    assert q2 == {"April 1, 2023"}


def test_rulebook_chunks_carry_rule_numbers_and_chapter_heading(sample_chunks: list[Chunk]) -> None:
    conf = [c for c in sample_chunks if c.source == "CONF_VER03.18042019.txt"]
    assert conf and all(c.doc_type == "regulation" and c.extra.get("family") == "CONF" for c in conf)
    assert all(c.page_start is None for c in conf)
    rule = next(c for c in conf if c.section == "1.2.1")
    assert rule.text.startswith("1.2.1\tWhen dealing with Confidential Information")
    assert rule.extra["heading"] == "1. DEALING WITH CONFIDENTIAL INFORMATION › 1.2 Regulatory Approach"
    for c in conf:
        assert re.fullmatch(r"\d+\.\d+(\.\d+)?(–\d+\.\d+(\.\d+)?)?", c.section or ""), c.section
        assert str(c.extra.get("heading", "")).startswith(f"{(c.section or '').split('.')[0]}. ")
    fees = {c.section for c in sample_chunks if c.source == "FEES_VER16.181223.txt"}
    assert any(s and ".Guidance" in s for s in fees)


def test_every_chunk_has_its_content_hash_and_a_stable_id(sample_index: SampleIndex) -> None:
    store = sample_index.components.store
    by_doc: dict[str, list[int]] = {}
    for point_id, c in store.scroll_chunks(SAMPLE_COLLECTION):
        assert c.content_hash == hashlib.sha256(c.text.encode()).hexdigest()[:16]
        assert point_id == c.id
        assert len(c.file_hash) == 64
        by_doc.setdefault(c.doc_id, []).append(c.chunk_index)
    for indexes in by_doc.values():
        assert sorted(indexes) == list(range(len(indexes)))


def test_income_statement_figures_are_labelled_with_their_period(sample_chunks: list[Chunk]) -> None:
    sales = [c for c in sample_chunks if c.source == AAPL_Q3 and c.page_start == 4 and "Total net sales" in c.text]
    assert any("81,797 (three months ended July 1, 2023)" in c.text for c in sales)
    assert any("293,787 (nine months ended July 1, 2023)" in c.text for c in sales)


def test_sample_index_answers_a_filing_question(sample_index: SampleIndex) -> None:
    hits = sample_index.components.retriever.retrieve(
        "Apple total net sales three months ended July 1, 2023", SAMPLE_COLLECTION, 5, {"source": AAPL_Q3})
    assert hits and all(h.chunk.source == AAPL_Q3 for h in hits)
    # The figure is printed on p. 4 (income statement) and pp. 18-19 (MD&A segment table); any is evidence.
    assert any("81,797 (three months ended July 1, 2023)" in h.chunk.text for h in hits), [
        (h.chunk.page_start, h.chunk.text[:80]) for h in hits]


# --- table labelling on the header styles of real 10-Qs ---------------------------------------------------


def test_pdf_date_headers_broken_over_lines_are_rejoined() -> None:
    raw = "Three Months Ended Nine Months Ended\nJuly 1,\n2023\nJune 25,\n2022\nJuly 1,\n2023\nJune 25,\n2022\n"
    assert fix_table_headers(raw).splitlines()[1] == "July 1, 2023 | June 25, 2022 | July 1, 2023 | June 25, 2022"


def test_labels_aapl_style_pipe_joined_dates() -> None:
    text = ("Three Months Ended Nine Months Ended\n"
            "July 1, 2023 | June 25, 2022 | July 1, 2023 | June 25, 2022\n"
            "Net sales:\n"
            "Total net sales $ 81,797 $ 82,959 $ 293,787 $ 304,182")
    out = label_columns(text).splitlines()
    assert out[:3] == text.splitlines()[:3]
    assert out[3] == ("Total net sales: 81,797 (three months ended July 1, 2023) | "
                      "82,959 (three months ended June 25, 2022) | 293,787 (nine months ended July 1, 2023) | "
                      "304,182 (nine months ended June 25, 2022)")


def test_labels_intc_style_dates_on_one_line() -> None:
    text = ("Three Months Ended Six Months Ended\n"
            "(In Millions) Jul 1, 2023 Jul 2, 2022 Jul 1, 2023 Jul 2, 2022\n"
            "Net revenue:\n"
            "Desktop $ 2,370 $ 2,289 $ 4,249 $ 4,930 \n"
            "Data Center and AI (161) (80) (679) 1,313")
    out = label_columns(text).splitlines()
    assert out[3] == ("Desktop: 2,370 (three months ended Jul 1, 2023) | 2,289 (three months ended Jul 2, 2022) | "
                      "4,249 (six months ended Jul 1, 2023) | 4,930 (six months ended Jul 2, 2022)")
    assert out[4] == ("Data Center and AI: (161) (three months ended Jul 1, 2023) | "
                      "(80) (three months ended Jul 2, 2022) | (679) (six months ended Jul 1, 2023) | "
                      "1,313 (six months ended Jul 2, 2022)")


@pytest.mark.parametrize("header", [
    " July 30, July 31, July 30, July 31, 2023 2022 2023 2022",  # as fix_table_headers leaves it
    " July 30, July 31, July 30, July 31,\n2023 2022 2023 2022",  # as pypdf extracts it
])
def test_labels_nvda_style_days_and_years_apart(header: str) -> None:
    text = (" Three Months Ended Six Months Ended\n" + header + "\n"
            "Revenue $ 13,507 $ 6,704 $ 20,699 $ 14,992 \n"
            "Acquisition termination cost — — — 1,353 ")
    out = label_columns(fix_table_headers(text)).splitlines()
    assert out[-2] == ("Revenue: 13,507 (three months ended July 30, 2023) | 6,704 (three months ended July 31, 2022)"
                       " | 20,699 (six months ended July 30, 2023) | 14,992 (six months ended July 31, 2022)")
    assert out[-1].startswith("Acquisition termination cost: — (three months ended July 30, 2023) | ")
    assert out[-1].endswith("1,353 (six months ended July 31, 2022)")


def test_labels_amzn_style_stacked_groups_and_unmatched_rows_stay_untouched() -> None:
    text = ("Three Months Ended\nSeptember 30,\nNine Months Ended\nSeptember 30,\nTwelve Months Ended\n"
            "September 30,\n2022 2023 2022 2023 2022 2023\n"
            "Net income (loss) $ 2,872 $ 9,879 $ (3,000) $ 19,801 $ 11,323 $ 30,425\n"
            "Operating income 2,525 11,188 9,511\n"
            "See accompanying notes to consolidated financial statements.")
    out = label_columns(fix_table_headers(text)).splitlines()
    assert out[-3] == (
        "Net income (loss): 2,872 (three months ended September 30, 2022) | "
        "9,879 (three months ended September 30, 2023) | (3,000) (nine months ended September 30, 2022) | "
        "19,801 (nine months ended September 30, 2023) | 11,323 (twelve months ended September 30, 2022) | "
        "30,425 (twelve months ended September 30, 2023)")
    assert out[-2] == "Operating income 2,525 11,188 9,511"  # three figures under six columns: not guessed
    assert out[-1] == "See accompanying notes to consolidated financial statements."


def test_rows_without_a_header_are_left_alone() -> None:
    text = "Total employees 161,000 164,000\nNote 4 — Leases"
    assert label_columns(text) == text


# --- idempotency, change detection, prune -----------------------------------------------------------------


def test_second_run_embeds_nothing(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    rulebook = first_chapter(tmp_path / "CONF_VER03.18042019.txt")
    counting = CountingEmbedder(embedder)
    components = Components(make_settings(tmp_path / "data"), embedder=counting)
    try:
        ingestor = Ingestor(components)
        first = ingestor.ingest([rulebook], "rules", progress=False)
        assert (first.indexed, first.failed) == (1, [])
        assert counting.texts == first.embedded == first.chunks > 0
        points = components.store.count("rules")

        counting.texts = 0
        second = Ingestor(components).ingest([rulebook], "rules", progress=False)
        assert (second.indexed, second.unchanged, second.embedded) == (0, 1, 0)
        assert second.chunks == first.chunks
        assert counting.texts == 0
        assert components.store.count("rules") == points
    finally:
        components.close()


def test_changed_file_replaces_its_old_version(tmp_path: Path, fresh_components: Components) -> None:
    rulebook = first_chapter(tmp_path / "CONF_VER03.18042019.txt")
    ingestor = Ingestor(fresh_components)
    ingestor.ingest([rulebook], "rules", progress=False)
    doc_id = doc_id_for("rules", rulebook)
    old_hash = registry(fresh_components, "rules")[doc_id]["file_hash"]

    with rulebook.open("a", encoding="utf-8") as fh:
        fh.write(NEW_RULE + "\n")
    report = ingestor.ingest([rulebook], "rules", progress=False)
    assert (report.indexed, report.unchanged, report.failed) == (1, 0, [])

    row = registry(fresh_components, "rules")[doc_id]
    assert row["file_hash"] != old_hash
    stored = chunks_of(fresh_components, "rules")
    assert len(stored) == fresh_components.store.count("rules", doc_id) == row["chunks"] == report.chunks
    assert {c.file_hash for c in stored} == {row["file_hash"]}
    new = next(c for c in stored if "annual statement" in c.text)
    assert new.section == "1.4.1"
    assert new.extra["heading"] == "1. DEALING WITH CONFIDENTIAL INFORMATION › 1.4 Publication"

    hits = fresh_components.retriever.retrieve(
        "annual statement on requests for assistance from foreign regulators", "rules", 1)
    assert hits[0].chunk.section == "1.4.1"
    assert hits[0].chunk.file_hash == row["file_hash"]


def test_prune_drops_deleted_files_only(tmp_path: Path, fresh_components: Components) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    rulebook = first_chapter(folder / "CONF_VER03.18042019.txt")
    note = folder / "note.md"
    note.write_text("# Desk note\n\nThe liquidity buffer covers thirty days of stressed outflows.\n")
    ingestor = Ingestor(fresh_components)
    assert ingestor.ingest([folder], "rules", progress=False).indexed == 2
    note_id, rule_id = doc_id_for("rules", note), doc_id_for("rules", rulebook)
    rule_chunks = fresh_components.store.count("rules", rule_id)

    note.unlink()
    kept = ingestor.ingest([folder], "rules", progress=False)  # without prune nothing is removed
    assert kept.pruned == [] and fresh_components.store.count("rules", note_id) > 0

    report = ingestor.ingest([folder], "rules", prune=True, progress=False)
    assert report.pruned == [str(note.resolve())]
    assert report.unchanged == 1
    assert fresh_components.store.count("rules", note_id) == 0
    assert set(registry(fresh_components, "rules")) == {rule_id}
    assert fresh_components.store.count("rules", rule_id) == rule_chunks == fresh_components.store.count("rules")
    assert "pruned: 1" in report.summary()


# --- HTML and Markdown ------------------------------------------------------------------------------------

SEC_HTML = """<html><head><title>globex-10q</title><style>p { margin: 0 }</style></head><body>
<div style="page-break-after: always">
<p>UNITED STATES SECURITIES AND EXCHANGE COMMISSION</p>
<p>FORM 10-Q</p>
<p>For the quarterly period ended June 30, 2024</p>
<p>Globex Widgets Corp.</p>
<p>(Exact name of registrant as specified in its charter)</p>
</div>
<div>
<p>PART I — FINANCIAL INFORMATION</p>
<p>Item 2. Management's Discussion and Analysis of Financial Condition and Results of Operations</p>
<p>Widget revenue grew because of strong demand for blue widgets in the northern region.</p>
<table>
<tr><th></th><th>Three Months Ended June 30, 2024</th><th>Three Months Ended June 30, 2023</th></tr>
<tr><td>Widget revenue</td><td>$</td><td>1,234</td><td>$</td><td>987</td></tr>
<tr><td>Operating loss</td><td>(56</td><td>)</td><td>(78</td><td>)</td></tr>
</table>
<script>var tracking = "should never be indexed";</script>
</div>
</body></html>
"""

POLICY_MD = """# Treasury Policy

The treasury policy governs cash, liquidity and hedging.

## Liquidity

The firm keeps a liquidity buffer of at least thirty days of stressed outflows.

### Stress testing

Liquidity stress tests run every month.

## Hedging

Currency exposure above five million dollars is hedged with forwards.
"""


def test_html_tables_label_every_figure_with_its_column_header() -> None:
    grid = [["", "", "Years Ended September 30,", ""], ["", "2019", "2018", "2017"],
            ["Fixed Price", "$ 1,452.4", "$ 1,146.2", "$ 1,036.9"], ["Assets", "", "", ""],
            ["Growth", "", "5%", ""], ["Note", "see below", "", ""]]
    assert label_table(grid) == [
        "Years Ended September 30,",
        "2019 | 2018 | 2017",
        "Fixed Price: $ 1,452.4 (Years Ended September 30, 2019) | $ 1,146.2 (Years Ended September 30, 2018)"
        " | $ 1,036.9 (Years Ended September 30, 2017)",
        "Assets",
        "Growth: 5% (Years Ended September 30, 2018)",
        "Note | see below",
    ]
    assert label_table([["Name", "Role"], ["Ann", "CEO"]]) == ["Name | Role", "Ann | CEO"]  # no figures: as is
    # a second sub-table names its columns again (TAT-QA's Intel goodwill roll-forward): labels follow it
    two_periods = [["(In Millions)", "Dec 29, 2018", "Other", "Dec 28, 2019"], ["Mobileye", "10,290", "—", "10,290"],
                   ["(In Millions)", "Dec 30, 2017", "Other", "Dec 29, 2018"], ["Mobileye", "10,278", "12", "10,290"]]
    assert label_table(two_periods)[3] == "Mobileye: 10,278 (Dec 30, 2017) | 12 (Other) | 10,290 (Dec 29, 2018)"
    assert label_table([]) == []


def test_sec_html_filing_keeps_pages_items_and_table_rows(tmp_path: Path, fresh_components: Components) -> None:
    path = tmp_path / "globex-10q.htm"
    path.write_text(SEC_HTML, encoding="utf-8")
    report = Ingestor(fresh_components).ingest([path], "html", progress=False)
    assert (report.indexed, report.pages, report.failed) == (1, 2, [])
    stored = chunks_of(fresh_components, "html")
    assert {c.title for c in stored} == {"Globex Widgets Corp. Form 10-Q for the period ended June 30, 2024"}
    assert all(c.doc_type == "filing" and c.extra["period"] == "June 30, 2024" for c in stored)
    cover = [c for c in stored if c.page_start == 1]
    assert cover and all("FORM 10-Q" in c.text or "Exact name" in c.text for c in cover)
    mdna = next(c for c in stored if "Widget revenue grew" in c.text)
    assert mdna.page_start == mdna.page_end == 2
    assert mdna.section == ("Part I — Item 2. Management's Discussion and Analysis of Financial Condition "
                            "and Results of Operations")
    table = next(c for c in stored if "Widget revenue |" in c.text).text.splitlines()
    assert "Three Months Ended June 30, 2024 | Three Months Ended June 30, 2023" in table
    assert "Widget revenue | 1,234 | 987" in table
    assert "Operating loss | (56 | (78" in table
    assert not any("tracking" in c.text or "margin" in c.text for c in stored)


def test_markdown_headings_become_sections(tmp_path: Path, fresh_components: Components) -> None:
    path = tmp_path / "treasury-policy.md"
    path.write_text(POLICY_MD, encoding="utf-8")
    report = Ingestor(fresh_components).ingest([path], "md", progress=False)
    assert (report.indexed, report.failed) == (1, [])
    stored = sorted(chunks_of(fresh_components, "md"), key=lambda c: c.chunk_index)
    assert [c.section for c in stored] == [
        "Treasury Policy", "Treasury Policy › Liquidity", "Treasury Policy › Liquidity › Stress testing",
        "Treasury Policy › Hedging"]
    assert "stress tests run every month" in stored[2].text
    assert all(c.doc_type == "document" and c.title == "treasury-policy" and c.page_start is None for c in stored)
    hits = fresh_components.retriever.retrieve("How is currency risk hedged?", "md", 1)
    assert hits[0].chunk.section == "Treasury Policy › Hedging"


# --- the command line -------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """DATA_DIR for `Settings()` in the CLI; no stray .env or server settings from the developer's shell."""
    data = tmp_path / "cli-data"
    monkeypatch.chdir(tmp_path)
    for var in ("QDRANT_URL", "QDRANT_PATH", "DATABASE_URL", "COLLECTION", "EMBEDDING_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATA_DIR", str(data))
    return data


def test_cli_ingests_then_reports_unchanged(cli_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           embedder: SentenceTransformerEmbedder) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    first_chapter(folder / "CONF_VER03.18042019.txt")
    (folder / "treasury-policy.md").write_text(POLICY_MD, encoding="utf-8")
    (folder / "scan.tiff").write_bytes(b"II*\x00")

    assert main([str(folder), "--collection", "cli", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "collection: cli" in out
    assert "files: 2 (2 indexed, 0 unchanged, 0 failed, 1 ignored)" in out
    embedded = int(re.search(r"chunks: (\d+) \((\d+) embedded\)", out).group(2))  # type: ignore[union-attr]
    assert embedded > 0 and "FAILED" not in out

    assert main([str(folder), "--collection", "cli", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "files: 2 (0 indexed, 2 unchanged, 0 failed, 1 ignored)" in out
    assert f"chunks: {embedded} (0 embedded)" in out

    components = Components(make_settings(cli_env), embedder=embedder)
    try:
        assert components.store.count("cli") == embedded
        assert len(registry(components, "cli")) == 2
    finally:
        components.close()


def test_cli_prune(cli_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    note = tmp_path / "note.md"
    note.write_text(POLICY_MD, encoding="utf-8")
    keep = shutil.copy(note, tmp_path / "keep.md")
    assert main([str(note), str(keep), "--collection", "cli", "--quiet"]) == 0
    note.unlink()
    assert main([str(keep), "--collection", "cli", "--prune", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "pruned: 1" in out and "1 unchanged" in out


def test_cli_reports_a_locked_index_with_exit_code_3(cli_env: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    note = tmp_path / "note.md"
    note.write_text(POLICY_MD, encoding="utf-8")
    (cli_env / "qdrant-edge").mkdir(parents=True)
    holder = EdgeStore.open(cli_env / "qdrant-edge")  # the default embedded engine's directory
    try:
        assert main([str(note), "--quiet"]) == 3
    finally:
        holder.close()
    err = capsys.readouterr().err
    assert err.startswith("error: the embedded index at") and "open in another process" in err


def test_cli_without_paths_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "paths" in capsys.readouterr().err


@pytest.mark.timeout(20)
def test_table_rows_cannot_backtrack_catastrophically() -> None:
    # A long run of digits followed by a non-figure once made the row regex backtrack exponentially
    # (an MSFT 10-Q hung ingestion for an hour). Matching must stay linear.
    from ingest.tables import label_columns

    header = "Three Months Ended\nJuly 1, 2023 | June 25, 2022\n"
    hostile = "Total " + " ".join(["1234567890"] * 30) + " x"
    assert label_columns(header + hostile) == header + hostile
    assert label_columns(header + "Net sales 1 2 3 " + "9" * 200 + "z").endswith("z")


def test_parsing_ahead_in_a_worker_gives_the_same_index(tmp_path: Path,
                                                         embedder: SentenceTransformerEmbedder) -> None:
    # INGEST_WORKERS=1 parses the next file in another process while this one embeds: same chunks, same ids,
    # same registry as parsing every file here; a file the worker cannot read fails alone.
    corpus = tmp_path / "corpus"
    shutil.copytree(SAMPLES / "adgm", corpus)
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.7\n this is not a PDF body")
    indexes = {}
    for workers in (0, 1):
        settings = make_settings(tmp_path / f"data-{workers}", ingest={"workers": workers})
        components = Components(settings, embedder=embedder)
        try:
            report = Ingestor(components).ingest([corpus], SAMPLE_COLLECTION, progress=False)
            indexes[workers] = (sorted(pid for pid, _ in components.store.scroll_chunks(SAMPLE_COLLECTION)),
                                report.indexed, [Path(p).name for p, _ in report.failed])
        finally:
            components.close()
    assert indexes[0] == indexes[1]
    assert indexes[1][1] == 2 and indexes[1][2] == ["broken.pdf"]
