"""One sentence -> what it states, finding by finding: (level, kind, present) triplets.

A report's label says what the patient has; a sentence says much less, and sometimes the
opposite: "No disc bulge at L3/L4" is a negative for bulge at L3-L4, "The L5-S1 disc is
normal" a negative for every kind there, "Adequate spinal canal" a negative for canal
narrowing. These triplets (MedKLIP's entity-position-exists) are the per-sentence targets of the
`sentence` label source: an image is scored against each sentence only on what that sentence
states, so negated and normal sentences become real targets instead of copies of the report's
label. A sentence that names no level speaks for every level (`level=None`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lumbarclip.findings import LEVEL_KINDS, LEVELS, level_kinds
from lumbarclip.reports.levels import find_levels
from lumbarclip.reports.lexicon import canonical_text
from lumbarclip.reports.parser import denied_kinds, parse_report

#: "normal disc", "unremarkable", "L3/L4: normal"; it speaks for the disc levels only in a
#: sentence about discs or levels ("Normal bony alignment" does not).
_NORMAL_RE = re.compile(r"\b(?:normal|unremarkable)\b")
_DISC_WORD_RE = re.compile(r"\b(?:discs?|disc\s+spaces?|levels?)\b")
#: "Adequate spinal canal", "the spinal canal is still adequate", "patent canal".
_ADEQUATE_CANAL_RE = re.compile(r"\b(?:adequate|patent|wide)\b.{0,30}\bcanal\b|\bcanal\b.{0,30}\b(?:adequate|patent)\b")


@dataclass(frozen=True)
class Statement:
    """One finding kind stated present or absent, at a level or (None) at every level."""

    level: str | None
    kind: str
    present: bool


def sentence_statements(sentence: str) -> list[Statement]:
    """What one sentence states about the per-level finding kinds, positives first.

    Positives come from the report parser; negatives from negated words (`denied_kinds`),
    "normal"/"unremarkable" (every kind absent, when the sentence states no finding) and an
    adequate canal. A kind both stated and denied at a level is taken as present ("bulge ...
    but no nerve root compression" denies the root, not the bulge)."""
    canon = canonical_text(sentence)
    named = [lv for mention in find_levels(canon) for lv in mention.lumbar]
    where: list[str | None] = list(dict.fromkeys(named)) or [None]
    parsed = parse_report(sentence)
    positives: dict[str | None, set[str]] = {}
    for level, lf in parsed.levels.items():
        key = level if named else None
        if key in where:
            positives.setdefault(key, set()).update(level_kinds(lf))
    negatives = denied_kinds(sentence)
    if _ADEQUATE_CANAL_RE.search(canon):
        negatives.add("canal_narrowing")
    if _NORMAL_RE.search(canon) and (named or _DISC_WORD_RE.search(canon)) and not positives:
        negatives |= set(LEVEL_KINDS)
    out = [Statement(lv, kind, True) for lv in where for kind in LEVEL_KINDS if kind in positives.get(lv, ())]
    out += [
        Statement(lv, kind, False)
        for lv in where
        for kind in LEVEL_KINDS
        if kind in negatives and kind not in positives.get(lv, ())
    ]
    return out


def statement_vector(statements: list[Statement], level: str) -> list[float]:
    """Ternary vector over `LEVEL_KINDS` for an image at `level`: +1 stated present, -1 stated
    absent, 0 not stated; statements without a level count for every level."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}; got {level!r}")
    vec = [0.0] * len(LEVEL_KINDS)
    for s in statements:
        if s.level in (None, level):
            k = LEVEL_KINDS.index(s.kind)
            vec[k] = 1.0 if s.present else (vec[k] or -1.0)
    return vec
