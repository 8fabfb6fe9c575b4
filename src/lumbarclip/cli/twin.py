"""`lumbarclip twin`: a phantom cohort rendered from the findings in real radiology notes."""

from __future__ import annotations

import argparse
import sys

from lumbarclip.cli.args import add_render_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "twin",
        help="render a synthetic twin of a real notes file",
        description="For each patient of a notes CSV (columns patient_id, split, lbp, note; a "
        "patient's rows are joined), parse the note into findings and render the six phantom "
        "images from them. --render label (default): lbp=0 patients get healthy discs, lbp=1 "
        "patients the parsed findings plus mild degeneration at some discs the note does not "
        "mention, so images always agree with the label (a pipeline check). --render findings: "
        "exactly what the parsed note says, whatever the label (the benchmark mode). The label, "
        "split and note are kept in both modes. Writes DIR/images/, DIR/manifest.csv and DIR/findings.jsonl (with the "
        "parsed and the rendered findings).",
    )
    p.add_argument(
        "--notes", required=True, help="notes CSV with columns patient_id, split, lbp, note"
    )
    p.add_argument(
        "--render",
        choices=("label", "findings"),
        default="label",
        help="what the images show: label (healthy unless lbp=1) or findings (the parsed note, "
        "whatever the label); default label",
    )
    add_render_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lumbarclip.synth.cohort import make_twin

    summary = make_twin(
        args.notes,
        args.out,
        seed=args.seed,
        size=args.size,
        fmt=args.fmt,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        render=args.render,
    )
    for where, why in sorted(summary.skipped.items()):
        print(f"skipped {where}: {why}", file=sys.stderr)
    print(f"patients: {summary.patients} rendered, {len(summary.skipped)} skipped")
    if summary.disagreements:
        names = ", ".join(summary.disagreements)
        print(f"notes whose parsed findings disagree with lbp (label kept): {names}")
    print(f"manifest: {summary.manifest}")
    return 0
