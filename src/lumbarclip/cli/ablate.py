"""`lumbarclip ablate`: train and evaluate a grid of towers x heads x losses x seeds."""

from __future__ import annotations

import argparse

from lumbarclip.cli.args import add_overrides
from lumbarclip.errors import InputError


def _names(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _seeds(text: str) -> list[int]:
    try:
        return [int(t) for t in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate",
        help="grid of vision towers x heads x losses x seeds -> ablation.csv + table",
        description="Train one model per combination of --vision, --head, --loss and --seeds (on a "
        "preset plus --set overrides), evaluate each on the test split (linear probe, zero-shot, "
        "retrieval, patient-bootstrap CIs, findings-level retrieval and per-finding zero-shot when "
        "the manifest has findings) and write DIR/ablation.csv (one row per run) and DIR/ablation.md "
        "(mean ± std over seeds [95% t-interval of the mean over seeds]). Runs live in DIR/runs/; "
        "finished ones are reused, so an interrupted grid resumes. Vision variants: resnet (resnet10t), vit (ViT-Tiny blocks, "
        "patch 8, depth 4), swin (Swin blocks, window 4, width 48, depths 2-2-2), or any timm model "
        "name. Loss variants: soft (the preset's soft loss), soft-binary (soft targets from the "
        "normal/abnormal label), soft-findings (soft targets from the parsed findings), hard (CLIP "
        "InfoNCE).",
    )
    p.add_argument("--data", required=True, help="manifest CSV with train, valid and test splits")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--vision", type=_names, help="vision variants or timm names, comma-separated (default: the preset's)"
    )
    p.add_argument("--head", type=_names, default=["linear", "mlp"], help="heads (default: linear,mlp)")
    p.add_argument(
        "--loss", type=_names, default=["soft"], help="loss variants: soft, soft-binary, soft-findings, hard (default: soft)"
    )
    p.add_argument("--seeds", type=_seeds, default=[0, 1], help="seeds (default: 0,1)")
    p.add_argument("--preset", default="cpu-demo", help="training preset or YAML file (default: cpu-demo)")
    add_overrides(p, " for every run")
    p.add_argument("--prompts", help="YAML/JSON zero-shot prompts {normal: [...], abnormal: [...]}")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per run (default: 1000)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace ablation.csv and runs trained with another config"
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lumbarclip.evaluation.evaluate import EvalOptions
    from lumbarclip.evaluation.zeroshot import load_prompts
    from lumbarclip.experiments import AblationGrid, run_ablation
    from lumbarclip.training import load_config

    if args.bootstrap < 1:
        raise InputError("--bootstrap must be at least 1")
    visions = args.vision or [load_config(args.preset, args.overrides).model.vision]
    grid = AblationGrid.named(visions, args.head, args.loss, args.seeds, args.preset, args.overrides)
    options = EvalOptions(
        prompts=load_prompts(args.prompts) if args.prompts else None, bootstrap=args.bootstrap
    )
    result = run_ablation(
        args.data, args.out, grid, options, progress=not args.no_progress, overwrite=args.overwrite
    )
    print(result.markdown)
    print(f"ablation: {result.csv_path}\ntable:    {result.markdown_path}")
    return 0
