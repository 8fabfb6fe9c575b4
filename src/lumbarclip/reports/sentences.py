"""Report text -> sentences, robust to how real notes are typed.

Real notes separate findings with ". ", "///", "-" bullets, "L4-L5:" headers, or nothing at all
(line breaks lost in a spreadsheet: "...at L4-L5 level No significant ..."). They may cover
several examinations ("C.SPINE MRI : ... LSS MRI : ..."), so each sentence is tagged with the
region its examination header names; findings of a cervical or knee study must not be read as
lumbar ones. Exam headers themselves are not sentences (they name the study, not a finding).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lumbarclip.reports.levels import LEVEL_RE

_REGION = (
    r"(?:l\.?\s?ss|lumbo-?sacral(?:\s+spine)?|lumbar(?:\s+spine)?|l\.\s?spine"
    r"|c\.?\s?spine|cervical(?:\s+spine)?|d\.?\s?spine|dorsal(?:\s+spine)?|thoracic(?:\s+spine)?"
    r"|hip\s+joints?(?:\s*&\s*sij)?|si\s+joints?|sij|pelvis|(?:rt|lt|right|left)\s+knee|knee)"
)
_REGIONS = rf"{_REGION}(?:\s+(?:and|&)\s+{_REGION})*"
#: "LSS MRI :", "MRI OF THE LUMBOSACRAL SPINE", "C SPINE AND LSS MRI", "LSS MRI (with contrast ):"
#: - but not "Dorsal spine MRI is advised ...", which is a recommendation, not a header.
HEADER_RE = re.compile(
    rf"\b(?:mri\s+(?:of\s+the\s+)?{_REGIONS}|{_REGIONS}\s+mri)\b"
    r"(?!.{0,25}\b(?:adv\w*|recomm\w*)\b)"
    r"(?:\s*\((?:with|without)[^)]*\))?(?:\s+with(?:out)?\s+contrast\b)?\s*:?",
    re.IGNORECASE,
)
_LUMBAR_RE = re.compile(r"l\.?\s?ss|lumb|l\.\s?spine", re.IGNORECASE)

#: Words that open a finding in these notes; a run-on "... level No significant ..." is cut there.
_STARTERS = (
    "No|Mild|Moderate|Small|Large|Significant|Diffuse|Broad|Wide|Central|Left|Right|Bilateral"
    "|Multilevel|Multiple|Features?|Dehydrated|Desiccated|Desiccative|Desiccating|Dissicating"
    "|Adequate|Incidental|Straightening|Partial|Partially|Modic|Grade|Facet|Previous|Evidence"
    "|Old|Scoliosis|Spondylolisthesis|Posterior|There|Annular|Narrowed|Widely"
)
_RUN_ON_RE = re.compile(
    rf"(?<!\S)(?!(?:with|and|or|of|the|to|at|by|for|in|on|more|a|an)\s)[a-z][a-z0-9]*(\s+)(?=(?:{_STARTERS})\b)"
)
_LEVEL_HEADER_RE = re.compile(
    rf"(?:{LEVEL_RE.pattern})(?:\s*(?:,|&|and)?\s*(?:{LEVEL_RE.pattern}))*\s*(?:levels?)?\s*:",
    re.IGNORECASE,
)
#: ".", "//" runs, "-" bullets and "NB:" end a sentence; a dot between digits ("4.5 cm") does not.
_BREAK_RE = re.compile(
    r"(?<!\d)\.+|\.+(?!\d)|/{2,}|(?:^|(?<=\s))-(?=[a-z])|\n|;|\bN\.?B\s*:", re.IGNORECASE
)
_EDGE = " \t-.,:;/&"


@dataclass(frozen=True)
class Sentence:
    """One sentence and whether it belongs to a lumbar examination."""

    text: str
    lumbar: bool


def _mark_run_ons(text: str) -> str:
    """Insert breaks before level headers, and before sentence starters that follow a lower-case
    content word with no punctuation ("level No significant"; not "Mild Diffuse", "with Central")."""
    cuts = [m.start() for m in _LEVEL_HEADER_RE.finditer(text) if m.start() > 0]
    cuts += [m.end(1) for m in _RUN_ON_RE.finditer(text)]
    for cut in sorted(set(cuts), reverse=True):
        before = text[:cut].rstrip()
        if before and before[-1].isalnum():
            text = before + "\n" + text[cut:].lstrip()
    return text


def sentences_with_regions(text: str) -> list[Sentence]:
    """Sentences of a note, each tagged lumbar or not by the latest exam header before it."""
    out: list[Sentence] = []
    lumbar = True  # a note without a header is a lumbar note
    position = 0
    chunks: list[tuple[str, bool]] = []
    for header in HEADER_RE.finditer(text):
        chunks.append((text[position : header.start()], lumbar))
        lumbar = bool(_LUMBAR_RE.search(header.group(0)))
        position = header.end()
    chunks.append((text[position:], lumbar))
    for chunk, is_lumbar in chunks:
        for piece in _BREAK_RE.split(_mark_run_ons(chunk)):
            piece = " ".join(piece.split()).strip(_EDGE)
            if any(ch.isalpha() for ch in piece):
                out.append(Sentence(piece, is_lumbar))
    return out


def split_sentences(text: str) -> list[str]:
    """The sentences of a report, without exam headers, in order (for one-sentence sampling)."""
    return [s.text for s in sentences_with_regions(text)]
