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

Without --model only the pixel ceiling is measured (8 epochs unless --ceiling-epochs says), on the
tower --vision at --image-size (the demo's, resnet18 at 64 px, by default): what a rendered cohort
shows of each finding, before any CLIP model is trained on it.

    python bench/finding_probe.py --model RUN/model --data MANIFEST [--ceiling-epochs 12] [--out OUT.json]
    python bench/finding_probe.py --data MANIFEST [--vision resnet18] [--image-size 64] [--ceiling-epochs 12]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from lumbarclip.bundle import ModelFolder
from lumbarclip.data.manifest import read_manifest
from lumbarclip.data.transforms import PreprocessSpec
from lumbarclip.evaluation.findings import level_truth
from lumbarclip.inference import embed_images
from lumbarclip.inference.findings import FindingClassifier
from lumbarclip.models import ModelConfig

MIN_POSITIVES = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model folder (RUN/model); without it, only the pixel ceiling")
    parser.add_argument("--data", type=Path, required=True, help="manifest with findings and level columns")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--ceiling-epochs", type=int, default=0, help="also train the pixel ceiling for up to N epochs")
    parser.add_argument("--vision", default="resnet18", help="timm tower of the ceiling without --model")
    parser.add_argument("--image-size", type=int, default=64, help="model input (px) of the ceiling without --model")
    args = parser.parse_args()
    manifest = read_manifest(args.data)
    if args.model is None:
        config = ModelConfig(vision=args.vision, image_size=args.image_size)
        _ceiling_only(config, manifest, args.ceiling_epochs or 8, args.out)
        return
    folder = ModelFolder.load(args.model, require=("preprocess",))
    model, spec = folder.model(), folder.preprocess
    train, test = manifest.split("train"), manifest.split("test")
    x_train = embed_images(model, [r.image_path for r in train], spec, progress=False)
    x_test = embed_images(model, [r.image_path for r in test], spec, progress=False)
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
        ceiling = _pixel_ceiling(model.config, manifest, args.ceiling_epochs)
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


def _ceiling_only(cfg: ModelConfig, manifest: object, epochs: int, out: Path | None) -> None:
    """The pixel ceiling alone, per kind with its test positives, and the wall time it took."""
    start = time.perf_counter()
    ceiling = _pixel_ceiling(cfg, manifest, epochs)
    seconds = time.perf_counter() - start
    print(f"pixel ceiling: {cfg.vision} at {cfg.image_size} px, {epochs} epochs at most, {seconds:.0f} s")
    print(f"{'kind':24} {'pos':>4} {'auroc':>7}")
    for kind, r in ceiling["per_kind"].items():  # type: ignore[union-attr]
        auroc = "-" if r["auroc"] is None else f"{r['auroc']:.3f}"
        print(f"{kind:24} {r['positives']:>4} {auroc:>7}")
    macro = ceiling["macro_auroc"]
    print(f"{'macro':24} {'':>4} {'-' if macro is None else f'{macro:.3f}':>7}")
    if out:
        figures = {"vision": cfg.vision, "image_size": cfg.image_size, "seconds": round(seconds, 1), **ceiling}
        out.write_text(json.dumps(figures, indent=2) + "\n")


def _pixel_ceiling(cfg: ModelConfig, manifest: object, epochs: int) -> dict[str, object]:
    from lumbarclip.evaluation.findings import pixel_ceiling
    from lumbarclip.evaluation.supervised import SupervisedConfig
    from lumbarclip.inference import load_images
    from lumbarclip.models import create_vision_tower

    splits = [
        (load_images([r.image_path for r in manifest.split(name)], PreprocessSpec.of_model(cfg.image_size), False), manifest.split(name))  # type: ignore[attr-defined]
        for name in ("train", "valid", "test")
    ]
    tower = create_vision_tower(cfg.vision, **{"img_size": cfg.image_size, **cfg.vision_kwargs})
    config = SupervisedConfig(epochs=epochs, precision="bf16-mixed")  # as evaluate runs the demo's
    return pixel_ceiling(*splits, tower, config, seed=0, progress=False)


if __name__ == "__main__":
    main()
