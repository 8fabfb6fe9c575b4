"""`Findings` -> a note in the style of the real radiologists' notes (own phrasing, not copied).

The phrase tables below are the single source of the house style: the writer draws from them
with the caller's `random.Random`, and the zero-shot prompts (`CLASS_PROMPTS`) are rendered from
the same tables, so synthetic notes and prompts speak one language. Every sentence ends with
". " so that `split_sentences` recovers it for one-sentence-per-image sampling.
"""

from __future__ import annotations

import random
from dataclasses import astuple, replace

from lumbarclip.findings import IMAGED_LEVELS, LEVELS, Findings, LevelFindings
from lumbarclip.reports.levels import LEVEL_STYLES, spell_level

HEADERS: tuple[str, ...] = (
    "",
    "",
    "LSS MRI :",
    "LSS MRI",
    "Lumbosacral MRI",
    "MRI OF THE LSS",
    "MRI of the lumbosacral spine :",
)

SIDE_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("Lt", "left", "Lt"),
    "right": ("Rt", "right", "Rt"),
}
SEVERITY_WORDS: dict[str, tuple[str, ...]] = {
    "mild": ("mild", "small", "minimal"),
    "moderate": ("moderate",),
    "severe": ("large", "significant", "severe"),
}
#: Adverbs on the compression verb, by the disc's severity.
SEVERITY_ADVERBS: dict[str, tuple[str, ...]] = {
    "none": ("",),
    "mild": ("", "mildly ", "slightly "),
    "moderate": ("", "moderately "),
    "severe": ("largely ", "significantly ", "markedly "),
}
LOCATION_WORDS: dict[str, tuple[str, ...]] = {
    "diffuse": ("diffuse", "broad based", "wide base", "diffuse"),
    "central": ("central", "posterior central", "posterocentral"),
    "paracentral": ("{side} paracentral", "central and {side} paracentral"),
    "foraminal": ("{side} foraminal",),
}
KIND_WORDS: dict[str, tuple[str, str]] = {  # singular, plural
    "bulge": ("disc bulge", "disc bulges"),
    "protrusion": ("disc protrusion", "disc protrusions"),
    "extrusion": ("disc extrusion", "disc extrusions"),
}
THECAL_PHRASES: dict[str, tuple[str, ...]] = {
    "abutted": ("abutting the thecal sac", "abutting thecal sac"),
    "compressed": ("{adv}compressing the thecal sac", "{adv}compressing thecal sac", "indenting the thecal sac"),
}
ROOT_PHRASES: dict[str, tuple[str, ...]] = {
    "both": ("compressing both nerve roots", "compressing both exit nerve roots", "compressing the nerve roots"),
    "side": ("compressing the {side} exit nerve root", "compressing the {side} {root} nerve root"),
}
FORAMEN_PHRASES: dict[str, tuple[str, ...]] = {
    "both": (
        "encroaching exit neural canals",
        "encroaching upon both exit neural canals",
        "narrowing both neural foramina",
    ),
    "side": (
        "encroaching the {side} exit neural canal",
        "narrowing the {side} neural foramen",
        "encroaching upon {side} exit canal",
    ),
}
CANAL_PHRASES: dict[str, tuple[str, ...]] = {
    "mild": ("mildly narrowing the spinal canal",),
    "moderate": ("narrowing the spinal canal", "leading to secondary spinal canal stenosis"),
    "severe": ("leading to significant spinal canal stenosis", "severely narrowing the spinal canal"),
}
HYPERTROPHY_WORDS: dict[str, str] = {
    "facet_hypertrophy": "facet joint hypertrophy",
    "ligamentum_hypertrophy": "ligamentum flavum hypertrophy",
}
ANNULAR_TEAR = ("annular tear", "annular fissure")
DESICCATION: tuple[str, ...] = (
    "Desiccated disc material noted at {levels} level{s}",
    "Dehydrated disc material at {levels} level{s}",
    "Desiccating {levels} disc{s}",
)
#: A level whose disc is not bulging but which still shows degeneration (hypertrophy, a tear).
DEGENERATION = "degenerative changes"

