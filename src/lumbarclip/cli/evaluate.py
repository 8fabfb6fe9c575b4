"""`lumbarclip evaluate`: score a trained model on a split; metrics.json + report.html."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from lumbarclip.errors import InputError

if TYPE_CHECKING:
    from lumbarclip.evaluation.evaluate import EvalOptions


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a trained model: metrics.json and report.html",
        description="Evaluate a trained model on one split of a manifest: integrity checks (a patient "
        "in two splits is refused), linear probe on frozen image embeddings (C and threshold chosen "
        "on valid), zero-shot with prompt ensembles, image<->report retrieval, baselines (majority, "
        "raw pixels, supervised from scratch), fine-tuning, label efficiency at 1/10/100% of "
        "training patients, patient-bootstrap 95% CIs. Writes OUT/metrics.json and OUT/report.html "
        "(OUT defaults to RUN/eval-SPLIT) and prints a summary table. Also writes what "
        "`lumbarclip predict` needs into the model folder: the probe's operating point with Platt "
        "calibration and thresholds fitted on valid, the input guard and the model card (with --split test "
        "only: valid is where choices are made, test is scored once and is what the card reports). "
        "Warns when the run records no hashed training patient ids (RUN/train_summary.json) to check "
        "the evaluated patients against.",
    )
    p.add_argument("--run", required=True, help="run folder (holding model/) or a model folder")
    p.add_argument("--data", required=True, help="manifest CSV with train, valid and the evaluated split")
    p.add_argument(
        "--split", default="test", choices=("test", "valid"), help="split to score (default: test)"
    )
    p.add_argument("--out", help="output folder (default: RUN/eval-SPLIT)")
    p.add_argument("--prompts", help="YAML/JSON file {normal: [...], abnormal: [...]} for zero-shot")
    p.add_argument("--no-finetune", action="store_true", help="skip fine-tuning the pre-trained tower")
    p.add_argument("--no-scratch", action="store_true", help="skip the supervised from-scratch baseline")
    p.add_argument(
        "--no-pixel-ceiling", action="store_true",
        help="skip the per-finding supervised tower on pixels (what the images show of each finding)",
    )  # fmt: skip
    p.add_argument(
        "--no-label-efficiency", action="store_true", help="skip the 1/10/100%% label-efficiency runs"
    )
    p.add_argument(
        "--epochs", type=int, default=3, help="epochs of fine-tuning and from-scratch training (default: 3)"
    )
    p.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples over patients (default: 1000)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of bootstrap, subsampling and training (default: 0)"
    )
    p.add_argument(
        "--map", default="pca", choices=("pca", "tsne"), help="2-D embedding map method (default: pca)"
    )
    p.add_argument("--no-report", action="store_true", help="write metrics.json only")
    p.add_argument(
        "--report-bank",
        action="store_true",
        help="also store the training reports' texts and embeddings beside the model "
        "(embeddings and texts) so predict can show the nearest reports; texts are stored "
        "AS GIVEN and real reports can hold identifiers, hence opt-in",
    )
    p.add_argument(
        "--no-model-folder",
        action="store_true",
        help="do not write the operating point, input guard "
        "and model card into the model folder (written by default with --split test; kept unless --overwrite)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace metrics.json/report.html in --out")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    """`EvalOptions` from parsed arguments (imports stay lazy so `--help` is instant)."""
    from lumbarclip.evaluation.evaluate import EvalOptions
    from lumbarclip.evaluation.supervised import SupervisedConfig
    from lumbarclip.evaluation.zeroshot import load_prompts

    if args.epochs < 1 or args.bootstrap < 1:
        raise InputError("--epochs and --bootstrap must be at least 1")
    return EvalOptions(
        prompts=load_prompts(args.prompts) if args.prompts else None,
        finetune=not args.no_finetune,
        from_scratch=not args.no_scratch,
        pixel_ceiling=not args.no_pixel_ceiling,
        label_efficiency=not args.no_label_efficiency,
        supervised=SupervisedConfig(epochs=args.epochs),
        bootstrap=args.bootstrap,
        seed=args.seed,
        report=not args.no_report,
        embedding_map=args.map,
        progress=not args.no_progress,
        model_folder=not args.no_model_folder,
        report_bank=args.report_bank,
    )


def run(args: argparse.Namespace) -> int:
    from lumbarclip.evaluation.evaluate import evaluate_run, format_summary

    metrics = evaluate_run(args.run, args.data, args.split, args.out, options_from_args(args), args.overwrite)
    out = Path(metrics["meta"]["out"])
    print(format_summary(metrics))
    print(f"metrics: {out / 'metrics.json'}")
    if not args.no_report:
        print(f"report:  {out / 'report.html'}")
    return 0
