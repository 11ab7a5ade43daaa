"""Regulation chunks on a real ADGM rulebook excerpt: one unit per rule, lettered sub-rule or guidance note.

The excerpts below are copied from the ADGM Conduct of Business Rulebook (COBS_VER15.150823.txt) and Market
Rules (MKT_VER08.181223.txt) in ../shared/corpora/adgm/documents, from the RegNLP/ObliQA dataset, distributed
under the Apache License 2.0 (see samples/adgm/LICENSE). Some rules are left out between the lines shown; the
text of every line is unchanged (long lines are continued with a backslash, tabs written as \\t). The real
rulebook has no chapter heading line "3. ..." before section 3.2: the excerpt keeps that gap.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.chunking import Chunker, Unit, regulation_units
from ingest.loading import LoadedDocument, load

COBS_EXCERPT = """\
2.\tCLIENT CLASSIFICATION
2.6\tClient Classification Procedures
2.6.4\tGroup clients
An Authorised Person that is a member of a Group and carries out one or more Regulated Activities where the \
Regulated Activities carried out by the Authorised Person form part of a bundle of Regulated Activities \
carried out for the benefit of that Client by Group members of the Authorised Person must ensure that:
(i)\tthe client classification it adopts for any Regulated Activity carried on which involves the provision \
of a service to a Client is both consistent with the requirements in these Rules and appropriate for the \
overall bundle of Regulated Activities which involve the provision of services to a Client;
(ii)\tthe Client has a clear understanding of the arrangement under which Regulated Activities are carried \
out for the Client's benefit by the Authorised Person in conjunction with the other members of the Group; \
and
(iii)\tany risks arising from such arrangements are identified and appropriately and effectively addressed.
2.6.4.Guidance
2.6.4.Guidance.1\tDifferent entities in a Group may have different arrangements under which they provide to \
their Clients one or more Regulated Activities. Such arrangements may involve, instead of each member within\
 a Group carrying on a discrete stand-alone Regulated Activity, different members of the Group carrying on \
different aspects of the bundle of Regulated Activities carried on for the Client's benefit. An example is \
where a number of members within a Group provide discrete aspects of expertise that facilitate merger and \
acquisition activity of a Client.  In such a situation, different members of the Group could prepare and \
provide:
(i)\tAdvice relating to a proposed restructure;
(ii)\tAdvice relating to financing of the restructure; and
(iii)\tArranging Credit for financing the restructure.
2.6.4.Guidance.4\tAn Authorised Person must comply with, and must be able to demonstrate compliance with, \
the systems and controls requirements set out in GEN when relying on this Rule \u200e2.6.4.
2.7\tRecord Keeping
2.7.1\tIn addition to any applicable rules under GEN relating to record keeping, and the remainder of these \
Rules, an Authorised Person must keep records of:
(a)\tthe procedures which it has followed under these Rules, including any documents which evidence the \
Client's classification; and
(b)\tany notice sent to the Client pursuant to these Rules and evidence of despatch.
2.7.2\tThe records must be kept by an Authorised Person for at least six years from the date on which the \
business relationship with a Client has ended.
3.2\tCommunication of Information and Marketing Material
3.2.1\tWhen communicating information to a Person in relation to a Specified Investment or Regulated \
Activity, an Authorised Person must take reasonable steps to ensure that the communication is clear, fair \
and not misleading.
3.2.1.Guidance
3.2.1.Guidance.1\tA communication addressed to a Professional Client may not need to include the same \
information, or be presented in the same way, as a communication addressed to a Retail Client.
3.2.4.(a)\tAn Authorised Person must ensure that any Marketing Material communicated to a Person contains \
the following information:
(i)\tthe name of the Authorised Person communicating the Marketing Material or, on whose behalf the \
Marketing Material is being communicated;
(ii)\tthe Authorised Person's regulatory status; and
(iii)\tif the Marketing Material is intended only for Professional Clients or Market Counterparties, a clear\
 statement to that effect and that no other Person should act upon it.
