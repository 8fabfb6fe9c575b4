"""Adapter for the public Lumbar Spine MRI Dataset (Sudirman et al., Mendeley Data, 515 patients).

Images, in either of the two shapes users download (folders may be nested):
  (a) the pre-selected axial PNG slices named `T1_0002_D3.png`: sequence, 4-digit patient,
      disc D3/D4/D5 = L3-L4/L4-L5/L5-S1;
  (b) raw per-patient folders (`0002/...`, the outermost all-digit folder names the patient)
      of DICOM `.ima`/`.dcm` files. The axial T1/T2 series and its disc-level slices are
      chosen by `lumbarclip.inference.study` (the rule `lumbarclip predict` uses on a study;
      its docstring states it). A patient with PNGs uses them, not the DICOMs.
The manifest points at the chosen files directly (no image is copied).

Notes: `.xlsx` (columns "Patient ID" and "Clinician's Notes", matched ignoring case, spaces
and punctuation) or `.csv` (the same, or `patient_id,note[,lbp,split]`). Rows that share a
patient ID are joined in order (the original spreadsheet splits a few notes over two cells).
Labels come from `lumbarclip.reports.parse_report(note).abnormal`, or from `label_column`.

Splits, in order of preference: a split file (CSV `patient_id,split`, e.g. the authors'
360/77/78), a `split` column in the notes, or a seeded stratified 70/15/15 split.

Patient IDs are zero-padded to 4 digits; with a salt they are replaced by keyed-hash
pseudonyms everywhere in the outputs, including the list of skipped patients. `image_path`
still names the user's own files, whose folder and file names contain the original IDs:
share a pseudonymised manifest only together with images renamed accordingly.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sklearn.model_selection import train_test_split
from tqdm import tqdm

from lumbarclip.data.manifest import (
    SPLITS,
    ManifestReport,
    check_manifest,
    read_csv_table,
    read_manifest,
    write_manifest,
)
from lumbarclip.data.privacy import pseudonymise
from lumbarclip.errors import InputError
from lumbarclip.inference.study import SliceHeader, choose_slices, classify_sequence, slice_header

#: Disc number in the PNG names -> level.
DISC_LEVELS: dict[str, str] = {"3": "L3-L4", "4": "L4-L5", "5": "L5-S1"}
PNG_NAME = re.compile(r"^(T[12])_(\d{1,4})_D([345])$", re.IGNORECASE)
DICOM_SUFFIXES: tuple[str, ...] = (".ima", ".dcm")
SPLIT_FRACTIONS: tuple[float, float, float] = (0.70, 0.15, 0.15)

ID_HEADERS: tuple[str, ...] = ("patientid", "patient", "id", "patientno", "patientnumber")
NOTE_HEADERS: tuple[str, ...] = (
    "cliniciansnotes", "cliniciannotes", "clinicalnotes", "radiologistsnotes",
    "radiologistnotes", "notes", "note", "report",
)  # fmt: skip
SPLIT_CHOICES = "/".join(SPLITS)
SPLIT_ALIASES: dict[str, str] = {
    "train": "train", "training": "train", "valid": "valid", "val": "valid",
    "validation": "valid", "test": "test", "testing": "test",
}  # fmt: skip


@dataclass(frozen=True)
class SliceRef:
    """One chosen image of a patient."""

    path: Path
    sequence: str  # T1 | T2
    level: str  # L3-L4 | L4-L5 | L5-S1


@dataclass
class ImageScan:
    """Chosen slices per patient, why a patient has none, and counts of ignored files."""

    slices: dict[str, list[SliceRef]] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)  # patient -> "png" | "dicom"
    problems: dict[str, str] = field(default_factory=dict)
    ignored: Counter[str] = field(default_factory=Counter)  # reason -> number of files


@dataclass
class PatientNote:
    text: str
    label: int | None = None
    split: str | None = None


@dataclass
class NotesTable:
    """Notes per patient; patients dropped with a reason; rows without a usable ID."""

    notes: dict[str, PatientNote]
    problems: dict[str, str]
    bad_rows: list[tuple[int, str]]
    has_split: bool = False


@dataclass
class MendeleyReport:
    """What the adapter did, for the summary the CLI prints (IDs already pseudonymised)."""

    manifest: ManifestReport
    sources: dict[str, int]
    split_source: str
    skipped_patients: dict[str, str]
    bad_rows: list[str]
    ignored_files: dict[str, int]

    def to_text(self) -> str:
        lines = [self.manifest.to_text()]
        lines.append(f"  split from: {self.split_source}")
        sources = ", ".join(f"{k} {v}" for k, v in self.sources.items())
        lines.append(f"  patients by image source: {sources}")
        lines.append(f"  patients skipped: {len(self.skipped_patients)}")
        lines += [f"    {pid}: {why}" for pid, why in sorted(self.skipped_patients.items())]
        lines.append(f"  input rows skipped: {len(self.bad_rows)}")
        lines += [f"    {row}" for row in self.bad_rows]
        lines += [f"  files ignored ({why}): {n}" for why, n in sorted(self.ignored_files.items())]
        return "\n".join(lines)


def patient_key(value: Any) -> str | None:
    """A patient ID as 4 (or more) zero-padded digits; None when it is not a whole number."""
    text = str(value).strip() if value is not None else ""
    match = re.fullmatch(r"(\d+)(?:\.0+)?", text)
    return f"{int(match.group(1)):04d}" if match else None


def _header_key(name: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name or "").lower())


# --- images -------------------------------------------------------------------------------


def scan_images(root: str | Path, progress: bool = False) -> ImageScan:
    """Find each patient's slices under `root`: PNG slices first, raw DICOM series otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: image folder not found")
    scan = ImageScan()
    dicoms: list[Path] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        suffix = path.suffix.lower()
        if suffix == ".png":
            match = PNG_NAME.match(path.stem)
            if not match:
                scan.ignored["PNG name not like T1_0002_D3.png"] += 1
                continue
            seq, pid, disc = match.group(1).upper(), patient_key(match.group(2)), match.group(3)
            scan.slices.setdefault(pid, []).append(SliceRef(path, seq, DISC_LEVELS[disc]))
            scan.source[pid] = "png"
        elif suffix in DICOM_SUFFIXES:
            dicoms.append(path)
    by_patient: dict[str, list[Path]] = defaultdict(list)
    for path in dicoms:
        pid = _folder_patient(path, root)
        if pid is None:
            scan.ignored["DICOM file outside a numbered patient folder"] += 1
        elif pid not in scan.source:
            by_patient[pid].append(path)
    total = sum(map(len, by_patient.values()))
    bar = tqdm(total=total, desc="DICOM headers", unit="file", disable=not (progress and total))
    with bar:
        for pid, files in sorted(by_patient.items()):
            chosen, problem = _patient_dicom_slices(files, scan.ignored, bar)
            if chosen:
                scan.slices[pid], scan.source[pid] = chosen, "dicom"
            else:
                scan.problems[pid] = problem
    return scan


