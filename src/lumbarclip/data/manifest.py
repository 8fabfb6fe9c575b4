"""The manifest contract: one CSV row per image, validated row by row.

Columns: image_path (relative to the manifest), patient_id, split (train/valid/test),
label (0 normal, 1 abnormal), report; optional sequence (T1/T2), level (L3-L4, ...),
findings (JSON of `Findings.to_dict()`), plane (axial, the default, or sagittal/coronal),
discs (JSON list of `lumbarclip.data.discs.Disc`: level, box, classes, Pfirrmann grade). Column names are matched case-insensitively, extra
columns are ignored, blank lines and a UTF-8 BOM are fine.

A bad row is skipped and reported as (line number, reason), never a crash: wrong field
count, an empty required field, a bad split, label, sequence, level or findings JSON, a
missing image, a duplicate image_path, or a patient whose rows disagree on the label (all of
that patient's rows go: there is no telling which label is right). Problems across splits
(a patient in two splits) are kept in the records and reported by `check_manifest`, which
evaluation uses as an integrity gate.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lumbarclip.data.discs import discs_from_json
from lumbarclip.data.imageio import read_image
from lumbarclip.errors import InputError
from lumbarclip.findings import LEVELS, PLANES, SEQUENCES, Findings

REQUIRED_COLUMNS: tuple[str, ...] = ("image_path", "patient_id", "split", "label", "report")
OPTIONAL_COLUMNS: tuple[str, ...] = ("sequence", "level", "findings", "plane", "discs")
SPLITS: tuple[str, ...] = ("train", "valid", "test")


@dataclass(frozen=True)
class ImageRecord:
    """One image of one patient with the patient's report and label."""

    image_path: Path  # absolute (resolved against the manifest's folder)
    patient_id: str
    split: str
    label: int
    report: str
    sequence: str = ""
    level: str = ""
    findings: str = ""  # JSON of `Findings.to_dict()`, when known
    plane: str = "axial"  # sagittal | coronal | axial
    discs: str = ""  # JSON list of `lumbarclip.data.discs.Disc` (sagittal slices with disc boxes)


@dataclass
class Manifest:
    """Valid records plus the rows that were skipped, each as (line number, reason)."""

    path: Path
    records: list[ImageRecord]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    #: Rows skipped because their image is missing, as (line, image_path as written);
    #: they are in `skipped` too.
    missing_images: list[tuple[int, str]] = field(default_factory=list)

    def split(self, name: str) -> list[ImageRecord]:
        return [r for r in self.records if r.split == name]


