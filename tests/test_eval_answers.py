"""Answer scores (eval/answers.py) and numeric agreement (assistant/numbers.py), on fabricated answers."""

from __future__ import annotations

import pytest

from assistant.answering import REFUSAL_TEXT, Answer, Citation
from assistant.chunks import Chunk, ScoredChunk
from assistant.numbers import find_numbers, numbers_found, same_number
from eval.answers import ANSWER_METRICS, answer_scores, citation_precision, normalize, token_f1
from eval.questions import Evidence, Question

FEES = "FEES_VER05.txt"
FEE_RULE = "An application is not regarded as submitted until the application fee is paid in full."


@pytest.mark.parametrize(("reference", "answer"), [
    ("$1577.00", "The fee is $1,577."),
    ("81,797", "Net sales were 81,797."),
    ("3.2%", "Growth was 3.2 percent."),
    ("$81,797 million", "about 81.797 billion dollars"),
    ("$81,797 million", "$81.8 billion"),
    ("3.24%", "3.2%"),
    ("(265)", "a decrease of $265"),
    ("-1.5 million", "(1,500) thousand"),
    ("81,797", "$81,797 million"),
    ("81,797", "81,979"),  # 0.22 % off: inside the 0.5 % tolerance
])
def test_numbers_that_agree(reference: str, answer: str) -> None:
    assert numbers_found(reference, answer) == (1, 1)


@pytest.mark.parametrize(("reference", "answer"), [
    ("81,797", "82,979"),  # 1.4 % off
    ("$81,797 million", "$81,797 billion"),
    ("3.2%", "3.2 million"),
    ("3.4%", "3%"),  # one significant digit is no rounding tolerance
    ("$1,577.00", "$1,600"),
    ("0", "1"),
])
def test_numbers_that_disagree(reference: str, answer: str) -> None:
    assert numbers_found(reference, answer) == (0, 1)


def test_number_parsing_on_a_real_sec10q_reference() -> None:
    reference = (
        "- For the quarterly period ended July 1, 2023, the total net sales were $81,797 million. "
        "(SOURCE: 2023 Q3 AAPL.pdf)\nFrom these figures, net sales fell 3.2% in Q3 [2].\n\n"
        "SOURCE(S): 2022 Q3 AAPL.pdf, 2023 Q3 AAPL.pdf"
    )
    found = find_numbers(reference)
    assert [(n.value, n.scale, n.percent) for n in found] == [(81797.0, 1e6, False), (3.2, 1.0, True)]
    (paren,) = find_numbers("Other income was $(265) million.")
    assert paren.value == -265.0 and paren.scale == 1e6
    assert find_numbers("In 2022 the 10-Q for Q3 cited June 25, 2022 [1]") == []
    assert [n.text for n in find_numbers("Risks:\n1. Currency: 3.5% of sales\n2) Supply")] == ["3.5%"]
    assert same_number(find_numbers("$1577.00")[0], find_numbers("1,577")[0])


def test_token_f1_uses_squad_normalisation() -> None:
    assert normalize("The Fee, is: $1,577!") == "fee is 1577"
    assert token_f1("The fee is 1,577.", "fee is 1577") == 1.0
    assert token_f1("fee 1577", "the fee is 1577") == pytest.approx(2 * 1.0 * (2 / 3) / (1 + 2 / 3))
    assert token_f1("nothing alike", "fee is 1577") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "x") == 0.0


def hit(text: str = FEE_RULE, source: str = FEES, index: int = 0) -> ScoredChunk:
    chunk = Chunk(text=text, source=source, doc_id=source, chunk_index=index, section="1.2.1")
    return ScoredChunk(chunk=chunk, score=0.9, point_id=f"p{index}")


def cite(n: int) -> Citation:
    return Citation(n=n, point_id=f"p{n}", source=FEES, pages=[], section=None, snippet="s", score=0.9)


def answer(text: str, refused: bool = False, cited: tuple[int, ...] = (1,),
           retrieved: list[ScoredChunk] | None = None) -> Answer:
    return Answer(answer=text, citations=[] if refused else [cite(n) for n in cited],
                  retrieved=retrieved if retrieved is not None else [hit()], refused=refused, model="fake",
                  prompt_version="answer_v1")


def question(reference: str | None = "The fee is $1,577.", answerable: bool = True,
             evidence: list[Evidence] | None = None) -> Question:
    return Question(id="q", question="What is the fee?", reference_answer=reference, answerable=answerable,
                    evidence=evidence or [])


def test_answer_metrics_order() -> None:
    assert ANSWER_METRICS == ("numeric_match", "numeric_recall", "token_f1", "citation_precision", "citation_hit",
                              "grounded_numbers", "unsupported_numbers", "refusal_accuracy", "over_refusal",
                              "judge_correct", "judge_faithful")