3.2.4.(a).Guidance
3.2.4.(a).Guidance.1\tMarketing Material includes any invitation or inducement to Engage in Investment \
Activity.
3.3\tKey Information and Client Agreement
3.3.1\tApplication
The Rules in this section do not apply to an Authorised Person when it is:
(b)\tAccepting Deposits;
(c)\tProviding Credit;
3.3.2\tRequirements \t
3.3.2.(a)\tSubject to Rule \u200e3.3.2(b), an Authorised Person must not carry on a Regulated Activity where\
 this involves provision of a service to a Client unless:
"""

MKT_EXCERPT = """\
2.\tTHE LISTING RULES
2.6\tSuspending, delisting and restoring a listing
2.6.Guidance\t
Under section 53 of the FSMR, the Regulator may, suspend or delist Securities from the Official List with \
immediate effect or from such date and time as may be specified where it is satisfied that there are \
circumstances that warrant such action or it is in the interests of the ADGM Financial System, including the\
 interests of its investors, potential investors or markets.
2.6.Suspending Securities from the Official List\t
Examples of circumstances that warrant the suspension by the Regulator of Securities from the Official List \
include:
1.\tthe Listed Entity has failed to meet its continuing obligations for admission to the Official List;
2.\tthe Listed Entity has failed to Disclose financial information in accordance with these Rules;
3.\tthe Listed Entity is unable to assess accurately its financial position and inform the market \
accordingly;
4.\tthere is insufficient publicly available information in the market about a proposed transaction which \
involves the Listed Entity or the Relevant Securities;
5.\tthe Listed Entity's Securities have been suspended elsewhere;
6.\tthe Listed Entity has appointed Administrators or receivers, or is an Investment Trust or Fund and is \
winding up;
7.\tthe Relevant Securities are a securitised Derivative and any underlying Instrument is suspended; or
8.\tfor a Derivative which carries a right to buy or subscribe for another Security, the Security over which\
 the Derivative carries a right to buy or subscribe has been suspended.