def read_csv_table(path: str | Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """A UTF-8 CSV file as (header, [(line number, fields)]); blank lines are dropped.

    Line numbers are those a text editor shows for the row's first line (quoted fields may
    span lines). Unreadable text, NUL bytes, bad quoting (which would swallow the rows that
    follow), a missing header or duplicate column names are an `InputError`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(
            f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8 CSV"
        ) from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise InputError(f"{path}, line {line}: NUL byte; this is not a text CSV file")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # a stray quote is an error
    rows: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for fields in reader:
            if fields:
                rows.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as err:
        raise InputError(f"{path}, line {start}: bad CSV ({err})") from None
    if not rows:
        raise InputError(f"{path}: empty file, no header row")
    header = [h.strip() for h in rows[0][1]]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise InputError(f"{path}: duplicate column name(s) {', '.join(dupes)}")
    return header, rows[1:]


def read_manifest(path: str | Path, check_files: bool = True) -> Manifest:
    """Read and validate a manifest; a missing file or bad header is an `InputError`."""
    path = Path(path)
    header, rows = read_csv_table(path)
    header = [h.lower() for h in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    root = path.parent
    accepted: list[tuple[int, ImageRecord]] = []
    skipped: list[tuple[int, str]] = []
    missing_images: list[tuple[int, str]] = []
    first_line: dict[Path, int] = {}
    for line, fields in rows:
        if len(fields) != len(header):
            skipped.append((line, f"{len(fields)} fields, the header has {len(header)}"))
            continue
        row = {col: value.strip() for col, value in zip(header, fields)}
        reason = _row_problem(row)
        image = (root / row.get("image_path", "")).resolve()
        if not reason and check_files and not image.is_file():
            reason = f"image not found: {row['image_path']}"
            missing_images.append((line, row["image_path"]))
        if not reason and image in first_line:
            reason = f"duplicate image_path (first on line {first_line[image]})"
        if reason:
            skipped.append((line, reason))
            continue
        first_line[image] = line
        accepted.append((line, _record(row, image)))
    records, conflicts = _drop_label_conflicts(accepted)
    skipped = sorted(skipped + conflicts)
    return Manifest(path=path, records=records, skipped=skipped, missing_images=missing_images)


def _row_problem(row: dict[str, str]) -> str:
    """The reason a row is unusable, or '' when it is fine (files are checked elsewhere)."""
    for col in REQUIRED_COLUMNS:
        if not row[col]:
            return f"empty {col}"
    if row["split"] not in SPLITS:
        return f"split must be one of {', '.join(SPLITS)}, got {row['split']!r}"
    if row["label"] not in ("0", "1"):
        return f"label must be 0 or 1, got {row['label']!r}"
    sequence, level = row.get("sequence", "").upper(), row.get("level", "").upper()
    if sequence and sequence not in SEQUENCES:
        return f"sequence must be one of {', '.join(SEQUENCES)}, got {row['sequence']!r}"
    if level and level not in LEVELS:
        return f"level must be one of {', '.join(LEVELS)}, got {row['level']!r}"
    if row.get("plane", "").lower() not in ("",) + PLANES:
        return f"plane must be one of {', '.join(PLANES)}, got {row['plane']!r}"
    if row.get("discs"):
        try:
            discs_from_json(row["discs"])
        except (ValueError, TypeError) as err:
            return f"discs is not a JSON list of discs ({str(err)[:120]})"
    if row.get("findings"):
        try:
            Findings.from_json(row["findings"])
        except (ValueError, TypeError, AttributeError) as err:
            return f"findings is not valid Findings JSON ({str(err)[:120]})"
    return ""


def _record(row: dict[str, str], image: Path) -> ImageRecord:
    return ImageRecord(
        image_path=image,
        patient_id=row["patient_id"],
        split=row["split"],
        label=int(row["label"]),
        report=row["report"],
        sequence=row.get("sequence", "").upper(),
        level=row.get("level", "").upper(),
        findings=row.get("findings", ""),
        plane=row.get("plane", "").lower() or "axial",
        discs=row.get("discs", ""),
    )


def _drop_label_conflicts(
    accepted: list[tuple[int, ImageRecord]],
) -> tuple[list[ImageRecord], list[tuple[int, str]]]:
    """Records of patients with one label, and a skip entry for every row of the others."""
    lines: dict[str, list[int]] = defaultdict(list)
    labels: dict[str, set[int]] = defaultdict(set)
    for line, rec in accepted:
        lines[rec.patient_id].append(line)
        labels[rec.patient_id].add(rec.label)
    records, skipped = [], []
    for line, rec in accepted:
        if len(labels[rec.patient_id]) == 1:
            records.append(rec)
            continue
        where = ", ".join(str(n) for n in lines[rec.patient_id])
        reason = f"patient {rec.patient_id} has rows labelled 0 and 1 (lines {where})"
        skipped.append((line, reason))
    return records, skipped


def write_manifest(
    path: str | Path, rows: list[dict[str, object]], overwrite: bool = False
) -> Path:
    """Write manifest rows (dicts keyed by column); refuses to replace a file unless asked."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists; choose another path or remove it")
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(REQUIRED_COLUMNS) + [c for c in OPTIONAL_COLUMNS if any(c in r for r in rows)]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="raise")
        writer.writeheader()
        writer.writerows(rows)
    return path


