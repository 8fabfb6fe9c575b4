"""`lumbarclip predict`: diagnose new scans with a model folder; JSON lines on stdout."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lumbarclip.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="diagnose image files, a DICOM series or a study folder (JSON lines)",
        description="Score new scans with a model folder written by `lumbarclip evaluate` (operating "
        "point, input guard, preprocessing spec, model card). INPUT: DICOM/PNG/NIfTI files, a DICOM series "
        "folder or a study folder; in folders the axial T1/T2 series are found from the headers and the "
        "disc-level slices chosen as the Mendeley adapter does (each study line says which and why). "
        "Each image first passes the input guard (and, for DICOM, MR / axial / lumbar header checks): "
        "one outside what the model was evaluated on gets in_distribution=false, label null and a reason. "
        "Prints one JSON line per image (path, study, sequence, level, in_distribution, ood_score, "
        "calibrated p_abnormal, label, top_findings, nearest_reports) and then one per study. A study is "
        "one DICOM StudyInstanceUID, one patient of the dataset's file naming (T2_0002_D4.png), or "
        "--study NAME; files that only share a folder are separate studies. A study gets a verdict only "
        "when its in-distribution images have the shape evaluation was fitted on (e.g. T1 and T2 at three "
        "discs): the patient-level calibration of the mean of their uncalibrated probabilities, at the "
        "patient threshold, with the raw mean beside it; otherwise no verdict and the reason. Studies get "
        "keyed-hash pseudonyms (salt from --salt or LUMBARCLIP_SALT, else random per run); no DICOM "
        "header value is printed. Unreadable files are skipped with one line each on stderr; exit 2 only "
        "when nothing was readable.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    p.add_argument("--model", required=True, help="model folder (written by train, then evaluate --split test)")
    p.add_argument("--top-k", type=int, default=3, help="findings and nearest reports per image (default: 3; 0: none)")
    p.add_argument("--saliency", metavar="DIR", help="write a saliency overlay PNG per image into DIR")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch", help="PyTorch (default) or onnxruntime (needs `lumbarclip export`)")
    p.add_argument("--study", metavar="NAME", help="all inputs are one study, named NAME in the output (default: identities decide)")
    p.add_argument("--salt", help="secret for the study pseudonyms (default: LUMBARCLIP_SALT, else random)")
    p.add_argument("--out", help="write the JSON lines to this file instead of stdout")
    p.add_argument("--overwrite", action="store_true", help="replace --out or saliency files that exist")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lumbarclip.inference.predict import Predictor

    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.overwrite:
        raise InputError(f"{out}: already exists; choose another --out or pass --overwrite")
    predictor = Predictor.load(args.model, runtime=args.runtime, salt=args.salt)
    result = predictor.predict(
        args.inputs,
        top_k=args.top_k,
        saliency_dir=Path(args.saliency) if args.saliency else None,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        study=args.study,
    )
    for skipped in result.skipped:
        print(f"skipped: {skipped.input}: {skipped.reason}", file=sys.stderr)
    if not result.images:
        raise InputError(f"nothing readable in {len(args.inputs)} input(s) ({len(result.skipped)} skipped)")
    text = "".join(json.dumps(line) + "\n" for line in result.lines())
    if out is not None:
        out.write_text(text)
    else:
        sys.stdout.write(text)
    print(
        f"{len(result.images)} image(s), {len(result.studies)} stud{'y' if len(result.studies) == 1 else 'ies'}, "
        f"{len(result.skipped)} skipped",
        file=sys.stderr,
    )
    return 0
