"""Grounding: the safe calculator, calculation replies, the numeric check and the coverage refusal check."""

from __future__ import annotations

import pytest
from conftest import ScriptedLLM, bare_answerer

from assistant.answering import REFUSAL_TEXT, Answer, Answerer, Draft
from assistant.calc import CalculationError, evaluate, format_value, pretty
from assistant.calculation import needs_calculation, parse, render
from assistant.chunks import Chunk, ScoredChunk
from assistant.coverage import covered_years, missing_terms, salient_terms
from assistant.grounding import uncited_claims, unsupported_numbers
from assistant.prompts import load_prompt
from assistant.query import DocumentFacets, Facets, collection_facets
from assistant.settings import GroundingSettings
from assistant.sources import attribute_statements

TABLE = ("Total net sales (three months ended July 1, 2023) 81,797 (three months ended June 25, 2022) 82,959 "
         "(in millions)")


def hit(text: str, n: int = 1, **extra: object) -> ScoredChunk:
    return ScoredChunk(Chunk(text=text, source=f"doc{n}.pdf", doc_id=f"d{n}", chunk_index=0, page_start=3,
                             extra=dict(extra)), 1.0 / n, f"p{n}")


@pytest.mark.parametrize(("expression", "value"), [
    ("(81,797 - 82,959) / 82,959 * 100", (81797 - 82959) / 82959 * 100),
    ("$5,000 x 2", 10000.0),
    ("(3 + 4.5) / 2", 3.75),
    ("-12 + 2", -10.0),
    ("50% * 200", 100.0),
    ("1 000", None),
])
def test_evaluate_arithmetic(expression: str, value: float | None) -> None:
    if value is None:
        with pytest.raises(CalculationError):
            evaluate(expression)
    else:
        assert evaluate(expression) == pytest.approx(value)


@pytest.mark.parametrize("expression", [
    "__import__('os').system('echo hi')", "2 ** 1000000", "open('x')", "a + 1", "[1, 2]", "1 / 0", "(" * 200,
    "True + 1",
])
def test_evaluate_refuses_anything_but_arithmetic(expression: str) -> None:
    with pytest.raises(CalculationError):
        evaluate(expression)


def test_format_and_pretty() -> None:
    assert format_value(5407.7) == "5,407.70"
    assert format_value(-94.0) == "-94"
    assert pretty("(5 - 4) / 4 * 100") == "(5 − 4) / 4 × 100"


def test_needs_calculation() -> None:
    assert needs_calculation("What is the percentage change in Other in 2019 from 2018?")
    assert needs_calculation("What was the average cost of revenue for 2017-2019?")
    assert not needs_calculation("What were Apple's total net sales in the quarter ended July 1, 2023?")
    assert not needs_calculation("What are the contract types?")


def test_calc_reply_is_computed_with_working_and_citations() -> None:
    reply = parse("CALC: (81,797 - 82,959) / 82,959 * 100\nANSWER: Net sales changed by RESULT% year on year.")
    worked = render(reply, cites=[1])
    assert worked is not None and worked.value == pytest.approx(-1.4007, abs=1e-4)
    assert worked.text.startswith("Net sales changed by -1.40% year on year [1].")
    assert "Calculation: (81,797 − 82,959) / 82,959 × 100 = -1.40 [1]" in worked.text


def test_calc_reply_with_figure_lines_cites_them() -> None:
    worked = render(parse("FIGURE: sales 2023 = 81,797 [2]\nFIGURE: sales 2022 = 82,959 [2]\n"
                          "CALC: 81,797 - 82,959\nANSWER: Sales fell by RESULT million."))
    assert worked is not None
    assert worked.text.startswith("Sales fell by -1,162 million [2].")
    assert "from sales 2023 = 81,797 [2]; sales 2022 = 82,959 [2]" in worked.text


def test_bad_calculation_is_reported_not_run() -> None:
    worked = render(parse("CALC: revenue - costs\nANSWER: Profit was RESULT."))
    assert worked is not None and worked.value is None and worked.error
    assert "(not computed)" in worked.text