def _folder_patient(path: Path, root: Path) -> str | None:
    """The outermost all-digit folder between `root` (included) and the file."""
    parts = (root.name,) + path.relative_to(root).parts[:-1]
    for part in parts[1:] + parts[:1]:
        if part.isdigit():
            return patient_key(part)
    return None


def _patient_dicom_slices(
    files: list[Path], ignored: Counter[str], bar: tqdm
) -> tuple[list[SliceRef], str]:
    """The chosen slices of one patient's DICOM files (`lumbarclip.inference.study`'s rule),
    or [] and the reason."""
    heads: list[SliceHeader] = []
    for path in files:
        bar.update()
        try:
            head = slice_header(path)
        except InputError:
            ignored["unreadable DICOM"] += 1
            continue
        if head is None:
            ignored["DICOM without image geometry"] += 1
            continue
        heads.append(head)
    chosen = [SliceRef(c.path, c.sequence, c.level) for c in choose_slices(heads)[0]]
    if not chosen:
        return [], "no axial T1 or T2 DICOM series found"
    return chosen, ""


# --- notes and splits ---------------------------------------------------------------------


def _table_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and rows of an .xlsx or .csv table, every cell as text."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_csv_table(path)
    if suffix in (".xlsx", ".xlsm"):
        return _xlsx_rows(path)
    raise InputError(f"{path}: notes and split files must be .xlsx or .csv")


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _xlsx_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The first sheet with a patient-ID header row (searched in its first 20 rows)."""
    import openpyxl  # only needed for spreadsheets

    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as err:  # zip, XML and openpyxl errors: all mean not a workbook
        raise InputError(f"{path}: not a readable .xlsx workbook ({str(err)[:120]})") from None
    try:
        seen: list[str] = []
        for sheet in book.worksheets:
            cells = sheet.iter_rows(values_only=True)
            rows = [(n, [_cell_text(v) for v in row]) for n, row in enumerate(cells, start=1)]
            for i, (_, header) in enumerate(rows[:20]):
                if any(_header_key(c) in ID_HEADERS for c in header):
                    return header, rows[i + 1 :]
            seen += [c for _, header in rows[:1] for c in header if c]
    finally:
        book.close()
    raise InputError(f"{path}: no sheet has a 'Patient ID' column (first-row headers: {seen})")


def _column(header: list[str], names: tuple[str, ...], what: str, path: Path) -> int:
    keys = [_header_key(h) for h in header]
    for name in names:
        if name in keys:
            return keys.index(name)
    raise InputError(f"{path}: no {what} column; columns are {', '.join(header) or 'none'}")


def _label_value(text: str) -> int | None:
    value = text.strip().removesuffix(".0")
    return int(value) if value in ("0", "1") else None


def read_notes(path: str | Path, label_column: str | None = None) -> NotesTable:
    """Notes (and labels, splits when the table has them) per zero-padded patient ID."""
    path = Path(path)
    header, rows = _table_rows(path)
    id_col = _column(header, ID_HEADERS, "patient ID", path)
    note_col = _column(header, NOTE_HEADERS, "notes (Clinician's Notes / note)", path)
    label_col = None
    if label_column:
        label_col = _column(header, (_header_key(label_column),), f"{label_column!r} label", path)
    keys = [_header_key(h) for h in header]
    split_col = keys.index("split") if "split" in keys else None
    texts: dict[str, list[str]] = defaultdict(list)
    labels: dict[str, set[str]] = defaultdict(set)
    splits: dict[str, set[str]] = defaultdict(set)
    bad_rows: list[tuple[int, str]] = []
    for line, cells in rows:
        cells = cells + [""] * (len(header) - len(cells))
        raw_id, text = cells[id_col].strip(), cells[note_col].strip()
        if not raw_id and not text:
            continue
        pid = patient_key(raw_id)
        if pid is None:
            bad_rows.append((line, "patient ID missing or not a number"))
            continue
        texts[pid].append(text)
        for col, seen in ((label_col, labels), (split_col, splits)):
            if col is not None and cells[col].strip():
                seen[pid].add(cells[col].strip())
    notes, problems = {}, {}
    for pid, parts in texts.items():
        note = PatientNote(" ".join(t for t in parts if t))
        problem = "" if note.text else "empty note"
        if label_col is not None and not problem:
            note.label, problem = _one_value(labels[pid], _label_value, "label", "0 or 1")
        if split_col is not None and not problem:
            note.split, problem = _one_value(splits[pid], SPLIT_ALIASES.get, "split", SPLIT_CHOICES)
        if problem:
            problems[pid] = problem
        else:
            notes[pid] = note
    return NotesTable(notes, problems, bad_rows, has_split=split_col is not None)


def _one_value(
    values: set[str], parse: Callable[[str], Any], what: str, allowed: str
) -> tuple[Any, str]:
    """The single parsed value of a patient's cells, or (None, problem)."""
    if not values:
        return None, f"no {what}"
    parsed = {parse(v.strip().lower()) for v in values}
    if None in parsed:
        return None, f"{what} must be {allowed}"
    if len(parsed) > 1:
        return None, f"conflicting {what}s in rows of the same patient"
    return parsed.pop(), ""


