"""The synthetic cohort: patients with realistic findings, six phantom images each, one note each.

Findings are sampled like a degenerative lumbar spine clinic: about 85% of patients abnormal,
degeneration rarely confined to one disc (L4-L5 and L5-S1 most often), and a few abnormal
patients whose imaged discs look normal (a finding at L1-L3, or one such as
spondylolisthesis that an axial disc slice does not show) - so, as in the real data, the
patient's label is not visible in every one of its images.

Outputs in the cohort folder: `images/T1_0002_D3.png` (sequence, patient, disc D3/D4/D5 as in
the public dataset), `manifest.csv` (the manifest contract; `findings` holds the PATIENT's
`Findings.to_dict()` on every row - the image's own level is `findings["levels"][level]`, absent
when that disc is normal), and `findings.jsonl` (one patient a line: patient_id, split, label,
findings, report, and `lesions`: for each image with a visible finding, its image_path ->
`{"boxes": [{"kind", "box": [x0, y0, x1, y1]}], "runs": [[row, x0, x1], ...]}`, boxes and the
mask of changed pixels in inclusive pixel columns/rows of the saved image, see
`phantom.find_lesions`). Same arguments, same bytes.

A twin (`make_twin`) renders the same layout from real notes: labels, splits and reports from
the notes file, images from the findings the report parser reads in each note.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from lumbarclip.data.manifest import write_manifest
from lumbarclip.data.notes import read_notes
from lumbarclip.data.splits import split_patients
from lumbarclip.errors import InputError
from lumbarclip.findings import (
    IMAGED_LEVELS,
    INCIDENTAL,
    LEVELS,
    SEQUENCES,
    Findings,
    LevelFindings,
)
from lumbarclip.reports import parse_report, write_synthetic_note
from lumbarclip.synth.phantom import (
    Anatomy,
    Nuisance,
    pixel_spacing_mm,
    render_slice_with_lesions,
)

FORMATS: tuple[str, ...] = ("png", "dicom")
#: Disc codes of the public dataset's file names.
DISC_CODES: dict[str, str] = {"L3-L4": "D3", "L4-L5": "D4", "L5-S1": "D5"}
#: Tissue scale 0..1 maps to 12-bit values; 1.575 and above saturate at 4095.
STORED_PER_UNIT = 2600.0
_IMAGE_NAME = re.compile(r"^T[12]_\d{4,}_D[345]\.(png|dcm)$")

#: Where degeneration sits among the imaged discs (L4-L5 and L5-S1 most often).
_LEVEL_WEIGHTS = np.array([0.2, 0.45, 0.35])
#: Abnormal patients whose imaged discs all look normal.
HIDDEN_RATE = 0.06
_HIDDEN_OTHER = ("spondylolisthesis", "schmorl_nodes", "marrow_edema", "fracture")


@dataclass(frozen=True)
class CohortConfig:
    """Everything that determines a cohort's bytes."""

    n_patients: int = 300
    seed: int = 0
    size: int = 128
    fmt: str = "png"
    abnormal_rate: float = 0.85
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)

    def __post_init__(self) -> None:
        if self.n_patients < 1:
            raise InputError(f"number of patients must be at least 1; got {self.n_patients}")
        if not 16 <= self.size <= 1024:
            raise InputError(f"image size must be 16..1024 pixels; got {self.size}")
        if self.fmt not in FORMATS:
            raise InputError(f"format must be one of {', '.join(FORMATS)}; got {self.fmt!r}")
        if not 0.0 <= self.abnormal_rate <= 1.0:
            raise InputError(f"abnormal rate must be within 0..1; got {self.abnormal_rate}")
        if len(self.split) != 3 or min(self.split) < 0 or not np.isclose(sum(self.split), 1.0):
            raise InputError(
                f"split must be three non-negative fractions summing to 1; got {self.split}"
            )


# --- findings ---------------------------------------------------------------------------------


#: How a herniation of each severity (mild, moderate, severe) meets the thecal sac.
_THECAL_SAC_BY_SEVERITY = (
    {"none": 0.25, "abutted": 0.4, "compressed": 0.35},
    {"abutted": 0.2, "compressed": 0.8},
    {"compressed": 1.0},
)