#: Findings outside the per-disc model; {upper}/{lower}/{vertebra}/{level}/{side}/{n} are filled in.
OTHER_PHRASES: dict[str, tuple[str, ...]] = {
    "spondylolisthesis": (
        "Grade I spondylolisthesis of {upper} over {lower}",
        "Mild spondylolisthesis of {upper} over {lower} noted",
    ),
    "fracture": ("Old {vertebra} compression fracture noted", "Anterior wedging fracture of {vertebra} vertebral body"),
    "postoperative": (
        "Evidence of previous surgery noted at {level} level",
        "Previous surgery noted with transpedicular fixation",
    ),
    "stenosis": ("Secondary spinal canal stenosis noted", "Narrowed spinal canal noted"),
    "scoliosis": ("Scoliosis of the lumbar spine convex to the {side} side", "Mild lumbar scoliosis noted"),
    "schmorl_nodes": ("Multiple Schmorl's nodes noted", "Schmorl's node noted at the endplate of {vertebra}"),
    "marrow_edema": ("Bone marrow edema noted involving {vertebra} vertebral body", "Marrow edema of {vertebra} noted"),
    "muscle_spasm": (
        "Feature of muscle spasm",
        "Features of muscle spasm noted",
        "Straightening of the lumbar lordosis, mostly due to muscle spasm",
    ),
    "hemangioma": ("{vertebra} hemangioma", "Small vertebral body hemangioma of {vertebra} noted"),
    "pelvic_cyst": ("NB: about {n} cm pelvic cyst noted, correlate with US",),
    "renal_cyst": ("NB: small {side} renal cyst noted",),
}
#: Names that read best at the top of a note (the rest go after the disc findings, "NB:" style).
OPENING_FINDINGS = ("muscle_spasm", "scoliosis", "spondylolisthesis", "postoperative", "fracture")

NEGATED_DISC: tuple[str, ...] = (
    "No evidence of disc herniation",
    "No disc protrusion or herniation seen",
    "No significant disc protrusion or herniation noted",
)
NEGATED_COMPRESSION: tuple[str, ...] = (
    "No significant thecal sac or nerve root compression noted",
    "No thecal sac or nerve root compression noted",
    "No significant thecal sac or nerve root compression",
)
ADEQUATE_CANAL: tuple[str, ...] = (
    "Adequate spinal canal",
    "The spinal canal is still adequate",
    "The spinal canal appears adequate",
    "No significant spinal canal narrowing noted",
)
NEGATED_FORAMINA: tuple[str, ...] = (
    "No significant foraminal narrowing noted",
    "No narrowing of the exit neural canals",
    "No exit neural canal encroachment",
)
#: A named disc level said to be normal: rare in real notes (one lumbar sentence in a thousand).
NORMAL_LEVEL: tuple[str, ...] = (
    "{level}: normal disc",
    "Normal {level} disc",
    "The {level} disc is unremarkable",
)
#: How often each optional denial is written where it is true. With these rates about a fifth of
#: a note's lumbar sentences only deny, as in the real notes (`bench/statements.py` measures both).
DENIAL_RATES: dict[str, float] = {"herniation": 0.6, "compression": 0.8, "canal": 0.6, "foramina": 0.3, "level": 0.01}


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _join(items: list[str], rng: random.Random, joiners: tuple[str, ...] = (" and ",)) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + rng.choice(joiners) + items[-1]


def _levels_text(levels: list[str], style: str, rng: random.Random) -> str:
    return _join([spell_level(lv, style) for lv in levels], rng, (" & ", " and ", " & "))


def _side(side: str, rng: random.Random) -> str:
    return rng.choice(SIDE_WORDS[side])


def _subject(lf: LevelFindings, plural: bool, rng: random.Random) -> str:
    """The noun phrase: "mild Lt paracentral disc protrusion with annular tear"."""
    extras = [HYPERTROPHY_WORDS[name] for name in HYPERTROPHY_WORDS if getattr(lf, name)]
    if lf.annular_tear:
        extras.insert(0, rng.choice(ANNULAR_TEAR))
    if lf.disc == "normal":
        return _join(extras, rng) if extras else DEGENERATION
    words = []
    if lf.severity != "none":
        words.append(rng.choice(SEVERITY_WORDS[lf.severity]))
    side = {"none": "", "both": "bilateral"}[lf.side] if lf.side in ("none", "both") else _side(lf.side, rng)
    words += [rng.choice(LOCATION_WORDS[lf.location]).format(side=side), KIND_WORDS[lf.disc][int(plural)]]
    phrase = " ".join(" ".join(words).split())
    if lf.side in ("left", "right") and lf.location in ("diffuse", "central"):
        phrase += f", more to the {_side(lf.side, rng)} side,"
    if extras:
        phrase += " with " + _join(extras, rng)
    return phrase


