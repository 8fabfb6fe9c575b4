"""The manifest contract: one CSV row per image, validated row by row.

Columns: image_path (relative to the manifest), patient_id, split (train/valid/test),
label (0 normal, 1 abnormal), report; optional sequence, level, findings (JSON).
Bad rows are skipped and reported by line number, never a crash.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from lumbarclip.errors import InputError

REQUIRED_COLUMNS: tuple[str, ...] = ("image_path", "patient_id", "split", "label", "report")
OPTIONAL_COLUMNS: tuple[str, ...] = ("sequence", "level", "findings")
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


@dataclass
class Manifest:
    """Valid records plus the rows that were skipped, each as (line number, reason)."""

    path: Path
    records: list[ImageRecord]
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def split(self, name: str) -> list[ImageRecord]:
        return [r for r in self.records if r.split == name]


def read_manifest(path: str | Path, check_files: bool = True) -> Manifest:
    """Read and validate a manifest; a missing file or bad header is an `InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: manifest not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    root = path.parent
    records: list[ImageRecord] = []
    skipped: list[tuple[int, str]] = []
    for line, row in enumerate(reader, start=2):
        reason = _row_problem(row, root, check_files)
        if reason:
            skipped.append((line, reason))
            continue
        records.append(
            ImageRecord(
                image_path=(root / row["image_path"].strip()).resolve(),
                patient_id=row["patient_id"].strip(),
                split=row["split"].strip(),
                label=int(row["label"].strip()),
                report=row["report"].strip(),
                **{c: (row.get(c) or "").strip() for c in OPTIONAL_COLUMNS},
            )
        )
    return Manifest(path=path, records=records, skipped=skipped)


def _row_problem(row: dict[str, str | None], root: Path, check_files: bool) -> str:
    """The reason a row is unusable, or '' when it is fine."""
    if None in row:
        return "more fields than the header"
    for col in REQUIRED_COLUMNS:
        if not (row.get(col) or "").strip():
            return f"empty {col}"
    if row["split"].strip() not in SPLITS:
        return f"split must be one of {', '.join(SPLITS)}, got {row['split'].strip()!r}"
    if row["label"].strip() not in ("0", "1"):
        return f"label must be 0 or 1, got {row['label'].strip()!r}"
    if check_files and not (root / row["image_path"].strip()).is_file():
        return f"image not found: {row['image_path'].strip()}"
    return ""


def write_manifest(path: str | Path, rows: list[dict[str, object]], overwrite: bool = False) -> Path:
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