GROUNDING = ("grounded_numbers", "unsupported_numbers")


def core(scores: dict[str, float]) -> dict[str, float]:
    """The scores without the grounding counts (tested in test_grounding_scores)."""
    return {k: v for k, v in scores.items() if k not in GROUNDING}


def test_grounding_scores() -> None:
    given = answer("The fee is $1,577 [1].")
    given.unsupported_numbers = ["$9"]
    assert {k: answer_scores(question(), given)[k] for k in GROUNDING} == {
        "grounded_numbers": 0.0, "unsupported_numbers": 1.0}
    assert not set(GROUNDING) & set(answer_scores(question(), answer(REFUSAL_TEXT, refused=True)))


def test_answer_scores_on_fabricated_answers() -> None:
    assert core(answer_scores(question(), answer("The fee is $1,577 [1]."))) == {
        "numeric_match": 1.0, "numeric_recall": 1.0, "token_f1": 1.0, "over_refusal": 0.0}
    assert core(answer_scores(question("No numbers here."), answer("No numbers here"))) == {
        "token_f1": 1.0, "over_refusal": 0.0}
    assert core(answer_scores(question(None), answer("anything"))) == {"over_refusal": 0.0}


def test_numeric_match_needs_every_distinct_number() -> None:
    two = question("Net sales were $81,797 million, down 3.2%; $81,797 million is the total.")
    assert answer_scores(two, answer("Net sales were $81.8 billion."))["numeric_recall"] == 0.5
    assert answer_scores(two, answer("Net sales were $81.8 billion."))["numeric_match"] == 0.0
    both = answer_scores(two, answer("Net sales were $81,797 million [1], a 3.2 percent decline."))
    assert both["numeric_match"] == 1.0 and both["numeric_recall"] == 1.0


def test_refusal_metrics() -> None:
    refused = answer_scores(question(), answer(REFUSAL_TEXT, refused=True))
    assert refused == {"numeric_match": 0.0, "numeric_recall": 0.0, "token_f1": 0.0, "over_refusal": 1.0}
    unanswerable = question(None, answerable=False)
    assert answer_scores(unanswerable, answer(REFUSAL_TEXT, refused=True)) == {"refusal_accuracy": 1.0}
    assert core(answer_scores(unanswerable, answer("It is $5."))) == {"refusal_accuracy": 0.0}
    # A reference on an unanswerable question scores nothing but the refusal.
    assert core(answer_scores(question("n/a", answerable=False), answer("It is $5."))) == {"refusal_accuracy": 0.0}


def test_citation_precision_counts_cited_chunks_holding_evidence() -> None:
    evidence = [Evidence(source=FEES, text="not regarded as submitted until the application fee is paid")]
    with_evidence = question(evidence=evidence)
    retrieved = [hit(index=0), hit("The annual fee for a Category 3A firm is $15,000.", index=1),
                 hit(FEE_RULE, source="OTHER.txt", index=2), hit(index=3)]

    def precision(*cited: int) -> float | None:
        return citation_precision(with_evidence, answer("The fee must be paid in full.", cited=cited,
                                                        retrieved=retrieved))

    assert precision(1) == 1.0
    assert precision(1, 2) == 0.5  # the second cited chunk is another rule
    assert precision(2, 3) == 0.0  # the right words in the wrong file do not count
    assert precision(1, 4) == 1.0  # two chunks holding the same passage are both right
    assert precision(1, 9) == 0.5  # a citation to no retrieved chunk is wrong
    assert precision(1, 1, 2) == 0.5  # a chunk cited twice counts once
    scores = answer_scores(with_evidence, answer("The fee must be paid in full.", cited=(1, 2),
                                                 retrieved=retrieved))
    assert scores["citation_precision"] == 0.5


def test_citation_precision_is_absent_where_it_does_not_apply() -> None:
    evidence = [Evidence(source=FEES)]
    refused = answer_scores(question(evidence=evidence), answer(REFUSAL_TEXT, refused=True))
    uncited = answer_scores(question(evidence=evidence), answer("The fee is $1,577.", cited=()))
    no_evidence = answer_scores(question(), answer("The fee is $1,577 [1]."))
    for scores in (refused, uncited, no_evidence):
        assert "citation_precision" not in scores
    # An unanswerable question that was answered anyway still has its citations checked.
    wrong = answer_scores(question(None, answerable=False, evidence=[Evidence(source="AML.txt")]),
                          answer("It is $5 [1]."))
    assert core(wrong) == {"citation_precision": 0.0, "citation_hit": 0.0, "refusal_accuracy": 0.0}
