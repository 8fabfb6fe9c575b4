"""The disc detector on the paper's cohort (mid-sagittal slices): train on the train split's
disc boxes, keep the epoch of best valid F1, score valid (and, with --test, the test split once)
for detection at IoU >= 0.5 and level naming from the sacrum.

    python bench/discs.py --data real-out/cohort/manifest.csv --model real-out/run/model [--test] [--out discs.json]

The detector is saved into MODEL/detector/ (beside the CLIP model, so predict finds it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lumbarclip.models.detector import DetectorConfig, DiscDetector
from lumbarclip.inference.discs import DETECTOR_FOLDER
from lumbarclip.training.detector import score_detector, train_detector


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="manifest with a discs column (lumbarclip data mendeley-sagittal)")
    ap.add_argument("--model", required=True, help="model folder to put the detector in (MODEL/detector/)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test", action="store_true", help="also score the test split (once, for the chosen setting)")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)

    started = time.perf_counter()
    folder = Path(args.model) / DETECTOR_FOLDER
    train_detector(args.data, folder, DetectorConfig(image_size=args.image_size), epochs=args.epochs, seed=args.seed)
    detector = DiscDetector.load(folder)
    figures: dict[str, object] = {"train": json.loads((folder / "detector-train.json").read_text())}
    for split in ("valid", "test") if args.test else ("valid",):
        figures[split] = score_detector(detector, args.data, split, progress=True).to_dict()
        print(split, json.dumps(figures[split]))
    figures["seconds"] = round(time.perf_counter() - started, 1)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