def read_split_file(
    path: str | Path,
) -> tuple[dict[str, str], dict[str, str], list[tuple[int, str]]]:
    """(patient -> split, patient -> problem, bad rows) from a CSV/xlsx `patient_id,split`."""
    path = Path(path)
    header, rows = _table_rows(path)
    id_col = _column(header, ID_HEADERS, "patient ID", path)
    split_col = _column(header, ("split",), "split", path)
    found: dict[str, set[str]] = defaultdict(set)
    bad_rows: list[tuple[int, str]] = []
    for line, cells in rows:
        cells = cells + [""] * (len(header) - len(cells))
        pid = patient_key(cells[id_col])
        if pid is None:
            bad_rows.append((line, "patient ID missing or not a number"))
        else:
            found[pid].add(cells[split_col])
    splits, problems = {}, {}
    for pid, values in found.items():
        value, problem = _one_value(values, SPLIT_ALIASES.get, "split", SPLIT_CHOICES)
        if problem:
            problems[pid] = f"split file: {problem}"
        else:
            splits[pid] = value
    return splits, problems, bad_rows


def split_patients(
    labels: Mapping[str, int],
    seed: int = 0,
    fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
) -> dict[str, str]:
    """Patient-disjoint train/valid/test split, stratified by label where class sizes allow.

    Reproducible: the same patients, labels and seed give the same split (515 patients give
    360/77/78 with the default fractions).
    """
    ids = sorted(labels)
    if len(ids) < 4:
        raise InputError(f"a split needs at least 4 patients, got {len(ids)}; give --split-file")
    held_out = fractions[1] + fractions[2]
    train, rest = _stratified(ids, labels, held_out, seed)
    valid, test = _stratified(rest, labels, fractions[2] / held_out, seed)
    return {pid: name for name, ids in zip(SPLITS, (train, valid, test)) for pid in ids}


