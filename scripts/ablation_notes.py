"""The notes file of the README's ablation: the shared real notes with a test split.

The shared notes hold the authors' train (360) and valid (77) patients only. The ablation
needs train/valid/test, so the 77 valid patients become the test split and 60 train patients
(stratified by lbp, seed 0) the valid split. Writes a CSV outside the project for
`lumbarclip twin --notes` (the notes are never copied into the repository):

    python scripts/ablation_notes.py --notes-dir ../shared/data/mendeley-notes --out OUT/notes-ablation.csv
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

from sklearn.model_selection import train_test_split

FIELDS = ["patient_id", "split", "lbp", "note"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes-dir", type=Path, required=True, help="folder with notes-train.csv and notes-valid.csv")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write (outside the repository)")
    parser.add_argument("--valid", type=int, default=60, help="train patients moved to valid (default 60)")
    args = parser.parse_args()
    rows = {}
    for name in ("train", "valid"):
        with (args.notes_dir / f"notes-{name}.csv").open(newline="") as fh:
            rows[name] = list(csv.DictReader(fh))
    label: dict[str, int] = {}
    for row in rows["train"]:  # a patient's rows share one label; max() is safe either way
        label[row["patient_id"]] = max(label.get(row["patient_id"], 0), int(row["lbp"]))
    ids = sorted(label)
    _, valid = train_test_split(ids, test_size=args.valid, stratify=[label[p] for p in ids], random_state=0)
    for row in rows["train"]:
        row["split"] = "valid" if row["patient_id"] in set(valid) else "train"
    for row in rows["valid"]:
        row["split"] = "test"
    with args.out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows["train"] + rows["valid"])
    patients = {r["patient_id"]: (r["split"], r["lbp"]) for r in rows["train"] + rows["valid"]}
    print(f"{args.out}: patients per (split, lbp) {dict(sorted(Counter(patients.values()).items()))}")


if __name__ == "__main__":
    main()
