"""The disc layer on the paper's cohort (mid-sagittal slices): the detector trained on the train
split's disc boxes (epoch of best valid F1), the grader's feature source chosen on valid, and
with --test the test split scored once: detection at IoU >= 0.5, level naming from the sacrum,
Pfirrmann grades per patient and level, disc classes per disc.

    python bench/discs.py --data real-out/cohort/manifest.csv --model real-out/run/model [--test] [--out discs.json]

The detector goes into MODEL/detector/ and the grader into MODEL/grader.*, beside the CLIP
model, so `predict` finds them. `--no-detector` / `--no-grader` keep what MODEL already has.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lumbarclip.data.manifest import read_manifest
from lumbarclip.evaluation.grades import choose_grader, class_scores, disc_table, pfirrmann_scores
from lumbarclip.inference.discs import DETECTOR_FOLDER
from lumbarclip.inference.grades import DiscGrader
from lumbarclip.models import LumbarCLIP
from lumbarclip.models.detector import DetectorConfig, DiscDetector
from lumbarclip.training.detector import score_detector, train_detector


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

    started = time.perf_counter()
    model_dir = Path(args.model)
    folder = model_dir / DETECTOR_FOLDER
    figures: dict[str, object] = {}
    if not args.no_detector:
        train_detector(args.data, folder, DetectorConfig(image_size=args.image_size), epochs=args.epochs, seed=args.seed)
    detector = DiscDetector.load(folder)
    figures["detector_train"] = json.loads((folder / "detector-train.json").read_text())
    splits = ("valid", "test") if args.test else ("valid",)
    for split in splits:
        figures[f"detection_{split}"] = score_detector(detector, args.data, split, progress=True).to_dict()
        print(f"detection {split}", json.dumps(figures[f"detection_{split}"]))
    figures["seconds_detector"] = round(time.perf_counter() - started, 1)

    records = read_manifest(args.data).records
    model = LumbarCLIP.from_pretrained(model_dir).eval()
    size = model.config.image_size
    if not args.no_grader:
        grader, compared = choose_grader(model, records, size, args.seed, progress=True)
        grader.save(model_dir)
        figures["grader_sources_valid"] = compared
        print("grader sources (valid):", json.dumps({k: v["valid_mean_kappa"] for k, v in compared.items()}))  # type: ignore[index]
    grader = DiscGrader.load(model_dir)
    assert grader is not None
    figures["grader"] = {"source": grader.source, "gate": grader.gate}
    if args.test:
        test = disc_table(grader.source, model, [r for r in records if r.split == "test"], size, progress=True)
        figures["pfirrmann_test"] = pfirrmann_scores(grader, test)
        figures["classes_test"] = class_scores(grader, test)
        print("pfirrmann test", json.dumps({k: {m: v[m] for m in ("accuracy", "kappa_linear", "within_one")} for k, v in figures["pfirrmann_test"].items()}))  # type: ignore[union-attr]
        print("classes test", json.dumps(figures["classes_test"]))
    figures["seconds"] = round(time.perf_counter() - started, 1)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
