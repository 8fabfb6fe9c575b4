"""How often notes state findings, deny them or call a level normal, sentence by sentence.

The synthetic writer should deny and normalise at the rate real radiologists do, or the text
tower learns negation from a different mix than it meets. For each source of notes (the real
notes' CSV with a `note` column, and/or a synthetic cohort's manifest, one note per patient)
this counts the lumbar sentences and, among them, the fraction that
- state a finding present (at least one positive statement);
- only deny (negative statements, no positive one: "No evidence of disc herniation");
- deny something at a named level ("No disc bulge at L3/L4", "L5-S1: normal disc");
- state nothing about the per-level kinds ("Feature of muscle spasm").

    python bench/statements.py --notes NOTES.csv [--manifest COHORT/manifest.csv] [--out OUT.json]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from lumbarclip.reports.sentences import sentences_with_regions
from lumbarclip.reports.statements import sentence_statements


def sentence_rates(notes: list[str]) -> dict[str, float]:
    """Fractions of lumbar sentences by what they state (see the module docstring)."""
    counts = {"positive": 0, "negative_only": 0, "negative_at_level": 0, "nothing": 0}
    total = 0
    for note in notes:
        for sentence in sentences_with_regions(note):
            if not sentence.lumbar:
                continue
            total += 1
            stated = sentence_statements(sentence.text)
            positive = any(s.present for s in stated)
            counts["positive"] += positive
            counts["negative_only"] += bool(stated) and not positive
            counts["negative_at_level"] += any(not s.present and s.level for s in stated)
            counts["nothing"] += not stated
    return {"notes": len(notes), "sentences": total, **{k: round(v / max(total, 1), 4) for k, v in counts.items()}}


def _notes(path: Path, column: str, one_per: str = "") -> list[str]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if one_per:  # a manifest repeats the patient's note on every image
        rows = list({row[one_per]: row for row in rows}.values())
    return [row[column] for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=Path, action="append", default=[], help="CSV with a `note` column (repeatable)")
    parser.add_argument("--manifest", type=Path, help="a synthetic cohort's manifest.csv (its `report` column)")
    parser.add_argument("--out", type=Path, help="write the rates as JSON here")
    args = parser.parse_args()
    if not args.notes and not args.manifest:
        parser.error("give --notes and/or --manifest")
    result = {}
    if args.notes:
        result["real"] = sentence_rates([n for path in args.notes for n in _notes(path, "note")])
    if args.manifest:
        result["synthetic"] = sentence_rates(_notes(args.manifest, "report", one_per="patient_id"))
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
