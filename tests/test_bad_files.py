"""Files that cannot be ingested: each is reported with a one-line reason, the run goes on, the CLI exits 1,
and nothing already indexed is lost. Real PDFs (a sample 10-Q, the MSFT 10-Q that trips pypdf's limits),
real embedded Qdrant and SQLite, the real embedder.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import SAMPLES, make_settings, shared_path
from pypdf import PdfReader, PdfWriter

from assistant.components import Components
from assistant.db import documents
from assistant.embedding import SentenceTransformerEmbedder
from ingest.cli import main
from ingest.pipeline import Ingestor, doc_id_for

COLLECTION = "guarded"
AAPL_Q3 = SAMPLES / "sec-10q" / "2023 Q3 AAPL.pdf"
CONF = SAMPLES / "adgm" / "CONF_VER03.18042019.txt"
GOOD_QUESTION = "Which standard setters, such as the Islamic Financial Services Board, does the Regulator follow?"


def rulebook_chapter(dest: Path) -> Path:
    """The first chapter of the ADGM confidentiality rulebook: a small, real, good document."""
    lines = CONF.read_text(encoding="utf-8").splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("2.\t"))
    dest.write_text("\n".join(lines[:end]) + "\n", encoding="utf-8")
    return dest


def income_statement_pdf(dest: Path, *, password: str | None = None) -> Path:
    """Page 4 (the income statement) of Apple's Q3 2023 10-Q as a one-page PDF."""
    writer = PdfWriter()
    writer.add_page(PdfReader(AAPL_Q3).pages[3])
    if password:
        writer.encrypt(password)
    with dest.open("wb") as fh:
        writer.write(fh)
    return dest


