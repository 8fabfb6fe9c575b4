"""The report parser: one test per rule family, with sentences written for these tests, a
writer -> parser round trip over random findings, and the `parse-report` command."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from lumbarclip.cli import main
from lumbarclip.findings import (
    ABNORMAL_OTHER,
    DISC_KINDS,
    IMAGED_LEVELS,
    INCIDENTAL,
    LEVELS,
    LOCATIONS,
    SEVERITIES,
    SIDES,
    THECAL_SAC,
    Findings,
    LevelFindings,
)
from lumbarclip.reports import parse_report, write_synthetic_note
from lumbarclip.reports.lexicon import canonical_word
from lumbarclip.reports.levels import find_levels


def levels_of(text: str) -> dict[str, LevelFindings]:
    return parse_report(text).levels


# -- levels --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "level"),
    [
        ("L4/L5", "L4-L5"), ("L4-L5", "L4-L5"), ("L4-5", "L4-L5"), ("L4/5", "L4-L5"), ("l4_l5", "L4-L5"),
        ("L45", "L4-L5"), ("L4 - L5", "L4-L5"), ("L5-S1", "L5-S1"), ("L5/S1", "L5-S1"), ("L5/S 1", "L5-S1"),
        ("L5S1", "L5-S1"), ("L1-2", "L1-L2"), ("L2/L3", "L2-L3"), ("L3-l4", "L3-L4"),
    ],
)
def test_every_level_spelling(spelling: str, level: str) -> None:
    assert set(levels_of(f"Small central disc protrusion noted at {spelling} level.")) == {level}
    assert set(levels_of(f"{spelling}: broad based disc bulge indenting the thecal sac.")) == {level}
    assert set(levels_of(f"At the {spelling} level, a central disc protrusion is seen.")) == {level}


@pytest.mark.parametrize(
    ("text", "levels"),
    [
        ("Diffuse disc bulges seen at L3/L4 & L4/L5 levels.", {"L3-L4", "L4-L5"}),
        ("Disc bulges noted at L2-L3, L3-L4 and L4-L5 levels.", {"L2-L3", "L3-L4", "L4-L5"}),
        ("Diffuse disc bulges (L3-S1) indenting the thecal sac.", {"L3-L4", "L4-L5", "L5-S1"}),
        ("L3-L4 and L5-S1: mild disc bulges.", {"L3-L4", "L5-S1"}),
        ("Disc bulges at L3/L4/&L4/L5 levels.", {"L3-L4", "L4-L5"}),
    ],
)
def test_level_lists_and_ranges(text: str, levels: set[str]) -> None:
    found = levels_of(text)
    assert set(found) == levels and all(lf.disc == "bulge" for lf in found.values())


def test_levels_of_a_run_on_note_go_to_their_own_findings() -> None:
    found = levels_of("L3-L4: Mild disc bulge noted L4-L5: Lt paracentral protrusion compressing the Lt exit canal")
    assert found["L3-L4"].disc == "bulge" and found["L3-L4"].foraminal_narrowing == "none"
    assert found["L4-L5"].disc == "protrusion" and found["L4-L5"].foraminal_narrowing == "left"
    found = levels_of("Broad based bulge noted at L3/L4 level, indenting the thecal sac, small protrusion at L5/S1")
    assert found["L3-L4"].disc == "bulge" and found["L3-L4"].thecal_sac == "compressed"
    assert found["L5-S1"].disc == "protrusion" and found["L5-S1"].thecal_sac == "none"


def test_findings_without_a_level_follow_the_level_rules() -> None:
    assert set(levels_of("Multilevel mild disc bulges seen.")) == set(IMAGED_LEVELS)
    found = levels_of("Multilevel disc bulges, most notably at L4/L5 level, compressing the thecal sac.")
    assert set(found) == set(IMAGED_LEVELS) and found["L4-L5"].thecal_sac == "compressed"
    assert found["L3-L4"].thecal_sac == "none"
    assert set(levels_of("Desiccated disc material at the lower levels.")) == {"L4-L5", "L5-S1"}
    assert set(levels_of("Small central disc protrusion is seen.")) == {"L4-L5"}
    assert set(levels_of("Rt paracentral disc protrusion compressing the Rt S1 nerve root.")) == {"L5-S1"}
    found = levels_of("Mild disc bulge seen at L5/S1 level. Mildly indenting the thecal sac.")
    assert set(found) == {"L5-S1"} and found["L5-S1"].thecal_sac == "compressed"


def test_non_lumbar_levels_and_examinations_are_not_lumbar_findings() -> None:
    assert not parse_report("Broad based disc bulge at C5/C6 level indenting the cord.").abnormal
    assert not parse_report("Central disc protrusion at D11/D12 level compressing the spinal cord.").abnormal
    assert not parse_report("T12-L1: posterior disc bulge abutting the cord.").abnormal
    text = "CERVICAL SPINE MRI: Multilevel disc bulges. LSS MRI: No evidence of disc herniation."
    assert not parse_report(text).abnormal
    text = "KNEE MRI: meniscal tear. LSS MRI: Diffuse disc bulge at L4/L5 level."
    assert set(levels_of(text)) == {"L4-L5"} and not levels_of(text)["L4-L5"].annular_tear
    assert [m.lumbar for m in find_levels("d12/l1 l2/l3")] == [(), ("L2-L3",)]
    assert find_levels("low signal on T1/T2 weighted images") == []  # MRI weightings, not a level


# -- kinds, locations, sides, severities -----------------------------------------------------------


@pytest.mark.parametrize(
    ("phrase", "kind"),
    [
        ("mild disc bulge", "bulge"), ("diffuse bulging disc", "bulge"), ("central disc protrusion", "protrusion"),
        ("disc herniation", "protrusion"), ("herniated disc", "protrusion"), ("large disc extrusion", "extrusion"),
        ("sequestrated disc fragment", "extrusion"), ("protrusion migrating caudally", "extrusion"),
    ],
)
def test_disc_kinds(phrase: str, kind: str) -> None:
    assert levels_of(f"L4/L5: {phrase}.")["L4-L5"].disc == kind


@pytest.mark.parametrize(
    ("phrase", "location", "side"),
    [
        ("Diffuse disc bulge", "diffuse", "none"),
        ("Broad based disc bulge", "diffuse", "none"),
        ("Wide base disc bulge, more to the Rt side,", "diffuse", "right"),
        ("Posterior central disc protrusion", "central", "none"),
        ("Lt paracentral disc protrusion", "paracentral", "left"),
        ("Central and right paracentral disc protrusion", "paracentral", "right"),
        ("Left posterolateral disc protrusion", "paracentral", "left"),
        ("Rt foraminal disc protrusion", "foraminal", "right"),
        ("Bilateral foraminal disc protrusions", "foraminal", "both"),
    ],
)
def test_locations_and_sides_of_the_disc(phrase: str, location: str, side: str) -> None:
    lf = levels_of(f"{phrase} seen at L5-S1 level.")["L5-S1"]
    assert (lf.location, lf.side) == (location, side)


@pytest.mark.parametrize(
    ("word", "severity"),
    [("Mild", "mild"), ("Small", "mild"), ("Moderate", "moderate"), ("Large", "severe"), ("Significant", "severe")],
)
def test_severities(word: str, severity: str) -> None:
    assert levels_of(f"{word} central disc protrusion at L4-L5.")["L4-L5"].severity == severity
    assert levels_of("Disc bulge at L4-L5, markedly compressing the thecal sac.")["L4-L5"].severity == "severe"


# -- effects and degeneration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("effect", "field", "value"),
    [
        ("abutting the thecal sac", "thecal_sac", "abutted"),
        ("indenting the thecal sac", "thecal_sac", "compressed"),
        ("effacing the dural sac", "thecal_sac", "compressed"),
        ("with thecal sac compression", "thecal_sac", "compressed"),
        ("compressing both exit nerve roots", "root_compression", "both"),
        ("compressing the Lt L5 nerve root", "root_compression", "left"),
        ("impinging on the right traversing nerve root", "root_compression", "right"),
        ("encroaching exit neural canals", "foraminal_narrowing", "both"),
        ("narrowing the left neural foramen", "foraminal_narrowing", "left"),
        ("with Rt foraminal narrowing", "foraminal_narrowing", "right"),
        ("leading to secondary spinal canal stenosis", "canal_narrowing", "moderate"),
        ("mildly narrowing the spinal canal", "canal_narrowing", "mild"),
        ("with significant spinal canal stenosis", "canal_narrowing", "severe"),
    ],
)
def test_effects_on_neighbouring_structures(effect: str, field: str, value: str) -> None:
    lf = levels_of(f"Diffuse disc bulge seen at L4-L5 level, {effect}.")["L4-L5"]
    assert getattr(lf, field) == value


def test_an_abutted_root_is_not_a_compressed_one() -> None:
    lf = levels_of("L5-S1: Small protrusion abutting the thecal sac and the Rt S1 nerve root.")["L5-S1"]
    assert (lf.thecal_sac, lf.root_compression) == ("abutted", "none")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("Disc bulge at L4/L5 with facet joint hypertrophy.", "facet_hypertrophy"),
        ("Hypertrophied facets at L4/L5.", "facet_hypertrophy"),
        ("Disc bulge at L4/L5 with ligamentum flavum hypertrophy.", "ligamentum_hypertrophy"),
        ("Hypertrophied ligamenta flava at L4/L5.", "ligamentum_hypertrophy"),
        ("Desiccated L4/L5 disc.", "desiccation"),
        ("Dehydrated disc material at L4/L5 level.", "desiccation"),
        ("Bulge at L4/L5 with a posterior annular fissure.", "annular_tear"),
        ("Bulge with annular tear at L4/L5.", "annular_tear"),
    ],
)
def test_degenerative_level_findings(text: str, field: str) -> None:
    assert getattr(levels_of(text)["L4-L5"], field) is True


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Grade I anterolisthesis of L4 over L5.", "spondylolisthesis"),
        ("Grade II spondylolisthesis of L5 on S1.", "spondylolisthesis"),
        ("Old wedge compression fracture of the L2 vertebral body.", "fracture"),
        ("Status post laminectomy at L4-L5 with enhancing granulation tissue.", "postoperative"),
        ("Previous surgery with transpedicular fixation screws.", "postoperative"),
        ("Lumbar scoliosis convex to the right.", "scoliosis"),
        ("Multiple Schmorl's nodes.", "schmorl_nodes"),
        ("Bone marrow edema of the L3 vertebral body.", "marrow_edema"),
        ("Features of muscle spasm.", "muscle_spasm"),
        ("L3 vertebral body haemangioma.", "hemangioma"),
        ("NB: 3 cm right ovarian cyst, correlate with ultrasound.", "pelvic_cyst"),
        ("NB: small left renal cyst.", "renal_cyst"),
    ],
)
def test_other_and_incidental_findings(text: str, name: str) -> None:
    findings = parse_report(text)
    assert name in (findings.other if name in ABNORMAL_OTHER else findings.incidental)
    assert findings.abnormal == (name in ABNORMAL_OTHER)


# -- negation and uncertainty ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "No evidence of disc herniation.",
        "No significant thecal sac or nerve root compression is seen.",
        "No disc protrusion, extrusion or herniation.",
        "Without thecal sac indentation or spinal canal stenosis.",
        "The spinal canal is still adequate. Adequate thecal sac.",
        "No evidence of disc bulge, thecal sac or foraminal narrowing at any level.",
        "Negative for spondylolisthesis or fracture.",
        "L4-L5: no significant disc herniation or neural foraminal narrowing.",
        "No significant change since the previous study.",
    ],
)
def test_negated_findings_are_not_findings(text: str) -> None:
    assert parse_report(text).to_dict() == Findings().to_dict()


def test_negation_scope_ends_where_a_new_finding_starts() -> None:
    lf = levels_of("L5-S1: central bulge indenting the thecal sac but not causing nerve root compression.")["L5-S1"]
    assert (lf.disc, lf.thecal_sac, lf.root_compression) == ("bulge", "compressed", "none")
    lf = levels_of("Mild disc bulge at L4-L5, abutting the thecal sac. No significant nerve root compression.")["L4-L5"]
    assert (lf.disc, lf.thecal_sac, lf.root_compression) == ("bulge", "abutted", "none")
    found = parse_report("No bone marrow edema, mostly an old healed fracture of L1.")
    assert found.other == ["fracture"]
    found = parse_report("Old L2 compression fracture without retropulsion into the canal.")
    assert found.other == ["fracture"] and not found.levels


@pytest.mark.parametrize(
    "text",
    [
        "Soft tissue at L4/L5 ? sequestrated disc.",
        "Disc extrusion at L4/L5 cannot be excluded.",
        "Small endplate lesion, probably a Schmorl's node.",
        "Possible spondylolisthesis of L4 over L5, suggest flexion views.",
        "L1 vertebral body hemangioma ?",
    ],
)
def test_uncertain_findings_are_not_findings(text: str) -> None:
    findings = parse_report(text)
    assert not findings.abnormal and not findings.incidental


# -- typos and run-on notes ------------------------------------------------------------------------


def test_typos_common_in_real_notes_are_read() -> None:
    text = (
        "Mild Rt paracentral disc protruion at L4/L5, compresing the thercal sac and Rt exit nerev root, "
        "with ligametum flavum hyperatrophy. Dissicating disc materail at L4/L5. Grade I spondylolithesis "
        "of L4 over L5. Multiple schmorles nodules."
    )
    findings = parse_report(text)
    lf = findings.levels["L4-L5"]
    assert (lf.disc, lf.side, lf.thecal_sac, lf.root_compression) == ("protrusion", "right", "compressed", "right")
    assert lf.ligamentum_hypertrophy and lf.desiccation
    assert findings.other == ["spondylolisthesis", "schmorl_nodes"]


def test_typo_repair_leaves_other_words_alone() -> None:
    assert [canonical_word(w) for w in ("protruion", "hyperatrophy", "nerev", "thecalsac")] == [
        "protrusion", "hypertrophy", "nerve", "thecal sac"]
    assert [canonical_word(w) for w in ("marrow", "narrow", "never", "years", "within", "fibroid")] == [
        "marrow", "narrow", "never", "years", "within", "fibroid"]


def test_run_on_note_without_full_stops() -> None:
    found = parse_report("Lumbosacral MRI Mild disc bulge noted at L5-S1 level No significant thecal sac compression")
    assert found.abnormal and found.levels["L5-S1"].thecal_sac == "none"
    found = parse_report("LSS MRI No evidence of disc herniation Diffuse disc bulge seen at L3/L4 level")
    assert set(found.levels) == {"L3-L4"}


# -- the authors' labelling convention ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "abnormal"),
    [
        # Any disc bulge counts, even mild and with no significant compression.
        ("Mild disc bulge at L4-L5. No significant thecal sac or nerve root compression. Adequate canal.", True),
        # Desiccation alone counts.
        ("Dehydrated L5-S1 disc. No evidence of disc herniation.", True),
        # So do old fractures and previous surgery.
        ("Old L1 compression fracture. No evidence of disc herniation.", True),
        # Incidental findings do not.
        ("L2 haemangioma. No evidence of disc herniation. No thecal sac compression.", False),
        ("Features of muscle spasm. No disc herniation. No significant nerve root compression.", False),
        ("Small Tarlov cyst at S2. No evidence of disc herniation.", False),
    ],
)
def test_labelling_convention(text: str, abnormal: bool) -> None:
    assert parse_report(text).abnormal is abnormal


# -- writer -> parser round trip --------------------------------------------------------------------


def random_findings(rng: random.Random) -> Findings:
    """Any combination the vocabulary allows (not a clinical distribution), ~20% normal."""
    levels = {}
    if rng.random() < 0.8:
        for level in rng.sample(LEVELS, rng.randint(1, 3)):
            lf = LevelFindings(
                level, rng.choice(DISC_KINDS), rng.choice(LOCATIONS), rng.choice(SIDES), rng.choice(SEVERITIES),
                rng.choice(THECAL_SAC), rng.choice(SIDES), rng.choice(SEVERITIES), rng.choice(SIDES),
                *(rng.random() < 0.25 for _ in range(4)),
            )
            if lf.disc == "normal":  # location, side and severity describe a disc finding
                lf = replace(lf, location="diffuse", side="none", severity="none")
            levels[level] = lf
    other = [name for name in ABNORMAL_OTHER if rng.random() < 0.08]
    incidental = [name for name in INCIDENTAL if rng.random() < 0.15]
    return Findings({k: v for k, v in levels.items() if v.abnormal}, other, incidental)


def test_writer_parser_round_trip() -> None:
    rng = random.Random(2024)
    for _ in range(300):
        truth = random_findings(rng)
        text = write_synthetic_note(truth, rng)
        parsed = parse_report(text)
        assert parsed.abnormal == truth.abnormal, text
        assert (set(parsed.other), set(parsed.incidental)) == (set(truth.other), set(truth.incidental)), text
        for level, lf in truth.levels.items():
            assert parsed.level(level).disc == lf.disc, text


# -- the command -----------------------------------------------------------------------------------


def test_cli_prints_findings_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["parse-report", "L4-L5: Lt paracentral disc protrusion compressing the thecal sac."]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["abnormal"] is True and out["levels"]["L4-L5"]["side"] == "left"
    note = tmp_path / "note.txt"
    note.write_text("No evidence of disc herniation.\n", encoding="utf-8")
    assert main(["parse-report", "--file", str(note)]) == 0
    assert json.loads(capsys.readouterr().out) == Findings().to_dict()


@pytest.mark.parametrize("content", [None, b"", b"  \n", b"\xff\xfe bad bytes \x80"])
def test_cli_refuses_bad_report_files(
    content: bytes | None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "note.txt"
    if content is not None:
        path.write_bytes(content)
    assert main(["parse-report", "--file", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lumbarclip parse-report: error:") and str(path) in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [[], ["   "], ["text", "--file", "x.txt"]])
def test_cli_refuses_missing_or_double_input(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parse-report", *argv]) == 2
    assert "error" in capsys.readouterr().err
