"""`lumbarclip data`: inspect images, check manifests, build a manifest for the Mendeley dataset."""

from __future__ import annotations

import argparse
import json
import sys

from lumbarclip.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="inspect images, check a manifest, adapt the Mendeley lumbar MRI dataset",
        description="Data tools. `shard` writes WebDataset shards for streaming; `inspect` reads images (DICOM .dcm/.ima, PNG, JPEG, TIFF, "
        "NIfTI) the way training does; `check` validates a manifest; `mendeley` builds a "
        "manifest from the public Lumbar Spine MRI Dataset and its radiologists' notes.",
    )
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    ins = dsub.add_parser(
        "inspect",
        help="read images and print what was found, one JSON object a line",
        description="Read each FILE as training would and print one JSON object a line: path, "
        "format, shape, bit depth, pixel spacing when known, the frame/slice taken, the raw "
        "intensity range and the range after normalisation. No DICOM header value that "
        "identifies anyone is printed. Unreadable files get a one-line reason on stderr; the "
        "exit code is 0 when every file loaded, 2 otherwise.",
    )
    ins.add_argument("files", nargs="+", metavar="FILE")
    ins.add_argument(
        "--frame",
        type=int,
        default=None,
        help="frame of a multi-frame DICOM or axial slice of a NIfTI volume, from 0 "
        "(inferior first for NIfTI); default: the middle one",
    )
    ins.set_defaults(func=run_inspect)

    chk = dsub.add_parser(
        "check",
        help="validate a manifest and summarise it",
        description="Validate every row of MANIFEST and print a summary: images, patients and "
        "labels per split, missing images, skipped rows with line numbers and reasons. A "
        "patient in two splits is an error (exit 2), as is a manifest without valid rows.",
    )
    chk.add_argument("manifest", metavar="MANIFEST")
    chk.add_argument("--load", action="store_true", help="also decode every image (slower)")
    chk.add_argument("--strict", action="store_true", help="exit 2 when any row was skipped")
    chk.add_argument("--json", action="store_true", help="print the summary as JSON")
    chk.set_defaults(func=run_check)

    shd = dsub.add_parser(
        "shard",
        help="write WebDataset tar shards of a manifest, for cohorts larger than RAM",
        description="Decode every image of MANIFEST once and write WebDataset tar shards "
        "(DIR/train-000000.tar, ..., valid-..., test-...) plus DIR/shards.json. Each sample is "
        "the decoded image as a 16-bit PNG and a JSON of patient, label, report, sequence, level "
        "and findings (no file paths). `lumbarclip train --data DIR` then streams them with "
        "memory that does not grow with the cohort. A patient in two splits is refused (exit 2); "
        "unreadable images are skipped and counted.",
    )
    shd.add_argument("manifest", metavar="MANIFEST")
    shd.add_argument("--out", required=True, help="folder to write (must be empty unless --overwrite)")
    shd.add_argument("--shard-size", type=int, default=2000, help="images per tar file (default 2000)")
    shd.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    shd.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    shd.set_defaults(func=run_shard)

    men = dsub.add_parser(
        "mendeley",
        help="manifest for the public Lumbar Spine MRI Dataset (515 patients)",
        description="Build a standard manifest from the Mendeley Lumbar Spine MRI Dataset: "
        "--images holds the axial PNG slices (T1_0002_D3.png) or the raw per-patient DICOM "
        "folders (0002/.../*.ima), --notes the radiologists' notes (.xlsx with 'Patient ID' "
        "and \"Clinician's Notes\", or .csv patient_id,note[,lbp,split]). Labels come from "
        "the report parser unless --label-column names a 0/1 column. Splits come from "
        "--split-file, else a split column of the notes, else a seeded stratified 70/15/15 "
        "split. Patients without notes, images or a split are skipped and listed. The "
        "manifest points at your image files (no copies); with --pseudonymise patient IDs "
        "are replaced by salted hashes everywhere except in those file paths.",
    )
    men.add_argument("--images", required=True, help="dataset image folder (PNG or DICOM)")
    men.add_argument("--notes", required=True, help="notes file (.xlsx or .csv)")
    men.add_argument("--out", required=True, help="manifest CSV to write")
    men.add_argument("--split-file", help="CSV/xlsx patient_id,split (e.g. the authors' split)")
    men.add_argument("--seed", type=int, default=0, help="seed of the stratified split (default 0)")
    men.add_argument("--label-column", help="notes column with 0/1 labels (e.g. lbp)")
    men.add_argument(
        "--pseudonymise",
        action="store_true",
        help="replace patient IDs by salted hashes (salt from --salt or LUMBARCLIP_SALT)",
    )
    men.add_argument("--salt", help="secret salt for --pseudonymise; the same salt, the same IDs")
    men.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    men.add_argument("--no-progress", action="store_true", help="hide progress bars")
    men.set_defaults(func=run_mendeley)

    sag = dsub.add_parser(
        "mendeley-sagittal",
        help="manifest for the cohort's mid-sagittal slices, with the paper's split and disc boxes",
        description="Build a manifest of the Mendeley cohort's mid-sagittal T1/T2 slices: --slices is a "
        "checkout of YOLOspine at commit aab0746 ({train,val,test}/images and labels, "
        "PfirrmannGrade.csv), --notes the local_data folder of Lumbar-MedCLIP (lbp-{train,valid,test}-meta.csv: "
        "the paper's patient split, LBP labels and reports). Writes OUT/manifest.csv (plane sagittal, "
        "one row per slice, its discs with level names from the sacrum up, box classes and Pfirrmann "
        "grades) and OUT/adapter-report.json, which lists every unparseable name, image without labels, "
        "duplicate, refused box and patient that could not be joined. No image is copied.",
    )
    sag.add_argument("--slices", required=True, help="YOLOspine checkout at commit aab0746")
    sag.add_argument("--notes", required=True, help="Lumbar-MedCLIP local_data folder (or the repository root)")
    sag.add_argument("--out", required=True, help="cohort folder to write (manifest.csv, adapter-report.json)")
    sag.add_argument("--overwrite", action="store_true", help="replace an existing OUT/manifest.csv")
    sag.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sag.set_defaults(func=run_mendeley_sagittal)