def _stratified(
    ids: list[str], labels: Mapping[str, int], size: float, seed: int
) -> tuple[list[str], list[str]]:
    """sklearn's split, stratified unless a class is too small for it to be possible."""
    y = [labels[i] for i in ids]
    try:
        return train_test_split(ids, test_size=size, stratify=y, random_state=seed)
    except ValueError:  # a class with one member, or fewer held-out patients than classes
        return train_test_split(ids, test_size=size, random_state=seed)


# --- the adapter --------------------------------------------------------------------------


def _report_parser() -> Callable[[str], Any] | None:
    """The report parser, when the `reports` package is installed in this checkout."""
    try:
        from lumbarclip.reports import parse_report
    except ImportError:
        return None
    return parse_report


def build_mendeley_manifest(
    images: str | Path,
    notes: str | Path,
    out: str | Path,
    *,
    split_file: str | Path | None = None,
    seed: int = 0,
    label_column: str | None = None,
    salt: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> MendeleyReport:
    """Write a standard manifest for the dataset; `salt` turns pseudonymisation on."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists; choose another path or pass --overwrite")
    parse = _report_parser()
    if parse is None and label_column is None:
        raise InputError("the report parser (lumbarclip.reports) is missing; give --label-column")
    table = read_notes(notes, label_column)
    scan = scan_images(images, progress)
    skipped = dict(table.problems)
    bad_rows = [f"notes line {n}: {why}" for n, why in table.bad_rows]
    usable: dict[str, tuple[PatientNote, int, str]] = {}
    for pid in sorted(set(scan.slices) | set(scan.problems) | set(table.notes)):
        if pid in skipped:
            continue
        if pid not in table.notes:
            skipped[pid] = "no note"
        elif pid not in scan.slices:
            skipped[pid] = scan.problems.get(pid, "no images")
        else:
            note = table.notes[pid]
            findings = parse(note.text) if parse else None
            label = note.label if note.label is not None else int(findings.abnormal)
            usable[pid] = (note, label, findings.to_json() if findings else "")
    split_of, split_source = _assign_splits(usable, table, split_file, seed, skipped, bad_rows)
    rename = (lambda pid: pseudonymise(pid, salt)) if salt else (lambda pid: pid)
    rows, folder = [], out.parent.resolve()
    for pid, split in sorted(split_of.items()):
        note, label, findings = usable[pid]
        for ref in sorted(scan.slices[pid], key=lambda r: (r.sequence, r.level)):
            rows.append({
                "image_path": Path(os.path.relpath(ref.path.resolve(), folder)).as_posix(),
                "patient_id": rename(pid),
                "split": split,
                "label": label,
                "report": note.text,
                "sequence": ref.sequence,
                "level": ref.level,
                "findings": findings,
            })  # fmt: skip
    if not rows:
        raise InputError(f"no patient has images, a note and a split ({len(skipped)} skipped)")
    write_manifest(out, rows, overwrite=overwrite)
    return MendeleyReport(
        manifest=check_manifest(read_manifest(out)),
        sources=dict(Counter(scan.source[pid] for pid in split_of)),
        split_source=split_source,
        skipped_patients={rename(pid): why for pid, why in skipped.items()},
        bad_rows=bad_rows,
        ignored_files=dict(scan.ignored),
    )


def _assign_splits(
    usable: Mapping[str, tuple[PatientNote, int, str]],
    table: NotesTable,
    split_file: str | Path | None,
    seed: int,
    skipped: dict[str, str],
    bad_rows: list[str],
) -> tuple[dict[str, str], str]:
    """Split per usable patient and where it came from; patients without one join `skipped`."""
    problems: dict[str, str] = {}
    if split_file is not None:
        given, problems, bad = read_split_file(split_file)
        bad_rows += [f"split file line {n}: {why}" for n, why in bad]
        source, missing = f"split file {Path(split_file).name}", "not in the split file"
    elif table.has_split:
        given = {pid: note.split for pid, (note, _, _) in usable.items()}
        source, missing = "notes", "no split"
    else:
        labels = {pid: label for pid, (_, label, _) in usable.items()}
        given = split_patients(labels, seed) if labels else {}
        fractions = "/".join(str(round(f * 100)) for f in SPLIT_FRACTIONS)
        source, missing = f"seeded stratified {fractions} split (seed {seed})", "no split"
    split_of = {pid: given[pid] for pid in usable if given.get(pid)}
    for pid in usable:
        if pid not in split_of:
            skipped[pid] = problems.get(pid, missing)
    return split_of, source
