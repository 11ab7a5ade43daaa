"""Conversations: their storage (migration, start/history/get, the answer log's conversation fields, the GET
route) and follow-up questions rewritten into standalone ones, by rules and by an LLM.

Real SQLite throughout. Rewriting is checked against what retrieval reads from the rewritten question
(`query.infer_filters` over the sample collection's facets), and a conversation is continued through the real
ChatService over the sample index, with the real `ollama` client talking to FakeOllama for the answers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from conftest import SAMPLE_COLLECTION, SampleIndex, make_settings
from fake_ollama import DEFAULT_MODEL, FakeOllama
from fastapi.testclient import TestClient

from assistant.answering import Answer
from assistant.app import create_app
from assistant.chat import ChatService
from assistant.components import Components
from assistant.conversations import Conversations, Turn, title_of
from assistant.conversations_api import router
from assistant.db import MIGRATIONS, _sqlite_pragmas, answers, connect, feedback
from assistant.errors import NotFound, UnknownConversation
from assistant.llm import LlamaCppLLM, OllamaLLM
from assistant.query import Facets, Inference, infer_filters
from assistant.records import AnswerLog
from assistant.rewriting import Period, Rewriter, shift

APPLE_Q3 = "What was Apple's net sales in the quarter ended July 1, 2023?"
FEES_3C = "What is the annual fee for a Category 3C firm under the FEES rulebook?"
HEAD = "0005"


# --- storage ----------------------------------------------------------------------------------------------


def sqlite_engine(path: Path) -> sa.Engine:
    """An engine like `connect` makes, without migrating."""
    engine = sa.create_engine(f"sqlite:///{path}")
    sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def upgrade_to(engine: sa.Engine, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def answer(text: str = "Net sales were $81,797 million [1].", **extra: Any) -> Answer:
    return Answer(answer=text, citations=[], retrieved=[], refused=False, model="test-model",
                  prompt_version="answer_v1@test", **extra)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = connect(f"sqlite:///{tmp_path / 'finrag.db'}")
    yield engine
    engine.dispose()


def test_migration_builds_the_schema_on_a_fresh_database(engine: sa.Engine) -> None:
    inspector = sa.inspect(engine)
    assert {"documents", "answers", "feedback", "conversations"} <= set(inspector.get_table_names())
    assert {c["name"] for c in inspector.get_columns("conversations")} == {
        "id", "created_at", "updated_at", "collection", "title", "tenant"}
    columns = {c["name"]: c for c in inspector.get_columns("answers")}
    for name in ("conversation_id", "standalone_question", "inferred_filters"):
        assert columns[name]["nullable"], name
    [fk] = inspector.get_foreign_keys("answers")
    assert (fk["referred_table"], fk["constrained_columns"], fk["referred_columns"]) == (
        "conversations", ["conversation_id"], ["id"])
    assert ["conversation_id"] in [i["column_names"] for i in inspector.get_indexes("answers")]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == HEAD


def test_migration_upgrades_a_database_at_the_previous_head(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite_engine(path)
    upgrade_to(old, "0002")
    with old.begin() as conn:  # an answer with feedback: the answers table is copied under the feedback's reference
        conn.execute(sa.text(
            "INSERT INTO answers (id, created_at, collection, question, answer, refused, model, prompt_version, "
            "embedder, retrieved, citations, latency_ms) VALUES ('a1', '2024-05-01 10:00:00', 'samples', 'Q?', "
            "'A.', 0, 'm', 'p', 'e', '[]', '[]', 12)"))
        conn.execute(sa.text("INSERT INTO feedback (answer_id, created_at, rating) VALUES ('a1', '2024-05-01', 'up')"))
    old.dispose()

    engine = connect(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == HEAD
        row = conn.execute(sa.select(answers).where(answers.c.id == "a1")).mappings().one()
        assert (row["question"], row["latency_ms"]) == ("Q?", 12)
        assert (row["conversation_id"], row["standalone_question"], row["inferred_filters"]) == (None, None, None)
        assert conn.execute(sa.select(feedback.c.answer_id, feedback.c.rating)).all() == [("a1", "up")]
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1  # on again after migrating
        assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:  # the new reference is enforced
        conn.execute(sa.update(answers).where(answers.c.id == "a1").values(conversation_id="no-such-conversation"))
    engine.dispose()


def test_start_history_and_get(engine: sa.Engine) -> None:
    store = Conversations(engine)
    log_ = AnswerLog(engine, "test-embedder")
    conversation_id = store.start("samples")
    assert store.history(conversation_id) == []
    created = store.get(conversation_id)
    assert (created.collection, created.title, created.turns) == ("samples", None, [])

    first = log_.record(answer(inferred_filters={"ticker": "AAPL", "period": "July 1, 2023"}), question=APPLE_Q3,
                        collection="samples", filters=None, latency_ms=5, conversation_id=conversation_id,
                        standalone_question=APPLE_Q3)
    follow_up = "and in the previous quarter?"
    standalone = "What was Apple's net sales in the quarter ended April 1, 2023?"
    second = log_.record(answer("Net sales were $94,836 million [1]."), question=follow_up, collection="samples",
                         filters=None, latency_ms=7, conversation_id=conversation_id, standalone_question=standalone)

    turns = store.history(conversation_id)
    assert [(t.answer_id, t.question, t.standalone) for t in turns] == [
        (first, APPLE_Q3, APPLE_Q3), (second, follow_up, standalone)]
    assert turns[0].inferred_filters == {"ticker": "AAPL", "period": "July 1, 2023"}
    assert turns[1].answer == "Net sales were $94,836 million [1]." and turns[1].inferred_filters is None
    assert [t.answer_id for t in store.history(conversation_id, limit=1)] == [second]  # the latest turns

    got = store.get(conversation_id)
    assert got.title == APPLE_Q3  # the first question
    assert got.updated_at > created.updated_at
    assert [t.answer_id for t in got.turns] == [first, second]
    assert store.get(store.start("samples")).turns == []  # turns belong to their own conversation


def test_answer_log_records_the_conversation_fields(engine: sa.Engine) -> None:
    conversation_id = Conversations(engine).start("samples")
    answer_id = AnswerLog(engine, "test-embedder").record(
        answer(inferred_filters={"ticker": "AAPL"}), question="and Intel?", collection="samples", filters=None,
        latency_ms=3, conversation_id=conversation_id, standalone_question="What was Intel's net sales?")
    row = AnswerLog(engine, "test-embedder").get(answer_id)
    assert row["conversation_id"] == conversation_id
    assert row["standalone_question"] == "What was Intel's net sales?"
    assert row["inferred_filters"] == {"ticker": "AAPL"}
    assert row["question"] == "and Intel?"
    # without a conversation, as before
    plain = AnswerLog(engine, "test-embedder").record(answer(), question="Q?", collection="samples", filters=None,
                                                      latency_ms=1)
    assert AnswerLog(engine, "test-embedder").get(plain)["conversation_id"] is None


def test_unknown_conversation_is_404(engine: sa.Engine) -> None:
    store = Conversations(engine)
    for call in (store.history, store.get):
        with pytest.raises(UnknownConversation) as raised:
            call("no-such-id")
        assert isinstance(raised.value, NotFound) and raised.value.status_code == 404
        assert raised.value.code == "unknown_conversation"
        assert "'no-such-id'" in raised.value.message and "conversation_id" in raised.value.message
    with pytest.raises(UnknownConversation):
        AnswerLog(engine, "e").record(answer(), question="Q?", collection="samples", filters=None, latency_ms=1,
                                      conversation_id="no-such-id")
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(answers)).scalar_one() == 0  # nothing written


def test_title_is_the_first_question_cut_at_a_word() -> None:
    assert title_of("  What was Apple's   net sales? ") == "What was Apple's net sales?"
    long = "What " + "very " * 30 + "long question?"
    title = title_of(long, chars=40)
    assert len(title) <= 40 and title.endswith("…") and title.startswith("What very")
    assert not title.removesuffix("…").endswith(" ")


def test_get_conversation_route(tmp_path: Path, engine: sa.Engine) -> None:
    settings = make_settings(tmp_path / "data")
    app = create_app(settings, Components(settings, engine=engine), preload=False)
    app.include_router(router)
    client = TestClient(app)
    conversation_id = Conversations(engine).start("samples")
    answer_id = AnswerLog(engine, "e").record(answer(), question=APPLE_Q3, collection="samples", filters=None,
                                              latency_ms=1, conversation_id=conversation_id,
                                              standalone_question=APPLE_Q3)

    response = client.get(f"/v1/conversations/{conversation_id}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["collection"], body["title"]) == (conversation_id, "samples", APPLE_Q3)
    [turn] = body["turns"]
    assert turn["answer_id"] == answer_id
    assert (turn["question"], turn["standalone_question"]) == (APPLE_Q3, APPLE_Q3)
    assert turn["answer"].startswith("Net sales were") and turn["created_at"]

    missing = client.get("/v1/conversations/nope")
    assert missing.status_code == 404
    assert missing.json()["error"] == "unknown_conversation"


# --- rewriting by rules -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def facets(sample_index: SampleIndex) -> Facets:
    return sample_index.components.facets(SAMPLE_COLLECTION)


def rewrite(question: str, *earlier: str, facets: Facets | None = None) -> tuple[str, str]:
    rewriter = Rewriter(facets=(lambda _c: facets) if facets is not None else None)
    result = rewriter.rewrite(question, [Turn(q, "An answer [1].") for q in earlier], collection=SAMPLE_COLLECTION)
    return result.question, result.method


@pytest.mark.parametrize("question", [
    "What was Apple's net sales in the quarter ended April 1, 2023?",
    "What were Microsoft's total revenues in Q3 2023?",
    "In which currency must fees payable to the Regulator be paid under the FEES rulebook?",
    "What must a firm include in its annual report?",  # "its" refers to the firm it names
])
def test_a_complete_question_is_unchanged(question: str) -> None:
    assert rewrite(question, APPLE_Q3) == (question, "unchanged")


def test_without_history_or_when_off_nothing_is_rewritten() -> None:
    assert Rewriter().rewrite("and Intel?", []).method == "unchanged"
    assert Rewriter("off").rewrite("and Intel?", [Turn(APPLE_Q3, "…")]) == Rewriter().rewrite("and Intel?", [])


def test_previous_quarter_of_a_period_end(facets: Facets) -> None:
    expected = "What was Apple's net sales in the quarter ended April 1, 2023?"
    assert rewrite("and in the previous quarter?", APPLE_Q3) == (expected, "rules")  # 13 weeks back
    assert rewrite("And the prior quarter?", APPLE_Q3, facets=facets) == (expected, "rules")  # the Q2 filing
    # retrieval reads the company and the quarter's period end from it
    assert infer_filters(expected, facets) == {"ticker": "AAPL", "period": "April 1, 2023"}


def test_a_second_follow_up_builds_on_the_rewritten_one() -> None:
    second = "What was Apple's net sales in the quarter ended April 1, 2023?"
    rewriter = Rewriter()
    turns = [Turn(APPLE_Q3, "…"), Turn("and the previous quarter?", "…", standalone=second)]
    assert rewriter.rewrite("and the quarter before?", turns).question == (
        "What was Apple's net sales in the quarter ended December 31, 2022?")


def test_what_about_another_company() -> None:
    question, method = rewrite("what about Intel?", APPLE_Q3)
    assert (question, method) == ("What was Intel's net sales in the quarter ended July 1, 2023?", "rules")
    assert rewrite("Intel?", APPLE_Q3)[0] == question


def test_comparison_with_another_year_names_what_is_compared(facets: Facets) -> None:
    question, method = rewrite("how does that compare to 2022?", APPLE_Q3)
    assert method == "rules"
    assert question == "How does Apple's net sales in the quarter ended July 1, 2023 compare to 2022?"
    assert (infer_filters(question, facets) or {}).get("ticker") == "AAPL"


def test_pronouns_and_missing_entities_are_carried_over() -> None:
    assert rewrite("What was its gross margin?", APPLE_Q3)[0] == (
        "What was Apple's gross margin in the quarter ended July 1, 2023?")
    assert rewrite("What was the gross margin?", APPLE_Q3)[0] == (
        "What was the gross margin for Apple in the quarter ended July 1, 2023?")
    assert rewrite("How did it change?", APPLE_Q3)[0] == (
        "How did Apple's net sales in the quarter ended July 1, 2023 change?")


@pytest.mark.parametrize(("follow_up", "expected"), [
    ("And Microsoft's?", "What was Microsoft's net sales in the quarter ended July 1, 2023?"),
    ("how about AAPL in fiscal 2022", "What was AAPL's net sales in fiscal 2022?"),
    ("Thanks! What was the operating income?",
     "What was the operating income for Apple in the quarter ended July 1, 2023?"),
    ("and what about its gross margin in Q2 2023?", "What was Apple's gross margin in Q2 2023?"),
    ("How does Apple account for revenue when it ships products?",  # "it" is the Apple it names
     "How does Apple account for revenue when it ships products?"),
])
def test_more_follow_ups(follow_up: str, expected: str) -> None:
    assert rewrite(follow_up, APPLE_Q3)[0] == expected


@pytest.mark.parametrize(("earlier", "follow_up", "expected"), [
    ("What was Apple's revenue in Q3 2023?", "and the previous quarter?", "What was Apple's revenue in Q2 2023?"),
    ("What was Apple's revenue in Q1 fiscal 2023?", "and the previous quarter?",
     "What was Apple's revenue in Q4 fiscal 2022?"),
    ("What was Apple's revenue in fiscal 2023?", "and the previous year?", "What was Apple's revenue in fiscal 2022?"),
    ("What was Apple's revenue in 2023?", "and a year earlier?", "What was Apple's revenue in 2022?"),
    ("What was Apple's revenue?", "and last year?", "What was Apple's revenue last year?"),  # no period to move
])
def test_relative_periods(earlier: str, follow_up: str, expected: str) -> None:
    assert rewrite(follow_up, earlier)[0] == expected


def test_same_quarter_last_year_uses_the_fiscal_calendar_when_the_filings_tell_it(facets: Facets) -> None:
    question = rewrite("and the same quarter last year?", APPLE_Q3, facets=facets)[0]
    assert question == "What was Apple's net sales in Q3 fiscal 2022?"  # no filing of it: its fiscal label
    assert infer_filters(question, facets) == {"ticker": "AAPL"}  # a quarter the collection does not hold


@pytest.mark.parametrize(("day", "unit", "steps", "moved"), [
    (date(2023, 7, 1), "quarter", -1, date(2023, 4, 1)),  # 52/53-week calendar: 13 weeks
    (date(2023, 9, 30), "quarter", -1, date(2023, 6, 30)),  # a month end: three months
    (date(2023, 3, 31), "quarter", -1, date(2022, 12, 31)),
    (date(2024, 2, 29), "year", -1, date(2023, 2, 28)),
    (date(2023, 12, 31), "quarter", 1, date(2024, 3, 31)),
])
def test_shifting_a_period_end(day: date, unit: Any, steps: int, moved: date) -> None:
    assert shift(Period(day.year, day=day), unit, steps) == Period(moved.year, day=moved)


def test_regulation_follow_up_keeps_the_rulebook(facets: Facets) -> None:
    question, method = rewrite("and the fee for a Category 3A firm?", FEES_3C)
    assert (question, method) == ("What is the fee for a Category 3A firm under the FEES rulebook?", "rules")
    assert infer_filters(question, facets, Inference(families=True)) == {"family": "FEES"}
    assert rewrite("what about Category 4?", FEES_3C)[0] == (
        "What is the annual fee for a Category 4 firm under the FEES rulebook?")
    assert rewrite("Is it payable in advance?", FEES_3C)[0] == (
        "Is the annual fee for a Category 3C firm under the FEES rulebook payable in advance?")
    assert rewrite("And how must the fees be paid?", "What does Rule 1.2.5 of the Fees Rules require?")[0] == (
        "How must the fees be paid under Rule 1.2.5 of the Fees Rules?")


def test_rules_take_well_under_a_millisecond_per_question() -> None:
    import time

    rewriter, turns = Rewriter(), [Turn(APPLE_Q3, "…")]
    started = time.perf_counter()
    for _ in range(100):
        rewriter.rewrite("and in the previous quarter?", turns)
    assert (time.perf_counter() - started) / 100 < 0.005


# --- rewriting by an LLM ----------------------------------------------------------------------------------

R_AND_D = "How much did Apple spend on research and development in the quarter ended July 1, 2023?"
WHY = "Why did it go up?"  # "it" has no referent the rules can find in the earlier question
RULES_WHY = "Why did it go up for Apple in the quarter ended July 1, 2023?"


@pytest.mark.parametrize(("reply", "expected", "method"), [
    ("Why did Apple's research and development spending go up in the quarter ended July 1, 2023?", None, "llm"),
    ("Standalone question: Why did Apple's R&D spending go up?", "Why did Apple's R&D spending go up?", "llm"),
    ("", RULES_WHY, "rules"),  # empty
    ("Why did it go up?\nBecause of more engineers.", RULES_WHY, "rules"),  # not one line
    ("Why did R&D spending go up in the quarter ended July 1, 2023?", RULES_WHY, "rules"),  # lost the company
    ("Why " + "really " * 80 + "did it go up for Apple?", RULES_WHY, "rules"),  # too long
    (R_AND_D, RULES_WHY, "rules"),  # the earlier question again
    ("How much did Apple spend? Why did it go up?", RULES_WHY, "rules"),  # two questions
    ("What were Apple's expenses in the quarter ended July 1, 2023?", RULES_WHY, "rules"),  # not the follow-up
])
def test_llm_rewrite_is_checked_else_the_rules_rewrite_is_used(reply: str, expected: str | None,
                                                               method: str) -> None:
    with FakeOllama(reply=lambda _messages: reply) as fake:
        rewriter = Rewriter("llm", llm_factory=lambda: OllamaLLM(fake.url, DEFAULT_MODEL))
        result = rewriter.rewrite(WHY, [Turn(R_AND_D, "Apple spent $7,442 million [1].")])
        [chat] = fake.chats
    assert (result.question, result.method) == (expected or reply, method)
    assert (result.prompt_version or "").startswith("rewrite_v1@") == (method == "llm")
    assert chat["options"]["num_predict"] == 60
    system, user = chat["messages"]
    assert system["content"].startswith("You rewrite the follow-up question")
    assert user["content"] == f"Earlier question: {R_AND_D}\nFollow-up: {WHY}\nStandalone question:"


def test_llm_is_not_asked_when_the_rules_resolve_the_question() -> None:
    with FakeOllama(reply=lambda _messages: "unused") as fake:
        rewriter = Rewriter("llm", llm_factory=lambda: OllamaLLM(fake.url, DEFAULT_MODEL))
        assert rewriter.rewrite("what about Intel?", [Turn(APPLE_Q3, "…")]).method == "rules"
        assert rewriter.rewrite(APPLE_Q3, [Turn(APPLE_Q3, "…")]).method == "unchanged"
        assert fake.chats == []


def test_llm_down_falls_back_to_the_rules() -> None:
    with FakeOllama() as stopped:
        url = stopped.url
    rewriter = Rewriter("llm", llm_factory=lambda: OllamaLLM(url, DEFAULT_MODEL, timeout_s=5))
    assert rewriter.rewrite(WHY, [Turn(R_AND_D, "…")]) == Rewriter().rewrite(WHY, [Turn(R_AND_D, "…")])


def test_llm_mode_needs_a_generator() -> None:
    with pytest.raises(ValueError, match="llm_factory"):
        Rewriter("llm")


@pytest.mark.slow
def test_small_model_rewrites_a_follow_up_or_the_rules_do(small_llm: LlamaCppLLM) -> None:
    result = Rewriter("llm", llm_factory=lambda: small_llm).rewrite(WHY, [Turn(R_AND_D, "…")])
    assert result.method in ("llm", "rules")
    if result.method == "rules":
        assert result.question == RULES_WHY
    assert "Apple" in result.question and "\n" not in result.question
    assert len(result.question) <= 3 * (len(WHY) + len(R_AND_D))
    assert result.question not in (WHY, R_AND_D)


# --- a conversation through the chat service -----------------------------------------------------------------


def test_chat_service_continues_a_conversation(sample_index: SampleIndex) -> None:
    shared = sample_index.components
    with FakeOllama() as fake:
        components = Components(sample_index.settings, embedder=shared.embedder, store=shared.store,
                                engine=shared.engine, llm=OllamaLLM(fake.url, DEFAULT_MODEL))
        chat = ChatService(
            components.answerer, AnswerLog(shared.engine, shared.embedder.name), default_collection=SAMPLE_COLLECTION,
            max_question_chars=2000, conversations=Conversations(shared.engine),
            rewriter=Rewriter(facets=components.facets),
        )
        first = chat.ask(APPLE_Q3)
        assert first.conversation_id is not None and first.standalone_question == APPLE_Q3
        second = chat.ask("and in the previous quarter?", conversation_id=first.conversation_id)
        prompts = [c["messages"][-1]["content"] for c in fake.chats]

    standalone = "What was Apple's net sales in the quarter ended April 1, 2023?"
    assert second.conversation_id == first.conversation_id
    assert (second.question, second.standalone_question) == ("and in the previous quarter?", standalone)
    assert f"Question: {standalone}" in prompts[1]  # the LLM answered the standalone question
    assert second.answer.inferred_filters == {"ticker": "AAPL", "period": "April 1, 2023"}  # and retrieval kept to it
    assert {h.chunk.source for h in second.answer.retrieved} == {"2023 Q2 AAPL.pdf"}

    turns = Conversations(shared.engine).history(first.conversation_id)
    assert [(t.answer_id, t.question, t.standalone) for t in turns] == [
        (first.answer_id, APPLE_Q3, APPLE_Q3), (second.answer_id, "and in the previous quarter?", standalone)]
    assert turns[1].inferred_filters == {"ticker": "AAPL", "period": "April 1, 2023"}
    with pytest.raises(UnknownConversation):
        chat.ask("and the year before?", conversation_id="no-such-conversation")
    assert re.fullmatch(r"[0-9a-f-]{36}", first.conversation_id)
