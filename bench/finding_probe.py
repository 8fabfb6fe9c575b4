"""Where per-finding zero-shot loses its signal: image side or text side?

For each finding kind (each image at its own level, truth = the patient's findings there):
- probe AUROC: a logistic regression fitted on the train split's image embeddings, scored on the
  test split (supervised: how much of the finding the image embedding carries at all);
- zero-shot AUROC: `FindingClassifier` as `evaluate` uses it (positive vs negative prompt ensemble);
- positive-only AUROC: the cosine to the positive ensemble alone (no negative prompt);
- cos(pos, neg): cosine between the positive and negative ensemble embeddings, averaged over the
  imaged levels (near 1: the text side cannot tell "disc bulge" from "no disc bulge");
- with --ceiling-epochs N, the pixel ceiling: the model's vision tower from random init with one
  output per kind, trained up to N epochs on the train split's per-level truth (the epoch with
  the lowest valid loss kept), scored on test (what the images themselves show of each kind).

    python bench/finding_probe.py --model RUN/model --data MANIFEST [--ceiling-epochs 12] [--out OUT.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from lumbarclip.data.manifest import read_manifest
from lumbarclip.evaluation.findings import level_truth
from lumbarclip.inference import embed_images
from lumbarclip.inference.findings import FindingClassifier
from lumbarclip.models import LumbarCLIP

MIN_POSITIVES = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="model folder (RUN/model)")
    parser.add_argument("--data", type=Path, required=True, help="manifest with findings and level columns")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--ceiling-epochs", type=int, default=0, help="also train the pixel ceiling for up to N epochs")
    args = parser.parse_args()
    model = LumbarCLIP.from_pretrained(args.model)
    manifest = read_manifest(args.data)
    train, test = manifest.split("train"), manifest.split("test")
    x_train = embed_images(model, [r.image_path for r in train], progress=False)
    x_test = embed_images(model, [r.image_path for r in test], progress=False)
    classifier = FindingClassifier.build(model)
    levels = [r.level or None for r in test]
    zero_shot = classifier.scores(x_test, levels)
    y_train, _ = level_truth(train, classifier.kinds)
    y_test, usable = level_truth(test, classifier.kinds)
    keys = np.array([lv or "" for lv in levels])
    rows = {}
    for k, kind in enumerate(classifier.kinds):
        y = y_test[usable, k]
        if y.sum() < MIN_POSITIVES or y_train[:, k].sum() < MIN_POSITIVES:
            continue
        probe = LogisticRegression(max_iter=2000).fit(x_train, y_train[:, k])
        positive = np.array([x_test[i] @ classifier.classes[keys[i]][k, 1].numpy() for i in range(len(test))])
        imaged = sorted(set(keys[usable]))
        cosine = np.mean([float(classifier.classes[lv][k, 0] @ classifier.classes[lv][k, 1]) for lv in imaged])
        rows[kind] = {
            "positives": int(y.sum()),
            "probe_auroc": float(roc_auc_score(y, probe.predict_proba(x_test[usable])[:, 1])),
            "zero_shot_auroc": float(roc_auc_score(y, zero_shot[kind][usable])),
            "positive_only_auroc": float(roc_auc_score(y, positive[usable])),
            "cos_pos_neg": float(cosine),
        }
    columns: tuple[str, ...] = ("probe_auroc", "zero_shot_auroc", "positive_only_auroc", "cos_pos_neg")
    if args.ceiling_epochs:
        ceiling = _pixel_ceiling(model, manifest, args.ceiling_epochs)
        print(f"pixel ceiling ({args.ceiling_epochs} epochs at most): macro AUROC {ceiling['macro_auroc']:.3f}")
        for kind, r in rows.items():
            r["pixel_ceiling_auroc"] = ceiling["per_kind"].get(kind, {}).get("auroc")
        columns += ("pixel_ceiling_auroc",)
    means = {c: float(np.mean([r[c] for r in rows.values()])) for c in columns}
    print(f"{'kind':24} {'pos':>4} " + " ".join(f"{c:>19}" for c in columns))
    for kind, r in rows.items():
        print(f"{kind:24} {r['positives']:>4} " + " ".join(f"{r[c]:>19.3f}" for c in columns))
    print(f"{'mean':24} {'':>4} " + " ".join(f"{means[c]:>19.3f}" for c in columns))
    if args.out:
        args.out.write_text(json.dumps({"kinds": rows, "mean": means}, indent=2) + "\n")


def _pixel_ceiling(model: LumbarCLIP, manifest: object, epochs: int) -> dict[str, object]:
    from lumbarclip.evaluation.findings import pixel_ceiling
    from lumbarclip.evaluation.supervised import SupervisedConfig
    from lumbarclip.inference import load_images
    from lumbarclip.models import create_vision_tower

    cfg = model.config
    splits = [
        (load_images([r.image_path for r in manifest.split(name)], cfg.image_size, False), manifest.split(name))  # type: ignore[attr-defined]
        for name in ("train", "valid", "test")
    ]
    tower = create_vision_tower(cfg.vision, **{"img_size": cfg.image_size, **cfg.vision_kwargs})
    config = SupervisedConfig(epochs=epochs, precision="bf16-mixed")  # as evaluate runs the demo's
    return pixel_ceiling(*splits, tower, config, seed=0, progress=False)


if __name__ == "__main__":
    main()
