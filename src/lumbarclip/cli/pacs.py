"""`lumbarclip pacs listen|run|send`: work inside a hospital's imaging system (DICOM node,
DICOMweb pull, C-STORE of files)."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from lumbarclip.data.privacy import SALT_ENV

_SALT_HELP = (
    f"key for the study hashes in logs (default: ${SALT_ENV}, else a random key per run, so "
    "hashes cannot be linked across runs)"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pacs",
        help="DICOM node / DICOMweb client: diagnose studies from a PACS, write a DICOM SR back",
        description="Hospital integration. `listen` runs a DICOM Storage SCP that analyses each "
        "study once no instance has arrived for --quiet seconds and sends a Comprehensive SR "
        "(and, with --overlays, Secondary Capture saliency images) back by C-STORE. `run` pulls "
        "one study over DICOMweb and stores the SR back (STOW-RS). `send` C-STOREs files to a "
        "node. Logs name studies only by a keyed hash. Research use only, not for diagnosis.",
    )
    cmds = p.add_subparsers(dest="pacs_command", metavar="ACTION", required=True)

    listen = cmds.add_parser(
        "listen",
        help="DICOM node: receive studies, analyse, C-STORE the SR to --dest",
        description="Receive MR studies by C-STORE (C-ECHO answered); malformed instances "
        "are refused, non-MR ones acknowledged and skipped, both logged. An instance is "
        "acknowledged only once it is on disk. Each complete study is analysed in turn; a failing "
        "study is logged and kept under WORK/failed/, the node goes on. Results that cannot be "
        "delivered stay in WORK/outbox/ and are retried with backoff (and at the next start). "
        "Stop with Ctrl-C (pending studies are finished first).",
    )
    _model_options(listen)
    listen.add_argument("--ae-title", default="LUMBARCLIP", help="our AE title (default LUMBARCLIP)")
    listen.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    listen.add_argument("--port", type=int, default=11112, help="DICOM port (default 11112)")
    listen.add_argument(
        "--quiet", type=float, default=60.0, help="seconds without a new instance after which a study is complete (default 60, as Orthanc's StableAge)"
    )
    listen.add_argument(
        "--allow-ae", action="append", default=[], metavar="AET",
        help="accept associations only from this calling AE title (repeat for several; default: any)",
    )  # fmt: skip
    listen.add_argument(
        "--max-associations", type=int, default=10, help="associations at once; more are rejected (default 10)"
    )
    listen.add_argument(
        "--retry", type=float, default=30.0,
        help="seconds before a failed delivery is tried again; doubles each time up to 1 h (default 30)",
    )  # fmt: skip
    listen.add_argument(
        "--keep-hours", type=float, default=24.0,
        help="hours a delivered study is kept so that a late instance gives an amended SR of the "
        "whole study (default 24; 0 keeps nothing)",
    )  # fmt: skip
    listen.add_argument("--dest", help="HOST:PORT:AET to C-STORE results to, e.g. 127.0.0.1:4242:ORTHANC")
    listen.add_argument("--out", help="also save result files in this folder")
    listen.add_argument("--work", default="pacs-work", help="folder for studies being received (default pacs-work)")
    listen.set_defaults(func=run_listen)

    pull = cmds.add_parser(
        "run",
        help="pull one study over DICOMweb, analyse it, STOW the SR back",
        description="QIDO-RS finds the study's MR series, WADO-RS retrieves them, STOW-RS stores "
        "the SR (and overlays) back into the same study. Prints one JSON line.",
    )
    _model_options(pull)
    pull.add_argument("--dicomweb", required=True, help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    pull.add_argument("--study", required=True, help="StudyInstanceUID to analyse")
    pull.add_argument("--user", help="basic-auth user (password from $LUMBARCLIP_DICOMWEB_PASSWORD)")
    pull.add_argument("--no-stow", action="store_true", help="analyse only, store nothing on the server")
    pull.set_defaults(func=run_pull)

    send = cmds.add_parser("send", help="C-STORE DICOM files (or folders) to a node")
    send.add_argument("inputs", nargs="+", help="DICOM files or folders (searched recursively for *.dcm)")
    send.add_argument("--dest", required=True, help="HOST:PORT:AET")
    send.add_argument("--ae-title", default="LUMBARCLIP", help="our AE title (default LUMBARCLIP)")
    send.set_defaults(func=run_send)


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model folder (written by train, then evaluate --split test)")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch", help="inference runtime (default torch)")
    p.add_argument("--overlays", action="store_true", help="also send Secondary Capture saliency overlays")
    p.add_argument(
        "--top-k", type=int, default=3, help="findings per image written into the SR (default 3; 0 skips findings)"
    )
    p.add_argument("--salt", help=_SALT_HELP)
    p.add_argument("-v", "--verbose", action="store_true", help="log every received instance")


def _setup(args: argparse.Namespace):
    import secrets

    from lumbarclip.pacs.analyse import StudyAnalyser

    logging.getLogger("lumbarclip.pacs").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its debug log dumps headers
    salt = args.salt or os.environ.get(SALT_ENV) or secrets.token_hex(16)
    return StudyAnalyser.load(
        args.model, runtime=args.runtime, salt=salt, overlays=args.overlays, top_k=args.top_k
    ), salt


def run_listen(args: argparse.Namespace) -> int:
    from lumbarclip.errors import InputError
    from lumbarclip.pacs.node import Destination, NodeConfig, PacsNode, send_datasets

    if not args.dest and not args.out:
        raise InputError("give --dest HOST:PORT:AET and/or --out DIR for the results")
    dest = Destination.parse(args.dest) if args.dest else None
    out = Path(args.out) if args.out else None
    analyser, salt = _setup(args)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    config = NodeConfig(
        args.ae_title, args.host, args.port, args.quiet, Path(args.work), salt,
        allow_ae=tuple(args.allow_ae), max_associations=args.max_associations,
        retry_s=args.retry, retry_max_s=max(3600.0, args.retry), keep_s=args.keep_hours * 3600,
    )  # fmt: skip

    def deliver(datasets):
        if out is not None:
            for ds in datasets:  # new UIDs: never an existing file
                ds.save_as(out / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        if dest is None:
            return [str(ds.SOPInstanceUID) for ds in datasets]
        return send_datasets(datasets, dest, args.ae_title)

    PacsNode(config, analyser, deliver).start().serve_forever()
    return 0


def run_pull(args: argparse.Namespace) -> int:
    from lumbarclip.pacs.dicomweb import make_client, pull_study

    import requests

    from lumbarclip.errors import InputError

    analyser, salt = _setup(args)
    client = make_client(args.dicomweb, args.user, os.environ.get("LUMBARCLIP_DICOMWEB_PASSWORD"))
    try:
        summary = pull_study(client, args.study, analyser, salt, stow=not args.no_stow)
    except requests.RequestException as err:  # server down, wrong URL, refused: the user's to fix
        reason = str(err).replace(args.study, "STUDY")  # no UID in messages
        raise InputError(f"DICOMweb server {args.dicomweb}: {reason}") from err
    print(json.dumps(summary))
    return 0


def run_send(args: argparse.Namespace) -> int:
    from lumbarclip.data.imageio import open_dicom
    from lumbarclip.errors import InputError
    from lumbarclip.pacs.node import Destination, send_datasets

    dest = Destination.parse(args.dest)
    files: list[Path] = []
    for item in map(Path, args.inputs):
        files += sorted(item.rglob("*.dcm")) if item.is_dir() else [item]
    if not files:
        raise InputError("no DICOM files to send")
    try:
        stored = send_datasets([open_dicom(f) for f in files], dest, args.ae_title)
    except ConnectionError as err:  # node down or refusing: the user's to fix
        raise InputError(str(err)) from err
    print(f"sent {len(stored)} instances to {dest.ae_title}")
    return 0
