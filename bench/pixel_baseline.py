"""How far a linear model on raw pixels gets: the synthetic cohort's subtlety check.

The same baseline `lumbarclip evaluate` reports (images preprocessed as the model sees them,
area-averaged to PX x PX, standardised logistic regression with C chosen on valid), scored on
test at threshold 0.5 per image and per patient (mean of a patient's image probabilities). On a
good cohort it stays near chance (<= 0.65 per image) while a CNN learns the findings.

    python bench/pixel_baseline.py --data COHORT/manifest.csv [--px 32] [--image-size 64]
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from lumbarclip.data.manifest import read_manifest
from lumbarclip.decision import aggregate_patients
from lumbarclip.evaluation.baselines import raw_pixel_features
from lumbarclip.evaluation.probe import fit_probe
from lumbarclip.data.transforms import PreprocessSpec
from lumbarclip.inference import load_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="manifest.csv of a cohort with train/valid/test splits")
    parser.add_argument("--px", type=int, default=32, help="side of the downsampled image (default 32)")
    parser.add_argument("--image-size", type=int, default=64, help="model input size first (default 64, cpu-demo)")
    args = parser.parse_args()
    manifest = read_manifest(args.data)
    parts = {name: manifest.split(name) for name in ("train", "valid", "test")}
    x = {
        name: raw_pixel_features(load_images([r.image_path for r in recs], PreprocessSpec.of_model(args.image_size)), args.px)
        for name, recs in parts.items()
    }
    y = {name: np.array([r.label for r in recs]) for name, recs in parts.items()}
    probe = fit_probe(x["train"], y["train"], x["valid"], y["valid"])
    proba = probe.predict_proba(x["test"])
    _, labels, patient_proba = aggregate_patients(np.array([r.patient_id for r in parts["test"]]), y["test"], proba)
    print(f"chosen C={probe.C:g}; test: {len(proba)} images, {len(labels)} patients")
    print(
        "raw-pixel logistic regression balanced accuracy: "
        f"image {balanced_accuracy_score(y['test'], proba >= 0.5):.3f}, "
        f"patient {balanced_accuracy_score(labels, patient_proba >= 0.5):.3f}"
    )


if __name__ == "__main__":
    main()
