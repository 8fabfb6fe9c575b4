"""Adapter for the mid-sagittal slices of the Mendeley lumbar cohort, joined to the paper's
patient split, labels and notes.

Two public checkouts:
  * `slices`: the YOLOspine repository at commit aab0746 (later commits deleted the files):
    `{train,val,test}/images/*.png` (one mid-sagittal T1 and one T2 slice per patient, 384 px),
    `{train,val,test}/labels/*.txt` (YOLO boxes: class cx cy w h, normalised, one file per image)
    and `PfirrmannGrade.csv` (Patient_ID, D5, D4, D3). Its own train/val/test folders split by
    image, not by patient, and are ignored: the split comes from the notes.
  * `notes`: the `local_data/` folder of Lumbar-MedCLIP (or the repository root above it) with
    `lbp-{train,valid,test}-meta.csv` (imgpath `.../T1_0001_D3.png`, report, LBP): the paper's
    360 / 77 / 78 patient split, the per-patient LBP label and the report text. Train and valid
    hold several paraphrases of each note; the distinct texts of a patient are joined in order.

Image names: `NNNN_T2_TSE_SAG_<matrix>_<series>_<patient>_<slice>_R.png` (the first number is a
running index, the patient is the sixth field), `T1_<patient>[_S<slice>][ ]_.png` and
`X1_<patient>_S<slice> .png` (the T1 slice of patients that have no `T1_` file; read as T1).

Duplicates: copies with identical pixels (`T1_0204_S8 .png` and `T1_0204_S8_.png`) are one
image: the first path in sorted order (split folder, then name) is kept. Distinct images of one patient and sequence
(e.g. two T2 series) are all kept: each is a real slice of that patient, and patient-level
figures aggregate over a patient's images. Both kinds are counted and listed.

Discs: boxes are grouped into discs and named from the sacrum up by `lumbarclip.data.discs`;
Pfirrmann grades D3 / D4 / D5 are attached to L3-L4 / L4-L5 / L5-S1. The report's findings
(`lumbarclip.reports.parse_report`) fill the findings column, for finding-level targets. Boxes outside the image or
with no area are refused and counted. Nothing is copied: the manifest points at the files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from lumbarclip.data.discs import BOX_CLASSES, Box, group_discs
from lumbarclip.data.imageio import load_image
from lumbarclip.data.manifest import ManifestReport, check_manifest, read_manifest, write_manifest
from lumbarclip.data.notes import patient_key
from lumbarclip.errors import InputError
from lumbarclip.reports import parse_report

COMMIT = "aab0746"
SPLIT_FILES: dict[str, str] = {"train": "lbp-train-meta.csv", "valid": "lbp-valid-meta.csv", "test": "lbp-test-meta.csv"}
T2_NAME = re.compile(r"^\d{4}_T2_TSE_SAG_\d+_\d+_(\d{4})_\d+_R$")
T1_NAME = re.compile(r"^(T1|X1)_(\d{4})(?:_S\d+)?\s*_?$")
PFIRRMANN_LEVELS: dict[str, str] = {"D3": "L3-L4", "D4": "L4-L5", "D5": "L5-S1"}
#: A box may overshoot the image by this fraction (rounding in the label tool) and is clipped.
BOX_TOLERANCE = 0.005


@dataclass
class SagittalReport:
    """What the adapter did; every dropped item is named with its reason."""

    manifest: ManifestReport
    patients_joined: int
    images: int
    discs: int
    problems: dict[str, list[str]] = field(default_factory=dict)  # kind -> items with reasons
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "patients_joined": self.patients_joined,
            "images": self.images,
            "discs": self.discs,
            "counts": self.counts,
            "problems": self.problems,
            "duplicates_rule": "identical pixels: first path in sorted order (split folder, then name) kept; distinct images of "
            "one patient and sequence: all kept",
        }

    def to_text(self) -> str:
        lines = [self.manifest.to_text(), f"  patients joined: {self.patients_joined}, discs: {self.discs}"]
        for kind, n in sorted(self.counts.items()):
            lines.append(f"  {kind}: {n}")
        for kind, items in sorted(self.problems.items()):
            lines.append(f"  {kind} ({len(items)}):")
            lines += [f"    {item}" for item in items]
        return "\n".join(lines)


@dataclass
class _Image:
    path: Path
    patient: str
    sequence: str
    boxes: list[Box]


def _notes_folder(notes: Path) -> Path:
    for folder in (notes, notes / "local_data"):
        if all((folder / name).is_file() for name in SPLIT_FILES.values()):
            return folder
    names = ", ".join(SPLIT_FILES.values())
    raise InputError(f"{notes}: no {names} here or in {notes / 'local_data'} (the Lumbar-MedCLIP local_data folder)")


def read_paper_split(notes: str | Path) -> tuple[dict[str, tuple[str, int, str]], list[str]]:
    """patient -> (split, LBP label, report) from the paper's meta files, and refused rows."""
    folder = _notes_folder(Path(notes))
    texts: dict[str, list[str]] = defaultdict(list)
    labels: dict[str, set[int]] = defaultdict(set)
    split_of: dict[str, set[str]] = defaultdict(set)
    refused: list[str] = []
    for split, name in SPLIT_FILES.items():
        for line, row in _rows(folder / name):
            match = re.search(r"_(\d{1,4})_D\d", row.get("imgpath") or "")
            label = (row.get("LBP") or "").strip()
            if not match or label not in ("0", "1") or not (row.get("report") or "").strip():
                refused.append(f"{name} line {line}: no patient in imgpath, no 0/1 LBP or no report")
                continue
            pid = f"{int(match.group(1)):04d}"
            split_of[pid].add(split)
            labels[pid].add(int(label))
            text = " ".join(row["report"].split())
            if text not in texts[pid]:
                texts[pid].append(text)
    patients: dict[str, tuple[str, int, str]] = {}
    for pid in sorted(split_of):
        if len(split_of[pid]) > 1:
            refused.append(f"patient {pid}: in several splits ({', '.join(sorted(split_of[pid]))})")
        elif len(labels[pid]) > 1:
            refused.append(f"patient {pid}: rows labelled LBP 0 and 1")
        else:
            patients[pid] = (next(iter(split_of[pid])), next(iter(labels[pid])), " ".join(texts[pid]))
    return patients, refused


