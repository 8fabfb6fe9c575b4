"""How far a linear model on raw pixels gets: the synthetic cohort's subtlety check.

Logistic regression on each image area-averaged to PX x PX pixels and standardised; trained on
the train split, C chosen on valid (balanced accuracy), scored on test. Prints balanced
accuracy per image and per patient (mean of a patient's image probabilities). On a good
cohort it stays near chance (<= 0.65 per image) while a CNN learns the findings.

    python bench/pixel_baseline.py --data COHORT/manifest.csv [--px 32]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler

from lumbarclip.data.imageio import load_image
from lumbarclip.data.manifest import ImageRecord, read_manifest

C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def features(records: list[ImageRecord], px: int) -> np.ndarray:
    """Each image normalised like every loader does, then box-downsampled to px x px."""
    rows = [
        np.asarray(Image.fromarray(load_image(r.image_path)).resize((px, px), Image.BOX)).ravel()
        for r in records
    ]
    return np.stack(rows).astype(np.float32)


def per_patient(records: list[ImageRecord], proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, mean probabilities) per patient."""
    groups: dict[str, list[float]] = defaultdict(list)
    labels: dict[str, int] = {}
    for r, p in zip(records, proba):
        groups[r.patient_id].append(float(p))
        labels[r.patient_id] = r.label
    ids = sorted(groups)
    return np.array([labels[i] for i in ids]), np.array([np.mean(groups[i]) for i in ids])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", required=True, help="manifest.csv of a cohort with train/valid/test splits"
    )
    parser.add_argument(
        "--px", type=int, default=32, help="side of the downsampled image (default 32)"
    )
    args = parser.parse_args()
    manifest = read_manifest(args.data)
    parts = {name: manifest.split(name) for name in ("train", "valid", "test")}
    x = {name: features(recs, args.px) for name, recs in parts.items()}
    y = {name: np.array([r.label for r in recs]) for name, recs in parts.items()}
    scaler = StandardScaler().fit(x["train"])
    x = {name: scaler.transform(v) for name, v in x.items()}
    best = None
    for c in C_GRID:
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit(
            x["train"], y["train"]
        )
        score = balanced_accuracy_score(y["valid"], model.predict(x["valid"]))
        print(f"C={c:g}: valid balanced accuracy per image {score:.3f}")
        if best is None or score > best[0]:
            best = (score, c, model)
    _, c, model = best
    proba = model.predict_proba(x["test"])[:, 1]
    image_ba = balanced_accuracy_score(y["test"], proba >= 0.5)
    labels, patient_proba = per_patient(parts["test"], proba)
    patient_ba = balanced_accuracy_score(labels, patient_proba >= 0.5)
    print(f"chosen C={c:g}; test: {len(proba)} images, {len(labels)} patients")
    print(f"raw-pixel logistic regression balanced accuracy: image {image_ba:.3f}, ", end="")
    print(f"patient {patient_ba:.3f}")


if __name__ == "__main__":
    main()
