"""Does the saliency map point at the lesion? The pointing game on a synthetic cohort.

On the abnormal images of a split that show a visible lesion (from the phantom renderer,
`findings.jsonl`), a hit is a map whose peak lies within --margin pixels (of the saved image)
of the lesion: of the pixels the findings visibly change (--truth mask, the default) or of
their boxes (--truth box; a bulge's box spans its whole ring and the canal in the middle).
Baselines on the same images: a centre prior (peak at the image centre) and a random map (peak
at a uniformly random pixel, mean of 100 seeded draws). Each --variant is a CAM method,
optionally @ a comma-separated list of target layers; the target direction is the zero-shot
classifier's (abnormal minus normal class embedding) or, with --target abnormal, the
abnormal-class embedding alone.

    python bench/saliency.py --model RUN/model --data COHORT/manifest.csv [--split test] [--margin 4]
        [--truth mask|box] [--variant gradcam --variant layercam@layer2,layer3 ...] [--json OUT.json]

Target (issue 7): hit rate >= 0.70 and >= 2x the better baseline on the demo model.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from lumbarclip.data.imageio import load_image
from lumbarclip.data.manifest import read_manifest
from lumbarclip.evaluation.zeroshot import default_prompts
from lumbarclip.inference import class_embeddings, load_images
from lumbarclip.inference.saliency import (
    DEFAULT_LAYERS,
    DEFAULT_METHOD,
    lesion_region,
    pointing_game,
    read_lesions,
    saliency_maps,
)
from lumbarclip.models import LumbarCLIP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder (config.json + model.safetensors)")
    parser.add_argument("--data", required=True, help="manifest.csv of a synthetic cohort with lesion boxes")
    parser.add_argument("--split", default="test", help="split to score (default test)")
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
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-map baseline")
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    model = LumbarCLIP.from_pretrained(args.model)
    lesions = read_lesions(args.data)
    records = [r for r in read_manifest(args.data).split(args.split) if r.label == 1 and r.image_path.resolve() in lesions]
    if not records:
        raise SystemExit(f"no abnormal {args.split} images with a visible lesion in {args.data}")
    images = load_images([r.image_path for r in records], model.config.image_size, progress=False)
    shapes = [load_image(r.image_path).shape for r in records]
    truths = args.truth or ["mask"]
    margins = args.margin or [4.0]
    regions = {t: [lesion_region(lesions[r.image_path.resolve()], s, t) for r, s in zip(records, shapes)] for t in truths}
    classes = class_embeddings(model, default_prompts())
    directions = {"abnormal-normal": classes[1] - classes[0], "abnormal": classes[1]}
    directions = {name: directions[name] for name in args.target or ["abnormal-normal"]}
    print(
        f"{len(records)} abnormal {args.split} images with a visible lesion "
        f"({len({r.patient_id for r in records})} patients), margins {margins} px, "
        f"model input {model.config.image_size} px, saved images {shapes[0][1]}x{shapes[0][0]} px"
    )
    results = []
    default = DEFAULT_METHOD + ("@" + ",".join(DEFAULT_LAYERS) if DEFAULT_LAYERS else "")
    for variant in args.variant or [default]:
        method, _, layer_list = variant.partition("@")
        layers = tuple(x for x in layer_list.split(",") if x)
        for name, direction in directions.items():
            started = time.perf_counter()
            cams = saliency_maps(model, images, direction, method=method, layers=layers)
            seconds = time.perf_counter() - started
            for (truth, region), margin in ((item, m) for item in regions.items() for m in margins):
                game = pointing_game(cams, region, margin=margin, seed=args.seed)
                row = {"variant": variant, "target": name, "truth": truth, **game.to_dict()}
                row["ms_per_image"] = 1000 * seconds / len(records)
                results.append(row)
                print(
                    f"{variant:24s} {name:15s} {truth:4s} m={margin:g} hit {game.hit_rate:.3f}  centre {game.centre:.3f}  "
                    f"random {game.random:.3f}  ratio {row['ratio_to_best_baseline']:.2f}  "
                    f"where centre misses {row['hit_rate_where_centre_misses'] or 0:.3f} "
                    f"(n={row['n_centre_misses']})  ({row['ms_per_image']:.0f} ms/image)"
                )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"model": args.model, "data": args.data, "split": args.split, "results": results}, fh, indent=2)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
