"""Free-text lumbar MRI report -> `Findings`, negation- and uncertainty-aware.

Pipeline: sentences tagged by examination (`sentences`) -> typo repair (`lexicon`) -> level
spellings (`levels`) -> concept mentions found by the rules below, dropped when they start in a
negated or uncertain scope (`negation`) -> mentions attached to levels -> one `LevelFindings`
per level, plus whole-study findings.

Where a finding sits (the level rules):
- the level(s) its clause names ("Diffuse disc bulges noted at L4/L5 & L5/S1 levels",
  "L4-L5: ..."); a range ("(L4-S1)") means every disc in between;
- "multilevel ..." with no level named -> the three imaged discs L3-L4, L4-L5, L5-S1 (where
  degeneration sits and what the images show); "multilevel bulges, noticeably at L4-L5,
  compressing ..." -> bulges at those three, the compression at L4-L5;
- "at lower levels", "lower lumbar discs" -> L4-L5 and L5-S1; "the S1 nerve root" -> L5-S1;
- a fragment that continues the previous sentence ("Mildly compressing the thecal sac",
  "... at the same level") -> the previous sentence's levels;
- any other disc finding with no level -> L4-L5, the disc most often affected, so that the study
  is still abnormal and the finding is drawn where it most likely is.
Levels outside the lumbar spine (C5/C6, D11/D12, T12-L1) and sentences under another
examination's header (cervical, dorsal, hip, knee) are not lumbar findings: the images are
lumbar axial slices. In the labels no note turns on this: every note with such a finding also
has a lumbar one or none of its own (a dorsal-spine-only note is labelled 0).

What makes a study abnormal follows the vocabulary (`Findings.abnormal`); the comments on
`_RULES` and `_OTHER_RULES` give how the authors' `lbp` labels of the 437 real notes
("1 = any finding") bear on each rule - counts of note types, not individual notes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import reduce

from lumbarclip.findings import (
    ABNORMAL_OTHER,
    DISC_KINDS,
    IMAGED_LEVELS,
    INCIDENTAL,
    SEVERITIES,
    THECAL_SAC,
    Findings,
    LevelFindings,
)
from lumbarclip.reports.levels import find_levels, group_levels
from lumbarclip.reports.lexicon import canonical_text
from lumbarclip.reports.negation import inside, scopes
from lumbarclip.reports.sentences import sentences_with_regions

DEFAULT_LEVEL = "L4-L5"
LOWER_LEVELS = ("L4-L5", "L5-S1")


def _r(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _words(*alternatives: str) -> re.Pattern[str]:
    """Any of the alternatives, each starting at a word boundary."""
    return _r("|".join(rf"\b(?:{alternative})" for alternative in alternatives))


# -- per-level concepts: (kind of mention, value, pattern) ------------------------------------------
# Labels: ANY disc bulge, protrusion or extrusion makes a study abnormal, whatever its size and even
# with "no significant thecal sac or nerve root compression": of the notes whose only findings are
# bulges that compress nothing, 33 are labelled 1 and 5 are labelled 0. Desiccation alone also
# counts ("dehydrated disc ... no evidence of disc herniation" -> 1).
_RULES: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    ("disc", "bulge", _words(r"bulg(?:e|es|ing)\b")),
    # "herniation" is the generic word; a herniated disc not called an extrusion is a protrusion.
    ("disc", "protrusion", _words(r"protru(?:sion|sions|ding)\b", r"herniat(?:ion|ions|ed)\b")),
    # A migrated or sequestrated fragment is by definition an extrusion.
    ("disc", "extrusion", _words(
        r"extru(?:sion|sions|ded)\b", r"sequest(?:rated|ration|ered)\b", r"migrat(?:ion|ing|ed)\b")),
    ("location", "diffuse", _words(
        r"diffuse(?:ly)?\b", r"(?:broad|wide)\s*-?\s*based?\b", r"circumferential\b", r"annular\s+disc\s+bulge")),
    ("location", "central", _words(r"(?:posterior\s*-?\s*|postero)?central\b", r"median\b")),
    ("location", "paracentral", _words(r"para\s*-?\s*central\b", r"paramedian\b", r"posterolateral\b")),
    ("location", "foraminal", _words(r"(?:extra|intra)?foraminal\b(?!\s+(?:narrowing|stenosis|encroachment))")),
    ("side", "left", _words(r"(?:lt|left)\b")),
    ("side", "right", _words(r"(?:rt|right)\b")),
    ("side", "both", _words(r"(?:both|bilateral(?:ly)?)\b")),
    ("severity", "mild", _words(r"(?:mild|mildly|small|slight|slightly|minimal)\b")),
    ("severity", "moderate", _words(r"moderate(?:ly)?\b")),
    ("severity", "severe", _words(r"(?:severe|significant|large|marked)(?:ly)?\b")),
    # What the disc does: verbs, then the structures they act on.
    ("verb", "compress", _words(
        r"(?:compress|indent|impinge|displac|effac|obliterat|encroach|deform)\w*", r"impinging\b", r"filling\b")),
    ("verb", "abut", _words(r"(?:abut|touch|contact)\w*")),
    ("verb", "narrow", _words(r"narrow\w*", r"stenosis\b", r"stenotic\b")),
    ("object", "thecal", _words(r"(?:thecal|theca|dural\s+sac|(?:spinal\s+)?cord)\b")),
    ("object", "root", _words(r"(?:nerves?\s+roots?|roots?)\b", r"exit(?:ing)?\s+nerves?\b(?!\s+(?:canal|root))")),
    ("object", "foramen", _words(
        r"(?:(?:exit(?:ing)?|neural|nerve)\s+)+canals?\b", r"foram(?:en|ina)\b",
        r"foraminal(?=\s+(?:narrowing|stenosis|encroachment))")),
    ("object", "canal", _words(
        r"spinal\s+canal\b", r"(?:spinal|canal)(?=\s+stenosis)", r"lateral\s+recess\s+stenosis")),
    ("facet_hypertrophy", "", _words(
        r"facets?(?:\s+joints?)?(?:\s+\w+){0,3}\s+hypertroph\w*", r"hypertroph\w*\s+(?:of\s+)?(?:the\s+)?facet")),
    ("ligamentum_hypertrophy", "", _words(
        r"ligament(?:um)?(?:\s+flav(?:um|a))?\s+(?:thickening|hypertroph\w*)",
        r"hypertroph\w*\s+(?:of\s+)?(?:the\s+)?ligament")),
    # "desiccated", "dehydrated" and their usual misspellings ("dissicating", "dissecated").
    ("desiccation", "", _words(r"desiccat\w*", r"dehydrat\w*", r"d[ie]s+[ie]?c+a?[tr](?:ed|ing|ion|ive)\b")),
    ("annular_tear", "", _words(
        r"(?:annular|annulus|posterocentral|paracentral|posterolateral|radial)\s+(?:\w+\s+)?(?:tears?|fissures?)\b")),
)
# -- whole-study findings (ABNORMAL_OTHER or INCIDENTAL, as the vocabulary files them) ------------------
# Labels: spondylolisthesis, fractures (old ones too: "old compression fracture, no disc herniation"
# -> 1), previous surgery, scoliosis, Schmorl's nodes and marrow oedema come with label 1.
# Vertebral haemangiomas, Tarlov and pelvic cysts alone come with 0 (Tarlov cysts are not recorded:
# the vocabulary has no entry for them). Muscle spasm is split: of the notes whose only finding is
# "feature(s) of muscle spasm", 20 are labelled 1 and 8 are labelled 0 - the label column is not
# consistent there. The vocabulary files muscle spasm as incidental (it does not make a study
# abnormal); moving "muscle_spasm" to ABNORMAL_OTHER in `findings` would follow the majority of
# those labels instead (bench/parser.py gives the agreement either way).
_OTHER_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("spondylolisthesis", _words(r"(?:spondylo|antero|retro)?listhesis\b")),
    ("fracture", _words(
        r"fractur(?:e|es|ed)\b", r"(?:anterior\s+)?wedging\b", r"loss\s+of\s+(?:\w+\s+){0,3}height\b", r"collapse\b")),
    ("postoperative", _words(
        r"(?:previous|recent)\s+(?:surgery|operations?)\b", r"postoperative\b", r"operated\b", r"laminectomy\b",
        r"(?:transpedicular|transpedicle)\s+(?:fixation|screws)", r"fixation\s+screws",
        r"granulation\b", r"fibrosis\b")),
    ("scoliosis", _words(r"scolio(?:sis|tic)\b")),
    ("schmorl_nodes", _words(r"schmorls?\b", r"limbus\s+vertebra")),
    ("marrow_edema", _words(r"marrow\s+edema\b", r"bon[ey]\s+bruise\b", r"modic\s+type\s*(?:i|1)(?![iv\d])")),
    ("muscle_spasm", _words(r"muscle\s+spasm\b", r"straightening\s+of\s+the\s+lumbar\b")),
    ("hemangioma", _words(r"hemangiomas?\b")),
    ("renal_cyst", _words(r"(?:renal|kidney|cortical)\s+cysts?\b")),
    ("pelvic_cyst", _words(r"pelvic\s+(?:\w+\s+)?cysts?\b", r"(?:ovarian|adnexal)\s+cysts?\b")),
)
_MULTILEVEL_RE = _words(r"multilevel\b", r"(?:multiple|several|other)\s+levels\b", r"elsewhere\b")
_LOWER_RE = _words(r"lower\s+(?:lumbar\s+)?(?:levels?|discs?|disc\s+spaces?|lumbar)\b")
_S1_ROOT_RE = _r(r"\bs1\s+(?:nerve\s+)?roots?\b")  # the root an L5-S1 disc compresses
_SAME_LEVEL_RE = _r(r"\b(?:same|this|these)\s+levels?\b")
_CONTINUATION_RE = _r(r"^(?:\w+ly\s+)?(?:(?:with|and|associated)\b|compress|abut|encroach|indent|narrow)")
#: "thecal sac compression", "the Lt exit canal also appeared compressed": the verb after its object.
_POST_VERB_RE = _r(
    r"^(?:\s+(?!and\b|or\b)\w+){0,2}?\s+(?:appears?\s+|appeared\s+|is\s+)?"
    r"(compression|compressed|narrowing|narrowed|narrow|stenosis|encroachment|indentation)\b"
)

_ADJECTIVES = ("location", "side", "severity")
_LEVEL_FLAGS = ("facet_hypertrophy", "ligamentum_hypertrophy", "desiccation", "annular_tear")
_LOCATIVE_RE = _r(r"\b(?:at|of)\b")
#: "noticeably at L4-L5", "largest at L4-L5": the worst of several levels, not the only one.
_EMPHASIS_RE = _r(
    r"\b(?:no[tcr]\w*bl[ey]|mainly|mostly|largest|especially|particularly|predominantly)\s+(?:\w+\s+){0,2}$"
)
_KIND_RANK = {kind: i for i, kind in enumerate(DISC_KINDS)}
_SEVERITY_RANK = {sev: i for i, sev in enumerate(SEVERITIES)}
_LOCATION_RANK = {"diffuse": 0, "central": 1, "paracentral": 2, "foraminal": 3}


@dataclass(frozen=True)
class _Mention:
    kind: str
    value: str
    start: int
    end: int


@dataclass
class _Clause:
    """The mentions that belong to one set of levels."""

    levels: tuple[str, ...]
    mentions: list[_Mention] = field(default_factory=list)
    assumed: bool = False  # no level was named: the levels come from the level rules


def _union(a: str, b: str) -> str:
    """Sides combine: left + right = both; "none" adds nothing."""
    if a == "none" or a == b:
        return b
    if b == "none":
        return a
    return "both"


def _all_mentions(text: str) -> list[_Mention]:
    found = [
        _Mention(kind, value, m.start(), m.end())
        for kind, value, pattern in _RULES
        for m in pattern.finditer(text)
    ]
    found += [
        _Mention("other", name, m.start(), m.end()) for name, pattern in _OTHER_RULES for m in pattern.finditer(text)
    ]
    tears = [(m.start, m.end) for m in found if m.kind == "annular_tear"]
    # "posterolateral annular tear": the location word belongs to the tear
    found = [m for m in found if not (m.kind == "location" and inside(m.start, tears))]
    return sorted(found, key=lambda m: (m.start, m.end))


def _mentions(text: str) -> list[_Mention]:
    negated, uncertain = scopes(text)
    return [m for m in _all_mentions(text) if not inside(m.start, negated) and not inside(m.start, uncertain)]


#: What a negated word denies at a level: "no disc herniation" denies protrusion and extrusion,
#: "no ... nerve root compression" a compressed root.
_DENIED: dict[tuple[str, str], tuple[str, ...]] = {
    ("disc", "bulge"): ("bulge",),
    ("disc", "protrusion"): ("protrusion", "extrusion"),
    ("disc", "extrusion"): ("extrusion",),
    ("object", "thecal"): ("thecal_sac_compression",),
    ("object", "root"): ("root_compression",),
    ("object", "foramen"): ("foraminal_narrowing",),
    ("object", "canal"): ("canal_narrowing",),
    **{(flag, ""): (flag,) for flag in _LEVEL_FLAGS},
}


def denied_kinds(sentence: str) -> set[str]:
    """The per-level finding kinds (`LEVEL_KINDS`) a sentence denies: words in a negated scope
    ("No significant thecal sac or nerve root compression", "not causing foraminal narrowing").
    Uncertain words deny nothing."""
    canon = canonical_text(sentence)
    negated, uncertain = scopes(canon)
    return {
        kind
        for m in _all_mentions(canon)
        if inside(m.start, negated) and not inside(m.start, uncertain)
        for kind in _DENIED.get((m.kind, m.value), ())
    }


def _clauses(text: str, mentions: list[_Mention], context: tuple[str, ...]) -> list[_Clause]:
    """Give every mention to one level group of its sentence.

    A disc word takes the level that follows it through "noted at (the level of)" ("bulge noted
    at L4/L5"), else the level before it ("L4-L5: ... bulge"). Adjectives (location, side,
    severity) go with the disc word they precede, effects with the disc word before them, and
    level-bound findings (hypertrophy, desiccation, tear) with the nearest level.
    """
    groups = group_levels(text, find_levels(text))
    if not groups:
        if _MULTILEVEL_RE.search(text):
            levels = IMAGED_LEVELS
        elif _LOWER_RE.search(text):
            levels = LOWER_LEVELS
        elif _S1_ROOT_RE.search(text):
            levels = ("L5-S1",)
        elif context and (_CONTINUATION_RE.match(text) or _SAME_LEVEL_RE.search(text)):
            levels = context
        else:
            levels = (DEFAULT_LEVEL,)
        return [_Clause(levels, mentions, assumed=True)]
    spans = [(g[0].start, g[-1].end) for g in groups]
    clauses = [_Clause(tuple(lv for m in g for lv in m.lumbar)) for g in groups]
    discs = [m for m in mentions if m.kind == "disc"]
    emphasis = {i for i, (lo, _) in enumerate(spans) if _EMPHASIS_RE.search(text[max(0, lo - 40) : lo])}

    def nearest(m: _Mention) -> int:
        return min(range(len(spans)), key=lambda i: max(spans[i][0] - m.end, m.start - spans[i][1], 0))

    def disc_owner(d: _Mention) -> int:
        after = next((i for i, (lo, _) in enumerate(spans) if lo >= d.end and i not in emphasis), None)
        before = max((i for i, (_, hi) in enumerate(spans) if hi <= d.start), default=None)
        if after is not None:
            gap = text[d.end : spans[after][0]]
            crossed = any(d.end < o.start < spans[after][0] for o in discs)
            if len(gap) <= 60 and _LOCATIVE_RE.search(gap) and not crossed:
                return after
        return before if before is not None else nearest(d)

    for m in mentions:
        if m.kind == "disc":
            owner = disc_owner(m)
        elif m.kind in _LEVEL_FLAGS or not discs:
            owner = nearest(m)
        else:
            following = next((d for d in discs if d.start > m.start), None)
            preceding = next((d for d in reversed(discs) if d.start <= m.start), None)
            adjective = (
                m.kind in _ADJECTIVES
                and following is not None
                and 0 <= following.start - m.end <= 40
                and not any(o.kind in ("verb", "object") and m.end <= o.start < following.start for o in mentions)
            )
            owner = disc_owner(following if adjective or preceding is None else preceding)
        clauses[owner].mentions.append(m)
    if _MULTILEVEL_RE.search(text) and len(emphasis) == len(spans):
        # "Multilevel disc bulges, noticeably at L4-L5, compressing ...": the discs are at every
        # imaged level, their effects where the note names them.
        shared = [m for m in mentions if m.kind in ("disc", "location", "severity")]
        clauses.append(_Clause(IMAGED_LEVELS, shared, assumed=True))
    return clauses


def _effects(mentions: list[_Mention], text: str) -> list[tuple[str, str, str]]:
    """(object, action, side) triples: a verb governs the objects after it until the next verb or
    disc ("compressing the thecal sac and both nerve roots"); an object may also carry its verb
    after it ("thecal sac compression"). Side words between a verb and its object are the object's."""
    out = []
    verb: _Mention | None = None
    for m in mentions:
        if m.kind == "disc":
            verb = None
        elif m.kind == "verb":
            verb = m
        elif m.kind == "object":
            post = _POST_VERB_RE.match(text[m.end :])
            if verb is None and not post:
                continue
            # Side words between the verb and the object, or right before an object that carries
            # its own verb ("Rt foraminal narrowing").
            lo = verb.end if verb is not None else next(
                (s.start for s in mentions if s.kind == "side" and m.start - 2 <= s.end <= m.start), m.start
            )
            if post:  # the object's own verb is the nearer one: "abutting ... and spinal canal stenosis"
                action = "narrow" if post.group(1).startswith(("narrow", "sten")) else "compress"
            else:
                action = verb.value
            reach = m.end + (post.end() if post else 0)
            side = _sides([s.value for s in mentions if s.kind == "side" and lo <= s.start < reach])
            # An unsided root or foramen ("exit neural canals", "the exit canal") is taken as both.
            out.append((m.value, action, "both" if side == "none" else side))
    return out


