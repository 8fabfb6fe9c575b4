"""`lumbarclip synth`: write a synthetic cohort (phantom images, notes, manifest)."""

from __future__ import annotations

import argparse

from lumbarclip.cli.args import add_render_options
from lumbarclip.synth.cohort import CohortConfig


def register(sub: argparse._SubParsersAction) -> None:
    defaults = CohortConfig()
    p = sub.add_parser(
        "synth",
        help="write a synthetic cohort of phantom axial lumbar MRI with reports",
        description="Render a synthetic cohort: per patient, axial T1 and T2 phantom slices at "
        "L3-L4, L4-L5 and L5-S1 (images/T1_0002_D3.png, ...) drawn from sampled findings, one "
        "radiology note, a label and a patient-disjoint stratified train/valid/test split. Writes "
        "DIR/images/, DIR/manifest.csv and DIR/findings.jsonl; the same seed gives the same bytes.",
    )
    add_render_options(p)
    p.add_argument(
        "--patients",
        type=int,
        default=defaults.n_patients,
        help=f"number of patients (default {defaults.n_patients})",
    )
    p.add_argument(
        "--abnormal-rate",
        type=float,
        default=defaults.abnormal_rate,
        help=f"fraction of abnormal patients (default {defaults.abnormal_rate})",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lumbarclip.synth.cohort import make_cohort

    config = CohortConfig(
        n_patients=args.patients,
        seed=args.seed,
        size=args.size,
        fmt=args.fmt,
        abnormal_rate=args.abnormal_rate,
    )
    manifest = make_cohort(
        args.out, config, overwrite=args.overwrite, progress=not args.no_progress
    )
    print(f"manifest: {manifest}")
    return 0
