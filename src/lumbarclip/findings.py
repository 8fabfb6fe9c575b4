"""The structured vocabulary of lumbar spine MRI findings and the label vectors built from it.

Everything else speaks this vocabulary: the report writer and parser (`reports`), the phantom
renderer (`synth`) and the soft CLIP loss, whose targets come from `Findings.label_vector`.
Only the standard library is used here, so the vocabulary can be imported anywhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

LEVELS: tuple[str, ...] = ("L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")
#: The three discs imaged per patient, as in the paper's data (disc D3, D4, D5).
IMAGED_LEVELS: tuple[str, ...] = ("L3-L4", "L4-L5", "L5-S1")
SEQUENCES: tuple[str, ...] = ("T1", "T2")
#: Acquisition planes, in LPS axis order (the normal along x, y, z).
PLANES: tuple[str, ...] = ("sagittal", "coronal", "axial")

DISC_KINDS: tuple[str, ...] = ("normal", "bulge", "protrusion", "extrusion")
LOCATIONS: tuple[str, ...] = ("diffuse", "central", "paracentral", "foraminal")
SIDES: tuple[str, ...] = ("none", "left", "right", "both")
SEVERITIES: tuple[str, ...] = ("none", "mild", "moderate", "severe")
THECAL_SAC: tuple[str, ...] = ("none", "abutted", "compressed")

#: Findings outside the per-disc model that make a case abnormal (labelled LBP in the real data).
ABNORMAL_OTHER: tuple[str, ...] = (
    "spondylolisthesis",
    "fracture",
    "postoperative",
    "stenosis",
    "scoliosis",
    "schmorl_nodes",
    "marrow_edema",
)
#: Incidental findings that do not make a case abnormal on their own.
INCIDENTAL: tuple[str, ...] = ("muscle_spasm", "hemangioma", "pelvic_cyst", "renal_cyst")

#: Names of the multi-hot label vector, in order. "normal" is set only when nothing else is.
LABEL_NAMES: tuple[str, ...] = (
    "normal",
    "bulge",
    "protrusion",
    "extrusion",
    "thecal_sac_compression",
    "root_compression",
    "canal_narrowing",
    "foraminal_narrowing",
    "facet_hypertrophy",
    "ligamentum_hypertrophy",
    "desiccation",
    "annular_tear",
    "other_abnormal",
)


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass
class LevelFindings:
    """What a radiologist reports about one disc level."""

    level: str
    disc: str = "normal"
    location: str = "diffuse"
    side: str = "none"
    severity: str = "none"
    thecal_sac: str = "none"
    root_compression: str = "none"  # side(s) of compressed nerve roots
    canal_narrowing: str = "none"  # severity
    foraminal_narrowing: str = "none"  # side(s)
    facet_hypertrophy: bool = False
    ligamentum_hypertrophy: bool = False
    desiccation: bool = False
    annular_tear: bool = False

    def __post_init__(self) -> None:
        _check("level", self.level, LEVELS)
        _check("disc", self.disc, DISC_KINDS)
        _check("location", self.location, LOCATIONS)
        _check("side", self.side, SIDES)
        _check("severity", self.severity, SEVERITIES)
        _check("thecal_sac", self.thecal_sac, THECAL_SAC)
        _check("root_compression", self.root_compression, SIDES)
        _check("canal_narrowing", self.canal_narrowing, SEVERITIES)
        _check("foraminal_narrowing", self.foraminal_narrowing, SIDES)

    @property
    def abnormal(self) -> bool:
        """True when anything at this level departs from a healthy disc."""
        return self != LevelFindings(self.level)

    def label_vector(self) -> list[float]:
        """Multi-hot vector over `LABEL_NAMES` for this level alone."""
        on = {
            "bulge": self.disc == "bulge",
            "protrusion": self.disc == "protrusion",
            "extrusion": self.disc == "extrusion",
            "thecal_sac_compression": self.thecal_sac != "none",
            "root_compression": self.root_compression != "none",
            "canal_narrowing": self.canal_narrowing != "none",
            "foraminal_narrowing": self.foraminal_narrowing != "none",
            "facet_hypertrophy": self.facet_hypertrophy,
            "ligamentum_hypertrophy": self.ligamentum_hypertrophy,
            "desiccation": self.desiccation,
            "annular_tear": self.annular_tear,
        }
        vec = [1.0 if on.get(name, False) else 0.0 for name in LABEL_NAMES]
        if not any(vec):
            vec[0] = 1.0
        return vec


@dataclass
class Findings:
    """A whole study: per-level findings plus findings outside the disc model.

    Levels that are not listed are normal. `other` holds names from `ABNORMAL_OTHER`
    (they make the case abnormal), `incidental` names from `INCIDENTAL` (they do not).
    """

    levels: dict[str, LevelFindings] = field(default_factory=dict)
    other: list[str] = field(default_factory=list)
    incidental: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for key, lf in self.levels.items():
            if key != lf.level:
                raise ValueError(f"level key {key!r} does not match its findings ({lf.level!r})")
        for name in self.other:
            _check("other finding", name, ABNORMAL_OTHER)
        for name in self.incidental:
            _check("incidental finding", name, INCIDENTAL)

    def level(self, name: str) -> LevelFindings:
        """Findings at one level; a healthy disc when the level was not mentioned."""
        _check("level", name, LEVELS)
        return self.levels.get(name, LevelFindings(name))

    @property
    def abnormal(self) -> bool:
        """The binary label the paper uses: any finding at all, incidental ones excepted."""
        return bool(self.other) or any(lf.abnormal for lf in self.levels.values())

    @property
    def label(self) -> int:
        return int(self.abnormal)

    def label_vector(self) -> list[float]:
        """Multi-hot vector over `LABEL_NAMES` for the whole study (union over levels)."""
        vec = [0.0] * len(LABEL_NAMES)
        for lf in self.levels.values():
            if lf.abnormal:
                vec = [max(a, b) for a, b in zip(vec, lf.label_vector())]
        if self.other:
            vec[LABEL_NAMES.index("other_abnormal")] = 1.0
        vec[0] = 0.0 if any(vec[1:]) else 1.0
        return vec

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; only abnormal levels are listed."""
        return {
            "abnormal": self.abnormal,
            "levels": {k: asdict(v) for k, v in sorted(self.levels.items()) if v.abnormal},
            "other": list(self.other),
            "incidental": list(self.incidental),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Findings:
        """Inverse of `to_dict`; unknown keys are an error, not silently dropped."""
        known = {f.name for f in fields(LevelFindings)}
        levels = {}
        for key, raw in (data.get("levels") or {}).items():
            extra = set(raw) - known
            if extra:
                raise ValueError(f"unknown level field(s) {sorted(extra)} at {key}")
            levels[key] = LevelFindings(**{"level": key, **raw})
        return cls(
            levels=levels,
            other=list(data.get("other") or []),
            incidental=list(data.get("incidental") or []),
        )

    @classmethod
    def from_json(cls, text: str) -> Findings:
        return cls.from_dict(json.loads(text))


#: Kinds of finding reported per disc level: the per-level entries of `LABEL_NAMES`.
LEVEL_KINDS: tuple[str, ...] = LABEL_NAMES[1:-1]
#: Per-level slots of the findings vector: each kind, the side(s) affected, the disc severity.
LEVEL_SLOTS: tuple[str, ...] = LEVEL_KINDS + ("side_left", "side_right", "mild", "moderate", "severe")
#: Names of `Findings.findings_vector`, in order: (level, slot) for every level, then the
#: findings outside the disc model, then "normal" (set only when nothing else is).
FINDINGS_VECTOR_NAMES: tuple[str, ...] = (
    tuple(f"{level}:{slot}" for level in LEVELS for slot in LEVEL_SLOTS) + ABNORMAL_OTHER + ("normal",)
)


def level_kinds(lf: LevelFindings) -> set[str]:
    """The `LEVEL_KINDS` present at one level."""
    return {name for name, on in zip(LABEL_NAMES, lf.label_vector()) if on and name != "normal"}


def _level_slots(lf: LevelFindings) -> list[float]:
    kinds = level_kinds(lf)
    sides = {lf.side, lf.root_compression, lf.foraminal_narrowing}
    on = set(kinds)
    if sides & {"left", "both"}:
        on.add("side_left")
    if sides & {"right", "both"}:
        on.add("side_right")
    if lf.severity != "none":
        on.add(lf.severity)
    return [1.0 if slot in on else 0.0 for slot in LEVEL_SLOTS]


def findings_vector(findings: Findings) -> list[float]:
    """Multi-hot over `FINDINGS_VECTOR_NAMES`: what is found at which level, on which side and
    how severe, plus the findings outside the disc model. Two patients share a slot only when
    they share that finding at that level, so a similarity of these vectors separates patients
    that the binary label (or the union over levels, `label_vector`) lumps together."""
    vec: list[float] = []
    for level in LEVELS:
        vec += _level_slots(findings.level(level))
    vec += [1.0 if name in findings.other else 0.0 for name in ABNORMAL_OTHER]
    vec.append(0.0 if any(vec) else 1.0)
    return vec


def finding_set(findings: Findings) -> frozenset[str]:
    """The study's findings as a set of "level:kind" (and other-finding names), for Jaccard
    matching of reports; empty for a normal study."""
    out = {f"{level}:{kind}" for level, lf in findings.levels.items() for kind in level_kinds(lf)}
    return frozenset(out | set(findings.other))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a & b| / |a | b|; two normal studies (both empty) match fully."""
    union = a | b
    return 1.0 if not union else len(a & b) / len(union)


def binary_label_vector(label: int) -> list[float]:
    """One-hot vector [normal, abnormal]: the paper's two-class soft-loss targets."""
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1; got {label!r}")
    return [1.0 - label, float(label)]
