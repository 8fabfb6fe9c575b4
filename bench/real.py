"""LumbarCLIP on the paper's own cohort (mid-sagittal slices, not the paper's axial ones): build
the cohort, train each candidate recipe, choose on valid, evaluate the chosen one once on the
paper's test split. `make real SLICES=DIR NOTES=DIR OUT=DIR` runs this.

    python bench/real.py --slices YOLOSPINE_AT_aab0746 --notes LUMBAR_MEDCLIP/local_data --out OUT

Stages (a progress bar each): 1 cohort (`lumbarclip data mendeley-sagittal`), 2 one training and
one valid evaluation per candidate, 3 the choice (highest valid patient AUROC of the linear
probe; ties go to the first candidate), 4 the chosen run evaluated once on test, 5 the disc
layer in the chosen model folder (detector, epoch by valid F1, column rule chosen on valid;
grader, linear or disc CNN chosen on valid), scored once on test, then tied to the reports
(per-level zero-shot and level search, the view chosen on valid, test once); `--no-discs`
skips it.

Outputs: OUT/cohort/manifest.csv (+ adapter-report.json), OUT/candidates/NAME/ (each candidate's
run and its valid figures), OUT/run/ (the chosen run: OUT/run/model is a model folder that
`predict`, `serve` and `pacs` accept), OUT/run/eval-test/metrics.json and report.html, OUT/run/eval-test/discs.json and
disc-zeroshot.json, and
OUT/real.json (command, commit, seed, machine, the candidates' valid figures, the choice, the
test figures and each stage's wall time). Nothing under OUT may be committed: it is derived from
the real images and notes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

#: name -> overrides of the cpu-real preset; compared on valid, the best one is scored on test.
CANDIDATES: dict[str, list[str]] = {
    "224px": [],
    "160px": ["model.image_size=160"],
}
PRESET = "cpu-real"


def _parse_candidate(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition("=")
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"candidate {text!r}: NAME=key=value,key=value with a plain NAME")
    return name, [o for o in overrides.split(",") if o]


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", required=True, help="YOLOspine checkout at commit aab0746")
    parser.add_argument("--notes", required=True, help="Lumbar-MedCLIP local_data folder (the paper's split and notes)")
    parser.add_argument("--out", required=True, help="a new folder for everything this writes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs (all candidates)")
    parser.add_argument(
        "--candidate", action="append", type=_parse_candidate, metavar="NAME=key=value,...",
        help=f"a recipe to compare on valid (overrides of {PRESET}); repeatable; default: "
        + "; ".join(f"{n}={','.join(o) or '(preset)'}" for n, o in CANDIDATES.items()),
    )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    parser.add_argument("--no-discs", action="store_true", help="skip stage 5, the disc detector and grader")
    parser.add_argument("--disc-epochs", type=int, default=8, help="disc detector epochs (default 8)")
    parser.add_argument(
        "--valid-only", action="store_true",
        help="stop after the candidates' valid figures (OUT/real.json without a choice or a test score)",
    )  # fmt: skip
    args = parser.parse_args()

    from tqdm import tqdm

    from lumbarclip.data.mendeley_sagittal import build_sagittal_manifest
    from lumbarclip.errors import InputError
    from lumbarclip.evaluation.evaluate import EvalOptions, evaluate_run, format_summary
    from lumbarclip.evaluation.metrics_file import read_metrics
    from lumbarclip.training import load_config, train
    from lumbarclip.disc_layer import build_disc_layer, tie_to_reports

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        print(f"bench/real.py: {out}: not empty; choose another --out or pass --overwrite", file=sys.stderr)
        return 2
    candidates = dict(args.candidate) if args.candidate else CANDIDATES
    commit = _commit()  # the code this run imports: read before any later edit of the tree
    laps: dict[str, float] = {}
    started = time.perf_counter()

    stages = 4 if args.no_discs else 5
    try:
        print(f"1/{stages} cohort: mid-sagittal slices joined to the paper's split and notes", flush=True)
        cohort = build_sagittal_manifest(args.slices, args.notes, out / "cohort", overwrite=args.overwrite, progress=True)
    except InputError as err:
        print(f"bench/real.py: {err}", file=sys.stderr)
        return 2
    print(cohort.manifest.to_text(), flush=True)
    manifest = out / "cohort" / "manifest.csv"
    laps["cohort"] = time.perf_counter() - started

    print(f"2/{stages} training {len(candidates)} candidate(s) of {PRESET}, each evaluated on valid", flush=True)
    valid_figures: dict[str, dict[str, object]] = {}
    quick = EvalOptions(
        finetune=False, from_scratch=False, pixel_ceiling=False, label_efficiency=False, report=False,
        model_folder=False, raw_pixels=False, seed=args.seed,
    )  # fmt: skip
    for name, overrides in tqdm(candidates.items(), desc="candidates", unit="run"):
        lap = time.perf_counter()
        extra = [f"seed={args.seed}"] + ([f"trainer.max_epochs={args.epochs}"] if args.epochs else [])
        run_dir = train(load_config(PRESET, overrides + extra), manifest, out / "candidates" / name, overwrite=args.overwrite)
        evaluate_run(run_dir, manifest, "valid", options=quick, overwrite=args.overwrite)
        valid = read_metrics(run_dir / "eval-valid" / "metrics.json")
        valid_figures[name] = {
            "overrides": overrides,
            "probe_patient_auroc": valid.patient.auroc,
            "probe_patient_balanced_accuracy": valid.patient.balanced_accuracy,
            "zero_shot_patient_auroc": valid.zero_shot.patient.auroc,
            "seconds": round(time.perf_counter() - lap, 1),
        }
        print(f"  {name}: valid probe patient AUROC {valid_figures[name]['probe_patient_auroc']:.3f}", flush=True)
    laps["candidates"] = time.perf_counter() - started - sum(laps.values())

    if args.valid_only:
        summary = {"command": shlex.join(["python", "bench/real.py", *sys.argv[1:]]), "commit": commit, "seed": args.seed,
                   "machine": _machine(), "preset": PRESET, "candidates": valid_figures}  # fmt: skip
        (out / "real.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"valid figures: {out / 'real.json'} (no test score)")
        return 0
    chosen = max(valid_figures, key=lambda n: (valid_figures[n]["probe_patient_auroc"] or 0.0, -list(candidates).index(n)))
    print(f"3/{stages} chosen on valid: {chosen}", flush=True)
    run_dir = out / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    shutil.copytree(out / "candidates" / chosen, run_dir, ignore=shutil.ignore_patterns("eval-valid", "checkpoints"))

    print(f"4/{stages} the chosen run, once, on the paper's test split", flush=True)
    full = EvalOptions(from_scratch=False, pixel_ceiling=False, label_efficiency=False, seed=args.seed)
    metrics = evaluate_run(run_dir, manifest, "test", options=full, overwrite=True)
    laps["test"] = time.perf_counter() - started - sum(laps.values())
    print(format_summary(metrics))
    if not args.no_discs:
        print("5/5 the disc layer: detector and grader, chosen on valid, scored once on test; tied to the reports", flush=True)
        discs = build_disc_layer(manifest, run_dir / "model", epochs=args.disc_epochs, seed=args.seed, test=True)
        (run_dir / "eval-test" / "discs.json").write_text(json.dumps(discs, indent=2) + "\n")
        tied = tie_to_reports(manifest, run_dir / "model", test=True, seed=args.seed)
        (run_dir / "eval-test" / "disc-zeroshot.json").write_text(json.dumps(tied, indent=2) + "\n")
        laps["discs"] = time.perf_counter() - started - sum(laps.values())

    summary = {
        "command": shlex.join(["python", "bench/real.py", *sys.argv[1:]]),
        "commit": commit,
        "seed": args.seed,
        "machine": _machine(),
        "data": "mid-sagittal slices, not the paper's axial ones (YOLOspine aab0746 + Lumbar-MedCLIP split)",
        "cohort": cohort.to_dict() | {"splits": cohort.manifest.splits},
        "preset": PRESET,
        "candidates": valid_figures,
        "chosen": chosen,
        "choice_rule": "highest valid patient AUROC of the linear probe",
        "test_metrics": str(run_dir / "eval-test" / "metrics.json"),
        "seconds": {k: round(v, 1) for k, v in laps.items()} | {"total": round(time.perf_counter() - started, 1)},
    }
    (out / "real.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nmodel:        {run_dir / 'model'}\nmetrics.json: {run_dir / 'eval-test' / 'metrics.json'}")
    print(f"report.html:  {run_dir / 'eval-test' / 'report.html'}\nsummary:      {out / 'real.json'}")
    print(f"done in {summary['seconds']['total'] / 60:.1f} min")
    return 0


def _machine() -> str:
    import torch

    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{os.cpu_count()} CPU cores ({platform.machine()}){gpu}"


if __name__ == "__main__":
    sys.exit(main())
