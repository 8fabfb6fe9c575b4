"""DICOM study discovery: which files of a study a model reads (axial models: the T1/T2
disc-level slices; sagittal models: the middle slice of each T1/T2 stack).

One rule for the Mendeley adapter and for `lumbarclip predict`:
- files are grouped by series (SeriesInstanceUID, else the folder);
- a series' plane is the patient axis its slice normal (row x column direction of
  ImageOrientationPatient) lies closest to (z: axial, x: sagittal), and it needs
  `MIN_AXIAL_SLICES` slices (fewer is a localiser);
- T1 or T2 comes from the series description (or protocol name), else from the repetition
  time (TR < 1000 ms: T1; a long TR with a short TE, proton density, is neither) and the echo
  time;
- per sequence the series of the model's plane with the most slices is used; of a sagittal
  stack, its middle slice by position along the normal;
- without disc localisation the slice for each of the lowest three discs is a heuristic: the
  stack is cut into slabs where the slice orientation changes or the spacing jumps (the usual
  one-slab-per-disc protocols); with three or more slabs the middle slice of each of the three
  most inferior slabs is taken, otherwise the stack is assumed to cover the three discs evenly
  and the middle slice of each third is taken. It does not check that a disc is in the slice.

Only technical attributes are read; the series UID is used for grouping and never reported.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lumbarclip.data.imageio import open_dicom, quiet_readers
from lumbarclip.findings import IMAGED_LEVELS, PLANES

#: Repetition time below which a spin-echo series counts as T1-weighted.
T1_MAX_TR_MS = 1000.0
#: Echo time below which a long-TR series is proton density, not T2-weighted.
T2_MIN_TE_MS = 40.0
#: Slices whose normals differ by more than this belong to different slabs.
SLAB_ANGLE_DEG = 2.0
#: A gap this many times the typical slice step also starts a new slab.
SLAB_GAP_FACTOR = 1.5
#: Fewer slices than this and a series is a localiser, not an axial stack.
MIN_AXIAL_SLICES = 3
SEQUENCES: tuple[str, str] = ("T1", "T2")


@dataclass(frozen=True)
class SliceHeader:
    """Geometry and weighting of one DICOM slice (internal: `series` and `study` are UIDs)."""

    path: Path
    series: str
    sequence: str | None
    normal: tuple[float, float, float]
    z: float  # patient z of the slice centre (LPS: larger is superior)
    study: str = ""  # StudyInstanceUID; "" when the file has none
    modality: str = ""
    body_part: str = ""
    position: float = 0.0  # the slice centre along its own normal (orders a sagittal stack)


@dataclass(frozen=True)
class ChosenSlice:
    """One slice picked for diagnosis, and why."""

    path: Path
    sequence: str  # T1 | T2
    level: str  # L3-L4 | L4-L5 | L5-S1
    reason: str
    series_number: int = 0  # 1.. in file order within the study (no header value)


def slice_header(path: Path) -> SliceHeader | None:
    """Geometry and weighting of one DICOM file, or None when it has no usable geometry.
    InputError when the file is not readable DICOM."""
    with quiet_readers():
        ds = open_dicom(path, header_only=True)
        try:
            iop = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=float)
            ipp = np.array([float(v) for v in ds.ImagePositionPatient], dtype=float)
            rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
            spacing = [float(v) for v in ds.get("PixelSpacing", [0.0, 0.0])]
        except (AttributeError, TypeError, ValueError):
            return None
        if iop.shape != (6,) or ipp.shape != (3,) or len(spacing) != 2:
            return None
        sequence = classify_sequence(
            f"{ds.get('SeriesDescription', '')} {ds.get('ProtocolName', '')}",
            _float_or_none(ds.get("RepetitionTime")),
            _float_or_none(ds.get("EchoTime")),
        )
        series = str(ds.get("SeriesInstanceUID") or path.parent)
        study = str(ds.get("StudyInstanceUID") or "")
        modality, body_part = str(ds.get("Modality") or ""), str(ds.get("BodyPartExamined") or "")
    normal = np.cross(iop[:3], iop[3:])
    if not np.isfinite(normal).all() or np.linalg.norm(normal) < 0.5:
        return None
    centre = ipp + iop[:3] * spacing[1] * cols / 2 + iop[3:] * spacing[0] * rows / 2
    unit = tuple(float(v) for v in normal / np.linalg.norm(normal))
    position = float(np.dot(centre, np.asarray(unit)))
    return SliceHeader(path, series, sequence, unit, float(centre[2]), study, modality, body_part, position)  # type: ignore[arg-type]


def _float_or_none(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def classify_sequence(description: str, tr_ms: float | None, te_ms: float | None) -> str | None:
    """'T1', 'T2' or None: from the series name when it says, else from TR (and TE)."""
    found = set(re.findall(r"(?<![a-z0-9])t([12])(?![0-9])", description.lower()))
    if len(found) == 1:
        return f"T{found.pop()}"
    if tr_ms is None:
        return None
    if tr_ms < T1_MAX_TR_MS:
        return "T1"
    if te_ms is not None and te_ms < T2_MIN_TE_MS:
        return None  # long TR, short TE: proton density
    return "T2"


#: BodyPartExamined values (upper case, DICOM PS3.16 Annex L and common vendor spellings) that
#: may hold the lumbar spine; another value refuses the image.
LUMBAR_BODY_PARTS: frozenset[str] = frozenset(
    {"LSPINE", "SPINE", "TLSPINE", "LSSPINE", "SSPINE", "LUMBAR", "LUMBARSPINE", "LUMBAR SPINE", "L-SPINE", "WHOLESPINE", "BACK"}
)


def plane(normal: tuple[float, float, float]) -> str:
    """The acquisition plane the slice normal lies closest to (LPS axes)."""
    return PLANES[int(np.argmax(np.abs(normal)))]


def header_refusal(head: SliceHeader, planes: tuple[str, ...] | None = ("axial",)) -> str | None:
    """Why a DICOM slice is outside what the model takes (Modality MR, one of the model's
    `planes`, a lumbar body part where the header names one), or None when it passes. Study
    folders pass `planes=None`: `choose_slices` picks the series of the model's plane."""
    if head.modality and head.modality.upper() != "MR":
        return f"modality {head.modality.upper()[:8]!r} is not MR"
    if planes is not None and plane(head.normal) not in planes:
        return f"{plane(head.normal)} slice: the model reads {' and '.join(planes)} slices only"
    part = head.body_part.strip().upper()
    if part and part not in LUMBAR_BODY_PARTS:
        return "body part examined is not the lumbar spine"
    return None