def run_inspect(args: argparse.Namespace) -> int:
    from lumbarclip.data.imageio import read_image

    failed = 0
    for name in args.files:
        try:
            image = read_image(name, frame=args.frame)
        except InputError as err:
            failed += 1
            print(f"lumbarclip data inspect: {err}", file=sys.stderr)
            continue
        print(json.dumps({"path": name, **image.metadata()}), flush=True)
    return 2 if failed else 0


def run_check(args: argparse.Namespace) -> int:
    from lumbarclip.data.manifest import check_manifest, read_manifest

    report = check_manifest(read_manifest(args.manifest), load_images=args.load, progress=args.load)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    for error in report.errors:
        print(f"lumbarclip data check: error: {error}", file=sys.stderr)
    if args.strict and report.skipped:
        message = f"{len(report.skipped)} skipped row(s) with --strict"
        print(f"lumbarclip data check: error: {message}", file=sys.stderr)
        return 2
    return 0 if report.ok else 2


def run_shard(args: argparse.Namespace) -> int:
    from lumbarclip.data.shards import write_shards

    index = write_shards(
        args.manifest, args.out, shard_size=args.shard_size, overwrite=args.overwrite, progress=not args.no_progress
    )
    for split, info in index["splits"].items():
        print(f"{split}: {info['images']} images, {info['patients']} patients, {len(info['shards'])} shard(s)")
    if index["skipped_rows"]:
        print(
            f"skipped {index['skipped_rows']} manifest row(s); `lumbarclip data check {args.manifest}` lists them",
            file=sys.stderr,
        )
    if index["unreadable"]:
        print(f"skipped {len(index['unreadable'])} unreadable image(s), e.g. {index['unreadable'][0]}", file=sys.stderr)
    print(f"shards: {args.out}")
    return 0


def run_mendeley(args: argparse.Namespace) -> int:
    from lumbarclip.data.mendeley import build_mendeley_manifest
    from lumbarclip.data.privacy import resolve_salt

    if args.salt is not None and not args.pseudonymise:
        raise InputError("--salt is only used with --pseudonymise")
    report = build_mendeley_manifest(
        args.images,
        args.notes,
        args.out,
        split_file=args.split_file,
        seed=args.seed,
        label_column=args.label_column,
        salt=resolve_salt(args.salt) if args.pseudonymise else None,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(report.to_text())
    return 0 if report.manifest.ok else 2


def run_mendeley_sagittal(args: argparse.Namespace) -> int:
    from lumbarclip.data.mendeley_sagittal import build_sagittal_manifest

    report = build_sagittal_manifest(
        args.slices, args.notes, args.out, overwrite=args.overwrite, progress=not args.no_progress
    )
    print(report.to_text())
    return 0 if report.manifest.ok else 2
