"""`lumbarclip train`: contrastive pre-training from a manifest."""

from __future__ import annotations

import argparse

from lumbarclip.cli.args import add_overrides
from lumbarclip.errors import InputError
from lumbarclip.training.config import load_config, preset_names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="contrastive pre-training on a manifest",
        description="Train a LumbarCLIP model on the train split of a manifest, validating by "
        "zero-shot balanced accuracy on the valid split. Writes the model folder RUN/model/ "
        "(config, weights, tokenizer and the preprocessing spec), RUN/config.yaml, RUN/run.json, RUN/checkpoints/ (Lightning "
        "checkpoints every trainer.checkpoint_every_n_steps steps and at each epoch end), "
        "RUN/logs/metrics.csv and RUN/train_summary.json. A killed run continues with "
        "`lumbarclip train --resume RUN`. Several processes: --set trainer.devices=N --set "
        "trainer.strategy=ddp (data.batch_size is per process).",
    )
    p.add_argument(
        "--data", help="manifest CSV (see `lumbarclip data check`) or a folder from `lumbarclip data shard`"
    )
    p.add_argument("--out", help="run folder to create")
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue a killed run from its newest checkpoint (its config and data are in RUN; "
        "give nothing else)",
    )
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
    from lumbarclip.training.trainer import resume_run, train

    if args.resume:
        given = [f"--{n}" for n in ("data", "out", "overwrite") if getattr(args, n)] + (["--set"] if args.overrides else [])
        if given or args.config != "cpu-demo":
            raise InputError(f"--resume takes the run's own config and data; drop {', '.join(given) or '--config'}")
        out = resume_run(args.resume, progress=not args.no_progress)
        print(f"model: {out / 'model'}")
        return 0
    if not args.data or not args.out:
        raise InputError("--data and --out are required (or --resume RUN)")
    config = load_config(args.config, args.overrides)
    out = train(config, args.data, args.out, progress=not args.no_progress, overwrite=args.overwrite)
    print(f"model: {out / 'model'}")
    return 0