def choose_slices(heads: Iterable[SliceHeader], planes: tuple[str, ...] = ("axial",)) -> tuple[list[ChosenSlice], list[str]]:
    """The slices of one study's headers a model of `planes` reads, and one line per series
    saying what was done with it (series are numbered 1.. in file order; no header value is
    quoted). Axial: the disc-level slices (module docstring). Sagittal: the middle slice of the
    T1 and of the T2 sagittal stack, by position along the slice normal (the mid-sagittal slice
    the sagittal models learnt from)."""
    series: dict[str, list[SliceHeader]] = defaultdict(list)
    for head in sorted(heads, key=lambda h: str(h.path)):
        series[head.series].append(head)
    number = {uid: i for i, uid in enumerate(series, start=1)}
    notes: dict[str, str] = {}
    best: dict[str, str] = {}
    for uid, stack in series.items():
        sequences = {h.sequence for h in stack}
        seen = {plane(h.normal) for h in stack}
        if len(seen) != 1 or not seen <= set(planes):
            notes[uid] = f"not {' or '.join(planes)} (orientation from ImageOrientationPatient)"
        elif len(stack) < MIN_AXIAL_SLICES:
            notes[uid] = f"{len(stack)} slice(s): a localiser, not a stack"
        elif len(sequences) != 1 or None in sequences:
            notes[uid] = "neither T1 nor T2 (series description, TR and TE)"
        else:
            seq = next(iter(sequences))
            if seq not in best or len(stack) > len(series[best[seq]]):
                best[seq] = uid
            notes[uid] = f"{next(iter(seen))} {seq}, {len(stack)} slices"
    chosen: list[ChosenSlice] = []
    for seq in SEQUENCES:
        if seq not in best:
            continue
        uid = best[seq]
        if plane(series[uid][0].normal) == "axial":
            for level, (head, how) in disc_slices(series[uid]).items():
                chosen.append(ChosenSlice(head.path, seq, level, f"series {number[uid]}: {how}", number[uid]))
        else:
            ordered = sorted(series[uid], key=lambda h: h.position)
            mid = len(ordered) // 2
            how = f"series {number[uid]}: middle slice ({mid + 1} of {len(ordered)} along the slice normal)"
            chosen.append(ChosenSlice(ordered[mid].path, seq, "", how, number[uid]))
        for other, note in notes.items():
            if other != uid and note.endswith(f"{seq}, {len(series[other])} slices") and not note.startswith("not"):
                notes[other] = note + f": not used, series {number[uid]} has more slices"
        notes[uid] += ": used"
    lines = [f"series {number[uid]}: {note}" for uid, note in notes.items()]
    return chosen, lines


def disc_slices(stack: Iterable[SliceHeader]) -> dict[str, tuple[SliceHeader, str]]:
    """The slice standing for each of the lowest three discs, with how it was picked
    (see the module docstring); inferior first: L5-S1, L4-L5, L3-L4."""
    ordered = sorted(stack, key=lambda h: h.z)
    cut = slabs(ordered)
    n = len(IMAGED_LEVELS)
    if len(cut) >= n:
        picks = [slab[len(slab) // 2] for slab in cut[:n]]
        how = [f"middle slice of slab {i + 1} of {len(cut)} from inferior" for i in range(n)]
    else:
        thirds = len(ordered) / n
        idx = [int((i + 0.5) * thirds) for i in range(n)]
        picks = [ordered[i] for i in idx]
        how = [
            f"no slab per disc: middle slice of third {i + 1} of the stack from inferior "
            f"(slice {idx[i] + 1} of {len(ordered)})"
            for i in range(n)
        ]
    return dict(zip(reversed(IMAGED_LEVELS), zip(picks, how)))


def slabs(ordered: list[SliceHeader]) -> list[list[SliceHeader]]:
    """Runs of slices (inferior first) with one orientation and no jump in spacing."""
    steps = np.diff([h.z for h in ordered])
    moving = steps[steps > 1e-3]  # repeated positions say nothing about the spacing
    typical = float(np.median(moving)) if len(moving) else np.inf
    cos_limit = np.cos(np.radians(SLAB_ANGLE_DEG))
    out = [[ordered[0]]]
    for prev, head, step in zip(ordered, ordered[1:], steps):
        turned = abs(float(np.dot(prev.normal, head.normal))) < cos_limit  # sign is convention
        if turned or step > SLAB_GAP_FACTOR * typical:
            out.append([])
        out[-1].append(head)
    return out