def _effects(lf: LevelFindings, single_level: bool, rng: random.Random) -> list[str]:
    """Participle phrases for what the disc does to its neighbours."""
    out = []
    adverb = rng.choice(SEVERITY_ADVERBS[lf.severity])
    if lf.thecal_sac != "none":
        out.append(rng.choice(THECAL_PHRASES[lf.thecal_sac]).format(adv=adverb))
    root = lf.level.split("-")[1] if single_level else "exit"
    if lf.root_compression == "both":
        out.append(rng.choice(ROOT_PHRASES["both"]))
    elif lf.root_compression != "none":
        out.append(rng.choice(ROOT_PHRASES["side"]).format(side=_side(lf.root_compression, rng), root=root))
    if lf.foraminal_narrowing == "both":
        out.append(rng.choice(FORAMEN_PHRASES["both"]))
    elif lf.foraminal_narrowing != "none":
        out.append(rng.choice(FORAMEN_PHRASES["side"]).format(side=_side(lf.foraminal_narrowing, rng)))
    if lf.canal_narrowing != "none":
        out.append(rng.choice(CANAL_PHRASES[lf.canal_narrowing]))
    return out


def _level_sentence(lf: LevelFindings, levels: list[str], style: str, layout: str, rng: random.Random) -> str:
    """One sentence for a group of levels that share the same findings."""
    many = len(levels) > 1
    subject = _subject(lf, many, rng)
    effects = _join(_effects(lf, not many, rng), rng)
    where = _levels_text(levels, style, rng)
    tail = (", " + effects) if effects else ""
    if layout == "header":
        text = f"{where}: {_capital(subject)}{rng.choice(('', ' noted'))}{tail}"
    elif layout == "at" and not many:
        text = f"At the {where} level, {subject} noted{tail}"
    else:
        text = f"{_capital(subject)} noted at {where} level{'s' if many else ''}{tail}"
    return text.replace(",,", ",")


def _fill(template: str, findings: Findings, rng: random.Random) -> str:
    abnormal_levels = [lv for lv, lf in sorted(findings.levels.items()) if lf.abnormal]
    level = rng.choice(abnormal_levels or list(IMAGED_LEVELS))
    upper, lower = level.split("-")
    return template.format(
        upper=upper,
        lower=lower,
        level=spell_level(level, rng.choice(LEVEL_STYLES)),
        vertebra=f"L{rng.randint(1, 5)}",
        side=rng.choice(("left", "right")),
        n=rng.randint(2, 7),
    )


def _disc_sentences(findings: Findings, style: str, rng: random.Random) -> list[str]:
    """Desiccation first (one sentence for all its levels), then level groups with equal findings."""
    levels = [findings.levels[lv] for lv in LEVELS if lv in findings.levels and findings.levels[lv].abnormal]
    out = []
    dry = [lf.level for lf in levels if lf.desiccation]
    if dry:
        template = rng.choice(DESICCATION)
        out.append(template.format(levels=_levels_text(dry, style, rng), s="s" if len(dry) > 1 else ""))
    groups: dict[tuple, list[str]] = {}
    for lf in levels:
        rest = replace(lf, desiccation=False)
        if rest.abnormal:
            groups.setdefault(astuple(rest)[1:], []).append(lf.level)
    layout = rng.choice(("noted", "noted", "header", "at"))
    order = list(groups.items())
    if rng.random() < 0.3:
        order.reverse()  # some radiologists start from L5-S1
    for _, names in order:
        lf = replace(findings.levels[names[0]], desiccation=False)
        out.append(_level_sentence(lf, names, style, layout, rng))
    return out


