"""The disc layer on the paper's cohort (mid-sagittal slices): the detector trained on the train
split's disc boxes (epoch of best valid F1), the grader's feature source chosen on valid, and
with --test the test split scored once: detection at IoU >= 0.5, level naming from the sacrum,
Pfirrmann grades per patient and level, disc classes per disc. `make real` runs the same
(`lumbarclip.disc_layer.build_disc_layer`) as its last stage.

    python bench/discs.py --data real-out/cohort/manifest.csv --model real-out/run/model [--test] [--out discs.json]

The detector (with the column rule chosen on valid) goes into MODEL/detector/ and the grader
(the linear graders and the disc CNN compared on valid) into MODEL/grader.*, beside the CLIP
model, so `predict` finds them. `--no-detector` / `--no-grader` keep what MODEL already has.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lumbarclip.models.detector import DetectorConfig
from lumbarclip.models.disc_cnn import DiscCNNConfig
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
    ap.add_argument("--no-column", action="store_true", help="keep the detector's column rule (default: choose it on valid)")
    ap.add_argument("--no-cnn", action="store_true", help="compare only the linear graders (no disc CNN)")
    ap.add_argument("--cnn-epochs", type=int, default=6, help="disc CNN epochs (default 6)")
    ap.add_argument("--cnn-crop", default="32x64", help="disc CNN crop, ROWSxCOLS (default 32x64)")
    ap.add_argument("--test", action="store_true", help="also score the test split (once, for the chosen settings)")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    try:
        rows, cols = (int(v) for v in args.cnn_crop.lower().split("x"))
        cnn_config = DiscCNNConfig(crop=(rows, cols))
    except ValueError as err:
        ap.error(f"--cnn-crop {args.cnn_crop!r}: ROWSxCOLS, each >= 8 ({err})")
    figures = build_disc_layer(
        args.data, args.model, DetectorConfig(image_size=args.image_size), epochs=args.epochs, seed=args.seed,
        test=args.test, detector=not args.no_detector, grader=not args.no_grader, column=not args.no_column,
        cnn=not args.no_cnn, cnn_config=cnn_config, cnn_epochs=args.cnn_epochs,
    )  # fmt: skip
    print(json.dumps({k: v for k, v in figures.items() if k.startswith(("detection", "pfirrmann", "classes"))}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