@dataclass
class ManifestReport:
    """What `lumbarclip data check` prints; `errors` are fatal (evaluation refuses the data)."""

    path: Path
    n_images: int
    n_patients: int
    #: split -> {"images", "patients", "patients_normal", "patients_abnormal"}
    splits: dict[str, dict[str, int]]
    skipped: list[tuple[int, str]]
    missing_images: list[tuple[int, str]]
    #: patient -> the splits it appears in, for patients in more than one split
    split_overlap: dict[str, list[str]]
    #: (image path, reason) for images that exist but cannot be read (only when loaded)
    unreadable_images: list[tuple[str, str]] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        errs = [
            f"patient {pid} appears in more than one split ({', '.join(splits)})"
            for pid, splits in sorted(self.split_overlap.items())
        ]
        errs += [f"unreadable image: {reason}" for _, reason in self.unreadable_images]
        if not self.n_images:
            errs.append("no valid rows")
        return errs

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": str(self.path),
            "images": self.n_images,
            "patients": self.n_patients,
            "splits": self.splits,
            "skipped": [{"line": n, "reason": r} for n, r in self.skipped],
            "missing_images": [{"line": n, "image_path": p} for n, p in self.missing_images],
            "split_overlap": self.split_overlap,
            "unreadable_images": [
                {"image_path": p, "reason": r} for p, r in self.unreadable_images
            ],
            "errors": self.errors,
        }

    def to_text(self) -> str:
        lines = [f"{self.path}: {self.n_images} images, {self.n_patients} patients"]
        for name, c in self.splits.items():
            lines.append(
                f"  {name:<5} {c['images']:>6} images {c['patients']:>5} patients "
                f"({c['patients_normal']} normal, {c['patients_abnormal']} abnormal)"
            )
        lines.append(f"  missing images: {len(self.missing_images)}")
        lines.append(f"  skipped rows: {len(self.skipped)}")
        lines += [f"    line {n}: {reason}" for n, reason in self.skipped]
        lines += [f"  ERROR: {e}" for e in self.errors]
        return "\n".join(lines)


def check_manifest(
    manifest: Manifest, load_images: bool = False, progress: bool = False
) -> ManifestReport:
    """Counts per split and the integrity problems of a loaded manifest.

    `load_images` also decodes every image (slow on large cohorts) so that a file that
    exists but is broken is caught before training, not in the middle of it.
    """
    splits_of: dict[str, set[str]] = defaultdict(set)
    label_of: dict[str, int] = {}
    for rec in manifest.records:
        splits_of[rec.patient_id].add(rec.split)
        label_of[rec.patient_id] = rec.label
    splits = {}
    for name in SPLITS:
        recs = manifest.split(name)
        patients = {r.patient_id for r in recs}
        abnormal = sum(label_of[p] for p in patients)
        splits[name] = {
            "images": len(recs),
            "patients": len(patients),
            "patients_normal": len(patients) - abnormal,
            "patients_abnormal": abnormal,
        }
    overlap = {
        pid: [s for s in SPLITS if s in found] for pid, found in splits_of.items() if len(found) > 1
    }
    return ManifestReport(
        path=manifest.path,
        n_images=len(manifest.records),
        n_patients=len(splits_of),
        splits=splits,
        skipped=list(manifest.skipped),
        missing_images=list(manifest.missing_images),
        split_overlap=overlap,
        unreadable_images=_unreadable(manifest.records, progress) if load_images else [],
    )


def check_patient_overlap(manifest: Manifest) -> dict[str, int]:
    """Patients shared by each pair of splits (all 0), or an `InputError` naming them;
    `train`, `evaluate`, `data shard` and `ablate` refuse a leaky manifest with it."""
    overlap = check_manifest(manifest).split_overlap
    for a, b in combinations(SPLITS, 2):
        shared = sorted(pid for pid, splits in overlap.items() if a in splits and b in splits)
        if shared:
            named = ", ".join(shared[:5]) + (f" and {len(shared) - 5} more" if len(shared) > 5 else "")
            raise InputError(
                f"{manifest.path}: patient(s) {named} appear in both {a} and {b}; "
                "splits must be patient-disjoint"
            )
    return {f"{a}/{b}": 0 for a, b in combinations(SPLITS, 2)}


def _unreadable(records: list[ImageRecord], progress: bool) -> list[tuple[str, str]]:
    bad = []
    for rec in tqdm(records, desc="loading images", unit="image", disable=not progress):
        try:
            read_image(rec.image_path)
        except InputError as err:
            bad.append((str(rec.image_path), str(err)))
    return bad