def _denials(findings: Findings, style: str, rng: random.Random) -> list[str]:
    """Sentences that deny what the study does not have: study-wide ("No evidence of disc
    herniation", true at every level) and, rarely, a named imaged level called normal."""
    levels = [lf for lf in findings.levels.values() if lf.abnormal]
    rate = DENIAL_RATES
    out = []
    for level in IMAGED_LEVELS:
        if not findings.level(level).abnormal and rng.random() < rate["level"]:
            out.append(rng.choice(NORMAL_LEVEL).format(level=spell_level(level, style)))
    herniated = any(lf.disc in ("protrusion", "extrusion") for lf in levels)
    if not herniated and (not findings.abnormal or rng.random() < rate["herniation"]):
        out.append(rng.choice(NEGATED_DISC))
    # an abutted sac counts: the vocabulary's thecal_sac_compression is any thecal sac finding
    compressed = any(lf.thecal_sac != "none" or lf.root_compression != "none" for lf in levels)
    if not findings.abnormal or (not compressed and rng.random() < rate["compression"]):
        out.append(rng.choice(NEGATED_COMPRESSION))
    if not any(lf.canal_narrowing != "none" for lf in levels) and "stenosis" not in findings.other:
        if rng.random() < rate["canal"]:
            out.append(rng.choice(ADEQUATE_CANAL))
    if not any(lf.foraminal_narrowing != "none" for lf in levels) and rng.random() < rate["foramina"]:
        out.append(rng.choice(NEGATED_FORAMINA))
    return out


def write_synthetic_note(findings: Findings, rng: random.Random) -> str:
    """One note for `findings`; the same rng state always gives the same note."""
    style = rng.choice(LEVEL_STYLES)
    extra = list(findings.other) + list(findings.incidental)
    opening = [name for name in extra if name in OPENING_FINDINGS]
    closing = [name for name in extra if name not in OPENING_FINDINGS]
    sentences = [_fill(rng.choice(OTHER_PHRASES[name]), findings, rng) for name in opening]
    sentences += _disc_sentences(findings, style, rng)
    sentences += _denials(findings, style, rng)
    sentences += [_fill(rng.choice(OTHER_PHRASES[name]), findings, rng) for name in closing]
    header = rng.choice(HEADERS)
    body = ". ".join(_capital(s) for s in sentences) + "."
    return f"{header} {body}" if header else body


#: Typical abnormal studies; their disc sentences are the abnormal prompts.
_ABNORMAL_PROTOTYPES: tuple[Findings, ...] = tuple(
    Findings({lf.level: lf for lf in group})
    for group in (
        [LevelFindings("L4-L5", "bulge", "diffuse", thecal_sac="compressed")],
        [LevelFindings("L5-S1", "protrusion", "paracentral", "left", "mild", "compressed", "left")],
        [LevelFindings(lv, "bulge", "diffuse", severity="mild", thecal_sac="abutted") for lv in ("L4-L5", "L5-S1")],
        [LevelFindings("L4-L5", "protrusion", "central", thecal_sac="compressed", foraminal_narrowing="both")],
        [LevelFindings("L3-L4", "bulge", thecal_sac="compressed", canal_narrowing="moderate", facet_hypertrophy=True)],
    )
)


def _prompt_sentences(findings: Findings, seeds: range) -> list[str]:
    out = []
    for seed in seeds:
        rng = random.Random(seed)
        out += [_capital(s) + "." for s in _disc_sentences(findings, rng.choice(LEVEL_STYLES), rng)]
    return out


#: Zero-shot prompt ensembles per class (0 normal, 1 abnormal): single sentences, like the ones
#: sampled for training, rendered from the same tables as the notes.
CLASS_PROMPTS: dict[int, tuple[str, ...]] = {
    0: tuple(f"{s}." for s in NEGATED_DISC + NEGATED_COMPRESSION),
    1: tuple(dict.fromkeys(s for f in _ABNORMAL_PROTOTYPES for s in _prompt_sentences(f, range(2)))),
}


def class_prompts() -> dict[int, list[str]]:
    """A fresh copy of `CLASS_PROMPTS` (callers may extend their lists)."""
    return {label: list(prompts) for label, prompts in CLASS_PROMPTS.items()}