def random_bytes(n: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(n)


# --- the bad files: name → (build it under a folder, what its one-line reason must say) -----------------

BadFile = Callable[[Path], Path]


def _write(name: str, data: bytes) -> BadFile:
    def build(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return build


def _encrypted(folder: Path) -> Path:
    return income_statement_pdf(folder / "encrypted.pdf", password="secret")


def _truncated(folder: Path) -> Path:
    path = folder / "truncated.pdf"
    path.write_bytes(AAPL_Q3.read_bytes()[:2048])
    return path


def _missing(folder: Path) -> Path:
    return folder / "never-written.pdf"


def _msft(folder: Path) -> Path:
    return shared_path("corpora", "sec-10q", "documents", "2023 Q1 MSFT.pdf")


BAD_FILES: dict[str, tuple[BadFile, str]] = {
    "corrupt-pdf": (_write("corrupt.pdf", random_bytes(4096)), r"^pypdf cannot read this PDF: .+ \(\w+Error\)$"),
    "truncated-pdf": (_truncated, r"^(pypdf cannot read this PDF|corrupt or unreadable PDF): .+ \(\w+\)$"),
    "encrypted-pdf": (_encrypted, r"^encrypted PDF: a password is required$"),
    "empty-file": (_write("empty.txt", b""), r"^empty file$"),
    "blank-text": (_write("blank.md", b" \n\t\n"), r"^no extractable text$"),
    "unsupported-type": (_write("board-minutes.docx", b"PK\x03\x04" + random_bytes(512)),
                         r"^unsupported file type '\.docx'; supported: .*\.pdf"),
    "binary-text": (_write("dump.txt", b"\x7fELF\x02\x01\x01\x00" + random_bytes(2048)),
                    r"^binary content in a text file$"),
    "missing-path": (_missing, r"^no such file or folder$"),
    "pypdf-limit": (_msft, r"^pypdf cannot read this PDF: .*\(LimitReachedError\)$"),
}


# --- an index that already holds a good document -----------------------------------------------------------


@dataclass
class GoodIndex:
    data_dir: Path
    good: Path
    doc_id: str
    chunks: int
    file_hash: str


@pytest.fixture(scope="module")
def good_index(tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder) -> GoodIndex:
    root = tmp_path_factory.mktemp("guarded")
    good = rulebook_chapter(root / "CONF_VER03.18042019.txt")
    components = Components(make_settings(root / "data"), embedder=embedder)
    try:
        report = Ingestor(components).ingest([good], COLLECTION, progress=False)
        assert (report.indexed, report.failed) == (1, [])
        doc_id = doc_id_for(COLLECTION, good)
        return GoodIndex(root / "data", good, doc_id, components.store.count(COLLECTION, doc_id),
                         _registry(components)[doc_id]["file_hash"])
    finally:
        components.close()


def _registry(components: Components) -> dict[str, dict[str, str]]:
    with components.engine.connect() as conn:
        rows = conn.execute(sa.select(documents).where(documents.c.collection == COLLECTION)).mappings().all()
    return {row["id"]: dict(row) for row in rows}


@pytest.fixture
def cli_data(good_index: GoodIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> GoodIndex:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for var in ("QDRANT_URL", "QDRANT_PATH", "DATABASE_URL", "COLLECTION", "EMBEDDING_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATA_DIR", str(good_index.data_dir))
    return good_index


@pytest.fixture
def reopened(good_index: GoodIndex, embedder: SentenceTransformerEmbedder) -> Iterator[Callable[[], Components]]:
    """Open the guarded index again (after the CLI closed it) to check what it holds."""
    opened: list[Components] = []

    def open_() -> Components:
        opened.append(Components(make_settings(good_index.data_dir), embedder=embedder))
        return opened[-1]

    yield open_
    for components in opened:
        components.close()


def assert_intact(components: Components, index: GoodIndex) -> None:
    registry = _registry(components)
    assert set(registry) == {index.doc_id}
    assert registry[index.doc_id]["file_hash"] == index.file_hash
    assert components.store.count(COLLECTION) == components.store.count(COLLECTION, index.doc_id) == index.chunks
    hits = components.retriever.retrieve(GOOD_QUESTION, COLLECTION, 3)
    assert all(h.chunk.doc_id == index.doc_id for h in hits)
    assert "1.2.1" in [h.chunk.section for h in hits]


# --- each bad case through the CLI --------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_reported_and_the_run_goes_on(
    case: str, cli_data: GoodIndex, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    reopened: Callable[[], Components], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pypdf's own array limit: the MSFT 10-Q exceeds it (ingest raises the limit, see the test below)
    monkeypatch.setattr("ingest.loading.PDF_MAX_ARRAY_ELEMENTS", 100_000)
    monkeypatch.setenv("INGEST_WORKERS", "0")  # the patch holds in this process only: parse here, not ahead,
    monkeypatch.setenv("INGEST_PARSE_TIMEOUT_S", "0")  # and not in a child process either
    monkeypatch.setenv("INGEST_PARSE_MEMORY_MB", "0")
    if case == "pypdf-limit":  # PDFium (the default parser) has no such limit and reads the file
        monkeypatch.setenv("INGEST_PDF_PARSER", "pypdf")
    build, reason_pattern = BAD_FILES[case]
    bad = build(tmp_path)
    code = main([str(bad), str(cli_data.good), "--collection", COLLECTION, "--quiet"])
    out = capsys.readouterr().out

    assert code == 1, out
    failed = [line for line in out.splitlines() if line.startswith("FAILED ")]
    assert len(failed) == 1, out
    prefix = f"FAILED {bad}: "
    assert failed[0].startswith(prefix), failed
    assert re.search(reason_pattern, failed[0].removeprefix(prefix)), failed[0]
    # the good file after the bad one was still looked at (and found unchanged)
    assert "files: 2 (0 indexed, 1 unchanged, 1 failed, 0 ignored)" in out
    assert_intact(reopened(), cli_data)


@pytest.mark.slow
def test_pdfium_and_pypdf_read_a_10q_alike() -> None:
    """INGEST_PDF_PARSER=pdfium (default) vs pypdf on Apple's 10-Q: the same pages and, page by page, nearly the
    same text (after the same table-header repairs), figures included."""
    import difflib

    from ingest.loading import load

    pdfium, pypdf = load(AAPL_Q3, "pdfium"), load(AAPL_Q3, "pypdf")
    assert [p.number for p in pdfium.pages] == [p.number for p in pypdf.pages]
    assert (pdfium.doc_type, pdfium.extra) == (pypdf.doc_type, pypdf.extra)  # company, form, period...
    for a, b in zip(pdfium.pages, pypdf.pages, strict=True):
        words_a, words_b = a.text.split(), b.text.split()
        assert difflib.SequenceMatcher(None, words_a, words_b, autojunk=False).ratio() > 0.9, a.number
        assert "\r" not in a.text and "\x00" not in a.text
    income = pdfium.pages[3].text
    assert "Total net sales" in income and "81,797" in income


@pytest.mark.slow
def test_real_10q_with_arrays_over_pypdfs_default_limit_is_read() -> None:
    """Microsoft's 10-Qs hold arrays of more than pypdf's default 100,000 elements; ingest reads them."""
    from ingest.loading import load

    doc = load(_msft(Path()))
    assert len(doc.pages) == 72
    assert "MICROSOFT CORPORATION" in doc.pages[0].text.upper()
    assert sum(len(p.text) for p in doc.pages) > 200_000


def test_all_bad_files_in_one_run_do_not_stop_a_new_good_one(
    tmp_path: Path, fresh_components: Components, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = [build(tmp_path) for name, (build, _) in BAD_FILES.items() if name != "pypdf-limit"]
    new = income_statement_pdf(tmp_path / "aapl-income-statement.pdf")
    report = Ingestor(fresh_components).ingest([*bad, new], "mixed", progress=False)

    assert sorted(path for path, _ in report.failed) == sorted(str(p) for p in bad)
    assert all(reason and "\n" not in reason for _, reason in report.failed)
    assert (report.indexed, report.files) == (1, len(bad) + 1)
    assert fresh_components.store.count("mixed") == fresh_components.store.count(
        "mixed", doc_id_for("mixed", new)) == report.chunks > 0
    summary = report.summary().splitlines()
    assert summary[0] == f"files: {len(bad) + 1} (1 indexed, 0 unchanged, {len(bad)} failed, 0 ignored)"
    assert len([line for line in summary if line.startswith("FAILED ")]) == len(bad)


# --- nothing already indexed is lost ------------------------------------------------------------------------


def test_indexed_file_that_turns_corrupt_keeps_its_chunks(tmp_path: Path, fresh_components: Components) -> None:
    pdf = income_statement_pdf(tmp_path / "aapl-income-statement.pdf")
    ingestor = Ingestor(fresh_components)
    first = ingestor.ingest([pdf], "filings", progress=False)
    assert (first.indexed, first.failed) == (1, [])
    doc_id = doc_id_for("filings", pdf)
    store = fresh_components.store
    before = store.count("filings", doc_id)

    pdf.write_bytes(random_bytes(len(pdf.read_bytes()) // 4))
    report = ingestor.ingest([pdf], "filings", progress=False)

    assert [path for path, _ in report.failed] == [str(pdf)]
    assert report.failed[0][1].startswith("pypdf cannot read this PDF")
    assert (report.indexed, report.embedded) == (0, 0)
    assert store.count("filings", doc_id) == store.count("filings") == before
    with fresh_components.engine.connect() as conn:
        row = conn.execute(sa.select(documents).where(documents.c.id == doc_id)).mappings().one()
    assert row["chunks"] == before
    hits = fresh_components.retriever.retrieve("Apple total net sales three months ended July 1, 2023",
                                               "filings", 3)
    assert all(h.chunk.file_hash == row["file_hash"] for h in hits)
    assert any("81,797 (three months ended July 1, 2023)" in h.chunk.text for h in hits)


def test_unsupported_file_inside_a_folder_is_ignored_not_failed(
    cli_data: GoodIndex, tmp_path: Path, capsys: pytest.CaptureFixture[str], reopened: Callable[[], Components]
) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "board-minutes.docx").write_bytes(b"PK\x03\x04" + random_bytes(256))
    (folder / ".DS_Store").write_bytes(random_bytes(64))  # hidden: skipped without a word
    code = main([str(folder), str(cli_data.good), "--collection", COLLECTION, "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "files: 1 (0 indexed, 1 unchanged, 0 failed, 1 ignored)" in out
    assert "FAILED" not in out
    assert_intact(reopened(), cli_data)


def test_a_collection_name_longer_than_the_registry_holds_is_refused(cli_data: GoodIndex,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code = main([str(cli_data.good), "--collection", "c" * 129, "--quiet"])
    assert code == 3
    assert "collection names have at most 128" in capsys.readouterr().err
