"""Adapter for the public Lumbar Spine MRI Dataset (Sudirman et al., Mendeley Data, 515 patients).

Images, in either of the two shapes users download (folders may be nested):
  (a) the pre-selected axial PNG slices named `T1_0002_D3.png`: sequence, 4-digit patient,
      disc D3/D4/D5 = L3-L4/L4-L5/L5-S1;
  (b) raw per-patient folders (`0002/...`, the outermost all-digit folder names the patient)
      of DICOM `.ima`/`.dcm` files. The axial T1/T2 series and its disc-level slices are
      chosen by `lumbarclip.data.study` (the rule `lumbarclip predict` uses on a study;
      its docstring states it). A patient with PNGs uses them, not the DICOMs.
The manifest points at the chosen files directly (no image is copied).

Notes: read by `lumbarclip.data.notes` (.xlsx with "Patient ID" and "Clinician's Notes", or
.csv `patient_id,note[,lbp,split]`). Labels come from `lumbarclip.reports.parse_report(note).abnormal`, or from `label_column`.

Splits, in order of preference: a split file (CSV `patient_id,split`, e.g. the authors'
360/77/78), a `split` column in the notes, or the seeded stratified 70/15/15 split of
`lumbarclip.data.splits`.

Patient IDs are zero-padded to 4 digits; with a salt they are replaced by keyed-hash
pseudonyms everywhere in the outputs, including the list of skipped patients. `image_path`
still names the user's own files, whose folder and file names contain the original IDs:
share a pseudonymised manifest only together with images renamed accordingly.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from lumbarclip.data.manifest import ManifestReport, check_manifest, read_manifest, write_manifest
from lumbarclip.data.notes import NotesTable, PatientNote, patient_key, read_notes, read_split_file
from lumbarclip.data.privacy import pseudonymise
from lumbarclip.data.splits import SPLIT_FRACTIONS, split_patients
from lumbarclip.data.study import SliceHeader, choose_slices, slice_header
from lumbarclip.errors import InputError
from lumbarclip.reports import parse_report

#: Disc number in the PNG names -> level.
DISC_LEVELS: dict[str, str] = {"3": "L3-L4", "4": "L4-L5", "5": "L5-S1"}
PNG_NAME = re.compile(r"^(T[12])_(\d{1,4})_D([345])$", re.IGNORECASE)
DICOM_SUFFIXES: tuple[str, ...] = (".ima", ".dcm")


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
    """The chosen slices of one patient's DICOM files (`lumbarclip.data.study`'s rule),
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


# --- the adapter --------------------------------------------------------------------------


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
            findings = parse_report(note.text)
            label = note.label if note.label is not None else int(findings.abnormal)
            usable[pid] = (note, label, findings.to_json())
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
        if 0 < len(labels) < 4:
            raise InputError(f"a split needs at least 4 patients, got {len(labels)}; give --split-file")
        given = split_patients(labels, seed)
        fractions = "/".join(str(round(f * 100)) for f in SPLIT_FRACTIONS)
        source, missing = f"seeded stratified {fractions} split (seed {seed})", "no split"
    split_of = {pid: given[pid] for pid in usable if given.get(pid)}
    for pid in usable:
        if pid not in split_of:
            skipped[pid] = problems.get(pid, missing)
    return split_of, source
