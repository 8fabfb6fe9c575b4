"""`lumbarclip train`: contrastive pre-training from a manifest."""

from __future__ import annotations

import argparse

from lumbarclip.cli.args import add_overrides
from lumbarclip.training.config import load_config, preset_names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="contrastive pre-training on a manifest",
        description="Train a LumbarCLIP model on the train split of a manifest, validating by "
        "zero-shot balanced accuracy on the valid split. Writes RUN/model/ (config.json + "
        "model.safetensors + tokenizer), RUN/config.yaml, RUN/logs/metrics.csv and "
        "RUN/train_summary.json.",
    )
    p.add_argument("--data", required=True, help="manifest CSV (see `lumbarclip data check`)")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument(
        "--config",
        default="cpu-demo",
        help=f"a preset ({', '.join(preset_names())}) or a YAML file (default: cpu-demo)",
    )
    add_overrides(p)
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lumbarclip.training.trainer import train

    config = load_config(args.config, args.overrides)
    out = train(config, args.data, args.out, progress=not args.no_progress, overwrite=args.overwrite)
    print(f"model: {out / 'model'}")
    return 0