def read_pfirrmann(path: Path) -> tuple[dict[str, dict[str, int]], list[str]]:
    """patient -> {level: grade 1-5} from PfirrmannGrade.csv, and refused rows."""
    grades: dict[str, dict[str, int]] = {}
    refused: list[str] = []
    for line, row in _rows(path):
        pid = patient_key(row.get("Patient_ID"))
        if pid is None:
            refused.append(f"{path.name} line {line}: no patient ID")
            continue
        levels: dict[str, int] = {}
        for column, level in PFIRRMANN_LEVELS.items():
            value = (row.get(column) or "").strip()
            if value in ("1", "2", "3", "4", "5"):
                levels[level] = int(value)
            elif value:
                refused.append(f"{path.name} line {line}: {column} grade {value!r} is not 1-5")
        grades[pid] = levels
    return grades, refused


def _rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a UTF-8 CSV with a header; unreadable text is an InputError."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return list(enumerate(csv.DictReader(fh), start=2))
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: not a readable UTF-8 CSV ({err})") from None


def parse_image_name(stem: str) -> tuple[str, str] | None:
    """(patient, sequence) from an image name without its suffix, or None."""
    if match := T2_NAME.match(stem):
        return f"{int(match.group(1)):04d}", "T2"
    if match := T1_NAME.match(stem):
        return f"{int(match.group(2)):04d}", "T1"
    return None


def read_boxes(path: Path, width: int, height: int, refused: list[str]) -> list[Box]:
    """A YOLO label file as pixel boxes; bad lines and bad boxes are refused with a reason."""
    boxes: list[Box] = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path.parent.parent.name}/labels/{path.name} line {n}"
        try:
            cls, cx, cy, w, h = int(fields[0]), *(float(v) for v in fields[1:5])
        except (ValueError, IndexError):
            refused.append(f"{where}: not 'class cx cy w h'")
            continue
        if len(fields) != 5 or not 0 <= cls < len(BOX_CLASSES):
            refused.append(f"{where}: class {fields[0]} or field count {len(fields)} is not valid")
            continue
        if not all(math.isfinite(v) for v in (cx, cy, w, h)):
            refused.append(f"{where}: a coordinate is not a finite number")
            continue
        if w <= 0 or h <= 0:
            refused.append(f"{where}: degenerate box (width {w}, height {h})")
            continue
        x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        if min(x0, y0) < -BOX_TOLERANCE or max(x1, y1) > 1 + BOX_TOLERANCE:
            refused.append(f"{where}: box outside the image ({x0:.3f}, {y0:.3f}, {x1:.3f}, {y1:.3f})")
            continue
        x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in (x0, y0, x1, y1))
        boxes.append(Box(BOX_CLASSES[cls], x0 * width, y0 * height, x1 * width, y1 * height))
    return boxes


def _check_checkout(slices: Path) -> None:
    if not slices.is_dir():
        raise InputError(f"{slices}: YOLOspine folder not found")
    needed = [slices / "PfirrmannGrade.csv"] + [slices / s / "images" for s in ("train", "val", "test")]
    if not all(p.exists() for p in needed):
        raise InputError(
            f"{slices}: no PfirrmannGrade.csv and {{train,val,test}}/images: check out YOLOspine at commit "
            f"{COMMIT} (later commits deleted the slices)"
        )