2.6.1\tA Listed Entity which has had the admission to the Official List of any of its Securities suspended \
must continue to comply with all relevant Listing Rules applicable to it.
2.6.2\tIf the Regulator suspends the admission to the Official List of any Securities, it may impose such \
requirements on the procedure for lifting the suspension as it considers appropriate.
2.6.4\tRestoration of a listing. The Regulator may restore the admission to the Official List of any \
Securities which have been suspended if it considers that:
2.6.5\tRestoration of a listing. The Regulator may restore the admission to the Official List of any \
Securities which have been suspended whether the restoration was requested by the relevant Listed Entity or at \
the Regulator's own initiative.
"""

CLIENT_CLASSIFICATION = "2. CLIENT CLASSIFICATION"
RECORD_KEEPING = f"{CLIENT_CLASSIFICATION} › 2.7 Record Keeping"
GROUP_CLIENTS = f"{CLIENT_CLASSIFICATION} › 2.6 Client Classification Procedures"
MARKETING = "3.2 Communication of Information and Marketing Material"  # chapter 3's heading is not in the text
KEY_INFORMATION = "3.3 Key Information and Client Agreement"


def rulebook(tmp_path: Path, name: str, text: str) -> LoadedDocument:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    doc = load(path)
    assert doc.doc_type == "regulation"
    return doc


@pytest.fixture
def cobs(tmp_path: Path) -> LoadedDocument:
    return rulebook(tmp_path, "COBS_VER15.150823.txt", COBS_EXCERPT)


def units_by_rule(doc: LoadedDocument) -> dict[str | None, Unit]:
    units = regulation_units(doc)
    by_rule = {u.section: u for u in units}
    assert len(by_rule) == len(units), [u.section for u in units]  # no rule number twice
    return by_rule


def test_one_unit_per_rule_sub_rule_and_guidance_note(cobs: LoadedDocument) -> None:
    assert [u.section for u in regulation_units(cobs)] == [
        "2.6.4", "2.6.4.Guidance.1", "2.6.4.Guidance.4", "2.7.1", "2.7.2",
        "3.2.1", "3.2.1.Guidance.1", "3.2.4.(a)", "3.2.4.(a).Guidance.1", "3.3.1", "3.3.2.(a)"]
    units = units_by_rule(cobs)
    assert units["3.2.4.(a)"].text.startswith("3.2.4.(a)\tAn Authorised Person must ensure that any Marketing")
    assert units["3.2.4.(a)"].text.endswith("a clear statement to that effect and that no other Person should act "
                                            "upon it.")  # its items (i)–(iii) stay with it
    assert "(iii)\tArranging Credit for financing the restructure." in units["2.6.4.Guidance.1"].text
    assert all(u.page is None for u in units.values())


def test_title_only_lines_head_the_next_unit(cobs: LoadedDocument) -> None:
    units = units_by_rule(cobs)
    assert units["2.6.4"].text.startswith("2.6.4\tGroup clients\nAn Authorised Person that is a member of a Group")
    assert units["2.6.4.Guidance.1"].text.startswith("2.6.4.Guidance\n2.6.4.Guidance.1\tDifferent entities")
    assert units["3.2.1.Guidance.1"].text.startswith("3.2.1.Guidance\n3.2.1.Guidance.1\tA communication")
    assert units["3.2.4.(a).Guidance.1"].text.startswith(
        "3.2.4.(a).Guidance\n3.2.4.(a).Guidance.1\tMarketing Material includes")
    assert units["3.3.1"].text.startswith("3.3.1\tApplication\nThe Rules in this section do not apply")
    assert units["3.3.2.(a)"].text.startswith("3.3.2\tRequirements\n3.3.2.(a)\tSubject to Rule")
    # no unit is a title alone, and only chapter and section headings are left out of the units' text
    text = "\n".join(u.text for u in units.values())
    left_out = [line for line in COBS_EXCERPT.splitlines() if line.strip() and line.strip() not in text]
    assert left_out == ["2.\tCLIENT CLASSIFICATION", "2.6\tClient Classification Procedures", "2.7\tRecord Keeping",
                        "3.2\tCommunication of Information and Marketing Material",
                        "3.3\tKey Information and Client Agreement"]


def test_heading_path_is_chapter_and_section(cobs: LoadedDocument) -> None:
    units = units_by_rule(cobs)
    assert {s: u.heading for s, u in units.items()} == {
        "2.6.4": GROUP_CLIENTS, "2.6.4.Guidance.1": GROUP_CLIENTS, "2.6.4.Guidance.4": GROUP_CLIENTS,
        "2.7.1": RECORD_KEEPING, "2.7.2": RECORD_KEEPING,
        # chapter 2's heading does not prefix 3.2: it is dropped rather than mislabel chapter 3's rules
        "3.2.1": MARKETING, "3.2.1.Guidance.1": MARKETING, "3.2.4.(a)": MARKETING, "3.2.4.(a).Guidance.1": MARKETING,
        "3.3.1": KEY_INFORMATION, "3.3.2.(a)": KEY_INFORMATION,
    }


def words(text: str) -> list[str]:
    return text.split()


def test_one_chunk_per_rule_unless_rules_are_packed(cobs: LoadedDocument) -> None:
    units = regulation_units(cobs)
    single = Chunker(words, 200, 30, pack_rules=False).chunk(cobs, "cobs", "h")  # type: ignore[arg-type]
    assert [c.section for c in single] == [u.section for u in units]
    assert [c.text for c in single] == [u.text for u in units]
    for c, u in zip(single, units, strict=True):
        assert c.extra["heading"] == u.heading and "sections" not in c.extra
    assert all(c.extra["family"] == "COBS" and c.page_start is None for c in single)

    packed = Chunker(words, 200, 30, pack_rules=True).chunk(cobs, "cobs", "h")  # type: ignore[arg-type]
    assert [c.section for c in packed] == [
        "2.6.4", "2.6.4.Guidance.1–2.6.4.Guidance.4", "2.7.1–2.7.2", "3.2.1–3.2.4.(a).Guidance.1", "3.3.1–3.3.2.(a)"]
    record = next(c for c in packed if c.section == "2.7.1–2.7.2")
    assert record.extra["sections"] == ["2.7.1", "2.7.2"]
    assert record.extra["heading"] == RECORD_KEEPING
    assert record.text == "\n".join(u.text for u in units if u.section in ("2.7.1", "2.7.2"))
    for c in packed:  # packing never crosses a heading, nor the size
        assert len(c.text.split()) <= 200
        members = [u for u in units if u.section in c.extra.get("sections", [c.section])]
        assert {u.heading for u in members} == {c.extra["heading"]}


def test_a_long_rule_is_split_within_the_size_and_keeps_its_number(cobs: LoadedDocument) -> None:
    chunks = Chunker(words, 60, 10).chunk(cobs, "cobs", "h")  # type: ignore[arg-type]
    group_clients = [c for c in chunks if c.section == "2.6.4"]
    assert len(group_clients) >= 3  # 155 words
    assert all(len(c.text.split()) <= 60 and c.extra["heading"] == GROUP_CLIENTS for c in group_clients)


def test_numbered_list_items_inside_guidance_stay_in_their_unit(tmp_path: Path) -> None:
    doc = rulebook(tmp_path, "MKT_VER08.181223.txt", MKT_EXCERPT)
    units = regulation_units(doc)
    text = "\n".join(u.text for u in units)
    assert "1.\tthe Listed Entity has failed to meet its continuing obligations" in text
    assert "8.\tfor a Derivative which carries a right to buy" in text
    rule = next(u for u in units if u.section == "2.6.1")
    assert rule.heading == "2. THE LISTING RULES › 2.6 Suspending, delisting and restoring a listing"


# Guidance notes number paragraphs and repeat the chapter title on each number line. The lines below are
# shortened from "Guidance - Continuous Disclosure_VER01.280922.txt" (same source and licence as above).
GUIDANCE_PARAGRAPHS = "\n".join(
    f"{n})\tINSIDE INFORMATION\nParagraph {n} explains when information is Inside Information for a Reporting "
    f"Entity, case {n}.\n(a)\tis not generally available;\n" for n in range(20, 44)
)


def test_numbered_guidance_paragraphs_are_one_unit_each(tmp_path: Path) -> None:
    from ingest.chunking import MIN_NUMBERED_PARAGRAPHS, split_units

    path = tmp_path / "Guidance - Continuous Disclosure_VER01.280922.txt"
    path.write_text("Guidance - Continuous Disclosure\nIntroduction text.\n\n" + GUIDANCE_PARAGRAPHS, encoding="utf-8")
    doc = load(path)
    assert doc.doc_type != "regulation" and doc.extra.get("doc_kind") == "guidance"
    units = split_units(doc)
    assert MIN_NUMBERED_PARAGRAPHS <= 44 - 20
    assert units[0].section is None and "Introduction text." in units[0].text
    numbered = units[1:]
    assert [u.section for u in numbered] == [f"{n})" for n in range(20, 44)]
    assert all(u.heading == "INSIDE INFORMATION" for u in numbered)
    assert numbered[3].text.startswith("23)\tINSIDE INFORMATION\nParagraph 23 ") and "(a)\tis not" in numbered[3].text
    chunks = Chunker(lambda s: s.split(), 200, 30).chunk(doc, "d", "h")
    assert [c.section for c in chunks[1:]] == [f"{n})" for n in range(20, 44)]  # never packed together


def test_short_numbered_lists_do_not_make_a_paragraph_document(tmp_path: Path) -> None:
    from ingest.chunking import split_units, text_units

    path = tmp_path / "note.txt"
    path.write_text("A note\n1)\tfirst point.\n2)\tsecond point.\n", encoding="utf-8")
    doc = load(path)
    assert [u.text for u in split_units(doc)] == [u.text for u in text_units(doc)]