def _sides(values: list[str]) -> str:
    return reduce(_union, values, "none")


def _clause_findings(clause: _Clause, text: str) -> LevelFindings | None:
    """What one clause says about its levels (None when it says nothing abnormal about a disc)."""
    ms = clause.mentions
    lf = LevelFindings(clause.levels[0])
    kinds = [m.value for m in ms if m.kind == "disc"]
    if kinds:
        locations = [m.value for m in ms if m.kind == "location"]
        lf = replace(
            lf,
            disc=max(kinds, key=_KIND_RANK.__getitem__),
            location=max(locations, key=_LOCATION_RANK.__getitem__) if locations else "diffuse",
        )
    for obj, action, side in _effects(ms, text):
        if obj == "thecal":
            state = "abutted" if action == "abut" else "compressed"
            lf = replace(lf, thecal_sac=max(lf.thecal_sac, state, key=THECAL_SAC.index))
        elif action == "abut":
            continue  # a root or foramen that is only touched is not compressed or narrowed
        elif obj == "root":
            lf = replace(lf, root_compression=_union(lf.root_compression, side))
        elif obj == "foramen":
            lf = replace(lf, foraminal_narrowing=_union(lf.foraminal_narrowing, side))
        elif obj == "canal":
            lf = replace(lf, canal_narrowing="moderate")  # graded below when the note grades it
    claimed = {  # side words between a verb and its object describe the object, not the disc
        s.start for s in ms if s.kind == "side" for o in ms
        if o.kind == "object" and any(v.kind == "verb" and v.end <= s.start < o.end for v in ms)
    }
    disc_grades, canal_grades = _grades(ms)
    lf = replace(lf, **{name: True for name in _LEVEL_FLAGS if any(m.kind == name for m in ms)})
    if lf.disc != "normal":
        side = _sides([s.value for s in ms if s.kind == "side" and s.start not in claimed])
        lf = replace(lf, side=side, severity=_worst(disc_grades))
    if lf.canal_narrowing != "none" and canal_grades:
        lf = replace(lf, canal_narrowing=_worst(canal_grades))
    return lf if lf.abnormal else None


