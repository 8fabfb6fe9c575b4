"""Tables of radiology notes and of patient splits (.csv or .xlsx), read per patient.

Notes: `.xlsx` (columns "Patient ID" and "Clinician's Notes", matched ignoring case, spaces
and punctuation) or `.csv` (the same, or `patient_id,note[,lbp,split]`). Rows that share a
patient ID are joined in order (the original spreadsheet splits a few notes over two cells).
Used by the Mendeley adapter and by `lumbarclip twin`, which renders phantoms from real notes.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lumbarclip.data.manifest import SPLITS, read_csv_table
from lumbarclip.errors import InputError

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


def patient_key(value: Any) -> str | None:
    """A patient ID as 4 (or more) zero-padded digits; None when it is not a whole number."""
    text = str(value).strip() if value is not None else ""
    match = re.fullmatch(r"(\d+)(?:\.0+)?", text)
    return f"{int(match.group(1)):04d}" if match else None


def _header_key(name: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name or "").lower())


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
