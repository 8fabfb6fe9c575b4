"""Per-level zero-shot from the report text and nearest-report search at level granularity, on
the paper's cohort (mid-sagittal slices), for three images of a level: the disc's crop through
the CLIP model, the whole slice, and the disc's grader features through a projection aligned on
train with the sentences that name the disc's level (`lumbarclip.training.crop_text`). The
views are compared on valid (macro AUROC); with --test the best one is scored once on test.
`make real` runs the same (`lumbarclip.disc_layer.tie_to_reports`) after the disc layer.

    python bench/disc_zeroshot.py --data real-out/cohort/manifest.csv --model real-out/run/model [--test] --out disc-zeroshot.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="manifest with discs and findings columns")
    ap.add_argument("--model", required=True, help="a model folder with its disc grader (make real)")
    ap.add_argument("--steps", type=int, default=300, help="full-batch steps of the aligned projection (default 300)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test", action="store_true", help="also score the test split (once, for the view chosen on valid)")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)

    from lumbarclip.disc_layer import tie_to_reports
    from lumbarclip.errors import InputError

    try:
        figures = tie_to_reports(args.data, args.model, test=args.test, steps=args.steps, seed=args.seed)
    except InputError as err:
        print(f"bench/disc_zeroshot.py: {err}", file=sys.stderr)
        return 2
    summary = {"valid_macro": {v: f["zero_shot"]["macro"] for v, f in figures["valid"].items()}, "chosen": figures["chosen"]}  # type: ignore[union-attr]
    if "test" in figures:
        summary["test"] = figures["test"]["zero_shot"]  # type: ignore[index]
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