def build_sagittal_manifest(
    slices: str | Path, notes: str | Path, out: str | Path, *, overwrite: bool = False, progress: bool = False
) -> SagittalReport:
    """Write `out/manifest.csv` (+ `out/adapter-report.json`) for the mid-sagittal cohort."""
    slices, out = Path(slices), Path(out)
    manifest_path = out / "manifest.csv"
    if manifest_path.exists() and not overwrite:
        raise InputError(f"{manifest_path}: already exists; choose another --out or pass --overwrite")
    _check_checkout(slices)
    patients, refused_notes = read_paper_split(notes)
    grades, refused_grades = read_pfirrmann(slices / "PfirrmannGrade.csv")
    problems: dict[str, list[str]] = defaultdict(list)
    problems["note rows refused"] += refused_notes
    problems["Pfirrmann rows refused"] += refused_grades
    counts: Counter[str] = Counter()

    files = sorted(p for s in ("train", "val", "test") for p in (slices / s / "images").glob("*.png"))
    seen: dict[tuple[str, str, str], Path] = {}
    images: list[_Image] = []
    for path in tqdm(files, desc="slices", unit="img", disable=not progress):
        where = f"{path.parent.parent.name}/images/{path.name}"
        parsed = parse_image_name(path.stem)
        if parsed is None:
            problems["unparseable names"].append(where)
            continue
        pid, sequence = parsed
        form = {"T2": "NNNN_T2_TSE_SAG_...", "T1": "T1_..."}.get(sequence if sequence == "T2" else path.name[:2], "X1_... (read as T1)")
        counts[f"name form {form}"] += 1
        label_file = path.parent.parent / "labels" / f"{path.stem}.txt"
        if not label_file.is_file():
            problems["images without labels"].append(where)
            continue
        try:
            pixels = load_image(path)
        except InputError as err:
            problems["unreadable images"].append(f"{where}: {err}")
            continue
        digest = hashlib.sha256(pixels.tobytes()).hexdigest()
        key = (pid, sequence, digest)
        if key in seen:
            problems["identical duplicates dropped"].append(f"{where} (same pixels as {seen[key].name})")
            continue
        seen[key] = path
        height, width = pixels.shape[:2]
        refused_boxes: list[str] = []
        boxes = read_boxes(label_file, width, height, refused_boxes)
        problems["boxes refused"] += refused_boxes
        images.append(_Image(path, pid, sequence, boxes))

    per_sequence = Counter((im.patient, im.sequence) for im in images)
    for (pid, sequence), n in sorted(per_sequence.items()):
        if n > 1:
            problems["distinct images of one patient and sequence (all kept)"].append(f"patient {pid} {sequence}: {n}")
    with_images = {im.patient for im in images}
    for pid in sorted(with_images - set(patients)):
        problems["patients with images but no note or split"].append(f"patient {pid}")
    for pid in sorted(set(patients) - with_images):
        problems["patients with a note but no slice"].append(f"patient {pid}")
    for pid in sorted(set(patients) & with_images - set(grades)):
        problems["patients without Pfirrmann grades"].append(f"patient {pid}")

    findings = {pid: parse_report(text).to_json() for pid, (_, _, text) in patients.items()}
    rows: list[dict[str, object]] = []
    folder = out.resolve()
    n_discs = 0
    for im in sorted(images, key=lambda im: (im.patient, im.sequence, im.path.name)):
        if im.patient not in patients:
            continue
        split, label, report = patients[im.patient]
        disc_set = group_discs(im.boxes)
        for disc in disc_set.discs:
            disc.pfirrmann = grades.get(im.patient, {}).get(disc.level)
        counts["thoracic-class boxes at a lumbar level"] += disc_set.thoracic_at_lumbar
        if not disc_set.discs:
            problems["images with no disc box"].append(im.path.name)
        n_discs += len(disc_set.discs)
        rows.append({
            "image_path": Path(os.path.relpath(im.path.resolve(), folder)).as_posix(),
            "patient_id": im.patient,
            "split": split,
            "label": label,
            "report": report,
            "sequence": im.sequence,
            "findings": findings[im.patient],
            "plane": "sagittal",
            "discs": disc_set.to_json(),
        })  # fmt: skip
    if not rows:
        raise InputError(f"{slices} and {notes}: no slice joins a patient of the paper's split")
    write_manifest(manifest_path, rows, overwrite=overwrite)
    report_out = SagittalReport(
        manifest=check_manifest(read_manifest(manifest_path)),
        patients_joined=len({r["patient_id"] for r in rows}),
        images=len(rows),
        discs=n_discs,
        problems={k: v for k, v in problems.items() if v},
        counts=dict(counts),
    )
    (out / "adapter-report.json").write_text(json.dumps(report_out.to_dict(), indent=2))
    return report_out
