"""Agreement of the report parser's `abnormal` with the radiologists' labels of real notes.

    python bench/parser.py --notes ../shared/data/mendeley-notes/notes-train.csv \
        ../shared/data/mendeley-notes/notes-valid.csv [--count-spasm]

Each file is a CSV with columns patient_id, lbp (1 = any finding, 0 = no finding) and note.
A few patients have two rows (the original spreadsheet split a note over two cells): the rows of
one patient are joined into one note, in file order, and scored once. Every disagreement is
listed with the note so that a reader can judge whether the parser or the label is at fault.
`--count-spasm` scores muscle spasm as abnormal, the convention most of the labels follow (the
vocabulary files it as incidental), to show what that choice is worth.
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
    rows = 0
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            rows += 1
            pid, label, note = row["patient_id"], int(row["lbp"]), row["note"]
            if pid in patients:
                if patients[pid][0] != label:
                    raise SystemExit(f"{path}: patient {pid} has rows with labels {patients[pid][0]} and {label}")
                note = f"{patients[pid][1]} {note}"
            patients[pid] = (label, note)
    joined = rows - len(patients)
    print(f"== {path.name}: {rows} rows, {len(patients)} patients ({joined} extra rows joined to their patient)")
    return patients


def abnormal(note: str, count_spasm: bool) -> int:
    findings = parse_report(note)
    return int(findings.abnormal or (count_spasm and "muscle_spasm" in findings.incidental))


def score(path: Path, count_spasm: bool) -> float:
    patients = read_patients(path)
    start = time.perf_counter()
    parsed = {pid: abnormal(note, count_spasm) for pid, (_, note) in patients.items()}
    seconds = time.perf_counter() - start
    counts = {(t, p): 0 for t in (0, 1) for p in (0, 1)}
    for pid, (label, _) in patients.items():
        counts[label, parsed[pid]] += 1
    agree = counts[0, 0] + counts[1, 1]
    accuracy = agree / len(patients)
    print(f"   agreement {agree}/{len(patients)} = {accuracy:.2%} (parsed in {seconds:.2f} s)")
    print(f"   confusion (lbp x parsed): TN={counts[0, 0]} FP={counts[0, 1]} FN={counts[1, 0]} TP={counts[1, 1]}")
    for pid, (label, note) in sorted(patients.items()):
        if parsed[pid] != label:
            print(f"   {pid}  lbp={label} parsed={parsed[pid]}  {note}")
    return accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notes", type=Path, nargs="+", required=True, help="notes CSV file(s)")
    parser.add_argument("--count-spasm", action="store_true", help="score muscle spasm as abnormal")
    args = parser.parse_args(argv)
    for path in args.notes:
        score(path, args.count_spasm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
