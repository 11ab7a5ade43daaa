"""Files crafted to hurt the ingest, in one run with good files: each hostile one is indexed or fails alone with a
one-line reason, within the limits (INGEST_PARSE_TIMEOUT_S, INGEST_PARSE_MEMORY_MB, INGEST_MAX_MB,
INGEST_MAX_PDF_PAGES), and the good files of the same run are indexed. Parsing runs in a child process per file
whether the files are parsed ahead by a worker (INGEST_WORKERS=1) or by the ingesting process (0).

Real components: the ingest pipeline, PDFium and pypdf, embedded Qdrant Edge, SQLite, the MiniLM embedder; the
hostile PDFs are written byte by byte (tests/crafted.py), the good ones are Apple's income statement page and a
chapter of the ADGM confidentiality rulebook.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import crafted
import pytest
from conftest import SAMPLES, make_settings
from pypdf import PdfReader, PdfWriter

from assistant.components import Components
from assistant.embedding import SentenceTransformerEmbedder
from assistant.settings import IngestSettings
from ingest.loading import Limits, LoadError, load
from ingest.pipeline import Ingestor, doc_id_for

CONF = SAMPLES / "adgm" / "CONF_VER03.18042019.txt"
AAPL_Q3 = SAMPLES / "sec-10q" / "2023 Q3 AAPL.pdf"
TIMEOUT_S, MEMORY_MB, MAX_MB = 4.0, 512, 1.0
INDEXED = None  # the expected reason of a file that is read

Build = Callable[[Path], Path]


def _bytes(name: str, data: Callable[[], bytes]) -> Build:
    def build(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data())
        return path

    return build


def _income_statement(name: str, password: str | None = None) -> Build:
    def build(folder: Path) -> Path:
        writer = PdfWriter()
        writer.add_page(PdfReader(AAPL_Q3).pages[3])
        if password:
            writer.encrypt(password)
        path = folder / name
        with path.open("wb") as fh:
            writer.write(fh)
        return path

    return build


def _rules(folder: Path) -> Path:
    lines = CONF.read_text(encoding="utf-8").splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("2.\t"))
    path = folder / "CONF_VER03.18042019.txt"
    path.write_text("\n".join(lines[:end]) + "\n", encoding="utf-8")
    return path


def _truncated(folder: Path) -> Path:
    path = folder / "truncated.pdf"
    path.write_bytes(AAPL_Q3.read_bytes()[:4096])
    return path


# name → (build it in a folder, the reason it fails (a regex), or INDEXED)
FILES: dict[str, tuple[Build, str | None]] = {
    "good-pdf": (_income_statement("aapl-income-statement.pdf"), INDEXED),
    "good-text": (_rules, INDEXED),
    "encrypted": (_income_statement("encrypted.pdf", password="secret"), r"^encrypted PDF: a password is required$"),
    "truncated": (_truncated, r"^(pypdf cannot read this PDF|corrupt or unreadable PDF): .+"),
    "thousands-of-pages": (_bytes("pages.pdf", lambda: crafted.many_pages(5000)),
                           r"^PDF has 5000 pages, more than the limit of 2000 \(INGEST_MAX_PDF_PAGES\)$"),
    "nested-arrays": (_bytes("nested-arrays.pdf", lambda: crafted.nested_arrays(50_000)), INDEXED),
    "nested-dicts": (_bytes("nested-dicts.pdf", lambda: crafted.nested_dicts(50_000)), r"^no extractable text"),
    "looped-page-tree": (_bytes("looped.pdf", crafted.looped_page_tree), INDEXED),  # the page it can reach
    "slow-content": (_bytes("slow.pdf", lambda: crafted.operator_flood(1500, 1_000_000)),
                     rf"^parsing took longer than {TIMEOUT_S:g} s \(INGEST_PARSE_TIMEOUT_S\)"),
    "decompression-bomb": (_bytes("bomb.pdf", lambda: crafted.decompression_bomb(400)),
                           rf"^the parser crashed on this file \(SIG[A-Z]+\); most likely parsing it needs more than "
                           rf"{MEMORY_MB} MB of memory \(INGEST_PARSE_MEMORY_MB\)"),
    "too-large": (_bytes("huge.pdf", lambda: crafted.one_page(crafted.TEXT) + b"%" * 1_100_000),
                  r"^the file is 1\.1 MB, more than the 1 MB limit \(INGEST_MAX_MB\)$"),
    "deep-html": (_bytes("deep.html", lambda: b"<div>" * 20_000 + b"text" + b"</div>" * 20_000),
                  r"^HTML nested more than 512 elements deep"),
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hostile")
    return {name: build(folder) for name, (build, _) in FILES.items()}


@pytest.fixture(params=[1, 0], ids=["parsed-ahead", "parsed-inline"])
def components(request: pytest.FixtureRequest, tmp_path: Path,
               embedder: SentenceTransformerEmbedder) -> Iterator[Components]:
    ingest = IngestSettings(workers=request.param, parse_timeout_s=TIMEOUT_S, parse_memory_mb=MEMORY_MB,
                            max_mb=MAX_MB, _env_file=None)  # type: ignore[call-arg]
    components = Components(make_settings(tmp_path / "data", ingest=ingest), embedder=embedder)
    yield components
    components.close()


def test_each_hostile_file_fails_alone_and_the_good_ones_are_indexed(
    hostile: dict[str, Path], components: Components
) -> None:
    started = time.monotonic()
    report = Ingestor(components).ingest(list(hostile.values()), "hostile", progress=False)
    elapsed = time.monotonic() - started

    failed = dict(report.failed)
    for name, (_, reason) in FILES.items():
        path = str(hostile[name])
        if reason is INDEXED:
            assert path not in failed, (name, failed.get(path))
            assert components.store.count("hostile", doc_id_for("hostile", hostile[name])) > 0, name
        else:
            assert path in failed, f"{name} was not refused"
            assert re.search(reason, failed[path]) and "\n" not in failed[path], (name, failed[path])
    assert report.indexed == sum(reason is INDEXED for _, reason in FILES.values())
    # every limit held: the slow file cost its timeout once, nothing hung
    assert elapsed < 120, f"the run took {elapsed:.0f} s"


def test_a_file_that_parses_too_slowly_is_stopped_on_time(hostile: dict[str, Path]) -> None:
    started = time.monotonic()
    with pytest.raises(LoadError, match="longer than 1 s"):
        load(hostile["slow-content"], limits=Limits(timeout_s=1.0))
    assert time.monotonic() - started < 10  # killed at the limit, not left to run its minutes


def test_the_pypdf_parser_is_held_to_the_same_limits(hostile: dict[str, Path]) -> None:
    with pytest.raises(LoadError, match="longer than 1 s"):
        load(hostile["slow-content"], "pypdf", Limits(timeout_s=1.0))
    doc = load(hostile["good-pdf"], "pypdf", Limits(timeout_s=60, memory_mb=MEMORY_MB))
    assert "81,797" in doc.pages[0].text


def test_limits_off_parse_in_process(hostile: dict[str, Path]) -> None:
    """INGEST_PARSE_TIMEOUT_S=0 and INGEST_PARSE_MEMORY_MB=0: the file is read in the calling process."""
    limits = Limits.of(IngestSettings(parse_timeout_s=0, parse_memory_mb=0, _env_file=None))  # type: ignore[call-arg]
    assert not limits.isolated
    assert "81,797" in load(hostile["good-pdf"], limits=limits).pages[0].text