def _pick(rng: np.random.Generator, options: dict[str, float]) -> str:
    names = list(options)
    p = np.array([options[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def sample_level(level: str, rng: np.random.Generator, primary: bool) -> LevelFindings:
    """One degenerated disc; the patient's `primary` level carries the worse herniation."""
    if primary:
        disc = _pick(rng, {"bulge": 0.5, "protrusion": 0.37, "extrusion": 0.13})
        severity = _pick(rng, {"mild": 0.35, "moderate": 0.45, "severe": 0.2})
    else:
        disc = _pick(rng, {"bulge": 0.75, "protrusion": 0.15, "extrusion": 0.02, "normal": 0.08})
        severity = _pick(rng, {"mild": 0.6, "moderate": 0.35, "severe": 0.05})
    if disc == "normal":  # degenerate joints or a dry disc without a herniation
        return LevelFindings(
            level,
            facet_hypertrophy=bool(rng.random() < 0.5),
            ligamentum_hypertrophy=bool(rng.random() < 0.4),
            desiccation=True,
            annular_tear=bool(rng.random() < 0.2),
        )
    if disc == "bulge":
        location = "diffuse"
        side = _pick(rng, {"none": 0.75, "left": 0.125, "right": 0.125})
    else:
        location = _pick(rng, {"central": 0.3, "paracentral": 0.45, "foraminal": 0.25})
        if location == "central":
            side = _pick(rng, {"none": 0.6, "left": 0.2, "right": 0.2})
        else:
            side = _pick(rng, {"left": 0.45, "right": 0.45, "both": 0.1})
    rank = ("mild", "moderate", "severe").index(severity)
    if location == "foraminal" and rng.random() < 0.6:
        thecal = "none"  # a foraminal herniation often spares the sac
    else:
        thecal = _pick(rng, _THECAL_SAC_BY_SEVERITY[rank])
    lateral = side if side in ("left", "right", "both") else "both"
    root = "none"
    if location in ("paracentral", "foraminal") and rng.random() < 0.6:
        root = lateral
    elif disc == "bulge" and rank >= 1 and rng.random() < 0.35:
        root = lateral
    canal = "none"
    if thecal == "compressed" and rng.random() < 0.25 + 0.25 * rank:
        canal = ("mild", "mild", "moderate", "severe")[rank + int(rng.integers(0, 2))]
    foramen = "none"
    if location == "foraminal" and rng.random() < 0.85:
        foramen = lateral
    elif disc == "bulge" and rng.random() < 0.15 + 0.15 * rank:
        foramen = lateral
    lower = level != "L3-L4"
    return LevelFindings(
        level,
        disc=disc,
        location=location,
        side=side,
        severity=severity,
        thecal_sac=thecal,
        root_compression=root,
        canal_narrowing=canal,
        foraminal_narrowing=foramen,
        facet_hypertrophy=bool(rng.random() < (0.3 if lower else 0.15)),
        ligamentum_hypertrophy=bool(rng.random() < (0.2 + 0.15 * (canal != "none"))),
        desiccation=bool(rng.random() < 0.5),
        annular_tear=bool(rng.random() < 0.12),
    )


def sample_findings(rng: np.random.Generator, abnormal: bool) -> Findings:
    """A patient's findings; `abnormal` decides the label, the rest is drawn like a clinic."""
    incidental = sorted(
        name for name, p in zip(INCIDENTAL, (0.35, 0.03, 0.02, 0.02)) if rng.random() < p
    )
    if not abnormal:
        return Findings(incidental=incidental)
    if rng.random() < HIDDEN_RATE:
        if rng.random() < 0.5:
            upper = str(rng.choice(LEVELS[:2]))
            return Findings(
                levels={upper: sample_level(upper, rng, primary=True)}, incidental=incidental
            )
        return Findings(other=[str(rng.choice(_HIDDEN_OTHER))], incidental=incidental)
    n = int(rng.choice([1, 2, 3], p=[0.03, 0.14, 0.83]))
    chosen = [IMAGED_LEVELS[i] for i in rng.choice(3, size=n, replace=False, p=_LEVEL_WEIGHTS)]
    levels = {lvl: sample_level(lvl, rng, primary=i == 0) for i, lvl in enumerate(chosen)}
    if rng.random() < 0.1:
        levels["L2-L3"] = sample_level("L2-L3", rng, primary=False)
    other = [str(rng.choice(_HIDDEN_OTHER[:2]))] if rng.random() < 0.06 else []
    return Findings(levels=levels, other=other, incidental=incidental)


# --- writing ----------------------------------------------------------------------------------


def image_name(sequence: str, patient_id: str, level: str, fmt: str) -> str:
    """`T1_0002_D3.png`: the public dataset's naming."""
    return f"{sequence}_{patient_id}_{DISC_CODES[level]}.{'dcm' if fmt == 'dicom' else 'png'}"


def quantise(image: np.ndarray) -> np.ndarray:
    """Tissue-scale float image to 12-bit values in uint16, like a scanner's stored pixels."""
    return np.clip(np.rint(image * STORED_PER_UNIT), 0, 4095).astype(np.uint16)


@dataclass(frozen=True)
class PatientSpec:
    """What to render for one patient and what to write about them."""

    patient_id: str
    split: str
    label: int
    findings: Findings  # drives the images
    report: str
    parsed: Findings | None = None  # a twin's findings as read from its real note


def prepare_out_dir(out_dir: str | Path, overwrite: bool) -> Path:
    """Refuse a non-empty folder unless asked; then remove only what a cohort writes."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InputError(f"{out}: folder is not empty; choose another or pass --overwrite")
        for name in ("manifest.csv", "findings.jsonl"):
            (out / name).unlink(missing_ok=True)
        images = out / "images"
        if images.is_dir():
            for path in images.iterdir():
                if path.is_file() and _IMAGE_NAME.match(path.name):
                    path.unlink()
    (out / "images").mkdir(parents=True, exist_ok=True)
    return out


def render_patient(
    spec: PatientSpec, out: Path, size: int, fmt: str, seed: int
) -> tuple[list[dict[str, object]], dict[str, object]]:
    """Render and save one patient's six images; returns their manifest rows and the patient's
    findings.jsonl record. Its random streams come from the seed and the patient ID alone, so
    patients can be rendered in any order, in any process, with the same bytes."""
    save = _save_dicom if fmt == "dicom" else _save_png
    rows: list[dict[str, object]] = []
    ss = np.random.SeedSequence([seed, *spec.patient_id.encode()])
    anatomy_rng, *image_rngs = (
        np.random.default_rng(s) for s in ss.spawn(1 + 2 * len(IMAGED_LEVELS))
    )
    anatomy = Anatomy.sample(anatomy_rng)
    findings_json = spec.findings.to_json()
    lesions: dict[str, dict[str, object]] = {}
    for (level, sequence), rng in zip(
        ((lvl, seq) for lvl in IMAGED_LEVELS for seq in SEQUENCES), image_rngs
    ):
        nuisance = Nuisance.sample(rng)
        image, found = render_slice_with_lesions(
            spec.findings.level(level), sequence, size, rng, anatomy, nuisance
        )
        pixels = quantise(image)
        name = image_name(sequence, spec.patient_id, level, fmt)
        spacing = pixel_spacing_mm(anatomy, nuisance, size)
        save(out / "images" / name, pixels, spec, sequence, level, spacing, seed)
        if found.boxes:
            lesions[f"images/{name}"] = found.to_dict()
        rows.append(
            {
                "image_path": f"images/{name}",
                "patient_id": spec.patient_id,
                "split": spec.split,
                "label": spec.label,
                "report": spec.report,
                "sequence": sequence,
                "level": level,
                "findings": findings_json,
            }
        )
    record = {
        "patient_id": spec.patient_id,
        "split": spec.split,
        "label": spec.label,
        "findings": spec.findings.to_dict(),
        "report": spec.report,
        "lesions": lesions,
    }
    if spec.parsed is not None:
        record["parsed"] = spec.parsed.to_dict()
    return rows, record


def _render_star(args: tuple) -> tuple[list[dict[str, object]], dict[str, object]]:
    return render_patient(*args)


def write_cohort(
    out_dir: str | Path,
    patients: Iterable[PatientSpec],
    size: int,
    fmt: str,
    seed: int,
    overwrite: bool = False,
    progress: bool = True,
    total: int | None = None,
    workers: int | None = None,
) -> Path:
    """Render six images per patient and write images, `manifest.csv` and `findings.jsonl`.

    `workers` processes render patients in parallel (default: one per available core; 1 renders
    here); results are written in patient order, so the output is the same bytes either way."""
    out = prepare_out_dir(out_dir, overwrite)
    workers = len(os.sched_getaffinity(0)) if workers is None else max(1, workers)
    jobs = ((spec, out, size, fmt, seed) for spec in patients)
    rows: list[dict[str, object]] = []
    with contextlib.ExitStack() as stack:
        if workers > 1 and (total is None or total > 1):
            # spawn: a fork of a process that has started torch's OpenMP threads can hang
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers))
            results = pool.imap(_render_star, jobs, chunksize=4)
        else:
            results = map(_render_star, jobs)
        jsonl = stack.enter_context((out / "findings.jsonl").open("w", encoding="utf-8"))
        for patient_rows, record in tqdm(
            results, total=total, desc="patients", unit="patient", disable=not progress
        ):
            rows.extend(patient_rows)
            jsonl.write(json.dumps(record, sort_keys=True) + "\n")
    return write_manifest(out / "manifest.csv", rows, overwrite=True)


def make_cohort(
    out_dir: str | Path,
    config: CohortConfig = CohortConfig(),
    overwrite: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Sample, render and write a synthetic cohort; returns the manifest path. `workers`: see
    `write_cohort` (the bytes do not depend on it)."""
    n = config.n_patients
    n_abnormal = int(round(config.abnormal_rate * n))
    labels = [0] * n
    for i in np.random.default_rng([config.seed, 0]).permutation(n)[:n_abnormal]:
        labels[int(i)] = 1
    width = max(4, len(str(n)))
    ids = [f"{i:0{width}d}" for i in range(1, n + 1)]
    split_of = split_patients(dict(zip(ids, labels, strict=True)), config.seed, config.split)

    def patients() -> Iterable[PatientSpec]:
        for i, (pid, label) in enumerate(zip(ids, labels, strict=True), start=1):
            split = split_of[pid]
            findings = sample_findings(
                np.random.default_rng([config.seed, 2, i]), abnormal=bool(label)
            )
            report = write_synthetic_note(findings, random.Random(f"{config.seed}-{pid}"))
            yield PatientSpec(pid, split, label, findings, report)

    return write_cohort(
        out_dir, patients(), config.size, config.fmt, config.seed, overwrite, progress, total=n,
        workers=workers,
    )


def _save_png(path: Path, pixels: np.ndarray, *_: object) -> None:
    Image.fromarray(pixels).save(path, format="PNG")


#: Patient z (mm, LPS: superior is larger) of each disc-level slice in synthetic DICOM headers.
SLICE_Z_MM: dict[str, float] = {"L5-S1": 0.0, "L4-L5": 35.0, "L3-L4": 70.0}


def _save_dicom(
    path: Path,
    pixels: np.ndarray,
    spec: PatientSpec,
    sequence: str,
    level: str,
    spacing: float,
    seed: int,
) -> None:
    """An MR image with synthetic identifiers only, 12 bits stored in 16; UIDs from the names.

    Headers as a scanner writes a study: one StudyInstanceUID (and frame of reference) per
    patient, one SeriesInstanceUID per sequence, axial orientation, the slice's position along
    z (L5-S1 most inferior, `SLICE_Z_MM`), TR/TE, and fake name, ID, dates and accession number,
    so a patient's files form a study `lumbarclip predict` and a PACS can take."""
    from pydicom.uid import generate_uid

    from lumbarclip.data.imageio import write_dicom

    study = f"lumbarclip-synth/{seed}/{spec.patient_id}"
    series = f"{study}/{sequence}"
    z = SLICE_Z_MM[level]
    half = [-round(spacing * pixels.shape[1] / 2, 4), -round(spacing * pixels.shape[0] / 2, 4)]
    write_dicom(
        path,
        pixels,
        spacing_mm=(round(spacing, 4), round(spacing, 4)),
        overwrite=True,
        BitsStored=12,
        HighBit=11,
        StudyInstanceUID=generate_uid(entropy_srcs=[study]),
        SeriesInstanceUID=generate_uid(entropy_srcs=[series]),
        SOPInstanceUID=generate_uid(entropy_srcs=[series, level]),
        FrameOfReferenceUID=generate_uid(entropy_srcs=[study, "frame"]),
        PatientName=f"SYNTHETIC^{spec.patient_id}",
        PatientID=f"SYN{spec.patient_id}",
        PatientBirthDate="19700101",
        PatientSex="O",
        StudyDate="20240101",
        StudyTime="120000",
        SeriesDate="20240101",
        AccessionNumber=f"ACC{spec.patient_id}",
        StudyID="1",
        StudyDescription="MRI LUMBAR SPINE (synthetic phantom)",
        BodyPartExamined="LSPINE",
        ImagePositionPatient=[*half, z],
        SliceLocation=z,
        SeriesDescription=f"{sequence} axial (synthetic phantom)",
        ScanningSequence="SE",
        RepetitionTime=550.0 if sequence == "T1" else 4000.0,
        EchoTime=10.0 if sequence == "T1" else 100.0,
        SeriesNumber=SEQUENCES.index(sequence) + 1,
        InstanceNumber=IMAGED_LEVELS.index(level) + 1,
        ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
        SliceThickness=4.0,
    )


# --- the real-notes twin ----------------------------------------------------------------------

#: Chance that a disc a note does not mention is mildly degenerate in an abnormal (lbp=1)
#: spine: radiologists report the worst discs, not the dry, slightly bulging ones next to them.
UNMENTIONED_DEGENERATION = 0.75


def mild_degeneration(level: str, rng: np.random.Generator) -> LevelFindings:
    """The unreported background of a degenerating spine: a mild bulge, often a dry disc."""
    return LevelFindings(
        level,
        disc="bulge",
        severity="mild",
        thecal_sac=_pick(rng, {"abutted": 0.5, "compressed": 0.5}),
        desiccation=bool(rng.random() < 0.6),
    )


#: How a twin decides what its images show: `label` (the label decides, the note says where and
#: what: images always agree with the label, a pipeline check) or `findings` (exactly what the
#: parsed note says, whatever the label: a note labelled normal that reports a mild bulge shows
#: one, as the real scans would - the mode comparable to results on the real images).
TWIN_RENDER_MODES: tuple[str, ...] = ("label", "findings")


def twin_findings(parsed: Findings, label: int, rng: np.random.Generator, render: str = "label") -> Findings:
    """What a twin patient's images show (see `TWIN_RENDER_MODES`).

    `label` mode: lbp=0, every disc normal whatever the parser read; lbp=1, the parsed findings,
    and each imaged disc the note does not mention mildly degenerate with
    `UNMENTIONED_DEGENERATION` chance - or, when the note names no imaged disc, L4-L5 and L5-S1
    always (L3-L4 by chance). `findings` mode: the parsed findings as they are.
    """
    if render not in TWIN_RENDER_MODES:
        raise ValueError(f"render must be one of {', '.join(TWIN_RENDER_MODES)}; got {render!r}")
    if render == "findings":
        return Findings(levels=dict(parsed.levels), other=list(parsed.other), incidental=list(parsed.incidental))
    if not label:
        return Findings(incidental=list(parsed.incidental))
    levels = dict(parsed.levels)
    quiet = [lv for lv in IMAGED_LEVELS if not parsed.level(lv).abnormal]
    none_imaged = len(quiet) == len(IMAGED_LEVELS)
    for lv in quiet:
        chance = (0.5 if lv == "L3-L4" else 1.0) if none_imaged else UNMENTIONED_DEGENERATION
        if rng.random() < chance:
            levels[lv] = mild_degeneration(lv, rng)
    return Findings(
        levels=dict(sorted(levels.items())),
        other=list(parsed.other),
        incidental=list(parsed.incidental),
    )


@dataclass(frozen=True)
class TwinSummary:
    """Where the twin went and what did not make it."""

    manifest: Path
    patients: int
    skipped: dict[str, str]  # patient or "line N" -> reason
    disagreements: list[str]  # patients whose parsed note disagrees with their lbp label


def make_twin(
    notes_path: str | Path,
    out_dir: str | Path,
    seed: int = 0,
    size: int = 128,
    fmt: str = "png",
    overwrite: bool = False,
    progress: bool = True,
    render: str = "label",
) -> TwinSummary:
    """A cohort rendered from real notes (columns patient_id, split, lbp, note): each patient's
    six images drawn from `twin_findings` (`render` mode), with the given label and split and
    the real note as the report. A patient's rows are joined; bad rows and patients are skipped and listed.
    The manifest's `findings` are the rendered ones; findings.jsonl adds the `parsed` ones."""

    CohortConfig(n_patients=1, seed=seed, size=size, fmt=fmt)  # validates the shared options
    if render not in TWIN_RENDER_MODES:
        raise InputError(f"--render must be one of {', '.join(TWIN_RENDER_MODES)}; got {render!r}")
    table = read_notes(notes_path, label_column="lbp")
    if not table.has_split:
        raise InputError(
            f"{notes_path}: no split column; the twin keeps the notes' train/valid/test split"
        )
    skipped = {f"line {line}": why for line, why in table.bad_rows} | dict(table.problems)
    if not table.notes:
        raise InputError(f"{notes_path}: no usable patient rows")
    specs, disagreements = [], []
    for pid, note in sorted(table.notes.items()):
        parsed = parse_report(note.text)
        if parsed.abnormal != bool(note.label):
            disagreements.append(pid)
        findings = twin_findings(
            parsed, note.label, np.random.default_rng([seed, 3, *pid.encode()]), render
        )
        specs.append(PatientSpec(pid, note.split, note.label, findings, note.text, parsed))
    manifest = write_cohort(out_dir, specs, size, fmt, seed, overwrite, progress, total=len(specs))
    return TwinSummary(manifest, len(specs), skipped, disagreements)
