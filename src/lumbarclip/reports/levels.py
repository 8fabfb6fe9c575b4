"""Disc levels as radiologists write them (L4/L5, L4-L5, L4-5, L45, L5-S1, D12/L1, C5/C6) and back.

One regex reads every spelling; `spell_level` writes the three house styles. Levels outside
the lumbar spine (cervical, dorsal/thoracic, the thoracolumbar junction) are recognised so that
they can be set aside, never mistaken for a lumbar level.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lumbarclip.findings import LEVELS

#: How a note spells its levels; one style is used for a whole note.
LEVEL_STYLES: tuple[str, ...] = ("slash", "hyphen", "short")

_V = r"([ltdcs])\s?(\d{1,2})"
#: Two vertebrae joined by -, / or _ ("L4-L5", "l4/ l5", "L5/S 1", "T12 - L1", "L4_L5"), the
#: upper letter repeated or not ("L4-5"); or the compact "L45" / "L5S1" (only consecutive pairs).
LEVEL_RE = re.compile(
    rf"(?<![a-z0-9]){_V}\s?(?:[-/_]|\s-\s)\s?(?:([ltdcs])\s?)?(\d{{1,2}})(?!\d)"
    r"|(?<![a-z0-9])l([1-5])(?:([2-5])|s1)(?![a-z0-9])",
    re.IGNORECASE,
)
#: Words that join the levels of a list: "L4/L5 & L5/S1", "L3-L4, L4-L5 and L5-S1", "L3/L4/&L4/L5",
#: "L3/L4 & at L4/L5".
LIST_JOINER_RE = re.compile(r"^[\s,&/()]*(?:(?:and|&)[\s,&/()]*)?(?:at\s+(?:the\s+)?)?$", re.IGNORECASE)

_ORDER = ["c", "t", "l", "s"]  # cervical, thoracic (dorsal), lumbar, sacral


@dataclass(frozen=True)
class LevelMention:
    """One spelled level in a text: where it is and which lumbar levels it names (maybe none)."""

    start: int
    end: int
    lumbar: tuple[str, ...]  # empty for a non-lumbar level such as C5/C6 or D11/D12


def _vertebra(letter: str, number: int) -> tuple[int, int]:
    letter = "t" if letter.lower() == "d" else letter.lower()
    return _ORDER.index(letter), number


def _levels_between(upper: tuple[int, int], lower: tuple[int, int]) -> tuple[str, ...]:
    """Lumbar disc levels spanned from one vertebra to another ("L4-S1" -> L4-L5, L5-S1)."""
    lumbar = _ORDER.index("l")
    if upper[0] != lumbar or not 1 <= upper[1] <= 5:
        return ()
    if lower == (_ORDER.index("s"), 1):
        last = 5
    elif lower[0] == lumbar and upper[1] < lower[1] <= 5:
        last = lower[1] - 1
    else:
        return ()
    return tuple(LEVELS[i - 1] for i in range(upper[1], last + 1))


def find_levels(text: str) -> list[LevelMention]:
    """Every level spelling in `text`, in order; non-lumbar ones carry no lumbar level."""
    mentions = []
    for m in LEVEL_RE.finditer(text):
        if m.group(1):
            upper = _vertebra(m.group(1), int(m.group(2)))
            lower = _vertebra(m.group(3) or m.group(1), int(m.group(4)))
        else:
            upper = _vertebra("l", int(m.group(5)))
            lower = _vertebra("l", int(m.group(6))) if m.group(6) else _vertebra("s", 1)
            if lower[0] == upper[0] and lower[1] != upper[1] + 1:
                continue  # "L35" is not a level anyone writes; leave it alone
        if lower <= upper:
            continue  # "L5-L4": not a disc level
        if upper[0] == _ORDER.index("t") and upper[1] < 10:
            continue  # "T1/T2" names the two MRI weightings; upper thoracic discs are not in these notes
        mentions.append(LevelMention(m.start(), m.end(), _levels_between(upper, lower)))
    return mentions


def group_levels(text: str, mentions: list[LevelMention]) -> list[list[LevelMention]]:
    """Mentions joined only by list words ("L4/L5 & L5/S1") form one group."""
    groups: list[list[LevelMention]] = []
    for mention in mentions:
        if groups and LIST_JOINER_RE.match(text[groups[-1][-1].end : mention.start]):
            groups[-1].append(mention)
        else:
            groups.append([mention])
    return groups


def spell_level(level: str, style: str) -> str:
    """Write a level from `LEVELS` in one house style: L4/L5, L4-L5 or L4-5 (L5-S1 stays whole)."""
    upper, lower = level.split("-")
    if style == "slash":
        return f"{upper}/{lower}"
    if style == "hyphen":
        return level
    if style == "short":
        return f"{upper}-{lower[1:]}" if lower[0] == upper[0] else level
    raise ValueError(f"level style must be one of {', '.join(LEVEL_STYLES)}; got {style!r}")