def test_finish_computes_calculation_and_checks_numbers() -> None:
    answerer = bare_answerer(load_prompt("answer_v2"), load_prompt("calc_v1"))
    raw = "CALC: (81,797 - 82,959) / 82,959 * 100\nANSWER: Net sales changed by RESULT%."
    answer = answerer.finish(raw, [hit(TABLE)], "m", {}, prompt=answerer.calc_prompt)
    assert "-1.40%" in answer.answer and answer.citations and answer.citations[0].n == 1
    assert answer.calculation is not None and answer.calculation["value"] == pytest.approx(-1.4007, abs=1e-4)
    assert answer.unsupported_numbers == []
    partly = answerer.finish("Net sales were $81,797 million, up 9% [1].", [hit(TABLE)], "m", {})
    assert not partly.refused and partly.unsupported_numbers == ["9%"]
    assert any("figures not found" in w and "9%" in w for w in partly.warnings)
    # every figure invented: the answer is withheld, the closest sources shown instead
    wrong = answerer.finish("Net sales were $91,797 million [1].", [hit(TABLE)], "m", {})
    assert wrong.refused and wrong.unsupported_numbers == ["$91,797 million"] and wrong.closest
    assert wrong.answer.startswith(REFUSAL_TEXT) and any("91,797" in w for w in wrong.warnings)
    answerer.grounding = GroundingSettings(refuse_unsupported=False, _env_file=None)
    kept = answerer.finish("Net sales were $91,797 million [1].", [hit(TABLE)], "m", {})
    assert not kept.refused and kept.unsupported_numbers == ["$91,797 million"]


def test_numbers_supported_by_source_or_simple_arithmetic() -> None:
    sources = [TABLE]
    assert unsupported_numbers("Net sales were $81,797 million [1].", sources) == []
    assert unsupported_numbers("Net sales were $81.8 billion [1].", sources) == []
    assert unsupported_numbers("They fell by $1,162 million [1].", sources) == []  # difference
    assert unsupported_numbers("They fell 1.4% [1].", sources) == []  # percentage change
    assert unsupported_numbers("Margin was 45.3% [1].", sources) == ["45.3%"]
    assert unsupported_numbers("Margin was 45.3% [1].", sources, computed=[45.31]) == []
    assert unsupported_numbers("It took 3 months [1].", sources) == []  # small counts are not checked


def test_uncited_claims() -> None:
    assert uncited_claims("Sales were $81,797 million [1]. They fell by 1.4%. Rule 3 applies.") == [
        "They fell by 1.4%."]


def test_salient_terms() -> None:
    assert salient_terms("What was Tesla's total revenue in the quarter ended September 30, 2023?") == [
        "Tesla", "2023"]
    assert salient_terms("Under the UK FCA Handbook, how long is the cooling-off period?") == [
        "UK", "FCA", "Handbook"]
    assert salient_terms("What does Rule 42.7.3 require?") == ["42.7.3"]
    assert salient_terms("What did Intel disclose in its 10-Qs?") == ["Intel"]


def test_missing_terms_reads_text_metadata_and_acronym_expansions() -> None:
    hits = [hit("Research and development expense rose. Internet of Things Group revenue fell.", company="Intel")]
    assert missing_terms("How did Intel's R&D and IoT revenue develop?", hits) == []
    assert missing_terms("What was Tesla's revenue?", hits) == ["Tesla"]


def test_years_must_be_covered_by_the_filings() -> None:
    facets = Facets((DocumentFacets(source="2023 Q3 INTC.pdf", fiscal_year=2023, quarters=("2023-Q3",)),))
    assert covered_years(facets) == {2022, 2023}
    hits = [hit("Revenue in 2019 notes and 2023 results", company="Intel")]
    assert missing_terms("What was Intel's revenue in 2019?", hits, facets) == ["2019"]
    assert missing_terms("What was Intel's revenue in 2022?", hits, facets) == []


def test_rules_and_collection_names_come_from_the_facets() -> None:
    chunks = [Chunk(text="The firm must apply enhanced due diligence.", source="COBS_VER15.txt", doc_id="c",
                    chunk_index=0, section="COBS > 3.2.4.(a)", title="Conduct of Business Rulebook")]
    facets = collection_facets(chunks)
    assert {"3.2.4", "3.2"} <= facets.rules and "COBS" in facets.vocabulary
    hits = [ScoredChunk(chunks[0], 1.0, "p")]
    assert missing_terms("What does Rule 3.2.4 of COBS require?", hits, facets) == []
    assert missing_terms("What does Rule 42.7.3 of COBS require?", hits, facets) == ["42.7.3"]
    assert missing_terms("**Collaboration**: what is the Enhanced Due Diligence (EDD) duty?", hits, facets) == []
    assert covered_years(Facets((DocumentFacets(source="COBS.txt"),))) is None


