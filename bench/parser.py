"""Agreement of the report parser's `abnormal` with the radiologists' labels of real notes.

    python bench/parser.py --notes ../shared/data/mendeley-notes/notes-train.csv \
        ../shared/data/mendeley-notes/notes-valid.csv

Each file is a CSV with columns patient_id, lbp (1 = any finding, 0 = no finding) and note.
A few patients have two rows (the original spreadsheet split a note over two cells): the rows of
one patient are joined into one note, in file order, and scored once. Every disagreement is
listed with the note so that a reader can judge whether the parser or the label is at fault.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from lumbarclip.reports import parse_report


def read_patients(path: Path) -> dict[str, tuple[int, str]]:
    """patient_id -> (label, note), rows of one patient joined; conflicting labels are an error."""
    patients: dict[str, tuple[int, str]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            pid, label, note = row["patient_id"], int(row["lbp"]), row["note"]
            if pid in patients:
                if patients[pid][0] != label:
                    raise SystemExit(f"{path}: patient {pid} has rows with labels {patients[pid][0]} and {label}")
                note = f"{patients[pid][1]} {note}"
            patients[pid] = (label, note)
    return patients


def score(path: Path) -> float:
    patients = read_patients(path)
    start = time.perf_counter()
    parsed = {pid: int(parse_report(note).abnormal) for pid, (_, note) in patients.items()}
    seconds = time.perf_counter() - start
    counts = {(t, p): 0 for t in (0, 1) for p in (0, 1)}
    for pid, (label, _) in patients.items():
        counts[label, parsed[pid]] += 1
    agree = counts[0, 0] + counts[1, 1]
    accuracy = agree / len(patients)
    print(f"== {path.name}: {len(patients)} patients, agreement {agree}/{len(patients)} = {accuracy:.2%} "
          f"(parsed in {seconds:.2f} s)")
    print(f"   confusion (lbp x parsed): TN={counts[0, 0]} FP={counts[0, 1]} FN={counts[1, 0]} TP={counts[1, 1]}")
    for pid, (label, note) in sorted(patients.items()):
        if parsed[pid] != label:
            print(f"   {pid}  lbp={label} parsed={parsed[pid]}  {note}")
    return accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notes", type=Path, nargs="+", required=True, help="notes CSV file(s)")
    args = parser.parse_args(argv)
    for path in args.notes:
        score(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
