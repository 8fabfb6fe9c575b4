"""The disc layer on the paper's cohort (mid-sagittal slices): the detector trained on the train
split's disc boxes (epoch of best valid F1), the grader's feature source chosen on valid, and
with --test the test split scored once: detection at IoU >= 0.5, level naming from the sacrum,
Pfirrmann grades per patient and level, disc classes per disc. `make real` runs the same
(`lumbarclip.disc_layer.build_disc_layer`) as its last stage.

    python bench/discs.py --data real-out/cohort/manifest.csv --model real-out/run/model [--test] [--out discs.json]

The detector goes into MODEL/detector/ and the grader into MODEL/grader.*, beside the CLIP
model, so `predict` finds them. `--no-detector` / `--no-grader` keep what MODEL already has.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lumbarclip.models.detector import DetectorConfig
from lumbarclip.disc_layer import build_disc_layer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="manifest with a discs column (lumbarclip data mendeley-sagittal)")
    ap.add_argument("--model", required=True, help="the CLIP model folder the disc layer joins")
    ap.add_argument("--epochs", type=int, default=8, help="detector epochs (default 8)")
    ap.add_argument("--image-size", type=int, default=256, help="detector input size (default 256)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-detector", action="store_true", help="keep MODEL/detector as it is")
    ap.add_argument("--no-grader", action="store_true", help="keep MODEL/grader.* as they are")
    ap.add_argument("--test", action="store_true", help="also score the test split (once, for the chosen settings)")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    figures = build_disc_layer(
        args.data, args.model, DetectorConfig(image_size=args.image_size), epochs=args.epochs, seed=args.seed,
        test=args.test, detector=not args.no_detector, grader=not args.no_grader,
    )  # fmt: skip
    print(json.dumps({k: v for k, v in figures.items() if k.startswith(("detection", "pfirrmann", "classes"))}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