def drafted(answerer: Answerer, prompt: object) -> Draft:
    return Draft([hit(TABLE)], [{"role": "user", "content": "q"}], 1, {"retrieve": 1}, None, prompt=prompt)


def test_answers_stream_as_generated_but_calculations_only_when_computed() -> None:
    answerer = bare_answerer(load_prompt("answer_v2"), load_prompt("calc_v1"))
    plain = list(answerer.generate(drafted(answerer, answerer.prompt),
                                   ScriptedLLM("Net sales were $81,797 million [1].")))
    assert [e for e in plain if isinstance(e, str)] == ["Net ", "sales ", "were ", "$81,797 ", "million ", "[1]."]
    assert isinstance(plain[-1], Answer) and "first_token" in plain[-1].timings_ms
    calc = list(answerer.generate(drafted(answerer, answerer.calc_prompt), ScriptedLLM(
        "CALC: (81,797 - 82,959) / 82,959 * 100\nANSWER: Net sales changed by RESULT%.")))
    final = calc[-1]
    assert isinstance(final, Answer) and [e for e in calc if isinstance(e, str)] == [final.answer]
    assert "CALC" not in final.answer and "-1.40%" in final.answer


def test_uncited_sentences_are_attributed_to_the_source_holding_their_words() -> None:
    fees = hit("Fees are payable in US dollars within 30 days of the invoice.", 1)
    staff = hit("An Authorised Person must ensure that personnel involved in Virtual Asset activities are "
                "competent and trained to the required standards.", 2)
    text, cited = attribute_statements(
        "Personnel involved in Virtual Assets must be trained and competent to required standards. "
        "This matters.\n1. Fees are payable in dollars within days.", [fees, staff])
    assert cited == [2, 1]
    assert text == ("Personnel involved in Virtual Assets must be trained and competent to required standards [2]. "
                    "This matters.\n1. Fees are payable in dollars within days [1].")
    # a sentence no source holds enough of stays uncited
    assert attribute_statements("Directors should meet quarterly to review strategy.", [fees, staff]) == (
        "Directors should meet quarterly to review strategy.", [])
    # an answer citing nothing, no sentence of which matches: the source sharing most of its words, once
    text, cited = attribute_statements(
        "Firms train people. Competent personnel matter. Virtual assets count. Standards apply.", [fees, staff])
    assert (text, cited) == (
        "Firms train people [2]. Competent personnel matter. Virtual assets count. Standards apply.", [2])


def test_calculations_over_figures_no_source_prints_are_withheld() -> None:
    answerer = bare_answerer(load_prompt("answer_v2"), load_prompt("calc_v1"))
    invented = answerer.finish("CALC: (4,638 - 5.2) / 5.2 * 100\nANSWER: It changed by RESULT%.", [hit(TABLE)],
                               "m", {}, prompt=answerer.calc_prompt)
    assert invented.refused and "4,638" in invented.answer and invented.closest
    failed = answerer.finish("CALC: (109 - 0) / 0 * 100\nANSWER: The margin was RESULT%.", [hit(TABLE)], "m", {},
                             prompt=answerer.calc_prompt)
    assert failed.refused and "could not be computed" in failed.answer
    # an invented figure next to a statement only the product attributed is still withheld
    meta = answerer.finish("The CEO's salary is $100,000,000. This is stated in the Total net sales table.",
                           [hit(TABLE)], "m", {})
    assert meta.refused


def test_period_dates_must_be_filing_periods_or_their_comparatives() -> None:
    facets = Facets((DocumentFacets(source="2023 Q3 NVDA.pdf", period="October 29, 2023"),))
    hits = [hit("Data Center revenue (three months ended October 29, 2023)", company="NVIDIA")]
    assert missing_terms("NVIDIA revenue in the quarter ended October 27, 2024?", hits, facets) == ["2024"] or \
        "October 27, 2024" in missing_terms("NVIDIA revenue in the quarter ended October 27, 2024?", hits, facets)
    assert missing_terms("NVIDIA revenue in the quarter ended October 30, 2022?", hits, facets) == []
    assert missing_terms("NVIDIA revenue in the quarter ended October 29, 2023?", hits, facets) == []
    assert missing_terms("NVIDIA revenue in the quarter ended April 30, 2023?", hits, facets) == ["April 30, 2023"]
