"""Does the saliency map point at the lesion? The pointing game on a synthetic cohort.

On the abnormal images of a split that show a visible lesion (from the phantom renderer,
`findings.jsonl`), a hit is a map whose peak lies within --margin pixels (of the saved image)
of the lesion: of the pixels the findings visibly change (--truth mask, the default) or of
their boxes (--truth box; a bulge's box spans its whole ring and the canal in the middle).
Baselines on the same images: a centre prior (peak at the image centre) and a random map (peak
at a uniformly random pixel, mean of 100 seeded draws). Each --variant is a CAM method,
optionally @ a comma-separated list of target layers; the target direction is the zero-shot
classifier's (abnormal minus normal class embedding) or, with --target abnormal, the
abnormal-class embedding alone. The variant `finding-head` (models with `model.finding_head`) is
the head's attention instead: per image, the mean map of the queries of the kinds present at
its level.

    python bench/saliency.py --model RUN/model --data COHORT/manifest.csv [--split valid|test] [--margin 4]
        [--truth mask|box] [--variant gradcam --variant layercam@layer2,layer3 ...] [--select] [--json OUT.json]

Settings (variant x target) are compared on valid, the default split; test is scored once, for
one chosen setting: `--split test` refuses more than one, and `--select` picks the setting with
the best valid hit rate (first --truth and --margin) and then scores only that one on test.

Target: hit rate >= 0.70 and >= 2x the better baseline on the demo model.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from lumbarclip.data.imageio import load_image
from lumbarclip.bundle import load_model
from lumbarclip.data.lesions import read_lesions
from lumbarclip.data.manifest import read_manifest
from lumbarclip.data.transforms import PreprocessSpec
from lumbarclip.evaluation.pointing import pointing_game
from lumbarclip.evaluation.zeroshot import default_prompts
from lumbarclip.inference import class_embeddings, load_images
from lumbarclip.inference.saliency import DEFAULT_LAYERS, DEFAULT_METHOD, saliency_maps
from lumbarclip.models import LumbarCLIP


def _head_maps(model: LumbarCLIP, images: torch.Tensor, records: list) -> np.ndarray:
    """The finding head's attention, per image the mean of the maps of the kinds present at its
    level (what each finding's query looked at), [N, h, w] on the last feature map's grid."""
    from lumbarclip.evaluation.findings import level_truth
    from lumbarclip.inference.findings import head_outputs

    _, attention = head_outputs(model, images)
    truth, _ = level_truth(records)
    weights = truth / np.maximum(truth.sum(1, keepdims=True), 1)
    return np.einsum("nk,nkhw->nhw", weights, attention)


def score_split(
    model: LumbarCLIP,
    data: str,
    split: str,
    settings: list[tuple[str, str]],
    truths: list[str],
    margins: list[float],
    seed: int,
) -> list[dict[str, object]]:
    """Pointing-game rows of each (variant, target) setting on one split's lesion images."""
    lesions = read_lesions(data)
    records = [r for r in read_manifest(data).split(split) if r.label == 1 and r.image_path.resolve() in lesions]
    if not records:
        raise SystemExit(f"no abnormal {split} images with a visible lesion in {data}")
    images = load_images([r.image_path for r in records], PreprocessSpec.of_model(model.config.image_size), progress=False)
    shapes = [load_image(r.image_path).shape for r in records]
    regions = {t: [lesions[r.image_path.resolve()].region(s, t) for r, s in zip(records, shapes)] for t in truths}
    classes = class_embeddings(model, default_prompts())
    directions = {"abnormal-normal": classes[1] - classes[0], "abnormal": classes[1]}
    print(
        f"{split}: {len(records)} abnormal images with a visible lesion "
        f"({len({r.patient_id for r in records})} patients), margins {margins} px, "
        f"model input {model.config.image_size} px, saved images {shapes[0][1]}x{shapes[0][0]} px"
    )
    results = []
    for variant, name in settings:
        method, _, layer_list = variant.partition("@")
        layers = tuple(x for x in layer_list.split(",") if x)
        started = time.perf_counter()
        if method == "finding-head":
            cams = _head_maps(model, images, records)
        else:
            cams = saliency_maps(model, images, directions[name], method=method, layers=layers)
        seconds = time.perf_counter() - started
        for (truth, region), margin in ((item, m) for item in regions.items() for m in margins):
            game = pointing_game(cams, region, margin=margin, seed=seed)
            row = {"split": split, "variant": variant, "target": name, "truth": truth, **game.to_dict()}
            row["ms_per_image"] = 1000 * seconds / len(records)
            results.append(row)
            print(
                f"{variant:24s} {name:15s} {truth:4s} m={margin:g} hit {game.hit_rate:.3f}  centre {game.centre:.3f}  "
                f"random {game.random:.3f}  ratio {row['ratio_to_best_baseline']:.2f}  "
                f"where centre misses {row['hit_rate_where_centre_misses'] or 0:.3f} "
                f"(n={row['n_centre_misses']})  ({row['ms_per_image']:.0f} ms/image)"
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder (written by lumbarclip train)")
    parser.add_argument("--data", required=True, help="manifest.csv of a synthetic cohort with lesion boxes")
    parser.add_argument(
        "--split", default="valid", choices=("valid", "test"),
        help="split to score (default valid; test takes one setting, chosen on valid)",
    )  # fmt: skip
    parser.add_argument(
        "--margin", type=float, action="append", help="lesion dilation in saved-image pixels (repeatable; default 4)"
    )
    parser.add_argument("--truth", action="append", choices=("mask", "box"), help="lesion region(s) (default mask)")
    parser.add_argument(
        "--variant", action="append", default=[], help="METHOD[@LAYER,LAYER] (repeatable; default: the library's)"
    )
    parser.add_argument(
        "--target",
        action="append",
        choices=("abnormal-normal", "abnormal"),
        help="target direction(s): abnormal minus normal class embedding (default), or the abnormal one",
    )
    parser.add_argument(
        "--select", action="store_true",
        help="pick the setting with the best valid hit rate, then score only that one on test",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-map baseline")
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    default = DEFAULT_METHOD + ("@" + ",".join(DEFAULT_LAYERS) if DEFAULT_LAYERS else "")
    settings = [(v, t) for v in args.variant or [default] for t in args.target or ["abnormal-normal"]]
    if args.split == "test" and len(settings) > 1:
        raise SystemExit(
            f"{len(settings)} settings on test: compare them on valid (the default split), or pass --select "
            "to score only the best of them on test"
        )
    if args.select and args.split != "valid":
        raise SystemExit("--select chooses on valid and scores test once: leave --split at valid")
    truths = args.truth or ["mask"]
    margins = args.margin or [4.0]
    model = load_model(args.model)
    results = score_split(model, args.data, args.split, settings, truths, margins, args.seed)
    report: dict[str, object] = {"model": args.model, "data": args.data, "split": args.split, "results": results}
    if args.select:
        first = [r for r in results if r["truth"] == truths[0] and r["margin_px"] == margins[0]]
        best = max(first, key=lambda r: r["hit_rate"])  # first of equals: the order given
        chosen = (str(best["variant"]), str(best["target"]))
        print(f"chosen on valid (hit rate, {truths[0]}, m={margins[0]:g}): {chosen[0]} {chosen[1]}; scoring test once")
        report["selected"] = {"variant": chosen[0], "target": chosen[1], "on": "valid", "truth": truths[0], "margin": margins[0]}
        report["test"] = score_split(model, args.data, "test", [chosen], truths, margins, args.seed)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