def _worst(grades: list[str]) -> str:
    return max(grades, key=_SEVERITY_RANK.__getitem__, default="none")


def _grades(ms: list[_Mention]) -> tuple[list[str], list[str]]:
    """Severity words split into the disc's and the spinal canal's: a word grades the canal when
    the next verb or object after it leads to the canal ("significant spinal canal stenosis",
    "mildly narrowing the spinal canal"), otherwise the disc ("mild bulge", "largely compressing")."""
    disc, canal = [], []
    for i, m in enumerate(ms):
        if m.kind != "severity":
            continue
        # The first disc or object after the word, looking through one verb.
        target = next((o for o in ms[i + 1 :] if o.kind in ("disc", "object")), None)
        between = [o for o in ms[i + 1 :] if target is not None and o.start < target.start and o.kind == "verb"]
        graded = target is not None and target.value == "canal" and len(between) <= 1
        (canal if graded else disc).append(m.value)
    return disc, canal


def _merge(a: LevelFindings, b: LevelFindings) -> LevelFindings:
    """Two statements about one level: the larger disc finding wins, effects and flags add up."""
    lead = b if _KIND_RANK[b.disc] > _KIND_RANK[a.disc] else a
    return replace(
        lead,
        thecal_sac=max(a.thecal_sac, b.thecal_sac, key=THECAL_SAC.index),
        root_compression=_union(a.root_compression, b.root_compression),
        canal_narrowing=max(a.canal_narrowing, b.canal_narrowing, key=_SEVERITY_RANK.__getitem__),
        foraminal_narrowing=_union(a.foraminal_narrowing, b.foraminal_narrowing),
        **{name: getattr(a, name) or getattr(b, name) for name in _LEVEL_FLAGS},
    )


def parse_report(text: str) -> Findings:
    """The findings a free-text lumbar MRI report states (see the module docstring for the rules)."""
    levels: dict[str, LevelFindings] = {}
    named: list[str] = []
    context: tuple[str, ...] = ()
    for sentence in sentences_with_regions(text):
        if not sentence.lumbar:
            continue
        canon = canonical_text(sentence.text)
        mentions = _mentions(canon)
        named += [m.value for m in mentions if m.kind == "other" and m.value not in named]
        clauses = _clauses(canon, mentions, context)
        for clause in clauses:
            found = _clause_findings(clause, canon) if clause.levels else None
            if found is None:
                continue
            if clause.assumed and found == LevelFindings(found.level, canal_narrowing=found.canal_narrowing):
                named.append("stenosis")  # "Secondary spinal canal stenosis noted.": no disc to pin it on
                continue
            for level in clause.levels:
                lf = replace(found, level=level)
                levels[level] = _merge(levels[level], lf) if level in levels else lf
        context = next((c.levels for c in reversed(clauses) if c.levels), context)
    return Findings(
        levels=dict(sorted(levels.items())),
        other=[n for n in ABNORMAL_OTHER if n in named],
        incidental=[n for n in INCIDENTAL if n in named],
    )
