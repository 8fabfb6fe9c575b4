"""`lumbarclip demo`: the README's main job - synthetic cohort -> training -> evaluation on CPU."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from lumbarclip.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="synth + train + evaluate on the CPU preset (the README's main command)",
        description="Render a synthetic cohort (OUT/cohort), train the cpu-demo preset on it "
        "(OUT/run/model) and evaluate image-only on the held-out test split "
        "(OUT/run/eval-test/metrics.json and report.html). Takes minutes on 2 CPU cores.",
    )
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--patients", type=int, default=500, help="synthetic patients (default: 500)")
    p.add_argument("--seed", type=int, default=0, help="seed for the cohort and training (default: 0)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--full-eval", action="store_true", help="also fine-tune and train from scratch (slower)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lumbarclip.evaluation.evaluate import EvalOptions, evaluate_run, format_summary
    from lumbarclip.synth.cohort import CohortConfig, make_cohort
    from lumbarclip.training import load_config, train

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise InputError(f"{out}: not empty; choose another --out or pass --overwrite")
    started = time.perf_counter()
    print(f"1/3 rendering {args.patients} synthetic patients -> {out / 'cohort'}")
    manifest = make_cohort(out / "cohort", CohortConfig(n_patients=args.patients, seed=args.seed), overwrite=args.overwrite)
    overrides = [f"seed={args.seed}"] + ([f"trainer.max_epochs={args.epochs}"] if args.epochs else [])
    print("2/3 contrastive pre-training (preset cpu-demo)")
    run_dir = train(load_config("cpu-demo", overrides), manifest, out / "run", overwrite=args.overwrite)
    print("3/3 image-only evaluation on the test split")
    # the demo's reports are synthetic, so the model folder may keep them as its report bank
    options = EvalOptions(finetune=args.full_eval, from_scratch=args.full_eval, report_bank=True)
    metrics = evaluate_run(run_dir, manifest, "test", options=options, overwrite=args.overwrite)
    print(format_summary(metrics))
    eval_dir = run_dir / "eval-test"
    print(f"\nrun:          {run_dir}\nmodel:        {run_dir / 'model'}")
    print(f"metrics.json: {eval_dir / 'metrics.json'}\nreport.html:  {eval_dir / 'report.html'}")
    print(f"done in {time.perf_counter() - started:.0f} s")
    print(f"\nDiagnose a test patient the model never saw:\n  {predict_command(run_dir / 'model', manifest)}")
    return 0


def predict_command(model_dir: Path, manifest: Path) -> str:
    """The `lumbarclip predict` command line for the first test patient of `manifest`."""
    from lumbarclip.data.manifest import read_manifest

    records = read_manifest(manifest).split("test")
    patient = records[0].patient_id
    paths = [_short(r.image_path) for r in records if r.patient_id == patient]
    return shlex.join(["lumbarclip", "predict", "--model", _short(model_dir), *paths])


def _short(path: Path) -> str:
    """The path relative to the working folder when it lies inside it (a shorter command)."""
    path = Path(path).absolute()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)
