"""The report writer, the sentence splitter and the zero-shot prompts."""

from __future__ import annotations

import random
import re
from dataclasses import replace

import pytest

from lumbarclip.findings import ABNORMAL_OTHER, INCIDENTAL, LEVELS, Findings, LevelFindings
from lumbarclip.reports import CLASS_PROMPTS, class_prompts, parse_report, split_sentences, write_synthetic_note
from lumbarclip.reports.levels import LEVEL_STYLES, spell_level
from lumbarclip.reports.writer import HEADERS


def notes(findings: Findings, seeds: range = range(12)) -> list[str]:
    return [write_synthetic_note(findings, random.Random(seed)) for seed in seeds]


BULGE = LevelFindings("L4-L5", "bulge", "diffuse", thecal_sac="compressed")


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (replace(BULGE), r"disc bulge"),
        (replace(BULGE, disc="protrusion", location="paracentral", side="left"), r"(Lt|left) paracentral disc protru"),
        (replace(BULGE, disc="extrusion", location="central"), r"central disc extrusion"),
        (replace(BULGE, disc="protrusion", location="foraminal", side="right"), r"(Rt|right) foraminal"),
        (replace(BULGE, thecal_sac="abutted"), r"abutting (the )?thecal sac"),
        (replace(BULGE, root_compression="left"), r"compressing the (Lt|left) (exit|L5) nerve root"),
        (replace(BULGE, foraminal_narrowing="both"), r"(exit neural canals|both neural foramina)"),
        (replace(BULGE, canal_narrowing="moderate"), r"spinal canal"),
        (replace(BULGE, facet_hypertrophy=True), r"facet joint hypertrophy"),
        (replace(BULGE, ligamentum_hypertrophy=True), r"ligamentum flavum hypertrophy"),
        (replace(BULGE, desiccation=True), r"(Desiccat|Dehydrat)"),
        (replace(BULGE, annular_tear=True), r"annular (tear|fissure)"),
        (replace(BULGE, severity="severe"), r"([Ll]arge|[Ss]ignificant|[Ss]evere)"),
    ],
)
def test_every_level_finding_is_written(level: LevelFindings, expected: str) -> None:
    for text in notes(Findings({level.level: level}), range(6)):
        assert re.search(expected, text, re.IGNORECASE), text


OTHER_WORDS = {
    "spondylolisthesis": r"spondylolisthesis of L\d over [LS]\d",
    "fracture": r"fracture",
    "postoperative": r"previous surgery",
    "stenosis": r"spinal canal",
    "scoliosis": r"scoliosis",
    "schmorl_nodes": r"schmorl's node",
    "marrow_edema": r"marrow edema",
    "muscle_spasm": r"muscle spasm",
    "hemangioma": r"hemangioma",
    "pelvic_cyst": r"pelvic cyst",
    "renal_cyst": r"renal cyst",
}


@pytest.mark.parametrize("name", ABNORMAL_OTHER + INCIDENTAL)
def test_every_other_and_incidental_finding_is_written(name: str) -> None:
    findings = Findings(other=[name]) if name in ABNORMAL_OTHER else Findings(incidental=[name])
    for text in notes(findings, range(6)):
        assert re.search(OTHER_WORDS[name], text, re.IGNORECASE), text
        assert parse_report(text).to_dict() == findings.to_dict(), text


def test_normal_study_is_written_as_negated_normals() -> None:
    for text in notes(Findings()):
        assert re.search(r"No (evidence of disc herniation|(significant )?disc protrusion or herniation)", text)
        assert re.search(r"No (significant )?thecal sac or nerve root compression", text)
        assert not re.search(r"bulge|protrusion noted|compressing", text)


def test_abnormal_study_without_compression_may_say_so() -> None:
    mild = Findings({"L5-S1": LevelFindings("L5-S1", "bulge", severity="mild")})
    texts = notes(mild, range(30))
    assert any("No significant thecal sac or nerve root compression" in t or "No thecal sac" in t for t in texts)
    assert all("bulge" in t for t in texts)


def test_levels_are_spelled_in_every_house_style() -> None:
    texts = " ".join(notes(Findings({"L4-L5": BULGE}), range(40)))
    for spelling in ("L4/L5", "L4-L5", "L4-5"):
        assert spelling in texts
    assert {spell_level("L5-S1", style) for style in LEVEL_STYLES} == {"L5/S1", "L5-S1"}


def test_levels_with_the_same_findings_share_one_sentence() -> None:
    pair = Findings({lv: replace(BULGE, level=lv) for lv in ("L4-L5", "L5-S1")})
    for text in notes(pair):
        assert re.search(r"L4.{1,3}5\s*(&|and)\s*L5.S1", text), text


def test_writer_is_deterministic_for_a_seed_and_varies_across_seeds() -> None:
    findings = Findings({"L4-L5": BULGE}, other=["spondylolisthesis"], incidental=["muscle_spasm"])
    assert notes(findings, range(5)) == notes(findings, range(5))
    assert len(set(notes(findings, range(20)))) >= 10


def test_sentences_are_split_back_and_headers_dropped() -> None:
    protrusion = replace(BULGE, level="L3-L4", disc="protrusion")
    findings = Findings({"L4-L5": BULGE, "L3-L4": protrusion}, incidental=["hemangioma"])
    for seed in range(20):
        text = write_synthetic_note(findings, random.Random(seed))
        sentences = split_sentences(text)
        header = max((h for h in HEADERS if text.startswith(h + " ")), key=len, default="")
        body = text[len(header) :]
        assert sentences == [s.strip().rstrip(".") for s in re.split(r"\.(?:\s|$)", body) if s.strip()], text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("L3-4: central bulge indenting thecal sac./// L4-5: protrusion noted",
         ["L3-4: central bulge indenting thecal sac", "L4-5: protrusion noted"]),
        ("LSS MRI : -Muscle spasm. -Disc bulge at L4/L5 -Dehydrated discs",
         ["Muscle spasm", "Disc bulge at L4/L5", "Dehydrated discs"]),
        ("About 4.5 cm cyst noted.Small bulge at L5-S1.", ["About 4.5 cm cyst noted", "Small bulge at L5-S1"]),
        ("L3-L4: Small bulge noted L4-L5: Large protrusion", ["L3-L4: Small bulge noted", "L4-L5: Large protrusion"]),
        ("Mild bulge noted at L4-L5 level No significant root compression",
         ["Mild bulge noted at L4-L5 level", "No significant root compression"]),
        ("Bulge at L4-L5 reaching the canal- more on the Rt", ["Bulge at L4-L5 reaching the canal- more on the Rt"]),
        ("Protrusion at L5/S1. NB: small renal cyst", ["Protrusion at L5/S1", "small renal cyst"]),
        ("", []),
    ],
)
def test_split_sentences_handles_real_note_punctuation(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_class_prompts_are_single_sentences_the_parser_classifies_correctly() -> None:
    prompts = class_prompts()
    assert set(prompts) == {0, 1} and len(prompts[0]) >= 3 and len(prompts[1]) >= 5
    for label, texts in prompts.items():
        for text in texts:
            assert len(split_sentences(text)) == 1, text
            assert parse_report(text).abnormal == bool(label), text
    prompts[0].append("changed")
    assert "changed" not in CLASS_PROMPTS[0]


def test_every_level_can_be_written() -> None:
    for level in LEVELS:
        text = write_synthetic_note(Findings({level: replace(BULGE, level=level)}), random.Random(0))
        assert parse_report(text).level(level).disc == "bulge", text
