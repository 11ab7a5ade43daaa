"""The endpoints behind the web UI (besides documents and uploads): pages and their headers, collection facets,
conversation history, evaluation reports, model versions, and what citations carry for the source panel."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SAMPLE_COLLECTION, SampleIndex
from fastapi.testclient import TestClient

from assistant.app import create_app
from assistant.chunks import Chunk, ScoredChunk
from assistant.components import Components
from assistant.conversations import Conversations
from assistant.learned import Registry, is_reembedded, physical_name
from assistant.sources import make_citation, supporting_quote


@pytest.fixture(scope="module")
def client(sample_index: SampleIndex) -> Iterator[TestClient]:
    # Not entered as a context manager: the components are the session's shared ones.
    yield TestClient(create_app(sample_index.settings, sample_index.components, preload=False))


# --- pages ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "script"), [("/", "chat.js"), ("/ingest", "ingest.js"),
                                              ("/evaluation", "evaluation.js")])
def test_pages_are_served_with_their_scripts(client: TestClient, path: str, script: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert f'src="/static/{script}"' in response.text
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    asset = client.get(f"/static/{script}")
    assert asset.status_code == 200 and "javascript" in asset.headers["content-type"]


def test_pages_stay_out_of_the_api_schema(client: TestClient) -> None:
    paths = set(client.get("/openapi.json").json()["paths"])
    assert "/" not in paths and "/ingest" not in paths
    assert {"/v1/conversations", "/v1/collections/{collection}/facets", "/v1/eval/reports"} <= paths


# --- collections and facets -----------------------------------------------------------------------------------


def test_collections_mark_the_default_and_hide_reembedded_copies(client: TestClient) -> None:
    body = client.get("/v1/collections").json()
    assert [c["name"] for c in body if c["default"]] == [SAMPLE_COLLECTION]
    assert not any(is_reembedded(c["name"]) for c in body)
    assert is_reembedded(physical_name("adgm", "embedder-0001")) and not is_reembedded("my--notes")


def test_facets_list_what_the_samples_can_be_filtered_by(client: TestClient) -> None:
    response = client.get(f"/v1/collections/{SAMPLE_COLLECTION}/facets")
    assert response.status_code == 200
    facets = response.json()
    assert facets["documents"] == 4
    assert facets["ticker"] == ["AAPL"]
    assert {"10-Q", "rulebook"} <= set(facets["doc_kind"])
    assert facets["period"] == sorted(facets["period"]) and "July 1, 2023" in facets["period"]
    assert {"FEES", "CONF"} <= set(facets["family"])


def test_facets_of_an_unknown_collection_are_404(client: TestClient) -> None:
    response = client.get("/v1/collections/nope/facets")
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_collection"


# --- conversation history -------------------------------------------------------------------------------------


def test_conversations_list_newest_first_without_empty_ones(client: TestClient, sample_index: SampleIndex) -> None:
    from assistant.answering import Answer
    from assistant.records import AnswerLog

    engine = sample_index.components.engine
    conversations = Conversations(engine)
    log = AnswerLog(engine, "test-embedder")
    older, newer = conversations.start("web-history"), conversations.start("web-history")
    conversations.start("web-history")  # never answered: not listed
    chunk = Chunk(text="Total net sales were $81,797 million.", source="2023 Q3 AAPL.pdf", doc_id="d1", chunk_index=0,
                  page_start=4)
    hit = ScoredChunk(chunk, 0.9, "p-1")
    text = "Net sales were $81,797 million [1]."
    answer = Answer(text, [make_citation(1, hit, text)], [hit], False, "m", "v1", {}, [])
    for cid, question in ((older, "first question"), (newer, "second question")):
        log.record(answer, question=question, collection="web-history", filters=None, latency_ms=1, conversation_id=cid)
    listed = client.get("/v1/conversations", params={"collection": "web-history"}).json()
    assert [c["id"] for c in listed] == [newer, older]
    assert listed[0]["title"] == "second question"
    turn = client.get(f"/v1/conversations/{newer}").json()["turns"][0]
    [citation] = turn["citations"]
    assert citation["doc_id"] == "d1" and citation["pages"] == [4]
    assert citation["quote"] == "Total net sales were $81,797 million."
    assert turn["refused"] is False
    assert client.get("/v1/conversations", params={"limit": 0}).status_code == 422


# --- what a citation carries for the source panel --------------------------------------------------------------


def test_quote_is_the_source_sentence_sharing_the_cited_figures_and_words() -> None:
    source = ("iPhone net sales decreased during the quarter. Total net sales 81,797 81,434. "
              "Services net sales increased due to advertising.")
    answer = "Apple's total net sales were $81,797 million [1]. Services grew on advertising [2]."
    assert supporting_quote(answer, 1, source) == "Total net sales 81,797 81,434."
    assert supporting_quote(answer, 2, source) == "Services net sales increased due to advertising."
    assert supporting_quote(answer, 3, source) is None  # nothing cites [3]
    assert supporting_quote("Nothing in common here [1].", 1, "Zebras graze.") is None


def test_quote_prefers_the_table_row_printing_the_figure() -> None:
    # a 10-Q chunk as the PDF loader gives it: a heading, an intro sentence, table rows, prose broken across lines
    source = ("Products and Services Performance\n"
              "The following table shows net sales by category for the three- and nine-month periods ended July 1, "
              "2023 and June 25, 2022 (dollars in millions):\n"
              "Total net sales: 81,797 (three months ended July 1, 2023) | 293,787 (nine months ended July 1, 2023)\n"
              "iPhone net sales decreased during the third quarter and first\n"
              "nine months of 2023 compared to the same periods in 2022.")
    answer = ("Total net sales for the three- and nine-month periods ended July 1, 2023 were $293,787 million [1]. "
              "iPhone net sales decreased in the first nine months [2].")
    assert (supporting_quote(answer, 1, source) or "").startswith("Total net sales: 81,797")
    assert supporting_quote(answer, 2, source) == ("iPhone net sales decreased during the third quarter and first "
                                                   "nine months of 2023 compared to the same periods in 2022.")


def test_chat_citations_carry_document_and_quote(sample_index: SampleIndex) -> None:
    hits = sample_index.components.retriever_for("hybrid").retrieve(
        "total net sales quarter ended July 1, 2023", SAMPLE_COLLECTION, 3)
    citation = make_citation(1, hits[0], "Total net sales in the quarter [1].")
    assert citation.doc_id == hits[0].chunk.doc_id and citation.doc_id
    assert citation.quote and citation.quote in " ".join(hits[0].chunk.text.split())


# --- evaluation reports ---------------------------------------------------------------------------------------


@pytest.fixture
def reports(tmp_path: Path, sample_index: SampleIndex) -> Iterator[TestClient]:
    root = tmp_path / "results"
    runs = (("old-run", "2026-01-01T00:00:00+0000", 0.5), ("new-run", "2026-02-01T00:00:00+0000", 0.7))
    for name, started, mrr in runs:
        (root / name).mkdir(parents=True)
        (root / name / "summary.json").write_text(json.dumps({
            "mrr": mrr, "recall@5": 0.9, "metrics": ["mrr", "recall@5"], "counts": {"questions": 10},
            "segments": {"dataset=x": {"questions": 10, "mrr": mrr}},
            "settings": {"started_at": started, "collection": "c", "command": "python -m eval run q.jsonl"},
        }))
        (root / name / "report.md").write_text(f"# {name}\n")
    (root / "new-run" / "report.html").write_text("<html><body>report</body></html>")
    (root / "not-a-run").mkdir()
    settings = sample_index.settings.model_copy(update={"eval_results_dir": root})
    yield TestClient(create_app(settings, sample_index.components, preload=False))


def test_reports_are_listed_newest_first(reports: TestClient) -> None:
    listed = reports.get("/v1/eval/reports").json()
    assert [r["name"] for r in listed] == ["new-run", "old-run"]
    assert listed[0]["metrics"] == {"mrr": 0.7, "recall@5": 0.9}
    assert listed[0]["questions"] == 10 and listed[0]["has_html"] and not listed[1]["has_html"]


def test_report_detail_and_html(reports: TestClient) -> None:
    detail = reports.get("/v1/eval/reports/old-run").json()
    assert detail["segments"]["dataset=x"]["mrr"] == 0.5
    assert detail["report_md"] == "# old-run\n"
    html = reports.get("/v1/eval/reports/new-run/report.html")
    assert html.status_code == 200 and "report" in html.text
    assert html.headers["content-security-policy"].startswith("sandbox")
    assert reports.get("/v1/eval/reports/old-run/report.html").status_code == 404


@pytest.mark.parametrize("name", ["not-a-run", "..", "%2e%2e%2fsecret", "nope"])
def test_unknown_or_escaping_report_names_are_404(reports: TestClient, name: str) -> None:
    response = reports.get(f"/v1/eval/reports/{name}")
    assert response.status_code == 404


def test_the_repository_reports_are_readable(client: TestClient) -> None:
    listed = client.get("/v1/eval/reports").json()
    assert listed and all(r["metrics"] for r in listed)  # eval/results is committed


# --- model versions -------------------------------------------------------------------------------------------


def test_models_name_the_shipped_ones(client: TestClient, sample_index: SampleIndex) -> None:
    body = client.get("/v1/admin/models").json()
    assert body["shipped"]["embedder"] == sample_index.settings.embedding.model
    assert body["embedder"] is None and body["versions"] == []


def test_models_list_each_version_with_metrics_baseline_and_live(fresh_components: Components) -> None:
    registry = Registry(fresh_components.settings.learned_dir)
    old, new = registry.new_version("reranker"), registry.new_version("reranker")
    serving = "embedder=shipped reranker=none"
    for version, mrr, better in ((old, 0.70, False), (new, 0.75, True)):
        evaluation = {"serving": serving, "better": better, "reason": "r",
                      "metrics": {serving: {"heldout": {"mrr": 0.72}}, version: {"heldout": {"mrr": mrr}}}}
        registry.write_manifest(version, {"version": version, "kind": "reranker", "created": "2026-11-26T09:00Z",
                                          "base": "shipped", "evaluation": evaluation})
    registry.promote(new)
    client = TestClient(create_app(fresh_components.settings, fresh_components, preload=False))
    body = client.get("/v1/admin/models").json()
    assert body["reranker"] == new
    by_version = {v["version"]: v for v in body["versions"]}
    assert by_version[new]["live"] and not by_version[old]["live"]
    assert by_version[new]["metrics"] == {"heldout": {"mrr": 0.75}}
    assert by_version[new]["baseline"] == {"heldout": {"mrr": 0.72}}
    assert by_version[old]["better"] is False
