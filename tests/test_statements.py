"""Per-sentence statements (level, kind, present), the targets of `loss.labels=sentence`."""

from __future__ import annotations

import random

import numpy as np
import pytest

from lumbarclip.findings import IMAGED_LEVELS, LEVEL_KINDS, level_kinds
from lumbarclip.reports import split_sentences, write_synthetic_note
from lumbarclip.reports.statements import Statement, sentence_statements, statement_vector
from lumbarclip.synth.cohort import sample_findings


def _set(sentence: str) -> set[tuple[str | None, str, bool]]:
    return {(s.level, s.kind, s.present) for s in sentence_statements(sentence)}


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("No evidence of disc herniation", {(None, "protrusion", False), (None, "extrusion", False)}),
        (
            "No significant thecal sac or nerve root compression noted",
            {(None, "thecal_sac_compression", False), (None, "root_compression", False)},
        ),
        ("Adequate spinal canal", {(None, "canal_narrowing", False)}),
        ("no significant spinal canal narrowing noted", {(None, "canal_narrowing", False)}),
        ("Feature of muscle spasm", set()),
        ("Normal bony alignment", set()),  # "normal", but not about the discs
        ("? small annular tear at L4/L5", set()),  # uncertain: neither present nor denied
        (
            "L5-S1: broad based central disc bulge indenting thecal sac but not causing nerve root compression",
            {("L5-S1", "bulge", True), ("L5-S1", "thecal_sac_compression", True), ("L5-S1", "root_compression", False)},
        ),
        ("Diffuse disc bulges noted at L4/L5 & L5/S1 levels", {("L4-L5", "bulge", True), ("L5-S1", "bulge", True)}),
        ("Multilevel disc bulges", {(None, "bulge", True)}),
    ],
)
def test_sentence_statements(sentence: str, expected: set) -> None:
    assert _set(sentence) == expected


def test_a_normal_level_denies_every_kind_there_only() -> None:
    stated = sentence_statements("The L3/L4 disc is unremarkable")
    assert {s.kind for s in stated} == set(LEVEL_KINDS)
    assert all(s.level == "L3-L4" and not s.present for s in stated)
    assert statement_vector(stated, "L3-L4") == [-1.0] * len(LEVEL_KINDS)
    assert statement_vector(stated, "L4-L5") == [0.0] * len(LEVEL_KINDS)


def test_statement_vector_present_wins_and_general_statements_count_everywhere() -> None:
    stated = [
        Statement(None, "bulge", False),
        Statement("L4-L5", "bulge", True),
        Statement(None, "canal_narrowing", False),
    ]
    vec = statement_vector(stated, "L4-L5")
    assert vec[LEVEL_KINDS.index("bulge")] == 1.0
    assert vec[LEVEL_KINDS.index("canal_narrowing")] == -1.0
    assert statement_vector(stated, "L3-L4")[LEVEL_KINDS.index("bulge")] == -1.0
    with pytest.raises(ValueError, match="level"):
        statement_vector(stated, "L9-L10")


@pytest.mark.parametrize("seed", range(3))
def test_written_notes_never_contradict_their_findings(seed: int) -> None:
    """Every statement the writer makes, denials included, is true of the findings it wrote from
    at every imaged level it speaks for (the targets of the sentence loss are right)."""
    rng = np.random.default_rng(seed)
    text_rng = random.Random(seed)
    denials = 0
    for _ in range(150):
        findings = sample_findings(rng, abnormal=bool(rng.random() < 0.7))
        for sentence in split_sentences(write_synthetic_note(findings, text_rng)):
            for s in sentence_statements(sentence):
                for level in [s.level] if s.level else list(IMAGED_LEVELS):
                    has = s.kind in level_kinds(findings.level(level))
                    assert has == s.present or (s.present and s.level is None), (sentence, s, findings.to_dict())
                denials += not s.present
    assert denials > 50
